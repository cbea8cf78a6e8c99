"""The curator stage in one process (Faust's test_context, no broker): its state expires."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from agents.app import LearnopsApp
from agents.curation_pool import CHUNK, PreparedBatch
from agents.tables import SEPARATOR
from learning.samples import BundleText, prepare_bundles
from learnops.simulation.orchestrator import NoteMix, Orchestrator
from models.events import RunCompleted
from tests.integration.test_stages_in_process import (
    DLQ,
    RUNS,
    Feed,
    Progress,
    make_app,
    sent,
    tag,
)
from tests.unit.test_curation_pool import ready

pytestmark = pytest.mark.integration

__all__ = ["make_app"]  # the fixture, imported for this module's tests

TABLES = ("curator-samples", "curator-own-outputs")


def writes(app: LearnopsApp) -> list[tuple[str, str, bool]]:
    """The curator's table writes since the last call: (table, key, is a deletion)."""
    pending = app.producer.buffer.pending
    found = []
    while not pending.empty():
        message = pending.get_nowait().message
        table = message.channel.get_topic_name()
        table = table.removeprefix(f"{app.conf.id}-").removesuffix("-changelog")
        if table in TABLES:
            found.append((table, orjson.loads(message.key), message.value is None))
    return found


async def test_records_older_than_memory_days_are_deleted_on_the_doers_next_bundle(
    make_app: Callable[..., LearnopsApp], db: Any
) -> None:
    app = make_app("curator")
    stage: Any = app.stages["curator"]
    days = app.learning.curation.guard.memory_days
    doer = f"Forget{tag()}"
    orchestrator = Orchestrator(seed=3, doers=(doer,), run_prefix=f"forget-{tag()}")
    bundles = [orchestrator.bundle(doer, phase="draft") for _ in range(3)]
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)
    progress = Progress(stage)
    async with app.agents["curator"].test_context() as agent:
        feed = Feed(app, agent)
        stage.clock = lambda: start
        await feed.event(RUNS, bundles[0])
        await progress.done(1)
        first = writes(app)
        old = {key for table, key, deleted in first if not deleted}
        assert old and not any(deleted for *_, deleted in first)
        old_ids = {key.split(SEPARATOR, 1)[1] for key in old}

        # memory_days later the records are still kept...
        stage.clock = lambda: start + timedelta(days=days)
        await feed.event(RUNS, bundles[1])
        await progress.done(2)
        assert not any(deleted for *_, deleted in writes(app))
        assert old <= {k for t in TABLES for k in app.tables[t]}

        # ...one day more and the doer's next bundle deletes exactly them.
        stage.clock = lambda: start + timedelta(days=days + 1)
        await feed.event(RUNS, bundles[2])
        await progress.done(3)
        deleted = {key for _, key, is_deletion in writes(app) if is_deletion}
        assert deleted == old
        left = {k for t in TABLES for k in app.tables[t]}
        assert not old & left and left
        state = stage.memory.of(doer)
        assert not {sample for _, sample in state.kept} & old_ids
        assert state.kept, "the later bundles' records are kept"


SAMPLES = "learning.samples"


def prepared(where: str) -> float:
    return REGISTRY.get_sample_value("learnops_curation_prepared_total", {"where": where}) or 0.0


async def curated(
    app: LearnopsApp, bundles: list[RunCompleted], *, kill_processes: bool = False
) -> list[dict[str, Any]]:
    """The samples the app's curator sends for ``bundles``, delivered at once (one batch)."""
    stage: Any = app.stages["curator"]
    stage.clock = lambda: datetime(2026, 3, 2, 9, tzinfo=UTC)
    progress = Progress(stage)
    try:
        if stage.pool.processes:
            await ready(stage.pool)
            if kill_processes:
                for pid in stage.pool.pids:
                    os.kill(pid, signal.SIGKILL)
        async with app.agents["curator"].test_context() as agent:
            feed = Feed(app, agent)
            for bundle in bundles:
                await feed.event(RUNS, bundle)
            await progress.done(len(bundles))
    finally:
        stage.close()
    # The curator's id is the app's own; everything else is the bundle's and the clock's.
    return [e.model_dump(mode="json", exclude={"curator"}) for e in sent(app, SAMPLES)]


def noted_bundles(n: int) -> list[RunCompleted]:
    doer = f"Pooled{tag()}"
    orchestrator = Orchestrator(seed=5, doers=(doer,), run_prefix=f"pool-{tag()}")
    return [orchestrator.bundle(doer, notes=NoteMix()) for _ in range(n)]


async def test_a_batch_prepared_in_the_curation_processes_is_curated_as_in_the_loop(
    make_app: Callable[..., LearnopsApp],
) -> None:
    bundles = noted_bundles(3 * CHUNK)
    in_loop = await curated(make_app("curator", learnops_curation_processes=0), bundles)
    before = prepared("pool")
    in_processes = await curated(make_app("curator", learnops_curation_processes=1), bundles)
    assert prepared("pool") - before == len(bundles)
    assert len(in_loop) >= len(bundles)
    assert {s["reject_reason"] for s in in_loop} > {None}  # duplicates and copies among them
    assert in_processes == in_loop


