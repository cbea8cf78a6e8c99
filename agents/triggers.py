"""Learning triggers: a regression alert or a failing gate → one experiment request per reason.

A CRL regression alert (learning.alerts, kinds in ``skills.triggers.regression_kinds``)
or a gate failing in too many of a doer's runs (checked by the skill-card
stage, agents/skills.py) opens a request in ``experiment_requests`` and
publishes a ``RequestExperiment`` on learning.commands with its reason and
evidence. The table's partial unique index keeps at most one open request per
doer and reason, across restarts and workers, so a storm of failures gives one
request. A request is marked published only after Kafka acknowledged its
event; one recorded but unpublished (a crash in between) is published by the
next trigger of the same reason.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

from agents.stage import Stage
from agents.worker_key import worker_signed
from learning.skills import ExperimentTrigger, regression_trigger
from models.events import Alert, RequestExperiment
from storage.pool import durably
from storage.skills import mark_published, open_request, request_row

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.triggers")

ACTOR = "learnops-triggers"


async def raise_request(
    app: LearnopsApp, trigger: ExperimentTrigger, source_event_id: UUID | None = None
) -> bool:
    """Open (or find) the request of the trigger's doer and reason; True if this call opened it."""
    opened = await durably(
        partial(
            open_request,
            app.pool,
            doer=trigger.doer,
            reason=trigger.reason,
            hypothesis=trigger.hypothesis,
            message=trigger.message,
            evidence=trigger.evidence,
            source_event_id=source_event_id,
        ),
        what="experiment_requests",
    )
    if opened.published:
        # Announced at WARNING when published; a confident bandit asks again every batch.
        log.debug(
            "experiment_request_open doer=%s reason=%s request=%s",
            trigger.doer,
            trigger.reason,
            opened.request_id,
        )
        return opened.opened
    row = await durably(partial(request_row, app.pool, opened.request_id), what="requests")
    request = RequestExperiment(
        event_id=row["request_id"],
        doer=row["doer"],
        actor=ACTOR,
        reason=f"{row['reason']}: {row['message']}",
        hypothesis=row["hypothesis"],
        evidence={
            **row["evidence"],
            "trigger": row["reason"],
            "request_id": str(row["request_id"]),
            "source_event_id": str(row["source_event_id"]) if row["source_event_id"] else None,
            # The consumer group whose store holds the request (several may share a broker).
            "raised_by": app.conf.id,
        },
    )
    # Wait for the broker's acknowledgement before recording it as published.
    await (await app.event_topics.commands.send(worker_signed(app.settings, request)))
    await durably(partial(mark_published, app.pool, opened.request_id), what="requests")
    log.warning(
        "experiment_requested doer=%s reason=%s request=%s message=%r",
        request.doer,
        row["reason"],
        opened.request_id,
        row["message"],
    )
    return opened.opened


class TriggersStage(Stage):
    """learning.alerts → at most one open experiment request per doer and reason."""

    name = "triggers"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)

        async def triggers(stream: Any) -> None:
            """Decode each alert; a regression alert raises at most one open experiment request."""
            async for event in self.each(stream):
                async with self.guarded(event):
                    await self.handle(event)

        app.agent(self.topics.alerts.channel, name=self.name)(triggers)

    async def handle(self, event: Any) -> None:
        """A regression alert of a kind the triggers follow opens an experiment request."""
        alert = await self.decode(event, Alert)
        if alert is None or alert.kind not in self.app.learning.skills.triggers.regression_kinds:
            return
        trigger = regression_trigger(
            alert.doer,
            alert.kind,
            alert.message,
            {
                "alert_event_id": str(alert.event_id),
                "value": alert.value,
                "baseline": alert.baseline,
                "threshold": alert.threshold,
                "phase": alert.phase,
                "policy_id": alert.policy_id,
                "policy_version": alert.policy_version,
                **alert.evidence,
            },
        )
        await raise_request(self.app, trigger, source_event_id=alert.event_id)
