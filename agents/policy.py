"""The policy stage: commands and canary decisions → the policy store → each doer's live policy.

Decode → apply to PostgreSQL (``storage.policy_commands``: checked, signature-verified,
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
from typing import TYPE_CHECKING, Any

from agents.command_auth import authorised, record_applied
from agents.stage import Stage
from learning.command_signing import REQUIRED_ROLE
from models.commands import POLICY_COMMANDS, ApproveStep
from models.events import Alert, DecisionMade
from models.ids import caused_event_id
from storage.audit import Outcome
from storage.deployments import apply_step, approve_step, current_change, pause_deployment
from storage.policy_commands import apply_command, apply_decision
from storage.pool import durably

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.policy")


class PolicyStage(Stage):
    """learning.commands and learning.decisions → the policy store → learning.policy-changes."""

    name = "policy"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)
        topics = self.topics

        async def policy(stream: Any) -> None:
            """Decode → apply to the policy store → publish the live policy, or alert a refusal."""
            async for event in self.each(stream):
                async with self.guarded(event):
                    await self.handle(event)

        app.agent(topics.source(topics.commands, topics.decisions), name=self.name)(policy)

    async def handle(self, event: Any) -> None:
        outcome: Outcome | None
        if event.message.topic == self.topics.decisions.name:
            decision = await self.decode(event, DecisionMade)
            if decision is None:
                return
            shadow = decision.report.deployment_mode == "shadow"
            if decision.action == "pause" or (decision.action == "step_up" and not shadow):
                await self._step(decision)
                return
            outcome = await durably(
                partial(apply_decision, self.app.pool, decision), what="policies"
            )
        else:
            command = await self.decode_with(event, POLICY_COMMANDS)
            if command is None or command.command not in REQUIRED_ROLE:
                return  # undecodable (dead-lettered), or another stage's command
            verdict = await authorised(self, command)
            if verdict is None:
                return
            # The audit names the verified signer, never the self-declared actor.
            command = command.model_copy(update={"actor": verdict.operator})
            if isinstance(command, ApproveStep):
                await self._approve(command)
            else:
                outcome = await durably(
                    partial(apply_command, self.app.pool, command), what="policies"
                )
                await self._publish(outcome)
            await record_applied(self, command, verdict)
            return
        await self._publish(outcome)

    async def _publish(self, outcome: Outcome | None) -> None:
        """Publish the doer's live policy when it changed, or alert a refusal."""
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
            change = await durably(
                partial(current_change, self.app.pool, outcome.doer), what="policies"
            )
            if change is not None:
                await self.topics.policy_changes.send(change)
        elif not outcome.applied:
            alert = refusal_alert(outcome)
            await self.topics.alerts.send(alert)

    async def _step(self, decision: DecisionMade) -> None:
        """A step-up moves the deployment, a pause stops it; both publish the doer's new state."""
        if decision.action == "pause":
            change = await durably(
                partial(pause_deployment, self.app.pool, decision), what="deployments"
            )
            log.warning(
                "deployment_paused doer=%s deployment=%s applied=%s",
                decision.doer,
                decision.deployment_id,
                change is not None,
            )
            if change is not None:
                await self.topics.policy_changes.send(change)
            return
        change = await durably(partial(apply_step, self.app.pool, decision), what="deployments")
        log.info(
            "deployment_step doer=%s deployment=%s step=%d applied=%s",
            decision.doer,
            decision.deployment_id,
            decision.step,
            change is not None,
        )
        if change is not None:
            await self.topics.policy_changes.send(change)

    async def _approve(self, command: ApproveStep) -> None:
        """An approved step moves the deployment; a stale or wrong approval is alerted."""
        change = await durably(
            partial(
                approve_step,
                self.app.pool,
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
            await self.topics.policy_changes.send(change)
            return
        alert = Alert(
            event_id=caused_event_id("alert", command.event_id),
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
        await self.topics.alerts.send(alert)


def refusal_alert(outcome: Outcome) -> Alert:
    """The alert for a refused command or decision; a refused signature is critical."""
    signature = outcome.refusal == "signature"
    return Alert(
        event_id=caused_event_id("alert", outcome.event_id),
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
