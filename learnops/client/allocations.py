"""The orchestrator's bandit client: follows learning.bandit-allocations, picks options locally.

Beside the :class:`~learnops.client.router.Router`, an orchestrator may keep one
:class:`Allocations`. It reads the compacted ``learning.bandit-allocations``
topic from the beginning (each doer's shares per phase and parameter, keyed by
doer) and keeps following it, so ``option(doer, phase, parameter, task_id)``
is a look-up and a hash: the task's bucket (``learning.routing.bucket``, salted
with the doer, phase and parameter, so it is independent of a canary's arm)
falls in one option's share. The same task id always gets the same option
under the same shares, so a replay of the routing agrees without talking.

    async with Allocations("kafka:9092") as allocations:
        model = allocations.option("PRDWriter", "draft", "router.model", task_id)

The orchestrator records the option in the bundle (``RunCompleted.options``).
Like the Router it needs only the contract, the routing rules and aiokafka.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from learning.routing import bucket
from learnops.client.follower import TopicFollower

if TYPE_CHECKING:
    from models.bandit import BanditAllocations

log = logging.getLogger("learnops.allocations")

ALLOCATIONS = "learning.bandit-allocations"


def choose(shares: Mapping[str, float], point: float) -> str:
    """The option whose share, laid end to end in name order, holds ``point`` in [0, 1)."""
    if not shares:
        raise ValueError("no options to choose from")
    total = sum(shares.values())
    edge = 0.0
    names = sorted(shares)
    for name in names:
        edge += shares[name] / total
        if point < edge:
            return name
    return names[-1]  # point fell past the last edge by rounding


def option_for(allocations: BanditAllocations, phase: str, parameter: str, task_id: str) -> str:
    """The option a task gets under the doer's allocations; KeyError when none is published."""
    found = allocations.allocation(phase, parameter)
    if found is None:
        raise KeyError(f"{allocations.doer} has no allocation of {parameter} in {phase}")
    salt = f"bandit/{allocations.doer}/{phase}/{parameter}"
    return choose(found.shares, bucket(task_id, salt))


class Allocations(TopicFollower):
    """Each doer's latest bandit allocations, kept up to date in the background."""

    topic = ALLOCATIONS

    def __init__(self, bootstrap_servers: str, **client_options: Any) -> None:
        """Follow the cluster at ``bootstrap_servers``; ``client_options`` go to aiokafka."""
        super().__init__(bootstrap_servers, **client_options)
        self._latest: dict[str, BanditAllocations] = {}
        self.skipped = 0  # records that were not valid BanditAllocations

    def apply(self, value: bytes) -> BanditAllocations | None:
        """Take one record; an older sequence than the one held is ignored, a bad one counted."""
        from pydantic import ValidationError

        from models.bandit import BanditAllocations

        try:
            allocations = BanditAllocations.from_json(value)
        except ValidationError as exc:
            self.skipped += 1
            log.warning("allocations_skipped_record error_count=%d", exc.error_count())
            return None
        held = self._latest.get(allocations.doer)
        if held is not None and held.sequence > allocations.sequence:
            return None
        self._latest[allocations.doer] = allocations
        return allocations

    def latest(self, doer: str) -> BanditAllocations | None:
        """The doer's latest allocations, or None."""
        return self._latest.get(doer)

    def option(self, doer: str, phase: str, parameter: str, task_id: str) -> str | None:
        """The option for the task by its share; None when the doer has no such allocation."""
        allocations = self._latest.get(doer)
        if allocations is None or allocations.allocation(phase, parameter) is None:
            return None
        return option_for(allocations, phase, parameter, task_id)
