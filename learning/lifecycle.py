"""Which status changes a policy version may make, and what a forced change must record.

A policy version moves forward one step at a time::

    draft ──► shadow ──► canary ──► active ──► archived
      │          │          │
      │          └────┬─────┘
      │               ▼
      └──► archived  rolled_back

- ``draft``: registered, signed, receives no traffic.
- ``shadow``: sees mirrored traffic; its outputs are recorded, never used.
- ``canary``: serves a share of real traffic against the active control.
- ``active``: the doer's live policy (one per doer, enforced by the database).
- ``archived``: retired from service — an active policy replaced by a newer
  one, or a draft withdrawn before it was ever deployed.
- ``rolled_back``: a shadow or canary policy that was stopped (by a canary
  decision or an operator). It is terminal: to try the same artifact again,
  register it as a new version, which starts as a draft. Keeping it terminal
  means a version's history never loops, and every deployment of an artifact
  has its own version, signature check and audit trail.

Skipping steps forward (``draft → active``, ``shadow → active``,
``draft → canary``) is an emergency path: it needs ``force=True`` *and* a
non-empty reason, which the caller records in the policy history. Nothing,
forced or not, moves a policy backwards, out of a terminal status, or
out of ``shadow``/``canary`` other than forward or into ``rolled_back``;
an active policy leaves only by being archived when another is promoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PolicyStatus(StrEnum):
    """Where a policy version is in its life; the values are what the database stores."""

    DRAFT = "draft"
    SHADOW = "shadow"
    CANARY = "canary"
    ACTIVE = "active"
    ARCHIVED = "archived"
    ROLLED_BACK = "rolled_back"


#: The forward path, in order; a move along it that skips statuses needs force.
FORWARD: tuple[PolicyStatus, ...] = (
    PolicyStatus.DRAFT,
    PolicyStatus.SHADOW,
    PolicyStatus.CANARY,
    PolicyStatus.ACTIVE,
    PolicyStatus.ARCHIVED,
)
#: Statuses from which a rollback is allowed.
ROLLBACK_FROM: frozenset[PolicyStatus] = frozenset({PolicyStatus.SHADOW, PolicyStatus.CANARY})
#: Statuses a policy never leaves.
TERMINAL: frozenset[PolicyStatus] = frozenset({PolicyStatus.ARCHIVED, PolicyStatus.ROLLED_BACK})
#: Statuses in which the policy sees traffic (mirrored or real).
DEPLOYED: frozenset[PolicyStatus] = frozenset(
    {PolicyStatus.SHADOW, PolicyStatus.CANARY, PolicyStatus.ACTIVE}
)

# Single steps allowed without force, beyond the next step on FORWARD.
_EXTRA_STEPS: frozenset[tuple[PolicyStatus, PolicyStatus]] = frozenset(
    {
        (PolicyStatus.SHADOW, PolicyStatus.ROLLED_BACK),
        (PolicyStatus.CANARY, PolicyStatus.ROLLED_BACK),
        (PolicyStatus.DRAFT, PolicyStatus.ARCHIVED),  # withdrawn before any deployment
    }
)


@dataclass(frozen=True)
class TransitionCheck:
    """The verdict on one status change.

    ``ok``: whether it may happen. ``skipped_steps``: the statuses it jumps
    over (non-empty only for a forced change). ``forced``: whether it relies on
    force. ``reason``: what to tell the operator and to record in the history.
    """

    ok: bool
    skipped_steps: tuple[str, ...]
    reason: str
    forced: bool = False

    def __bool__(self) -> bool:
        return self.ok


def parse_status(value: str) -> PolicyStatus | None:
    """Return the status named by ``value``, or None if it names none."""
    try:
        return PolicyStatus(value)
    except ValueError:
        return None


def check_transition(
    from_status: str,
    to_status: str,
    *,
    force: bool = False,
    reason: str | None = None,
) -> TransitionCheck:
    """Return whether a policy may move from one status to another, and why.

    A single step (next on the forward path, a rollback from shadow or canary,
    or withdrawing a draft) is allowed. A forward move that skips statuses is
    allowed only with ``force=True`` and a non-empty ``reason``. Everything
    else is refused, force or not. Unknown status names are refused with a
    reason rather than raised, so a bad command becomes a readable rejection.
    """
    source, target = parse_status(from_status), parse_status(to_status)
    known = ", ".join(s.value for s in PolicyStatus)
    if source is None:
        return _refuse(f"unknown status {from_status!r}; known statuses: {known}")
    if target is None:
        return _refuse(f"unknown status {to_status!r}; known statuses: {known}")
    move = f"{source.value} → {target.value}"
    note = (reason or "").strip()

    if source == target:
        return _refuse(f"policy is already {source.value}")
    if source in TERMINAL:
        return _refuse(
            f"{move} refused: {source.value} is final; register the artifact again "
            "as a new version to deploy it"
        )
    if _is_single_step(source, target):
        text = move if not note else f"{move}: {note}"
        return TransitionCheck(True, (), text, forced=False)

    if target == PolicyStatus.ROLLED_BACK:
        return _refuse(
            f"{move} refused: only a shadow or canary policy can be rolled back; an "
            "active policy is replaced by promoting another version (it becomes archived)"
        )
    if target == PolicyStatus.ARCHIVED:
        return _refuse(
            f"{move} refused: a {source.value} policy leaves by rollback (rolled_back) "
            "or by promotion, not by archiving"
        )
    i, j = FORWARD.index(source), FORWARD.index(target)
    if j < i:
        return _refuse(f"{move} refused: policies never move backwards")
    skipped = tuple(s.value for s in FORWARD[i + 1 : j])
    skip_text = ", ".join(skipped)
    if not force:
        how = (
            "needs force and a reason to record, and a second owner's approval (the CLI's "
            "--force --reason R --approver-key SECOND.pem)"
            if target == PolicyStatus.ACTIVE
            else "needs force and a reason to record (the CLI's --force --reason R)"
        )
        return TransitionCheck(False, skipped, f"{move} skips {skip_text}: {how}")
    if not note:
        return TransitionCheck(
            False,
            skipped,
            f"{move} skips {skip_text}: force needs a non-empty reason to record",
            forced=True,
        )
    return TransitionCheck(
        True, skipped, f"forced {move}, skipping {skip_text}: {note}", forced=True
    )


def allowed_targets(from_status: str, *, force: bool = False) -> list[str]:
    """Return the statuses reachable in one change (with force, the forced skips too)."""
    return [
        s.value
        for s in PolicyStatus
        if check_transition(from_status, s.value, force=force, reason="listing").ok
    ]


def _is_single_step(source: PolicyStatus, target: PolicyStatus) -> bool:
    if (source, target) in _EXTRA_STEPS:
        return True
    i = FORWARD.index(source) if source in FORWARD else -1
    return 0 <= i < len(FORWARD) - 1 and FORWARD[i + 1] == target


def _refuse(reason: str) -> TransitionCheck:
    return TransitionCheck(False, (), reason)
