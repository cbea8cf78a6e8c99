"""The dataset stage: learning.samples → dataset_samples in PostgreSQL, in batches.

Each batch is one INSERT, idempotent on sample_id, in topic order (so of two
accepted samples with one content hash the first stays accepted; the database
turns a later one into an ``exact_duplicate`` reject). Faust acks the batch's
events only after the body returns, so an offset moves on only once its rows
are committed. Rejects are stored like accepted samples: nothing the curator
checked is dropped.

The curator owns learning.samples and redacts before it emits; this stage
stores what it reads (no second PII scan: a sample it could not store whole
would have to be dead-lettered, with its bytes).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import asyncpg

from agents.stage import Stage
from models.base import describe_exception
from models.events import SampleCurated
from storage.datasets import insert_samples, unstorable
from storage.pool import durably, refused_for_its_data

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.datasets")

BATCH = 500  # at most this many samples per batch (agents/streams.py)


class DatasetsStage(Stage):
    """learning.samples → dataset_samples in PostgreSQL, one statement per batch."""

    name = "datasets"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)

        async def datasets(stream: Any) -> None:
            """Write each batch of curated samples to dataset_samples with one statement."""
            async for events in self.batches(stream, BATCH):
                async with self.guarded_batch(events):
                    await self.store(events)

        app.agent(self.topics.samples.channel, name=self.name)(datasets)

    async def store(self, events: list[Any]) -> None:
        """Decode the batch and insert it with one statement; find a bad row one by one."""
        decoded: list[tuple[Any, SampleCurated]] = []
        for event in events:
            sample = await self.decode(event, SampleCurated)
            if sample is None:
                continue
            reason = unstorable(sample)
            if reason is not None:
                await self.dead_letter(event, error_type="schema", reason=reason, doer=sample.doer)
                continue
            decoded.append((event, sample))
        batch = [sample for _, sample in decoded]
        pool = self.app.pool
        try:
            await durably(partial(insert_samples, pool, batch), what="dataset_samples")
        except asyncpg.PostgresError as exc:
            if not refused_for_its_data(exc):
                raise  # grants, schema or a bug: no row is to blame (Stage.guarded_batch)
            # One bad row fails the statement; write row by row to find it.
            log.warning(
                "batch_rejected error=%r rows=%d; retrying one by one",
                describe_exception(exc),
                len(batch),
            )
            for event, sample in decoded:
                try:
                    await durably(partial(insert_samples, pool, [sample]), what="row")
                except asyncpg.PostgresError as row_exc:
                    if not refused_for_its_data(row_exc):
                        raise
                    await self.dead_letter(
                        event,
                        error_type="storage",
                        reason=f"PostgreSQL refused the sample ({describe_exception(row_exc)})",
                        doer=sample.doer,
                    )
