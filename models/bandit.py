"""learning.bandit-allocations and learning.bandit-controls: the bandit's shares and its freeze.

Both topics are compacted and keyed by doer, so one record per doer carries
everything: :class:`BanditAllocations` lists every phase/parameter bandit of
the doer with the shares in force, and :class:`BanditControl` is an operator's
signed freeze or unfreeze of the doer's allocations. The Router (``learnops.client``)
imports this module and nothing else of the contract's events.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from models.base import (
    INT4_MAX,
    ContractModel,
    Count,
    Event,
    Identifier,
    UnitFloat,
    Version,
    left_out_when_empty,
)
from models.commands import SignedCommand

__all__ = ["BanditAllocations", "BanditControl", "ParameterAllocation"]

#: Shares may miss 1 by rounding; more than this is a broken record.
SHARE_TOLERANCE = 1e-6


class ParameterAllocation(ContractModel):
    """The shares in force for one phase and parameter of a doer's policy version.

    ``probes`` are the options on probation whose guardrail events the bandit
    asks to see in shadow: on ``probe_share`` of the tasks, the orchestrator
    also runs each of them beside the routed option and publishes that run as
    a bandit probe (``RunCompleted.shadow`` without a deployment). Both are left
    out of the record while there is nothing to probe.
    """

    phase: Identifier
    parameter: Identifier
    policy_id: Identifier
    policy_version: Version
    shares: Annotated[dict[Identifier, UnitFloat], Field(min_length=2)]
    sequence: Count  # this parameter's allocation number; 0: uniform, none computed yet
    runs: Count = 0  # runs of this policy version folded in (undiscounted)
    probes: Annotated[list[Identifier], Field(default_factory=list, exclude_if=left_out_when_empty)]
    probe_share: Annotated[UnitFloat, Field(exclude_if=left_out_when_empty)] = 0.0

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> Self:
        total = sum(self.shares.values())
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValueError(f"shares of {self.phase}/{self.parameter} sum to {total}, not 1")
        unknown = sorted(set(self.probes) - set(self.shares))
        if unknown:
            raise ValueError(f"probes {unknown} of {self.phase}/{self.parameter} have no share")
        return self


class BanditAllocations(Event):
    """Every bandit allocation of one doer; compaction keeps the latest.

    ``sequence`` only rises for a doer (the sum of its parameters' sequences), so
    a reader keeps the record with the highest one. ``frozen`` is true while an
    operator holds the doer's allocations where they are.
    """

    sequence: Annotated[int, Field(ge=0, le=INT4_MAX)]
    frozen: bool = False
    allocations: list[ParameterAllocation]
    # The worker's signature over every other field (learning.signing.sign_event,
    # kind "bandit-allocations"); a client that pins keys refuses a record without it.
    signature: Annotated[str, Field(max_length=200)] | None = None

    def allocation(self, phase: str, parameter: str) -> ParameterAllocation | None:
        """The allocation of ``parameter`` in ``phase``, or None."""
        for found in self.allocations:
            if (found.phase, found.parameter) == (phase, parameter):
                return found
        return None


class BanditControl(SignedCommand):
    """An operator's signed freeze or unfreeze of a doer's bandit allocations (compacted per doer).

    Like every command it is a signed envelope (``models.commands.SignedCommand``):
    the bandit stage applies it only when an operator key holding the operator
    role on the doer signed it and it has not expired (docs/security.md#commands).
    """

    command: Literal["freeze_bandit", "unfreeze_bandit"]
    reason: Annotated[str, Field(min_length=1, max_length=2000)]

    @property
    def frozen(self) -> bool:
        """True for a freeze, False for an unfreeze."""
        return self.command == "freeze_bandit"
