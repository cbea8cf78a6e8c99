"""The dead-letter path: bad input goes to learning.dlq with its bytes, origin and reason."""

from __future__ import annotations

import logging
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
