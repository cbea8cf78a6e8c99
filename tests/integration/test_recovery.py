"""A worker reads every changelog record back into its tables (agents/faust_internals/recovery.py).

The changelogs of a fresh app id are written as the stages write them (the
records bench/recovery.py measures recovery with: daily CRL aggregates per doer,
phase and policy, daily skill statistics, a live canary and the doer → partition
tables), more of them than one batch of the recovery loop takes. A worker with
the in-memory store then reads them all at its start, and its views must show
every doer's every day.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx

from agents.faust_internals.recovery import BATCH
from bench.recovery import STAGES, synthetic_state, write_changelog
from tests.services import (
    INPUT_TOPICS,
    WorkerProcess,
    end_offsets,
    free_port,
    start_group_at,
)

DOERS, DAYS, RUNS_PER_DAY = 150, 4, 20


async def test_every_doers_every_day_is_back_after_a_start_that_reads_the_changelogs(
    kafka_bootstrap: str, settings_env: dict[str, str], topics: Any, tmp_path: Path
) -> None:
    app_id = f"learnops-test-recovery-{uuid.uuid4().hex[:8]}"
    changelog = synthetic_state(DOERS, DAYS, RUNS_PER_DAY, topics.partitions)
    assert changelog.count() > 2 * BATCH  # the loop takes the records in several batches
    await write_changelog(kafka_bootstrap, app_id, changelog)
    # The group begins after the input events on the broker: only the changelogs are read.
    await start_group_at(kafka_bootstrap, app_id, await end_offsets(kafka_bootstrap, INPUT_TOPICS))
    port = free_port()
    env = {
        **settings_env,
        "LEARNOPS_STAGES": STAGES,
        "LEARNOPS_TABLE_STORE": "memory",
        "LEARNOPS_WEB_PORT": str(port),
    }
    worker = WorkerProcess(env=env, log_path=tmp_path / "worker.log", app_id=app_id)
    await asyncio.to_thread(worker.start)
    doers = [f"Rec{i:05d}" for i in range(DOERS)]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            views = {doer: (await http.get(f"/crl/{doer}/")).json() for doer in doers}
    finally:
        await asyncio.to_thread(worker.stop)
    for doer, view in views.items():
        counts = sorted((day, d["count"]) for day, d in view["days"].items())
        assert [count for _, count in counts] == [RUNS_PER_DAY] * DAYS, (doer, counts)
    # Every doer's state was written from one template: each view is the first one's.
    first = _as_doer(views[doers[0]], doers[0])
    assert all(_as_doer(view, doer) == first for doer, view in views.items())
    assert "Recovery complete" in (tmp_path / "worker.log").read_text(errors="replace")


def _as_doer(view: Any, doer: str) -> str:
    """A view's JSON with its doer's name in place of ``doer``'s, to compare doers."""
    return str(view).replace(doer, "DOER").replace(doer.lower(), "doer")
