"""learning.policy-changes: a doer's live policy, the one event the orchestrator's Router reads.

Its own module so that the Router (learnops.client) imports this contract and
nothing of the other events; ``models.events`` exports both names too.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from models.base import (
    ContractModel,
    Count,
    Event,
    Identifier,
    Sha256Hex,
    UnitFloat,
    UTCDatetime,
    Version,
)
from models.commands import CanarySettings

__all__ = ["DeploymentRouting", "PolicyChange"]


class DeploymentRouting(ContractModel):
    """What a router needs while a shadow or canary deployment is live."""

    deployment_id: Identifier
    salt: Identifier  # hashed with the task id to pick the arm (learning.routing.assign)
    candidate_policy_id: Identifier
    candidate_version: Version
    allocation: UnitFloat  # the candidate's share of tasks (in shadow: the mirrored share)
    step: Count = 0
    # What the canary stage needs to judge the deployment (docs/canary.md).
    control_policy_id: Identifier | None = None
    control_version: Version | None = None
    steps: list[UnitFloat] = Field(default_factory=list)  # canary traffic steps, in order
    require_approval: bool = False
    started_at: UTCDatetime | None = None
    canary: CanarySettings | None = None
    paused: bool = False  # a canary stage pause (sample ratio mismatch, missing data)


class PolicyChange(Event):
    """A doer's live policy after a change; compaction keeps the latest per doer.

    ``policy_id``/``version`` is the policy serving the doer's traffic (the
    control), so reading the topic from the start gives every doer's current
    policy.  ``change`` says what produced this record; ``deployment`` is set
    exactly while a shadow or canary is live (``status`` "shadow"/"canary").
    """

    change: Literal[
        "registered",
        "promoted",
        "rolled_back",
        "shadow_started",
        "canary_started",
        "step_changed",
        "paused",
        "archived",
    ]
    status: Literal["active", "shadow", "canary"]
    policy_id: Identifier
    version: Version
    content_hash: Sha256Hex
    signature_key_id: Identifier
    previous_policy_id: Identifier | None = None
    previous_version: Version | None = None
    deployment: DeploymentRouting | None = None
    actor: Identifier | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _deployment_matches_status(self) -> Self:
        if (self.status == "active") != (self.deployment is None):
            raise ValueError(
                "deployment is required while status is shadow or canary, and absent when active"
            )
        if (self.previous_policy_id is None) != (self.previous_version is None):
            raise ValueError("previous_policy_id and previous_version go together")
        return self
