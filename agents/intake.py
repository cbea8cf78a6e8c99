"""Intake of learning.run-completed: validate each bundle and store one row per run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import asyncpg

from agents.app import app
from agents.codecs import decode
from agents.dlq import dead_letter
from models.events import RunCompleted
from storage.runs import Source, insert_run

log = logging.getLogger("learnops.intake")
T = TypeVar("T")

run_completed = app.topic("learning.run-completed", key_type=bytes, value_type=bytes)

# Connection trouble is waited out (the offset does not move meanwhile);
# anything else PostgreSQL refuses is a property of the event and is dead-lettered.
_TRANSIENT = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncio.TimeoutError,
)


async def durably(write: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run a database write, retrying with backoff while PostgreSQL is unreachable."""
    delay = 0.2
    while True:
        try:
            return await write()
        except _TRANSIENT as exc:
            log.warning("postgres_unavailable what=%s error=%r retry_in=%.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


@app.agent(run_completed, name="intake")
async def intake(stream: Any) -> None:
    """Decode → store the run (idempotent on run_id) → bad input to the DLQ."""
    async for event in stream.events():
        bundle = await decode(event, RunCompleted, stage="intake")
        if bundle is None:
            continue
        message = event.message
        source = Source(message.topic, message.partition, message.offset)
        try:
            await durably(partial(insert_run, app.pool, bundle, source), what="runs")
        except asyncpg.PostgresError as exc:
            await dead_letter(
                event, stage="intake", error_type="storage", reason=str(exc), doer=bundle.doer
            )
