"""The dead-letter path: bad input goes to learning.dlq with its bytes, origin and reason."""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from agents.app import DEAD_LETTERS, app
from models.events import DeadLetter

log = logging.getLogger("learnops.dlq")

dlq_topic = app.topic("learning.dlq", key_type=bytes, value_type=bytes)


async def dead_letter(
    event: Any, *, stage: str, error_type: str, reason: str, doer: str | None = None
) -> DeadLetter:
    """Send the event's original bytes and where they came from to learning.dlq, with the reason.

    The send is buffered; Faust flushes the producer before it commits the
    source offset, so the dead letter is durable before the bad event counts
    as consumed.
    """
    message = event.message
    letter = DeadLetter.capture(
        value=message.value if isinstance(message.value, bytes) else b"",
        key=message.key if isinstance(message.key, bytes) else None,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        reason=reason,
        stage=stage,
        error_type=error_type,
        doer=doer,
        consumer=app.conf.id,
    )
    await dlq_topic.send(key=letter.doer.encode(), value=letter.to_json())
    DEAD_LETTERS.labels(stage, error_type).inc()
    # The log names the offending fields only: values may be payload text (PII).
    fields = "; ".join(part.split(":", 1)[0] for part in reason.split("; "))
    log.warning(
        "dead_letter stage=%s error_type=%s topic=%s partition=%s offset=%s fields=%r",
        stage,
        error_type,
        message.topic,
        message.partition,
        message.offset,
        fields,
    )
    return letter


@asynccontextmanager
async def guarded(event: Any, *, stage: str) -> AsyncIterator[None]:
    """Turn an unexpected error while handling one event into a dead letter.

    Left alone, the exception would crash the agent and Faust's supervisor
    would restart it past the event: a silent drop. Here the event's bytes and
    the error go to learning.dlq (to be replayed once fixed), the error is
    logged with its traceback, and the stream goes on.
    """
    try:
        yield
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        reason = f"internal error {type(exc).__name__} at {frame.filename}:{frame.lineno}: {exc}"
        log.exception("internal_error stage=%s", stage)
        await dead_letter(event, stage=stage, error_type="internal", reason=reason[:1000])


@asynccontextmanager
async def guarded_batch(events: list[Any], *, stage: str) -> AsyncIterator[None]:
    """Like :func:`guarded` for a batch body: on an unexpected error every event is dead-lettered.

    The batch is acked once the body has ended (:func:`agents.streams.batches`),
    so without this a crash in a batch body would drop the batch.

    A body that does not finish (cancelled, or its generator closed: how a
    stopping worker ends an agent in the middle of a batch) leaves the batch
    unacked, and this also takes one more reference on each event's message, so
    that no ack that might still come for them (Faust's own ``take_events`` acks
    a closed batch) lets a commit move past events whose effects never happened.
    Whoever owns the partition next processes them again (every write is
    idempotent). tests/integration/test_transport.py stops a worker in
    mid-batch and checks that no offset was committed unprocessed.
    """
    try:
        yield
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        reason = f"internal error {type(exc).__name__} at {frame.filename}:{frame.lineno}: {exc}"
        log.exception("internal_error stage=%s batch=%d", stage, len(events))
        for event in events:
            await dead_letter(event, stage=stage, error_type="internal", reason=reason[:1000])
    except BaseException:  # CancelledError, GeneratorExit: the worker is stopping
        for event in events:
            event.message.incref()
        log.info("batch_unfinished stage=%s batch=%d left unacked", stage, len(events))
        raise
