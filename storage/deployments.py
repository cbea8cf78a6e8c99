"""Shadow and canary deployments: their traffic steps, approvals and pauses, and the live policy.

A deployment starts and ends with the policy move that starts or ends it
(``storage.policy_commands``). In between, a canary decision steps its traffic
up, an operator approves the next step of one that waits for approval, and a
decision or an operator pauses it, and an operator resumes it;
``learning.promotion`` says whether each may happen now
(:func:`~learning.promotion.check_step_up`, :func:`~learning.promotion.check_approval`,
:func:`~learning.promotion.check_pause`, :func:`~learning.promotion.check_resume`)
and this module applies it under the doer's lock, with an audit row.
:func:`current_change` is what a doer serves, as a PolicyChange.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from learning.promotion import (
    CHANGES,
    DeploymentSteps,
    asked_for_what_is,
    check_approval,
    check_decided_pause,
    check_operator_pause,
    check_resume,
    check_step_up,
)
from learning.signing import DECISION_KIND, Signature, VerifyResult, verify_event
from models.commands import CanarySettings
from models.events import DecisionMade, DeploymentRouting, PolicyChange
from models.ids import caused_event_id
from storage.audit import DECISION_ACTOR
from storage.policies import lock_doer
from storage.signing_keys import load_keyring
from storage.verification import STORED_SIGNATURE_COLUMNS, verify_stored

# --------------------------------------------------------------------------- the live policy


async def current_change(pool: Any, doer: str) -> PolicyChange | None:
    """The doer's live state as a PolicyChange, or None while it has no active policy.

    Built from the database, not from the event being handled, so publishing it
    again (after a crash, or for a replay) never puts an older state last on
    the compacted topic. Its event id derives from the audit row of the change
    that produced the state.
    """
    active = await pool.fetchrow(
        "SELECT policy_id, version, content_hash, key_id, signature, signature_format, "
        "updated_at FROM policies WHERE doer = $1 AND status = 'active'",
        doer,
    )
    if active is None:
        return None
    last = await pool.fetchrow(
        """
        SELECT * FROM policy_promotions
        WHERE doer = $1 AND outcome = 'applied' AND action = ANY($2::text[])
        ORDER BY id DESC LIMIT 1
        """,
        doer,
        list(CHANGES),
    )
    live = await pool.fetchrow(
        """
        SELECT d.*, p.content_hash AS candidate_content_hash,
               p.key_id AS candidate_key_id, p.signature AS candidate_signature,
               p.signature_format AS candidate_signature_format
        FROM shadow_deployments d
        JOIN policies p ON p.policy_id = d.policy_id AND p.version = d.version
        WHERE d.doer = $1 AND d.ended_at IS NULL
        """,
        doer,
    )
    deployment = deployment_routing(live) if live else None
    promoted = last is not None and last["action"] == "promote"
    return PolicyChange(
        event_id=caused_event_id("policy-change", last["event_id"]) if last else uuid.uuid4(),
        occurred_at=last["recorded_at"] if last else active["updated_at"],
        doer=doer,
        change=CHANGES[last["action"]] if last else "promoted",
        status=live["mode"] if live else "active",
        policy_id=active["policy_id"],
        version=active["version"],
        content_hash=active["content_hash"],
        signature_key_id=active["key_id"],
        previous_policy_id=last["previous_policy_id"] if promoted else None,
        previous_version=last["previous_version"] if promoted else None,
        deployment=deployment,
        actor=last["actor"] if last else None,
        reason=last["reason"] if last else None,
        policy_signature=_policy_signature(
            active["key_id"], active["signature"], active["signature_format"]
        ),
    )


def _policy_signature(key_id: str, signature: str, signature_format: int) -> str | None:
    """A stored version's signature in its text form; None for a format 1 one (artifact only)."""
    if signature_format != 2:
        return None
    return str(Signature.from_parts(key_id, signature))


#: What a change says of itself rather than of the doer's state.
_ABOUT_THE_CHANGE = {
    "event_id",
    "change",
    "actor",
    "reason",
    "occurred_at",
    "sequence",
    "signature",
}