async def test_a_batch_whose_curation_process_died_is_curated_in_the_loop(
    make_app: Callable[..., LearnopsApp],
) -> None:
    bundles = noted_bundles(2 * CHUNK)
    in_loop = await curated(make_app("curator", learnops_curation_processes=0), bundles)
    failures = REGISTRY.get_sample_value("learnops_curation_pool_failures_total") or 0.0
    killed = await curated(
        make_app("curator", learnops_curation_processes=1), bundles, kill_processes=True
    )
    assert REGISTRY.get_sample_value("learnops_curation_pool_failures_total") == failures + 1
    assert killed == in_loop


async def test_a_bundle_whose_preparing_raised_is_its_own_dead_letter(
    make_app: Callable[..., LearnopsApp],
) -> None:
    # An error in preparing one bundle's text (not the processes failing) reaches that
    # bundle's guard; the rest of the batch is curated.
    bundles = noted_bundles(6)
    app = make_app("curator", learnops_curation_processes=1)
    stage: Any = app.stages["curator"]
    hashing = stage.pool.hashing

    def one_fails(texts: list[BundleText]) -> PreparedBatch:
        loop = asyncio.get_running_loop()
        failed, rest = loop.create_future(), loop.create_future()
        failed.set_exception(ValueError("preparing failed"))
        rest.set_result(prepare_bundles(texts[1:], hashing))
        return PreparedBatch([(0, failed), (1, rest)])

    stage.pool.prepare = one_fails
    progress = Progress(stage)
    async with app.agents["curator"].test_context() as agent:
        feed = Feed(app, agent)
        for bundle in bundles:
            await feed.event(RUNS, bundle)
        await progress.done(len(bundles))
    letters = sent(app, DLQ)
    assert [(d.stage, d.error_type, d.offset) for d in letters] == [("curator", "internal", 0)]
    curated_runs = {s.run_id for s in sent(app, SAMPLES)}
    assert curated_runs == {b.run_id for b in bundles[1:]}


async def test_a_copy_of_a_golden_sample_in_another_phase_or_doer_is_rejected(
    make_app: Callable[..., LearnopsApp], db: Any
) -> None:
    """A new operator's trial: samples copying a golden (evaluation) dataset's, verbatim or
    with a word changed, into another phase or doer of the tenant were accepted as
    training data. The curator reads the tenant's golden sets and rejects them."""
    from storage.datasets import freeze, insert_samples
    from tests.unit.sample_bundles import make_bundle

    app = make_app("curator", learnops_curation_processes=0)
    stage: Any = app.stages["curator"]
    doer, other, tenant = f"Gold{tag()}", f"Copier{tag()}", f"t{tag()}".lower()
    text = (
        f"Evaluation prompt {tag()}: summarise the incident timeline from the first page to "
        "the all clear, name the first alert that fired and the one that should have, say "
        "how long the paging took and why, describe the fix that was shipped and the one "
        "that was rolled back, estimate the customers affected per region from the request "
        "logs, and list two follow-ups with owners and dates, the riskier one first, in a "
        "table a new engineer on the rotation could read in five minutes."
    )

    def note(run: str, who: str, phase: str, content: str) -> RunCompleted:
        artifact = {"artifact_id": "note", "kind": "note", "content": content, "origin": "human"}
        return make_bundle(
            doer=who, run_id=run, phase=phase, tenant_id=tenant, artifacts=[artifact]
        )

    progress = Progress(stage)
    async with app.agents["curator"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(RUNS, note(f"r1-{tag()}", doer, "draft", text))
        await progress.done(1)
        first = [e for e in sent(app, SAMPLES) if e.doer == doer]
        assert [e.reject_reason for e in first] == [None]
        assert await insert_samples(db, first) == 1  # as the datasets stage stores them
        golden = await freeze(db, tenant, f"{doer}/draft", f"eval-{tag()}", actor="tests")
        await stage.refresh_golden()
        edited = text.replace("riskier", "costlier")  # a word changed in the middle
        await feed.event(RUNS, note(f"r2-{tag()}", doer, "review", text))
        await feed.event(RUNS, note(f"r3-{tag()}", other, "draft", edited))
        await progress.done(3)
    copies = [e for e in sent(app, SAMPLES) if e.run_id.startswith(("r2-", "r3-"))]
    ref = f"golden_copy:{golden.name}@{golden.version}/{first[0].sample_id}"
    assert [e.reject_reason for e in copies] == [ref, ref]
    # Stored, they count as contamination in the datasets' statistics (migration 044).
    assert await insert_samples(db, copies) == 2
    rates = await db.fetch(
        "SELECT contamination_rate FROM v_dataset_stats WHERE dataset = ANY($1::text[])",
        [f"{tenant}/{doer}/review", f"{tenant}/{other}/draft"],
    )
    assert [r["contamination_rate"] for r in rates] == [1.0, 1.0]
