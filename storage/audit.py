"""The audit of the policy store: every command and decision it handled, applied or refused.

One ``policy_promotions`` row per event id, written in the transaction that
applies (or refuses) the event, so the row is both the audit and the record
that makes a redelivered event a no-op (:func:`recall`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from learning.promotion import CHANGES, PolicyVersion, Refusal, requested_status
from storage.policies import record_of

#: The actor the audit records for a canary decision.
DECISION_ACTOR = "canary"


@dataclass(frozen=True)
class Outcome:
    """What the store did with one command or decision event (as its audit row records it)."""

    event_id: UUID
    doer: str
    action: str
    applied: bool
    verdict: str
    policy_id: str | None = None
    version: int | None = None
    from_status: str | None = None
    to_status: str | None = None
    requested_status: str | None = None
    refusal: Refusal | None = None
    deployment_id: str | None = None
    actor: str = ""
    reason: str = ""
    replayed: bool = False  # the event had been handled before; nothing was done now

    @property
    def changes_live_policy(self) -> bool:
        """Whether what the doer serves changed, so a PolicyChange is due."""
        return self.applied and self.action in CHANGES

    @property
    def policy_ref(self) -> str:
        """``policy_id@version``, or ``-`` when the event named no version."""
        return f"{self.policy_id}@{self.version}" if self.policy_id else "-"

    @classmethod
    def from_row(cls, row: Any, *, replayed: bool = False) -> Outcome:
        """Build from a ``policy_promotions`` row."""
        return cls(
            event_id=row["event_id"],
            doer=row["doer"],
            action=row["action"],
            applied=row["outcome"] == "applied",
            verdict=row["verdict"],
            policy_id=row["policy_id"],
            version=row["version"],
            from_status=row["from_status"],
            to_status=row["to_status"],
            requested_status=row["requested_status"],
            refusal=row["refusal"],
            deployment_id=row["deployment_id"],
            actor=row["actor"],
            reason=row["reason"],
            replayed=replayed,
        )


@dataclass(frozen=True)
class PromotionRecord:
    """One audit row: a command or decision, applied or refused."""

    id: int
    event_id: UUID
    source: str
    action: str
    doer: str
    policy_id: str | None
    version: int | None
    from_status: str | None
    to_status: str | None
    requested_status: str
    outcome: str
    refusal: str | None
    forced: bool
    actor: str
    reason: str
    verdict: str
    deployment_id: str | None
    previous_policy_id: str | None
    previous_version: int | None
    decision_report: Any
    occurred_at: datetime
    recorded_at: datetime
    # A forced promotion's second owner, verified (applied_commands); None otherwise.
    approver: str | None = None


@dataclass(frozen=True)
class Ask:
    """One command or decision, in the terms the audit records."""

    event_id: UUID
    source: str  # command | decision
    action: str
    doer: str
    actor: str
    reason: str
    occurred_at: datetime
    policy_id: str | None = None
    version: int | None = None
    force: bool = False
    deployment_id: str | None = None
    decision_report: dict[str, Any] | None = None
    allocation: float | None = None  # shadow: the mirrored share
    steps: Sequence[float] | None = None  # canary: traffic steps (None: the defaults)
    require_approval: bool = False
    canary: dict[str, Any] | None = None  # models.commands.CanarySettings as JSON

    @property
    def requested_status(self) -> str:
        """The status the event asks for."""
        return requested_status(self.action)


# --------------------------------------------------------------------------- writing


async def recall(conn: Any, event_id: UUID) -> Outcome | None:
    """What the store did with an event handled before, marked ``replayed``; None if new."""
    row = await conn.fetchrow("SELECT * FROM policy_promotions WHERE event_id = $1", event_id)
    return Outcome.from_row(row, replayed=True) if row is not None else None


async def record_applied(
    conn: Any,
    ask: Ask,
    verdict: str,
    to_status: str,
    *,
    target: PolicyVersion | None = None,
    forced: bool = False,
    deployment_id: str | None = None,
    previous: PolicyVersion | None = None,
) -> Outcome:
    return await _audit(
        conn,
        ask,
        outcome="applied",
        verdict=verdict,
        from_status=target.status if target else None,
        to_status=to_status,
        target=target,
        forced=forced,
        deployment_id=deployment_id,
        previous=previous,
    )


async def record_refused(
    conn: Any, ask: Ask, verdict: str, refusal: Refusal, *, target: PolicyVersion | None = None
) -> Outcome:
    status = target.status if target else None
    return await _audit(
        conn,
        ask,
        outcome="refused",
        verdict=verdict,
        refusal=refusal,
        from_status=status,
        to_status=status,
        target=target,
        deployment_id=ask.deployment_id,
    )


async def _audit(
    conn: Any,
    ask: Ask,
    *,
    outcome: str,
    verdict: str,
    from_status: str | None,
    to_status: str | None,
    target: PolicyVersion | None = None,
    refusal: str | None = None,
    forced: bool = False,
    deployment_id: str | None = None,
    previous: PolicyVersion | None = None,
) -> Outcome:
    row = await conn.fetchrow(
        """
        INSERT INTO policy_promotions (
            event_id, source, action, doer, policy_id, version, from_status, to_status,
            requested_status, outcome, refusal, forced, actor, reason, verdict, deployment_id,
            previous_policy_id, previous_version, decision_report, occurred_at
        )
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                $18, $19, $20)
        RETURNING *
        """,
        ask.event_id,
        ask.source,
        ask.action,
        ask.doer,
        target.policy_id if target else ask.policy_id,
        target.version if target else ask.version,
        from_status,
        to_status,
        ask.requested_status,
        outcome,
        refusal,
        forced,
        ask.actor,
        ask.reason,
        verdict,
        deployment_id,
        previous.policy_id if previous else None,
        previous.version if previous else None,
        ask.decision_report,
        ask.occurred_at,
    )
    return Outcome.from_row(row)


# --------------------------------------------------------------------------- reading


async def outcome_of(pool: Any, event_id: UUID) -> Outcome | None:
    """What the store did with an event, once it has handled it."""
    row = await pool.fetchrow("SELECT * FROM policy_promotions WHERE event_id = $1", event_id)
    return Outcome.from_row(row) if row else None


async def promotions(
    pool: Any,
    *,
    doer: str | None = None,
    policy_id: str | None = None,
    version: int | None = None,
) -> list[PromotionRecord]:
    """Audit rows, oldest first, of a doer or of a policy (and version)."""
    rows = await pool.fetch(
        """
        SELECT p.*, c.approver FROM policy_promotions p
        LEFT JOIN applied_commands c ON c.event_id = p.event_id
        WHERE ($1::text IS NULL OR p.doer = $1)
          AND ($2::text IS NULL OR p.policy_id = $2)
          AND ($3::integer IS NULL OR p.version = $3)
        ORDER BY p.id
        """,
        doer,
        policy_id,
        version,
    )
    return [record_of(PromotionRecord, row) for row in rows]