async def numbered_change(pool: Any, change: PolicyChange) -> PolicyChange | None:
    """``change`` with the doer's next sequence number, or the doer's newer state if it moved.

    Read and numbered in one transaction under the doer's policy lock, which every
    change of state takes too: a state read earlier (two workers on one doer for
    a moment in a rebalance) cannot be numbered after a newer one and win at the
    Router. None when the doer has no active policy any more.
    """
    async with pool.acquire() as conn, conn.transaction():
        await lock_doer(conn, change.doer)
        now = await current_change(conn, change.doer)
        if now is None:
            return None
        if now.model_dump(exclude=_ABOUT_THE_CHANGE) != change.model_dump(
            exclude=_ABOUT_THE_CHANGE
        ):
            change = now  # another change moved the doer on since this one was read
        sequence = await next_change_sequence(conn, change.doer)
    return change.model_copy(update={"sequence": sequence, "signature": None})


async def last_sequence(pool: Any, doer: str) -> int | None:
    """The sequence number of the doer's last published policy change, or None."""
    sequence: int | None = await pool.fetchval(
        "SELECT sequence FROM policy_change_sequences WHERE doer = $1", doer
    )
    return sequence


async def next_change_sequence(pool: Any, doer: str) -> int:
    """The next sequence number of the doer's published policy changes (1, 2, …), durable."""
    sequence: int = await pool.fetchval(
        """
        INSERT INTO policy_change_sequences (doer, sequence) VALUES ($1, 1)
        ON CONFLICT (doer) DO UPDATE SET sequence = policy_change_sequences.sequence + 1
        RETURNING sequence
        """,
        doer,
    )
    return sequence


def deployment_routing(live: Any) -> DeploymentRouting:
    """What a router and the canary stage need of a ``shadow_deployments`` row."""
    canary = live["canary"]
    if isinstance(canary, str | bytes):
        canary = orjson.loads(canary)
    return DeploymentRouting(
        deployment_id=live["deployment_id"],
        salt=live["salt"],
        candidate_policy_id=live["policy_id"],
        candidate_version=live["version"],
        allocation=live["allocation"],
        step=live["step"],
        control_policy_id=live["control_policy_id"],
        control_version=live["control_version"],
        steps=list(live["steps"]),
        require_approval=live["require_approval"],
        started_at=live["started_at"],
        canary=CanarySettings.model_validate(canary) if canary else None,
        paused=live["paused_at"] is not None,
        resumes=live["resumes"],
        resumed_at=live["resumed_at"],
        **_candidate_signature(live),
    )


def _candidate_signature(live: Any) -> dict[str, Any]:
    """The candidate's content hash and signature, when the row was read with them."""
    if "candidate_signature" not in live:
        return {}
    return {
        "candidate_content_hash": live["candidate_content_hash"],
        "candidate_signature": _policy_signature(
            live["candidate_key_id"],
            live["candidate_signature"],
            live["candidate_signature_format"],
        ),
    }


# --------------------------------------------------------------------- steps, approvals, pauses


@dataclass(frozen=True)
class StepOutcome:
    """What the store did with a step-up decision or an approval, as its audit row records it.

    ``change`` is the doer's new live state when the step applied (also for a
    replayed event, so its PolicyChange can be sent again); ``refusal`` says
    why not: ``stale`` (the deployment is at that step, or paused or running,
    already), ``rule`` (a jump, another doer's deployment, a missing approval,
    an ended or paused one) or ``signature`` (the candidate no longer verifies).
    An operator's pause or resume is recorded the same way, at the step it
    holds (``to_step`` is the deployment's step then).
    """

    event_id: UUID
    doer: str
    deployment_id: str
    action: str  # "step_up" | "approve" | "pause" | "resume" (an operator's)
    to_step: int
    applied: bool
    verdict: str
    refusal: str | None
    actor: str
    replayed: bool = False
    change: PolicyChange | None = None

    @property
    def worth_an_alert(self) -> bool:
        """Whether a person should hear of it: every refusal but a stale step."""
        return self.refusal in ("rule", "signature")


