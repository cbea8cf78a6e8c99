"""The experiment lifecycle: which status changes an experiment may make, and why.

An experiment tests a candidate policy against the doer's active policy (the
control, fixed when the experiment starts)::

    created ──► replaying ──► shadow ──► canary ──► promoted
       │            │           │          │
       ▼            ▼           └────┬─────┘
     failed    failed | incomplete   ▼
                                rolled_back

- ``replaying``: the candidate and the control are replayed offline on a
  golden dataset under the experiment's seeds (learning.replay);
- ``failed``: the replay did not beat the control or was unstable (with the
  numbers), or the experiment could not start (no golden dataset, no control),
  or the policy store refused the deployment;
- ``incomplete``: replay tasks did not all return before the timeout (the
  missing tasks are listed); running its replay again (the candidate's, or the
  control's) resumes it;
- ``shadow`` / ``canary`` / ``promoted`` / ``rolled_back`` follow the
  candidate's deployment in the policy store, which may skip ``shadow`` (a
  canary-first plan) or end from either.

Pure logic: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal[
    "created", "replaying", "shadow", "canary", "promoted", "rolled_back", "failed", "incomplete"
]

STATUSES: tuple[Status, ...] = (
    "created",
    "replaying",
    "shadow",
    "canary",
    "promoted",
    "rolled_back",
    "failed",
    "incomplete",
)
#: Statuses an experiment never leaves.
TERMINAL: frozenset[str] = frozenset({"promoted", "rolled_back", "failed"})
#: Statuses in which the experiment waits for its replay or its deployment.
OPEN: frozenset[str] = frozenset({"created", "replaying", "shadow", "canary"})

_ALLOWED: dict[str, frozenset[str]] = {
    "created": frozenset({"replaying", "failed"}),
    "replaying": frozenset({"shadow", "canary", "promoted", "rolled_back", "failed", "incomplete"}),
    "incomplete": frozenset({"replaying", "failed"}),
    "shadow": frozenset({"canary", "promoted", "rolled_back", "failed"}),
    "canary": frozenset({"promoted", "rolled_back", "failed"}),
}

#: The experiment status that follows from the candidate policy's status in the store.
FROM_POLICY_STATUS: dict[str, Status] = {
    "shadow": "shadow",
    "canary": "canary",
    "active": "promoted",
    "rolled_back": "rolled_back",
}


def may_move(current: str, target: str) -> bool:
    """Whether an experiment in ``current`` may move to ``target``."""
    return target in _ALLOWED.get(current, frozenset())


def follow_policy(current: str, policy_status: str) -> Status | None:
    """The status an experiment takes when its candidate is in ``policy_status``, if it moves.

    Only an experiment that has sent its deployment (``replaying`` with a
    passing verdict, ``shadow`` or ``canary``) follows; the caller checks that.
    A candidate still in ``draft`` has not moved; an ``archived`` candidate was
    withdrawn, which ends the experiment as failed.
    """
    if policy_status == "archived":
        target: Status | None = "failed"
    else:
        target = FROM_POLICY_STATUS.get(policy_status)
    if target is None or target == current or not may_move(current, target):
        return None
    return target


def split_versioned(name: str) -> tuple[str, int | None]:
    """``"golden@3"`` → ``("golden", 3)``; ``"golden"`` → ``("golden", None)``."""
    base, sep, version = name.rpartition("@")
    if not sep:
        return name, None
    if not base or not version.isdigit() or int(version) < 1:
        raise ValueError(f"{name!r}: expected NAME or NAME@VERSION with VERSION ≥ 1")
    return base, int(version)


def parse_seeds(text: str) -> list[int]:
    """``"42,43,44"`` → ``[42, 43, 44]``; every part must be an integer, and one at least."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("no seeds: give a comma-separated list such as 42,43,44")
    seeds = []
    for part in parts:
        try:
            seeds.append(int(part))
        except ValueError:
            raise ValueError(f"seed {part!r} is not an integer") from None
    return seeds


#: The end states that count as a failed experiment for the failure-rate alert.
FAILED_STATUSES = frozenset({"failed", "rolled_back", "incomplete"})
#: Every end state.
ENDED_STATUSES = FAILED_STATUSES | {"promoted"}


@dataclass(frozen=True)
class FailureRateRule:
    """When a doer's experiments fail too often: over ``window_days``, at least ``min_ended``."""

    window_days: int = 7
    threshold: float = 0.5  # failed / ended above this alerts
    min_ended: int = 4  # fewer ended experiments than this say nothing yet


@dataclass(frozen=True)
class FailureRate:
    """A doer's ended and failed experiments over the rule's window, and whether it alerts."""

    ended: int
    failed: int
    rule: FailureRateRule

    @property
    def rate(self) -> float:
        """Failed over ended (0 when none ended)."""
        return self.failed / self.ended if self.ended else 0.0

    @property
    def too_high(self) -> bool:
        """Enough experiments ended, and the share that failed is above the threshold."""
        return self.ended >= self.rule.min_ended and self.rate > self.rule.threshold

    def message(self) -> str:
        """What a person reads: the measured rate against the threshold, and the counts."""
        return (
            f"{self.failed} of {self.ended} experiments ended failed, rolled back or incomplete "
            f"over {self.rule.window_days} days ({self.rate:.0%}, threshold "
            f"{self.rule.threshold:.0%})"
        )
