"""The results stage: learning.crl-computed → crl_results in PostgreSQL, in batches.

Each batch is one INSERT (idempotent on run_id) and Faust acks the batch's
events only after the loop body returns, so an offset moves on only once its
row is committed.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import asyncpg

from agents.app import app
from agents.codecs import decode
from agents.crl import crl_computed
from agents.dlq import dead_letter, guarded_batch
from models.events import CRLComputed
from storage.crl import insert_crl_results
from storage.pool import durably

log = logging.getLogger("learnops.results")

BATCH = 500
WITHIN_SECONDS = 0.05  # at most this long between a result and its row, under light load


@app.agent(crl_computed, name="results")
async def results(stream: Any) -> None:
    """Write each batch of CRL results to crl_results with one statement."""
    async for events in stream.take_events(BATCH, within=WITHIN_SECONDS):
        async with guarded_batch(events, stage="results"):
            await _store(events)


async def _store(events: list[Any]) -> None:
    """Decode the batch and insert it with one statement; find a bad row one by one."""
    decoded = [(event, await decode(event, CRLComputed, stage="results")) for event in events]
    batch = [result for _, result in decoded if result is not None]
    try:
        await durably(partial(insert_crl_results, app.pool, batch), what="crl_results")
    except asyncpg.PostgresError as exc:
        # One bad row fails the statement; write row by row to find it.
        log.warning("batch_rejected error=%r rows=%d; retrying one by one", exc, len(batch))
        for event, result in decoded:
            if result is None:
                continue
            try:
                await durably(partial(insert_crl_results, app.pool, [result]), what="row")
            except asyncpg.PostgresError as row_exc:
                await dead_letter(
                    event,
                    stage="results",
                    error_type="storage",
                    reason=str(row_exc),
                    doer=result.doer,
                )
