"""The dead-letter stage: learning.dlq → dead_letters in PostgreSQL, metadata and reason only.

The console shows the dead-letter queue by stage and reason from this table
(``v_dead_letters_by_reason``), so it needs neither Kafka nor a read of the
whole topic per page. Each batch is one INSERT, idempotent on the letter's
event id; Faust acks the batch only after the body returns, so an offset moves
on only once its rows are committed. The payload and key bytes are not stored:
they may hold PII, and they stay on the topic for replay.

This stage reads learning.dlq, so it never writes to it: a letter it cannot
read is recorded in the table itself (stage ``dead_letters``, with the reason),
under an id derived from its position, instead of going back to the topic it
came from, which would loop.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from agents.stage import Stage
from models.events import UNKNOWN_DOER, DeadLetter
from models.ids import unreadable_letter_id
from storage.dead_letters import DeadLetterRecord, insert_dead_letters
from storage.pool import durably

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.dead_letters")

BATCH = 500  # at most this many letters per batch (agents/streams.py)


class DeadLettersStage(Stage):
    """learning.dlq → dead_letters in PostgreSQL, one statement per batch."""

    name = "dead_letters"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)
        self.unreadable: list[DeadLetterRecord] = []

        async def dead_letters(stream: Any) -> None:
            """Record each batch of dead letters' metadata with one statement."""
            async for events in self.batches(stream, BATCH):
                async with self.guarded_batch(events):
                    await self.store(events)

        app.agent(self.topics.dlq.channel, name=self.name)(dead_letters)

    async def store(self, events: list[Any]) -> None:
        """Decode the batch and insert its records, the unreadable letters' among them."""
        records: list[DeadLetterRecord] = []
        for event in events:
            letter = await self.decode(event, DeadLetter)
            if letter is not None:
                records.append(DeadLetterRecord.of(letter))
        records.extend(self.unreadable)
        self.unreadable.clear()
        await durably(partial(insert_dead_letters, self.app.pool, records), what="dead_letters")

    async def dead_letter(
        self, event: Any, *, error_type: str, reason: str, doer: str | None = None
    ) -> None:
        """Record a letter this stage cannot read in the table, never on learning.dlq.

        Called by :meth:`Stage.decode` for a letter that breaks the contract; it
        is stored with the batch. An internal error of the batch body
        (:meth:`Stage.guarded_batch`) is stored at once.
        """
        message = event.message
        log.warning(
            "unreadable_dead_letter error_type=%s partition=%s offset=%s",
            error_type,
            message.partition,
            message.offset,
        )
        record = DeadLetterRecord(
            event_id=unreadable_letter_id(message.topic, message.partition, message.offset),
            doer=doer or UNKNOWN_DOER,
            stage=self.name,
            error_type=error_type,
            reason=reason,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            consumer=self.app.conf.id,
            payload_size=len(message.value) if isinstance(message.value, bytes) else None,
            occurred_at=datetime.now(UTC),
        )
        if error_type == "internal":
            await durably(partial(insert_dead_letters, self.app.pool, [record]), what="row")
        else:
            self.unreadable.append(record)
