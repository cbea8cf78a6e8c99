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
from typing import Any

import asyncpg

from agents.app import app
from agents.codecs import decode
from agents.curator import curated_samples
from agents.dlq import dead_letter, guarded_batch
from agents.streams import batches
from models.events import SampleCurated
from storage.datasets import insert_samples, unstorable
from storage.pool import durably

log = logging.getLogger("learnops.datasets")

BATCH = 500  # at most this many samples per batch (agents/streams.py)


@app.agent(curated_samples, name="datasets")
async def datasets(stream: Any) -> None:
    """Write each batch of curated samples to dataset_samples with one statement."""
    async for events in batches(stream, BATCH):
        async with guarded_batch(events, stage="datasets"):
            await _store(events)


async def _store(events: list[Any]) -> None:
    """Decode the batch and insert it with one statement; find a bad row one by one."""
    decoded: list[tuple[Any, SampleCurated]] = []
    for event in events:
        sample = await decode(event, SampleCurated, stage="datasets")
        if sample is None:
            continue
        reason = unstorable(sample)
        if reason is not None:
            await dead_letter(
                event, stage="datasets", error_type="schema", reason=reason, doer=sample.doer
            )
            continue
        decoded.append((event, sample))
    batch = [sample for _, sample in decoded]
    try:
        await durably(partial(insert_samples, app.pool, batch), what="dataset_samples")
    except asyncpg.PostgresError as exc:
        # One bad row fails the statement; write row by row to find it.
        log.warning("batch_rejected error=%r rows=%d; retrying one by one", exc, len(batch))
        for event, sample in decoded:
            try:
                await durably(partial(insert_samples, app.pool, [sample]), what="row")
            except asyncpg.PostgresError as row_exc:
                await dead_letter(
                    event,
                    stage="datasets",
                    error_type="storage",
                    reason=str(row_exc),
                    doer=sample.doer,
                )
