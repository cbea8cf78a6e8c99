"""Alerts for people: webhook receivers, their payloads, and how deliveries are retried.

Three payload formats, each what its receiver expects:

* ``json``: the alert as it is on learning.alerts (the event's JSON);
* ``alertmanager``: a Prometheus Alertmanager webhook message (version "4",
  https://prometheus.io/docs/alerting/latest/configuration/#webhook_config),
  one firing alert whose labels identify it and whose annotations carry the
  figures, so Alertmanager-compatible tools route, group and deduplicate it;
* ``slack``: a Slack incoming-webhook message (``text`` plus blocks), which
  Mattermost and Rocket.Chat accept too.

Every alert carries its figure, its threshold and a link to its evidence
(``LEARNOPS_DASHBOARD_URL``/doers/<doer>, when a dashboard URL is set).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from models.events import Alert

WebhookFormat = Literal["json", "alertmanager", "slack"]
FORMATS: tuple[WebhookFormat, ...] = ("json", "alertmanager", "slack")


class WebhookConfigError(ValueError):
    """A webhook setting is malformed; the message names the entry and the rule."""


@dataclass(frozen=True)
class Webhook:
    """One receiver: where alerts go and in which format."""

    format: WebhookFormat
    url: str

    @property
    def name(self) -> str:
        """How logs and dead letters name the receiver: format and host, never the path.

        The path of a webhook URL is often its secret (Slack's are), so it is
        never logged.
        """
        host = self.url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
        return f"{self.format}:{host}"

    @property
    def key(self) -> str:
        """What tells two receivers apart where their names are the same (two Slack hooks
        are both ``slack:hooks.slack.com``): the name and a digest of the whole URL."""
        return f"{self.name}#{hashlib.sha256(self.url.encode()).hexdigest()[:12]}"


def parse_webhooks(text: str) -> tuple[Webhook, ...]:
    """Receivers from ``format=url`` entries separated by commas (an empty text: none)."""
    hooks: list[Webhook] = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        kind, sep, url = entry.partition("=")
        kind = kind.strip()
        if not sep or kind not in FORMATS:
            raise WebhookConfigError(
                f"webhook entry {len(hooks) + 1} must be FORMAT=URL with FORMAT one of "
                f"{', '.join(FORMATS)}"
            )
        if not url.startswith(("http://", "https://")):
            raise WebhookConfigError(f"webhook entry {len(hooks) + 1}: the URL must be http(s)")
        hooks.append(Webhook(kind, url.strip()))
    return tuple(hooks)


def evidence_link(alert: Alert, dashboard_url: str | None) -> str | None:
    """Where a person sees the evidence of an alert on the console.

    A canary's alert links its deployment's page (decisions and interval); a regression
    of one phase or one policy version links that section of the doer's page (its trend
    against the 7-day baseline); any other alert links the doer's page.
    """
    if not dashboard_url:
        return None
    base = dashboard_url.rstrip("/")
    if alert.deployment_id:
        return f"{base}/canaries/{quote(alert.deployment_id, safe='')}"
    doer = f"{base}/doers/{quote(alert.doer, safe='')}"
    if alert.phase:
        return f"{doer}#phase"
    if alert.policy_id:
        return f"{doer}#policy"
    return doer


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def summary(alert: Alert) -> str:
    """One line a person reads first: what, who, the figure against its threshold."""
    scope = "/".join(
        part
        for part in (
            alert.doer,
            alert.phase,
            alert.policy_id and f"{alert.policy_id}@{alert.policy_version}",
        )
        if part
    )
    figures = f"value {_figure(alert.value)}"
    if alert.threshold is not None:
        figures += f", threshold {_figure(alert.threshold)}"
    if alert.baseline is not None:
        figures += f", baseline {_figure(alert.baseline)}"
    return f"[{alert.severity}] {alert.kind} {scope}: {figures}"


def payload(hook: Webhook, alert: Alert, dashboard_url: str | None = None) -> dict[str, Any]:
    """The JSON body that ``hook`` gets for ``alert``."""
    link = evidence_link(alert, dashboard_url)
    if hook.format == "json":
        return {**alert.model_dump(mode="json"), "summary": summary(alert), "evidence_url": link}
    if hook.format == "alertmanager":
        labels = {
            "alertname": alert.kind,
            "severity": alert.severity,
            "doer": alert.doer,
            **{
                key: str(value)
                for key, value in (
                    ("phase", alert.phase),
                    ("policy", alert.policy_id and f"{alert.policy_id}@{alert.policy_version}"),
                    ("deployment", alert.deployment_id),
                )
                if value
            },
        }
        annotations = {
            "summary": summary(alert),
            "description": alert.message,
            "value": _figure(alert.value),
            "threshold": _figure(alert.threshold),
            "event_id": str(alert.event_id),
        }
        return {
            "version": "4",
            "groupKey": f"learnops/{alert.kind}/{alert.doer}",
            "status": "firing",
            "receiver": "learnops",
            "groupLabels": {"alertname": alert.kind},
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": link or "",
            "alerts": [
                {
                    "status": "firing",
                    "labels": labels,
                    "annotations": annotations,
                    "startsAt": alert.occurred_at.isoformat(),
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": link or "",
                    "fingerprint": str(alert.event_id),
                }
            ],
        }
    text = summary(alert)
    lines = [f"*{text}*", alert.message]
    if link:
        lines.append(f"<{link}|evidence>")
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}],
    }


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed delivery is tried again, and how long between tries."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delays(self) -> Sequence[float]:
        """The waits before each retry: doubling from ``first_delay_s``, capped."""
        return [
            min(self.first_delay_s * 2**i, self.max_delay_s)
            for i in range(max(0, self.attempts - 1))
        ]


def retryable(status: int | None) -> bool:
    """Whether a delivery that ended with HTTP ``status`` (None: no answer) is worth retrying.

    No answer, 408, 429 and 5xx are the receiver's passing trouble; any other
    4xx says the request itself is wrong and will be refused again.
    """
    return status is None or status in (408, 429) or status >= 500


def recent_ids(value: Mapping[str, Any] | None, keep: int) -> list[str]:
    """The event ids a receiver's dedup memory holds (newest last), at most ``keep``."""
    ids = list((value or {}).get("sent", []))
    return ids[-keep:]