@dataclass(frozen=True)
class _StepAsk:
    event_id: UUID
    doer: str
    deployment_id: str
    action: str
    to_step: int | None  # None: the deployment's own step (a pause or resume holds it)
    actor: str
    reason: str
    occurred_at: datetime
    resumes: int | None = None  # a canary's pause: the resumes it was decided after


async def decision_refusal(pool: Any, decision: DecisionMade) -> tuple[str, str] | None:
    """Why a canary decision may not be applied, as (refusal, reason); None when it may.

    Its signature must verify against the trusted keyring as it is now (a
    worker key, ``LEARNOPS_WORKER_SIGNING_KEY``; unknown, revoked or retired
    after signing is refused), and its deployment must be its own doer's.
    """
    async with pool.acquire() as conn:
        keyring = await load_keyring(conn)
        check = verify_event(
            DECISION_KIND,
            decision.model_dump(mode="json"),
            keyring,
            signed_at=decision.occurred_at,
        )
        if not check:
            return "signature", f"the decision's signature is refused: {check.reason}"
        owner = await conn.fetchval(
            "SELECT doer FROM shadow_deployments WHERE deployment_id = $1", decision.deployment_id
        )
    if owner is None:
        return "rule", f"there is no deployment {decision.deployment_id}"
    if owner != decision.doer:
        return "rule", (
            f"{decision.deployment_id} belongs to doer {owner!r}, not {decision.doer!r}"
        )
    return None


async def apply_step(pool: Any, decision: DecisionMade) -> StepOutcome:
    """Move the doer's live canary one step up, as a canary decision asks, and audit it.

    It applies only to the decision's own doer's live, unpaused canary, only
    to the next step, never to a deployment that requires approval
    (``learning.promotion.check_step_up``), and only while the candidate's
    signature and key still verify; migration 019 holds the database to the
    same rules. A replayed decision changes nothing and returns what it did.
    """
    ask = _StepAsk(
        decision.event_id,
        decision.doer,
        decision.deployment_id,
        "step_up",
        decision.step,
        DECISION_ACTOR,
        decision.reason,
        decision.occurred_at,
    )
    return await _step(
        pool, ask, lambda deployment: check_step_up(deployment, ask.doer, decision.step)
    )


async def approve_step(
    pool: Any,
    doer: str,
    deployment_id: str,
    step: int,
    *,
    event_id: UUID,
    actor: str,
    reason: str,
    occurred_at: datetime | None = None,
) -> StepOutcome:
    """Let a doer's deployment move to its next ``step`` on an operator's approval, and audit it.

    Only the next step of the doer's live, unpaused canary can be approved
    (``learning.promotion.check_approval``), and only while the candidate
    still verifies.
    """
    ask = _StepAsk(
        event_id,
        doer,
        deployment_id,
        "approve",
        step,
        actor,
        reason,
        occurred_at or datetime.now(UTC),
    )
    asked = step in await approvals_asked(pool, deployment_id)
    return await _step(pool, ask, lambda deployment: check_approval(deployment, doer, step, asked))


#: The steps a canary asked an operator to approve and has not reached: its "report"
#: decisions recommending a step-up (learning.deployments, ``awaiting approval of step N``)
#: carry the step asked for; its periodic reports carry the step it is at. An ask made
#: before the last resume no longer stands: on a resume the canary drops it, counts the
#: step afresh and asks again on new evidence. Each decision carries the resumes it saw
#: (migration 043), the deployment's own clock: not the time, which mixes the canary
#: worker's clock with PostgreSQL's and dates an ask on old evidence by when it was sent.
ASKED = (
    "dd.deployment_id = d.deployment_id AND dd.action = 'report'"
    " AND dd.report->>'recommendation' = 'step_up' AND dd.step > d.step"
    " AND dd.resumes = d.resumes"
)
APPROVALS_ASKED = (
    "SELECT DISTINCT dd.step FROM deployment_decisions dd"
    " JOIN shadow_deployments d ON d.deployment_id = dd.deployment_id"
    f" WHERE dd.deployment_id = $1 AND {ASKED}"
)


async def approvals_asked(pool: Any, deployment_id: str) -> set[int]:
    """The steps the canary of ``deployment_id`` asked an operator to approve, not yet reached."""
    return {row["step"] for row in await pool.fetch(APPROVALS_ASKED, deployment_id)}


