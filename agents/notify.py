"""The notify stage: learning.alerts → the webhooks people read (generic JSON, Alertmanager, Slack).

Per alert, per receiver (``LEARNOPS_ALERT_WEBHOOKS``): skip it if this receiver
already got this event id (a redelivered or re-sent alert), else POST its
payload (learning.alerting), retrying passing trouble (no answer, 408, 429,
5xx) with backoff. The receivers are tried side by side. A receiver that stays
down, or refuses the request, turns the alert into a dead letter naming the
receiver and the last status, and the stage goes on. One that stayed down is
not tried again for ``COOL_OFF_S`` (its alerts meanwhile are dead letters at
once): its retries held every later alert back before, so that one dead
receiver delivered the others' alerts 7.5 s apart (a new operator's trial saw
a regression alert reach a healthy receiver 71 s late).

Which ids each receiver got lives in a table value per doer (the last
``DEDUP_KEEP`` per receiver, by ``Webhook.key``: two receivers on one host
are two). Delivery is at least once: a crash between a POST and the table
write sends that alert again, with the same event id (the Alertmanager
payload's fingerprint) for the receiver to drop.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import Counter

from agents.stage import Stage
from learning.alerting import RetryPolicy, Webhook, parse_webhooks, payload, recent_ids, retryable
from models.events import Alert

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.notify")

DELIVERIES = Counter(
    "learnops_alert_deliveries_total",
    "Alert deliveries to webhooks, by receiver format and outcome.",
    ["format", "outcome"],
)
DEDUP_KEEP = 256  # event ids remembered per doer and receiver
TIMEOUT_S = 5.0  # per request
COOL_OFF_S = 30.0  # how long a receiver that stayed down is not tried


class NotifyStage(Stage):
    """learning.alerts → webhooks, deduplicated by event id, retried, dead-lettered when down."""

    name = "notify"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)
        settings = app.settings
        self.hooks: tuple[Webhook, ...] = parse_webhooks(settings.learnops_alert_webhooks)
        for hook in self.hooks:  # a series from the start: alerts on its increase need a 0
            DELIVERIES.labels(hook.format, "failed")
        self.dashboard_url = settings.learnops_dashboard_url
        self.retry = RetryPolicy()
        self.cool_off_s = COOL_OFF_S
        # Receiver name → (loop time until which it is not tried, when it went down, why).
        self.down: dict[str, tuple[float, str, str]] = {}
        self.sent = self.table("notify-sent", default=dict, help_="Alert ids sent per receiver")

        async def notify(stream: Any) -> None:
            """Deliver each alert to every receiver; a receiver that stays down gets a letter."""
            async for event in self.each(stream):
                async with self.guarded(event):
                    await self.handle(event)

        app.agent(self.topics.alerts.channel, name=self.name)(notify)

    async def handle(self, event: Any) -> None:
        """Deliver one alert to the receivers that have not had it."""
        if not self.hooks:
            return
        alert = await self.decode(event, Alert)
        if alert is None:
            return
        self.partitions.seen(alert.doer, event.message.partition)
        memory = dict(self.sent[alert.doer] or {})
        loop = asyncio.get_running_loop()
        pending, resting = [], []
        for hook in self.hooks:
            if str(alert.event_id) in recent_ids(memory.get(hook.key), DEDUP_KEEP):
                DELIVERIES.labels(hook.format, "duplicate").inc()
            elif self.down.get(hook.key, (0.0, "", ""))[0] > loop.time():
                resting.append(hook)
            else:
                pending.append(hook)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
            statuses = await asyncio.gather(*(self._deliver(http, h, alert) for h in pending))
        changed = False
        for hook, status in zip(pending, statuses, strict=True):
            if status is not None and 200 <= status < 300:
                ids = recent_ids(memory.get(hook.key), DEDUP_KEEP)
                memory[hook.key] = {"sent": [*ids, str(alert.event_id)][-DEDUP_KEEP:]}
                self.down.pop(hook.key, None)
                changed = True
                continue
            if retryable(status):  # down, not refusing: rest it
                since = datetime.now(UTC).isoformat(timespec="seconds")
                self.down[hook.key] = (
                    loop.time() + self.cool_off_s,
                    since,
                    str(status or "no answer"),
                )
            reason = (
                f"webhook {hook.name} did not take the alert after "
                f"{self.retry.attempts} tries (last status: {status or 'no answer'})"
            )
            await self.dead_letter(event, error_type="delivery", reason=reason, doer=alert.doer)
        for hook in resting:
            DELIVERIES.labels(hook.format, "failed").inc()
            _, since, last = self.down[hook.key]
            reason = (
                f"webhook {hook.name} was down (last status: {last}, after {self.retry.attempts} "
                f"tries at {since}); not tried again for {self.cool_off_s:g} s, so that it "
                "holds no other receiver's alerts back"
            )
            await self.dead_letter(event, error_type="delivery", reason=reason, doer=alert.doer)
        if changed:
            self.sent[alert.doer] = memory

    async def _deliver(
        self, http: aiohttp.ClientSession, hook: Webhook, alert: Alert
    ) -> int | None:
        """POST the alert until the receiver takes it or the tries run out; the last status."""
        body = payload(hook, alert, self.dashboard_url)
        status: int | None = None
        for wait in [0.0, *self.retry.delays()]:
            if wait:
                await asyncio.sleep(wait)
            try:
                async with http.post(hook.url, json=body) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = None
            if status is not None and 200 <= status < 300:
                DELIVERIES.labels(hook.format, "delivered").inc()
                log.info(
                    "alert_delivered receiver=%s kind=%s doer=%s", hook.name, alert.kind, alert.doer
                )
                return status
            if not retryable(status):
                break
        DELIVERIES.labels(hook.format, "failed").inc()
        log.error(
            "alert_delivery_failed receiver=%s kind=%s doer=%s status=%s",
            hook.name,
            alert.kind,
            alert.doer,
            status,
        )
        return status
