"""The dead-letter stage in process on the real PostgreSQL: metadata and reason, never bytes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.app import create_app
from agents.settings import Settings
from models.events import DeadLetter
from models.ids import unreadable_letter_id


async def _until(condition: Callable[[], Any], timeout: float = 20.0) -> None:
    """Wait for CONDITION (an async predicate); raises TimeoutError if it never holds."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


async def test_letters_are_recorded_once_without_payload_and_a_bad_one_never_loops(
    database_url: str, db: Any, tmp_path: Path
) -> None:
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:1",  # never contacted: test_context has no broker
        database_url=database_url,
        learnops_app_id=f"inproc-{uuid.uuid4().hex[:8]}",
        learnops_web_enabled=False,
        learnops_data_dir=tmp_path,
    )
    app = create_app(settings, stages=["dead_letters"])
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
