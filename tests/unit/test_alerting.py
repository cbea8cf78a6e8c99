"""learning.alerting: receivers from settings, the payload each format expects, retries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from learning.alerting import (
    RetryPolicy,
    Webhook,
    WebhookConfigError,
    evidence_link,
    parse_webhooks,
    payload,
    retryable,
    summary,
)
from models.events import Alert

ALERT = Alert(
    event_id=UUID("11111111-2222-3333-4444-555555555555"),
    occurred_at=datetime(2026, 12, 3, 9, 0, tzinfo=UTC),
    doer="PRDWriter",
    kind="crl_regression",
    severity="warning",
    message="mean CRL 0.41 today against 0.30 over 7 days",
    value=0.41,
    baseline=0.30,
    threshold=0.345,
    phase="draft",
)


def test_webhooks_are_format_url_pairs_and_a_bad_entry_names_the_rule() -> None:
    hooks = parse_webhooks(" json=http://127.0.0.1:9/a , slack=https://hooks.example/T/B/x ")
    assert hooks == (
        Webhook("json", "http://127.0.0.1:9/a"),
        Webhook("slack", "https://hooks.example/T/B/x"),
    )
    assert parse_webhooks("") == ()
    with pytest.raises(WebhookConfigError, match="entry 1 must be FORMAT=URL"):
        parse_webhooks("teams=http://x")
    with pytest.raises(WebhookConfigError, match="entry 2: the URL must be http"):
        parse_webhooks("json=http://x,slack=ftp://y")


def test_a_receiver_is_named_without_the_secret_in_its_path() -> None:
    hook = Webhook("slack", "https://user:pw@hooks.example/services/T0/B0/secret")
    assert hook.name == "slack:hooks.example"


def test_the_summary_carries_the_figure_threshold_and_baseline() -> None:
    assert summary(ALERT) == (
        "[warning] crl_regression PRDWriter/draft: value 0.41, threshold 0.345, baseline 0.3"
    )


def test_alertmanager_payload_is_a_version_4_message_with_one_firing_alert() -> None:
    body = payload(Webhook("alertmanager", "http://am"), ALERT, "http://dash:8080/")
    assert body["version"] == "4"
    assert body["status"] == "firing"
    (alert,) = body["alerts"]
    assert alert["labels"] == {
        "alertname": "crl_regression",
        "severity": "warning",
        "doer": "PRDWriter",
        "phase": "draft",
    }
    assert alert["annotations"]["threshold"] == "0.345"
    assert alert["fingerprint"] == str(ALERT.event_id)
    assert alert["generatorURL"] == "http://dash:8080/doers/PRDWriter#phase"


def test_json_and_slack_payloads_link_the_evidence() -> None:
    body = payload(Webhook("json", "http://x"), ALERT, "http://dash")
    assert body["event_id"] == str(ALERT.event_id)
    assert body["evidence_url"] == "http://dash/doers/PRDWriter#phase"
    slack = payload(Webhook("slack", "http://x"), ALERT, "http://dash")
    assert slack["text"].startswith("[warning] crl_regression")
    assert "<http://dash/doers/PRDWriter#phase|evidence>" in slack["blocks"][0]["text"]["text"]
    assert (
        "evidence" not in payload(Webhook("slack", "http://x"), ALERT)["blocks"][0]["text"]["text"]
    )


@pytest.mark.parametrize(
    ("scope", "link"),
    [
        ({"phase": "draft"}, "http://dash/doers/PRDWriter#phase"),
        (
            {"phase": None, "policy_id": "prd", "policy_version": 3},
            "http://dash/doers/PRDWriter#policy",
        ),
        ({"phase": None}, "http://dash/doers/PRDWriter"),
        (
            {"phase": None, "kind": "canary_rollback", "deployment_id": "dep/1"},
            "http://dash/canaries/dep%2F1",
        ),
    ],
)
def test_the_evidence_link_is_the_console_page_of_the_alert_s_scope(
    scope: dict[str, Any], link: str
) -> None:
    """A phase or policy regression links its trend section; a canary alert its deployment."""
    alert = ALERT.model_copy(update=scope)
    assert evidence_link(alert, "http://dash/") == link
    assert evidence_link(alert, None) is None


@pytest.mark.parametrize(
    ("status", "again"),
    [(None, True), (500, True), (503, True), (429, True), (408, True), (400, False), (404, False)],
)
def test_only_passing_trouble_is_retried(status: int | None, again: bool) -> None:
    assert retryable(status) is again


def test_retry_waits_double_up_to_the_cap() -> None:
    assert RetryPolicy(attempts=6, first_delay_s=0.5, max_delay_s=4).delays() == [0.5, 1, 2, 4, 4]
    assert RetryPolicy(attempts=1).delays() == []
