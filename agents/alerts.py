"""The alerts stage: learning.alerts → alerts in PostgreSQL, in batches, for the console.

Each batch is one INSERT, idempotent on the alert's event id; Faust acks the
batch only after the body returns, so an offset moves on only once its rows are
committed. The console's live page follows the table (docs/console.md).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from agents.stage import Stage
from models.events import Alert
from storage.alerts import insert_alerts
from storage.pool import durably

if TYPE_CHECKING:
    from agents.app import LearnopsApp

BATCH = 500  # at most this many alerts per batch (agents/streams.py)


class AlertsStage(Stage):
    """learning.alerts → alerts in PostgreSQL, one statement per batch."""

    name = "alerts"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)

        async def alerts(stream: Any) -> None:
            """Record each batch of alerts with one statement."""
            async for events in self.batches(stream, BATCH):
                async with self.guarded_batch(events):
                    await self.store(events)

        app.agent(self.topics.alerts.channel, name=self.name)(alerts)

    async def store(self, events: list[Any]) -> None:
        """Decode the batch (a bad alert is a dead letter) and insert it with one statement."""
        decoded = [alert for event in events if (alert := await self.decode(event, Alert))]
        await durably(partial(insert_alerts, self.app.pool, decoded), what="alerts")