async def operator_pause(
    pool: Any,
    doer: str,
    deployment_id: str,
    *,
    pause: bool,
    event_id: UUID,
    actor: str,
    reason: str,
    occurred_at: datetime | None = None,
) -> StepOutcome:
    """Hold a doer's live deployment at its step (``pause``), or let it carry on; audited.

    An operator's ``pause_deployment`` or ``resume_deployment`` command, once
    its signature and role are verified (agents/command_auth.py). A pause
    applies to any live deployment of the doer not paused already (routing
    stays as it is; no step moves while paused); a resume to a paused one,
    however it was paused, and only while the candidate still verifies, since
    it lets the canary move the candidate on. A replayed command changes
    nothing and returns what it did.
    """
    ask = _StepAsk(
        event_id,
        doer,
        deployment_id,
        "pause" if pause else "resume",
        None,
        actor,
        reason,
        occurred_at or datetime.now(UTC),
    )
    check = check_operator_pause if pause else check_resume
    return await _step(pool, ask, lambda deployment: check(deployment, doer))


async def _step(
    pool: Any, ask: _StepAsk, rule: Callable[[DeploymentSteps], str | None]
) -> StepOutcome:
    """Check, audit and (when allowed) apply one step under the doer's lock."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_doer(conn, ask.doer)
        earlier = await conn.fetchrow(
            "SELECT * FROM deployment_steps WHERE event_id = $1", ask.event_id
        )
        if earlier is not None:
            outcome = _step_outcome(earlier, replayed=True)
        else:
            outcome = await _decide_step(conn, ask, rule)
    if not outcome.applied:
        return outcome
    kind = {"pause": "paused", "resume": "resumed"}.get(ask.action, "step_changed")
    change = await _step_change(pool, ask.doer, ask.event_id, ask.reason, ask.actor, kind)
    return replace(outcome, change=change)


async def _decide_step(
    conn: Any, ask: _StepAsk, rule: Callable[[DeploymentSteps], str | None]
) -> StepOutcome:
    row = await conn.fetchrow(
        "SELECT deployment_id, doer, mode, step, steps, ended_at, paused_at, require_approval, "
        "resumes, policy_id, version FROM shadow_deployments WHERE deployment_id = $1 FOR UPDATE",
        ask.deployment_id,
    )
    deployment = _steps_of(row) if row is not None else None
    to_step = ask.to_step
    if to_step is None:
        to_step = deployment.step if deployment is not None else 0
    refusal: str | None = None
    if deployment is None:
        verdict: str | None = f"there is no deployment {ask.deployment_id}"
        refusal = "rule"
    else:
        verdict = rule(deployment)
        if verdict is not None:
            stale = asked_for_what_is(ask.action, deployment, ask.doer, to_step, ask.resumes)
            refusal = "stale" if stale else "rule"
        elif ask.action != "pause":
            # Pausing is always safe; anything that lets the candidate move on is
            # checked against the keyring as it is now.
            check = await _verify_candidate(conn, row)
            if not check:
                verdict = (
                    f"candidate {row['policy_id']}@{row['version']} no longer verifies: "
                    f"{check.reason}"
                )
                refusal = "signature"
    audit = await conn.fetchrow(
        """
        INSERT INTO deployment_steps (
            event_id, deployment_id, doer, action, from_step, to_step, outcome, refusal,
            actor, reason, verdict, occurred_at
        )
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        RETURNING *
        """,
        ask.event_id,
        ask.deployment_id,
        ask.doer,
        ask.action,
        deployment.step if deployment else None,
        to_step,
        "refused" if refusal else "applied",
        refusal,
        ask.actor,
        ask.reason,
        verdict or _applied_verdict(ask, to_step),
        ask.occurred_at,
    )
    if refusal is None:
        assert deployment is not None
        await _apply_move(conn, ask, deployment, to_step)
    return _step_outcome(audit)


def _applied_verdict(ask: _StepAsk, to_step: int) -> str:
    if ask.action == "pause":
        return f"{ask.deployment_id} paused at step {to_step}"
    if ask.action == "resume":
        return f"{ask.deployment_id} resumed at step {to_step}"
    return f"{ask.deployment_id} moved to step {to_step}"


async def _apply_move(conn: Any, ask: _StepAsk, deployment: DeploymentSteps, to_step: int) -> None:
    """The deployment's row after an applied move (its audit row is written already)."""
    if ask.action == "pause":
        by = ask.reason if ask.actor == DECISION_ACTOR else f"paused by {ask.actor}: {ask.reason}"
        await conn.execute(
            "UPDATE shadow_deployments SET paused_at = now(), paused_reason = $2 "
            "WHERE deployment_id = $1",
            deployment.deployment_id,
            by,
        )
    elif ask.action == "resume":
        await conn.execute(
            "UPDATE shadow_deployments SET paused_at = NULL, paused_reason = NULL, "
            "resumes = resumes + 1, resumed_at = now() WHERE deployment_id = $1",
            deployment.deployment_id,
        )
    else:
        await conn.execute(
            "UPDATE shadow_deployments SET step = $2, allocation = $3 WHERE deployment_id = $1",
            deployment.deployment_id,
            to_step,
            deployment.steps[to_step],
        )


