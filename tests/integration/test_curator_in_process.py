"""The curator stage in one process (Faust's test_context, no broker): its state expires."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from agents.app import LearnopsApp
from agents.tables import SEPARATOR
from learnops.simulation.orchestrator import Orchestrator
from tests.integration.test_stages_in_process import RUNS, Feed, Progress, make_app, tag

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
        await progress.done(1, batched=False)
        first = writes(app)
        old = {key for table, key, deleted in first if not deleted}
        assert old and not any(deleted for *_, deleted in first)
        old_ids = {key.split(SEPARATOR, 1)[1] for key in old}

        # memory_days later the records are still kept...
        stage.clock = lambda: start + timedelta(days=days)
        await feed.event(RUNS, bundles[1])
        await progress.done(2, batched=False)
        assert not any(deleted for *_, deleted in writes(app))
        assert old <= {k for t in TABLES for k in app.tables[t]}

        # ...one day more and the doer's next bundle deletes exactly them.
        stage.clock = lambda: start + timedelta(days=days + 1)
        await feed.event(RUNS, bundles[2])
        await progress.done(3, batched=False)
        deleted = {key for _, key, is_deletion in writes(app) if is_deletion}
        assert deleted == old
        left = {k for t in TABLES for k in app.tables[t]}
        assert not old & left and left
        state = stage.memory.of(doer)
        assert not {sample for _, sample in state.kept} & old_ids
        assert state.kept, "the later bundles' records are kept"
