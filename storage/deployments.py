"""Shadow and canary deployments: their traffic steps, approvals and pauses, and the live policy.

A deployment starts and ends with the policy move that starts or ends it
(``storage.policy_commands``). In between, a canary decision steps its traffic
up, an operator approves the next step of one that waits for approval, and a
decision pauses it; ``learning.promotion`` says whether each may happen now
(:func:`~learning.promotion.check_step_up`, :func:`~learning.promotion.check_approval`,
:func:`~learning.promotion.check_pause`) and this module applies it under the
doer's lock. :func:`current_change` is what a doer serves, as a PolicyChange.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import orjson

from learning.promotion import (
    CHANGES,
    DeploymentSteps,
    check_approval,
    check_pause,
    check_step_up,
)
from models.commands import CanarySettings
from models.events import DecisionMade, DeploymentRouting, PolicyChange
from models.ids import caused_event_id
from storage.audit import DECISION_ACTOR
from storage.policies import lock_doer

# --------------------------------------------------------------------------- the live policy


async def current_change(pool: Any, doer: str) -> PolicyChange | None:
    """The doer's live state as a PolicyChange, or None while it has no active policy.

    Built from the database, not from the event being handled, so publishing it
    again (after a crash, or for a replay) never puts an older state last on
    the compacted topic. Its event id derives from the audit row of the change
    that produced the state.
    """
    active = await pool.fetchrow(
        "SELECT policy_id, version, content_hash, key_id, updated_at FROM policies "
        "WHERE doer = $1 AND status = 'active'",
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
        "SELECT * FROM shadow_deployments WHERE doer = $1 AND ended_at IS NULL", doer
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
    )


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
    )


# --------------------------------------------------------------------- steps, approvals, pauses


async def apply_step(pool: Any, decision: DecisionMade) -> PolicyChange | None:
    """Move a live canary to the decision's step; the doer's new live state, None if stale.

    A step-up names the step it moves to. It applies while the deployment is
    live, not paused, and below that step (``learning.promotion.check_step_up``),
    so a replayed or stale decision changes nothing (and returns None). With
    ``require_approval`` the canary stage asks for approval instead of deciding
    a step-up (:func:`approve_step`).
    """
    moved = await _change_deployment(
        pool,
        decision.doer,
        decision.deployment_id,
        lambda deployment: check_step_up(deployment, decision.step),
        _to_step(decision.step),
    )
    if not moved:
        return None
    return await _step_change(pool, decision.doer, decision.event_id, decision.reason, "canary")


async def approve_step(
    pool: Any, doer: str, deployment_id: str, step: int, *, event_id: UUID, actor: str, reason: str
) -> PolicyChange | None:
    """Let a deployment waiting for approval move to ``step``; its new live state, None if not.

    Only the next step of the doer's live, unpaused canary can be approved
    (``learning.promotion.check_approval``).
    """
    moved = await _change_deployment(
        pool,
        doer,
        deployment_id,
        lambda deployment: check_approval(deployment, doer, step),
        _to_step(step),
    )
    if not moved:
        return None
    return await _step_change(pool, doer, event_id, reason, actor)


async def pause_deployment(pool: Any, decision: DecisionMade) -> PolicyChange | None:
    """Mark a live deployment paused (routing stays as it is); the doer's new state, None if not.

    None when the deployment had ended or was paused already (a replayed pause).
    """

    async def pause(conn: Any, deployment: DeploymentSteps) -> None:
        await conn.execute(
            "UPDATE shadow_deployments SET paused_at = $2, paused_reason = $3 "
            "WHERE deployment_id = $1",
            deployment.deployment_id,
            decision.occurred_at,
            decision.reason,
        )

    moved = await _change_deployment(
        pool, decision.doer, decision.deployment_id, check_pause, pause
    )
    if not moved:
        return None
    return await _step_change(
        pool, decision.doer, decision.event_id, decision.reason, DECISION_ACTOR, "paused"
    )


async def _change_deployment(
    pool: Any,
    doer: str,
    deployment_id: str,
    rule: Callable[[DeploymentSteps], str | None],
    change: Callable[[Any, DeploymentSteps], Any],
) -> bool:
    """Apply ``change`` under the doer's lock if ``rule`` finds no reason against it."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_doer(conn, doer)
        row = await conn.fetchrow(
            "SELECT deployment_id, doer, mode, step, steps, ended_at, paused_at "
            "FROM shadow_deployments WHERE deployment_id = $1 FOR UPDATE",
            deployment_id,
        )
        if row is None:
            return False
        deployment = DeploymentSteps(
            deployment_id=row["deployment_id"],
            doer=row["doer"],
            mode=row["mode"],
            step=row["step"],
            steps=tuple(row["steps"]),
            ended=row["ended_at"] is not None,
            paused=row["paused_at"] is not None,
        )
        if rule(deployment) is not None:
            return False
        await change(conn, deployment)
        return True


def _to_step(step: int) -> Callable[[Any, DeploymentSteps], Any]:
    async def move(conn: Any, deployment: DeploymentSteps) -> None:
        await conn.execute(
            "UPDATE shadow_deployments SET step = $2, allocation = $3 WHERE deployment_id = $1",
            deployment.deployment_id,
            step,
            deployment.steps[step],
        )

    return move


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
