"""The dead-letter path: bad input goes to learning.dlq with its bytes, origin and reason."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.errors import KafkaError
from prometheus_client import Counter

from models.events import DeadLetter

log = logging.getLogger("learnops.dlq")

DEAD_LETTERS = Counter(
    "learnops_dead_letters_total",
    "Events sent to learning.dlq, by the stage that rejected them and the kind of error.",
    ["stage", "error_type"],
)
DEAD_LETTERS_FAILED = Counter(
    "learnops_dead_letters_failed_total",
    "Dead letters the producer refused (logged with their origin instead), by stage.",
    ["stage"],
)


class DeadLetters:
    """Sends dead letters for one app: the original bytes, where they came from, and why."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def send(
        self, event: Any, *, stage: str, error_type: str, reason: str, doer: str | None = None
    ) -> DeadLetter:
        """Send the event's original bytes and origin to learning.dlq, with the reason.

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
            consumer=self._app.conf.id,
        )
        try:
            await self._app.event_topics.dlq.send(letter)
        except KafkaError as exc:
            # The letter is bounded (DeadLetter.capture), so this is the broker or the
            # producer refusing it. Raising would crash the agent and stall the
            # partition; the event's origin and reason go to the log instead.
            DEAD_LETTERS_FAILED.labels(stage).inc()
            log.error(
                "dead_letter_failed stage=%s error_type=%s topic=%s partition=%s offset=%s "
                "size=%s error=%s",
                stage,
                error_type,
                message.topic,
                message.partition,
                message.offset,
                letter.payload_size,
                type(exc).__name__,
            )
            return letter
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
