"""The policy stage: commands and canary decisions → the policy store → each doer's live policy.

Decode → apply to PostgreSQL (``storage.policies``: checked, signature-verified,
idempotent by event id) → publish the doer's live state on
learning.policy-changes (compacted, keyed by doer) when what it serves changed,
or an alert on learning.alerts when the command or decision was refused.

Commands and decisions are read by one agent, so one doer's changes are
handled one at a time in the order they arrive; the store's per-doer lock
covers writers outside this worker. A replayed event changes nothing, but its
PolicyChange or alert is sent again with the same event id: a crash between
the commit and the send must not lose it, and consumers can drop the duplicate.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from agents.app import app
from agents.codecs import decode, decode_with
from agents.dlq import guarded
from agents.streams import each
from models.commands import POLICY_COMMANDS, ApproveStep
from models.events import Alert, DecisionMade
from storage.policies import (
    Outcome,
    apply_command,
    apply_decision,
    apply_step,
    approve_step,
    current_change,
    derived_event_id,
    pause_deployment,
)
from storage.pool import durably

log = logging.getLogger("learnops.policy")

COMMANDS = "learning.commands"
DECISIONS = "learning.decisions"

policy_inputs = app.topic(COMMANDS, DECISIONS, key_type=bytes, value_type=bytes)
policy_changes = app.topic("learning.policy-changes", key_type=bytes, value_type=bytes)
alerts = app.topic("learning.alerts", key_type=bytes, value_type=bytes)


@app.agent(policy_inputs, name="policy")
async def policy(stream: Any) -> None:
    """Decode → apply to the policy store → publish the live policy, or alert on a refusal."""
    async for event in each(stream):
        async with guarded(event, stage="policy"):
            await _handle(event)


async def _handle(event: Any) -> None:
    outcome: Outcome | None
    if event.message.topic == DECISIONS:
        decision = await decode(event, DecisionMade, stage="policy")
        if decision is None:
            return
        shadow = decision.report.deployment_mode == "shadow"
        if decision.action == "pause" or (decision.action == "step_up" and not shadow):
            await _step(decision)
            return
        outcome = await durably(partial(apply_decision, app.pool, decision), what="policies")
    else:
        command = await decode_with(event, POLICY_COMMANDS, stage="policy")
        if command is None:
            return
        if isinstance(command, ApproveStep):
            await _approve(command)
            return
        outcome = await durably(partial(apply_command, app.pool, command), what="policies")
    if outcome is None:  # another stage's command, or a decision that moves no policy
        return
    log.info(
        "policy_event action=%s doer=%s policy=%s outcome=%s refusal=%s replayed=%s verdict=%r",
        outcome.action,
        outcome.doer,
        outcome.policy_ref,
        "applied" if outcome.applied else "refused",
        outcome.refusal,
        outcome.replayed,
        outcome.verdict,
    )
    if outcome.changes_live_policy:
        change = await durably(partial(current_change, app.pool, outcome.doer), what="policies")
        if change is not None:
            await policy_changes.send(key=change.doer.encode(), value=change.to_json())
    elif not outcome.applied:
        alert = refusal_alert(outcome)
        await alerts.send(key=alert.doer.encode(), value=alert.to_json())


async def _step(decision: DecisionMade) -> None:
    """A step-up moves the deployment, a pause stops it; either publishes the doer's new state."""
    if decision.action == "pause":
        change = await durably(partial(pause_deployment, app.pool, decision), what="deployments")
        log.warning(
            "deployment_paused doer=%s deployment=%s applied=%s",
            decision.doer,
            decision.deployment_id,
            change is not None,
        )
        if change is not None:
            await policy_changes.send(key=change.doer.encode(), value=change.to_json())
        return
    change = await durably(partial(apply_step, app.pool, decision), what="deployments")
    log.info(
        "deployment_step doer=%s deployment=%s step=%d applied=%s",
        decision.doer,
        decision.deployment_id,
        decision.step,
        change is not None,
    )
    if change is not None:
        await policy_changes.send(key=change.doer.encode(), value=change.to_json())


async def _approve(command: ApproveStep) -> None:
    """An approved step moves the deployment; a stale or wrong approval is alerted."""
    change = await durably(
        partial(
            approve_step,
            app.pool,
            command.doer,
            command.deployment_id,
            command.step,
            event_id=command.event_id,
            actor=command.actor,
            reason=command.reason,
        ),
        what="deployments",
    )
    if change is not None:
        await policy_changes.send(key=change.doer.encode(), value=change.to_json())
        return
    alert = Alert(
        event_id=derived_event_id("alert", command.event_id),
        doer=command.doer,
        kind="approval_refused",
        severity="warning",
        message=(
            f"approve_step {command.step} of {command.deployment_id} refused: the deployment "
            "is not a live, unpaused canary of this doer one step below"
        ),
        deployment_id=command.deployment_id,
        evidence={"event_id": str(command.event_id), "actor": command.actor},
    )
    await alerts.send(key=alert.doer.encode(), value=alert.to_json())


def refusal_alert(outcome: Outcome) -> Alert:
    """The alert for a refused command or decision; a refused signature is critical."""
    signature = outcome.refusal == "signature"
    return Alert(
        event_id=derived_event_id("alert", outcome.event_id),
        doer=outcome.doer,
        kind="signature_refused" if signature else "policy_refused",
        severity="critical" if signature else "warning",
        message=f"{outcome.action} refused: {outcome.verdict}",
        policy_id=outcome.policy_id,
        policy_version=outcome.version,
        deployment_id=outcome.deployment_id,
        evidence={
            "event_id": str(outcome.event_id),
            "action": outcome.action,
            "refusal": outcome.refusal,
            "actor": outcome.actor,
            "status": outcome.from_status,
            "requested_status": outcome.requested_status,
        },
    )