async def _verify_candidate(conn: Any, deployment: Any) -> VerifyResult:
    """Whether the deployment's candidate still verifies, with the keyring as it is now."""
    row = await conn.fetchrow(
        f"SELECT {STORED_SIGNATURE_COLUMNS} FROM policies WHERE policy_id = $1 AND version = $2",
        deployment["policy_id"],
        deployment["version"],
    )
    return verify_stored(row, await load_keyring(conn))


def _steps_of(row: Any) -> DeploymentSteps:
    return DeploymentSteps(
        deployment_id=row["deployment_id"],
        doer=row["doer"],
        mode=row["mode"],
        step=row["step"],
        steps=tuple(row["steps"]),
        ended=row["ended_at"] is not None,
        paused=row["paused_at"] is not None,
        require_approval=row["require_approval"],
        resumes=row["resumes"],
    )


def _step_outcome(row: Any, *, replayed: bool = False) -> StepOutcome:
    return StepOutcome(
        event_id=row["event_id"],
        doer=row["doer"],
        deployment_id=row["deployment_id"],
        action=row["action"],
        to_step=row["to_step"],
        applied=row["outcome"] == "applied",
        verdict=row["verdict"],
        refusal=row["refusal"],
        actor=row["actor"],
        replayed=replayed,
    )


async def step_audit(pool: Any, deployment_id: str) -> list[StepOutcome]:
    """Every step-up and approval of a deployment, applied or refused, oldest first."""
    rows = await pool.fetch(
        "SELECT * FROM deployment_steps WHERE deployment_id = $1 ORDER BY id", deployment_id
    )
    return [_step_outcome(row) for row in rows]


async def pause_deployment(pool: Any, decision: DecisionMade) -> StepOutcome:
    """Hold a live deployment at its step as a canary decision asks (routing stays); audited.

    The canary stage pauses on a sample ratio mismatch or missing data. Like a
    step-up it is applied once per event id, with a ``deployment_steps`` row,
    and never after an operator resumed the deployment since it was decided
    (``learning.promotion.check_decided_pause``): a pause delivered late, or
    again after a restart, must not undo the resume.
    """
    ask = _StepAsk(
        decision.event_id,
        decision.doer,
        decision.deployment_id,
        "pause",
        None,
        DECISION_ACTOR,
        decision.reason,
        decision.occurred_at,
        resumes=decision.resumes,
    )
    return await _step(
        pool, ask, lambda deployment: check_decided_pause(deployment, ask.doer, decision.resumes)
    )


async def _step_change(
    pool: Any, doer: str, cause: UUID, reason: str, actor: str, kind: str = "step_changed"
) -> PolicyChange | None:
    change = await current_change(pool, doer)
    if change is None or change.deployment is None:
        return None
    return change.model_copy(
        update={
            "event_id": caused_event_id("policy-change", cause),
            "change": kind,
            "actor": actor,
            "reason": reason,
        }
    )
