"""The stages that record for the console, on the real PostgreSQL: dead letters, alerts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.app import create_app
from agents.settings import Settings
from models.events import Alert, DeadLetter
from models.ids import unreadable_letter_id


async def _until(condition: Callable[[], Any], timeout: float = 20.0) -> None:
    """Wait for CONDITION (an async predicate); raises TimeoutError if it never holds."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


def _settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        kafka_bootstrap_servers="127.0.0.1:1",  # never contacted: test_context has no broker
        database_url=database_url,
        learnops_app_id=f"inproc-{uuid.uuid4().hex[:8]}",
        learnops_web_enabled=False,
        learnops_data_dir=tmp_path,
    )


async def test_alerts_are_recorded_once_with_their_figures_and_a_bad_one_is_a_letter(
    database_url: str, db: Any, tmp_path: Path
) -> None:
    app = create_app(_settings(database_url, tmp_path), stages=["alerts"])
    app.use_pool(db)
    app.outbox = []
    doer = f"Alerted{uuid.uuid4().hex[:6]}"
    alert = Alert(
        doer=doer,
        kind="canary_rollback",
        severity="critical",
        message="canary rolled back: candidate CRL 8 % above control",
        value=0.08,
        threshold=0.05,
        deployment_id="canary-0123456789abcdef",
        evidence={"report": {"delta": 0.031}},
    )
    async with app.agents["alerts"].test_context() as agent:
        await agent.put(alert.to_json(), key=doer.encode(), wait=False)
        await agent.put(alert.to_json(), key=doer.encode(), wait=False)  # redelivered
        await agent.put(b'{"kind": "x"}', key=doer.encode(), wait=False)

        async def recorded_and_refused() -> bool:
            count = await db.fetchval("SELECT count(*) FROM alerts WHERE doer = $1", doer)
            return bool(count == 1) and any(t == "learning.dlq" for t, _ in app.outbox or [])

        await _until(recorded_and_refused)

    row = await db.fetchrow("SELECT * FROM alerts WHERE event_id = $1", alert.event_id)
    assert (row["kind"], row["severity"], row["value"], row["threshold"]) == (
        "canary_rollback",
        "critical",
        0.08,
        0.05,
    )
    assert row["deployment_id"] == "canary-0123456789abcdef"
    assert row["evidence"] == {"report": {"delta": 0.031}}
    (letter,) = [event for topic, event in app.outbox if topic == "learning.dlq"]
    assert letter.stage == "alerts" and letter.error_type == "schema"


async def test_letters_are_recorded_once_without_payload_and_a_bad_one_never_loops(
    database_url: str, db: Any, tmp_path: Path
) -> None:
    app = create_app(_settings(database_url, tmp_path), stages=["dead_letters"])
    app.use_pool(db)
    app.outbox = []
    doer = f"Lettered{uuid.uuid4().hex[:6]}"
    secret = b'{"note": "alice@example.com"}'
    letter = DeadLetter.capture(
        value=secret,
        key=doer.encode(),
        topic="learning.run-completed",
        partition=3,
        offset=41,
        reason="qav.grounding_score: 1.4 is above 1",
        stage="crl",
        error_type="schema",
        doer=doer,
        consumer="learnops",
    )
    async with app.agents["dead_letters"].test_context() as agent:
        await agent.put(letter.to_json(), key=doer.encode(), wait=False)
        await agent.put(letter.to_json(), key=doer.encode(), wait=False)  # redelivered
        bad = await agent.put(b'{"not": "a letter"}', key=b"unknown", wait=False)
        bad_id = unreadable_letter_id("learning.dlq", bad.message.partition, bad.message.offset)

        async def both_recorded() -> bool:
            count = await db.fetchval(
                "SELECT count(*) FROM dead_letters WHERE event_id = ANY($1::uuid[])",
                [letter.event_id, bad_id],
            )
            return bool(count == 2)

        await _until(both_recorded)

    row = await db.fetchrow("SELECT * FROM dead_letters WHERE event_id = $1", letter.event_id)
    assert (row["doer"], row["stage"], row["error_type"], row["reason"]) == (
        doer,
        "crl",
        "schema",
        "qav.grounding_score: 1.4 is above 1",
    )
    assert (row["topic"], row["partition"], row["offset"]) == ("learning.run-completed", 3, 41)
    assert row["payload_size"] == len(secret)
    assert all(secret not in str(value).encode() for value in row.values())
    assert "value_b64" not in row and "key_b64" not in row
    unreadable = await db.fetchrow("SELECT * FROM dead_letters WHERE event_id = $1", bad_id)
    assert (unreadable["stage"], unreadable["topic"]) == ("dead_letters", "learning.dlq")
    assert unreadable["error_type"] == "schema" and unreadable["reason"]
    assert [name for name, _ in app.outbox] == [], "the stage wrote to a topic"
