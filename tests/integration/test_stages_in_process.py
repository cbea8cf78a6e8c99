"""The stages' glue driven in process: Faust's ``test_context()``, the real PostgreSQL, no broker.

Each test builds an app with one stage (``create_app``), gives it the session's
pool, turns its sends into an outbox (``app.outbox``) and puts records on the
agent's in-memory channel as the broker would deliver them: raw bytes, keyed
by doer, at a topic, partition and offset of the test's choosing. Tables are
Faust's ``memory://`` tables; their changelog records go to the producer's
buffer, which nothing flushes (there is no broker).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.types import Message
from prometheus_client import REGISTRY

from agents.app import LearnopsApp, create_app
from agents.settings import Settings
from agents.tables import SEPARATOR, history
from learning.alerting import evidence_link
from learning.crl import score_bundle
from learning.deployments import MISSING_GRACE_S, MISSING_MIN_ROUTED
from learning.routing import route
from learning.signing import POLICY_CHANGE_KIND, SigningKey, generate_key, sign_event
from learning.trends import DailyCRL
from learnops.simulation.canary import CanaryOrchestrator
from learnops.simulation.orchestrator import Orchestrator
from models.base import Event
from models.commands import CanarySettings, PromotePolicy, RollbackPolicy, StartCanary
from models.events import (
    Alert,
    CRLComputed,
    DeadLetter,
    DecisionMade,
    PolicyChange,
    RunCompleted,
    TaskRouted,
)
from models.ids import caused_event_id, regression_alert_id
from storage import canary as canary_store
from storage.audit import outcome_of
from storage.deployments import current_change, operator_pause, pause_deployment
from storage.policy_commands import apply_command
from tests.integration.kafka_io import unsigned
from tests.integration.test_policy_agent import register
from tests.operators import signed
from tests.unit.test_promotion import DISGUISED

# How long a test waits for an effect before it fails.
WAIT_S = 10.0


async def until(done: Callable[[], bool], *, what: str, timeout: float = WAIT_S) -> None:
    """Return once ``done()`` holds; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            raise AssertionError(f"still waiting for {what} after {timeout:g} s")
        await asyncio.sleep(0.01)


class Progress:
    """How far a stage has got, read from its /metrics: events taken, bodies finished.

    A stage counts every event it takes (``learnops_events_in_total``) and
    observes a duration each time a batch body, or an event body for stages
    that take events one by one, has finished (``..._batch_duration_seconds``).
    The counters are the process's, so a test reads them relative to its start.
    """

    def __init__(self, stage: Any) -> None:
        self.labels = {"stage": stage.name}
        self.start = self._read()

    def _read(self) -> tuple[float, float, float]:
        value = REGISTRY.get_sample_value
        return (
            value("learnops_events_in_total", self.labels) or 0.0,
            value("learnops_batch_size_count", self.labels) or 0.0,
            value("learnops_batch_duration_seconds_count", self.labels) or 0.0,
        )

    @property
    def events(self) -> int:
        """Events taken since the start."""
        return int(self._read()[0] - self.start[0])

    @property
    def batches(self) -> int:
        """Batches taken since the start (stages that take batches)."""
        return int(self._read()[1] - self.start[1])

    @property
    def finished(self) -> int:
        """Batch (or event) bodies finished since the start."""
        return int(self._read()[2] - self.start[2])

    async def done(self, events: int, *, batched: bool = True) -> None:
        """Wait until ``events`` events were taken and every body that took them has finished."""

        def idle() -> bool:
            taken = self.batches if batched else self.events
            return self.events >= events and self.finished == taken

        await until(idle, what=f"{events} events handled (taken {self.events})")
        assert self.events == events, f"the stage took {self.events} events, {events} were put"


class Feed:
    """Records put on an agent's test channel as the broker delivers them: raw bytes, placed."""

    def __init__(self, app: LearnopsApp, agent: Any) -> None:
        self.app = app
        self.agent = agent
        self.next_offset: dict[tuple[str, int], int] = {}

    async def put(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int = 0,
        offset: int | None = None,
    ) -> Message:
        """Deliver one record at ``offset`` (default: the next of the topic's partition).

        As ``AgentTestWrapper.put`` does, but with the record's own topic: an
        agent that reads several topics tells them apart by ``message.topic``,
        which Faust's ``put`` sets to "<internal>" for such an agent.
        """
        where = (topic, partition)
        if offset is None:
            offset = self.next_offset.get(where, 0)
        self.next_offset[where] = max(self.next_offset.get(where, 0), offset + 1)
        message = Message(
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp=time.time(),
            timestamp_type=0,
            headers=None,
            key=key,
            value=value,
            checksum=b"",
            serialized_key_size=len(key or b""),
            serialized_value_size=len(value or b""),
            generation_id=self.app.consumer_generation_id,
        )
        channel = self.agent.stream().channel
        await channel.put(await channel.decode(message))
        return message

    async def event(self, topic: str, event: Event, **where: int) -> Message:
        """Deliver a contract event, keyed by its doer as every producer keys it.

        A policy change without a signature is signed with the app's worker key first,
        as the policy stage signs what it publishes (the stages refuse unsigned ones).
        """
        if isinstance(event, PolicyChange) and event.signature is None:
            key = self.app.settings.worker_key()
            assert key is not None, "the in-process apps sign with the session's worker key"
            signature = sign_event(POLICY_CHANGE_KIND, event.model_dump(mode="json"), key)
            event = event.model_copy(update={"signature": signature})
        return await self.put(topic, event.doer.encode(), event.to_json(), **where)

    async def traffic(self, routings: Sequence[TaskRouted], results: Sequence[CRLComputed]) -> int:
        """Deliver a canary's routed tasks, then their CRL results; how many records."""
        for routing in routings:
            await self.event(ROUTED, routing)
        for result in results:
            await self.event(RESULTS, result)
        return len(routings) + len(results)

    async def runs(self, bundles: Sequence[RunCompleted], progress: Progress) -> None:
        """Deliver run bundles; wait until the stage has handled them, and nothing more."""
        handled = progress.events + len(bundles)
        for bundle in bundles:
            await self.event(RUNS, bundle)
        await progress.done(handled)


def changelog(app: LearnopsApp) -> list[tuple[str, str]]:
    """The table writes since the last call: (table, key without its window), in order.

    Every write is a changelog record for the producer; with no broker they
    wait in the producer's buffer, which nothing flushes. Taking them out here
    is how a test sees how often a stage writes its tables.
    """
    pending = app.producer.buffer.pending
    writes = []
    while not pending.empty():
        message = pending.get_nowait().message
        table = message.channel.get_topic_name()
        table = table.removeprefix(f"{app.conf.id}-").removesuffix("-changelog")
        key = orjson.loads(message.key)
        writes.append((table, key[0] if isinstance(key, list) else key))
    return writes


def sent(app: LearnopsApp, topic: str) -> list[Any]:
    """What the app sent to ``topic`` so far, in order."""
    assert app.outbox is not None
    return [event for name, event in app.outbox if name == topic]


@pytest.fixture
def make_app(
    database_url: str, db: Any, tmp_path: Path, worker_key_file: Path
) -> Callable[..., LearnopsApp]:
    """Build an app with the named stages, the session's pool and an outbox (``more``: settings)."""

    def build(*stages: str, crl_fold_interval_s: float = 0.0, **more: Any) -> LearnopsApp:
        # The CRL stage writes its aggregates after every batch unless a test asks for
        # the worker's interval, so a test sees a batch's writes once it has finished.
        given: dict[str, Any] = {
            "kafka_bootstrap_servers": "127.0.0.1:1",  # never contacted: no broker in tests
            "database_url": database_url,
            "learnops_app_id": f"inproc-{uuid.uuid4().hex[:8]}",
            "learnops_web_enabled": False,
            "learnops_data_dir": tmp_path,
            "learnops_worker_signing_key_file": worker_key_file,
            "learnops_crl_fold_interval_s": crl_fold_interval_s,
        }
        settings = Settings(**{**given, **more})
        app = create_app(settings, stages=stages)
        app.use_pool(db)
        app.outbox = []
        return app

    return build


def tag() -> str:
    return uuid.uuid4().hex[:8]


# ------------------------------------------------------------------------- CRL

RUNS = "learning.run-completed"
RESULTS = "learning.crl-computed"
DLQ = "learning.dlq"
ALERTS = "learning.alerts"


def daily(table: Any, key: str, day: date) -> DailyCRL | None:
    """The table's aggregate of ``key`` on ``day``, or None."""
    return history(table, key, day, 1).get(day)


def expected_daily(losses: list[float]) -> DailyCRL:
    found = DailyCRL()
    for loss in losses:
        found.add(loss)
    return found


async def stored_runs(db: Any, doer: str) -> dict[str, tuple[int, int]]:
    """The doer's crl_results rows: run id → the source (partition, offset) that stored it."""
    rows = await db.fetch(
        "SELECT run_id, source_partition, source_offset FROM crl_results WHERE doer = $1", doer
    )
    return {r["run_id"]: (r["source_partition"], r["source_offset"]) for r in rows}


async def test_crl_folds_a_batch_once_per_run_and_emits_one_result_per_event(
    make_app: Callable[..., LearnopsApp], db: Any
) -> None:
    app = make_app("crl")
    stage = app.stages["crl"]
    config = app.learning
    doer = f"Fold{tag()}"
    pid = doer.lower()
    today = datetime.now(UTC).date()
    noon = datetime.combine(today, datetime.min.time(), UTC) + timedelta(hours=12)
    orchestrator = Orchestrator(seed=11, doers=(doer,), run_prefix=f"fold-{tag()}")
    # Six runs of one doer and day: two phases, two policy versions.
    bundles = [
        orchestrator.bundle(
            doer,
            occurred_at=noon + timedelta(minutes=i),
            phase=("plan", "review")[i % 2],
            policy=(pid, 1 + i // 4),
        )
        for i in range(6)
    ]
    late = orchestrator.bundle(
        doer, occurred_at=noon + timedelta(hours=1), phase="plan", policy=(pid, 1)
    )
    loss = {b.run_id: score_bundle(b, config.weights, config.objectives).loss for b in bundles}
    loss[late.run_id] = score_bundle(late, config.weights, config.objectives).loss

    progress = Progress(stage)
    async with app.agents["crl"].test_context() as agent:
        feed = Feed(app, agent)
        # One batch (all queued before the agent runs): the six runs at offsets 0-5
        # and a publisher's duplicate of the third, byte for byte, at offset 6.
        for bundle in [*bundles, bundles[2]]:
            await feed.event(RUNS, bundle)
        await progress.done(7)
        assert progress.batches == 1, "the seven records were meant to be one batch"
        # One table write per aggregate the batch touched, not one per run.
        assert sorted(changelog(app)) == [
            ("crl-daily-doer", doer),
            ("crl-daily-phase", f"{doer}{SEPARATOR}plan"),
            ("crl-daily-phase", f"{doer}{SEPARATOR}review"),
            ("crl-daily-policy", f"{doer}{SEPARATOR}{pid}@1"),
            ("crl-daily-policy", f"{doer}{SEPARATOR}{pid}@2"),
        ]

        results = sent(app, RESULTS)
        assert [r.run_id for r in results] == [b.run_id for b in [*bundles, bundles[2]]]
        assert await stored_runs(db, doer) == {b.run_id: (0, i) for i, b in enumerate(bundles)}
        by_doer = daily(stage.by_doer, doer, today)
        assert by_doer is not None and by_doer.count == 6, "the duplicate was folded"
        want = expected_daily([loss[b.run_id] for b in bundles])
        assert by_doer.mean == pytest.approx(want.mean, rel=1e-12)
        assert by_doer.moments.variance == pytest.approx(want.moments.variance, rel=1e-9)
        for phase in ("plan", "review"):
            folded = daily(stage.by_phase, f"{doer}{SEPARATOR}{phase}", today)
            assert folded is not None and folded.count == 3, phase
        for version, count in ((1, 4), (2, 2)):
            folded = daily(stage.by_policy, f"{doer}{SEPARATOR}{pid}@{version}", today)
            assert folded is not None and folded.count == count, version

        # A restart before the commit brings offsets 0-2 again, then a new run.
        for offset in range(3):
            await feed.event(RUNS, bundles[offset], offset=offset)
        await feed.event(RUNS, late, offset=7)
        await progress.done(11)

        results = sent(app, RESULTS)
        assert [r.run_id for r in results[7:]] == [*(b.run_id for b in bundles[:3]), late.run_id]
        assert len(await stored_runs(db, doer)) == 7
        by_doer = daily(stage.by_doer, doer, today)
        assert by_doer is not None and by_doer.count == 7, "a redelivered record was folded again"
        want = expected_daily([loss[b.run_id] for b in [*bundles, late]])
        assert by_doer.mean == pytest.approx(want.mean, rel=1e-12)
        plan = daily(stage.by_phase, f"{doer}{SEPARATOR}plan", today)
        assert plan is not None and plan.count == 4
        # Only the new run's aggregates were written again.
        assert sorted(changelog(app)) == [
            ("crl-daily-doer", doer),
            ("crl-daily-phase", f"{doer}{SEPARATOR}plan"),
            ("crl-daily-policy", f"{doer}{SEPARATOR}{pid}@1"),
        ]
        assert sent(app, DLQ) == [] and sent(app, ALERTS) == []


def noon_runs(
    name: str, seed: int, count: int, **bundle: Any
) -> tuple[str, date, Orchestrator, list[RunCompleted]]:
    """A new doer's ``count`` runs at today's noon, a minute apart: (doer, today, source, runs)."""
    doer = f"{name}{tag()}"
    today = datetime.now(UTC).date()
    noon = datetime.combine(today, datetime.min.time(), UTC) + timedelta(hours=12)
    orchestrator = Orchestrator(seed=seed, doers=(doer,), run_prefix=f"{name.lower()}-{tag()}")
    runs = [
        orchestrator.bundle(doer, occurred_at=noon + timedelta(minutes=i), **bundle)
        for i in range(count)
    ]
    return doer, today, orchestrator, runs


class Clock:
    """A stage's monotonic clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def crl_writes(app: LearnopsApp) -> list[tuple[str, str]]:
    """The CRL aggregates' table writes since the last call (changelog), sorted."""
    return sorted(w for w in changelog(app) if w[0].startswith("crl-daily-"))


async def test_at_the_worker_interval_batches_are_emitted_at_once_and_written_once_later(
    make_app: Callable[..., LearnopsApp],
) -> None:
    """Three batches within the interval: three emits, one write per aggregate, acks after it."""
    interval = 1.0
    app = make_app("crl", crl_fold_interval_s=interval)
    stage = app.stages["crl"]
    stage.clock = clock = Clock()
    doer, today, orchestrator, bundles = noon_runs("Coal", 12, 3, phase="plan")
    pid, version = orchestrator.policy_of(doer)
    progress = Progress(stage)
    async with app.agents["crl"].test_context() as agent:
        feed = Feed(app, agent)
        messages = []
        for handled, bundle in enumerate(bundles, 1):
            messages.append(await feed.event(RUNS, bundle))
            await progress.done(handled)
            clock.now += interval / 4
        assert [r.run_id for r in sent(app, RESULTS)] == [b.run_id for b in bundles]
        assert progress.batches == 3
        assert crl_writes(app) == [], "an aggregate was written before the interval"
        assert daily(stage.by_doer, doer, today) is None
        assert not any(m.acked for m in messages), "a run was acked before its aggregates"

        await stage.write_due_folds()  # the timer's tick (test_context runs no timers)
        assert crl_writes(app) == [], "written before the interval by the timer's tick"
        clock.now += interval / 4
        await stage.write_due_folds()
        assert all(m.acked for m in messages), "the runs were not acked after the write"
        assert crl_writes(app) == [
            ("crl-daily-doer", doer),
            ("crl-daily-phase", f"{doer}{SEPARATOR}plan"),
            ("crl-daily-policy", f"{doer}{SEPARATOR}{pid}@{version}"),
        ]
        by_doer = daily(stage.by_doer, doer, today)
        assert by_doer is not None and by_doer.count == 3


async def test_a_revocation_drops_the_unwritten_folds_and_the_redelivery_folds_them_once(
    make_app: Callable[..., LearnopsApp],
) -> None:
    interval = 0.5
    app = make_app("crl", crl_fold_interval_s=interval)
    stage = app.stages["crl"]
    stage.clock = clock = Clock()
    doer, today, _, bundles = noon_runs("Revo", 13, 2)
    progress = Progress(stage)
    async with app.agents["crl"].test_context() as agent:
        feed = Feed(app, agent)
        first = await feed.event(RUNS, bundles[0])
        await progress.done(1)
        await app.on_partitions_revoked.send(set())
        clock.now += interval
        await stage.write_due_folds()  # the timer's tick (test_context runs no timers)
        assert crl_writes(app) == [], "a dropped fold was written"
        assert not first.acked, "a dropped fold's run was acked: its offset could be committed"
        assert daily(stage.by_doer, doer, today) is None

        # The partition's next owner reads the run again, and the next one after it.
        again = await feed.event(RUNS, bundles[0], offset=0)
        after = await feed.event(RUNS, bundles[1], offset=1)
        await progress.done(3)
        clock.now += interval
        await stage.write_due_folds()
        assert again.acked and after.acked
        by_doer = daily(stage.by_doer, doer, today)
        assert by_doer is not None and by_doer.count == 2
        assert not first.acked


async def test_a_batch_in_flight_when_partitions_are_revoked_is_left_unacked_and_unfolded(
    make_app: Callable[..., LearnopsApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its folds would go to partitions that may be another worker's by the time of the write."""
    app = make_app("crl", crl_fold_interval_s=0.0)
    stage = app.stages["crl"]
    doer, today, _, (bundle,) = noon_runs("Flight", 14, 1)
    processed = stage.process

    async def revoked_meanwhile(events: list[Any]) -> Any:
        folds = await processed(events)
        await app.on_partitions_revoked.send(set())
        return folds

    monkeypatch.setattr(stage, "process", revoked_meanwhile)
    progress = Progress(stage)
    async with app.agents["crl"].test_context() as agent:
        message = await Feed(app, agent).event(RUNS, bundle)
        await progress.done(1)
        await stage.write_due_folds()
        assert [r.run_id for r in sent(app, RESULTS)] == [bundle.run_id], "emitted at once"
        assert crl_writes(app) == [] and daily(stage.by_doer, doer, today) is None
        assert not message.acked


async def test_a_regressing_doer_day_raises_one_alert_and_a_steady_doer_none(
    make_app: Callable[..., LearnopsApp],
) -> None:
    app = make_app("crl")
    stage = app.stages["crl"]
    trends = app.learning.trends
    regressing, steady = f"Regress{tag()}", f"Steady{tag()}"
    orchestrator = Orchestrator(
        seed=20261203, doers=(regressing, steady), run_prefix=f"reg-{tag()}"
    )
    today = datetime.now(UTC).date()
    midnight = datetime.combine(today, datetime.min.time(), UTC)
    per_day = 10  # x 7 baseline days: past min_baseline_count
    assert per_day * trends.baseline_days >= trends.min_baseline_count
    baseline = [
        orchestrator.bundle(doer, occurred_at=midnight - timedelta(days=d, hours=-i))
        for d in range(trends.baseline_days, 0, -1)
        for i in range(per_day)
        for doer in (regressing, steady)
    ]

    def day_runs(n: int, start: int) -> list[RunCompleted]:
        runs = []
        for i in range(start, start + n):
            when = midnight + timedelta(minutes=i)
            runs.append(orchestrator.bundle(regressing, occurred_at=when, quality=0.1))
            runs.append(orchestrator.bundle(steady, occurred_at=when))
        return runs

    first = day_runs(trends.min_today_count + 10, 0)
    more = day_runs(15, 100)
    progress = Progress(stage)
    async with app.agents["crl"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.runs(baseline, progress)
        assert sent(app, ALERTS) == [], "the baseline days alone are no regression"
        await feed.runs(first, progress)
        alerts = [a for a in sent(app, ALERTS) if a.kind == "crl_regression"]
        assert {a.doer for a in alerts} == {regressing}, [a.message for a in alerts]
        # The doer regressed as a whole: one alert, none again for its phases or policy.
        assert len(alerts) == 1, [a.message for a in alerts]
        alert = alerts[0]
        assert alert.phase is None and alert.policy_id is None
        assert alert.event_id == regression_alert_id(app.conf.id, regressing, today.isoformat())
        assert alert.value is not None and alert.baseline is not None
        assert alert.threshold is not None
        assert alert.value > alert.threshold > alert.baseline
        assert alert.evidence["day"] == today.isoformat()
        assert alert.evidence["today_count"] == len(first) // 2

        # More bad runs the same day: the doer-day has alerted already.
        await feed.runs(more, progress)
        again = [a for a in sent(app, ALERTS) if a.kind == "crl_regression"]
        assert len(again) == len(alerts), [a.message for a in again[len(alerts) :]]
        assert stage.alerted[f"{regressing}{SEPARATOR}{today.isoformat()}"]
        assert not stage.alerted[f"{steady}{SEPARATOR}{today.isoformat()}"]


async def test_baseline_days_that_arrive_after_todays_runs_count_in_todays_next_check(
    make_app: Callable[..., LearnopsApp],
) -> None:
    """The stage caches each key's baseline; a late run of a baseline day must replace it."""
    app = make_app("crl")
    trends = app.learning.trends
    doer = f"Late{tag()}"
    orchestrator = Orchestrator(seed=20261205, doers=(doer,), run_prefix=f"late-{tag()}")
    midnight = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC)
    today_runs = [
        orchestrator.bundle(doer, occurred_at=midnight + timedelta(minutes=i), quality=0.1)
        for i in range(trends.min_today_count + 10)
    ]
    baseline = [
        orchestrator.bundle(doer, occurred_at=midnight - timedelta(days=d, hours=-i))
        for d in range(trends.baseline_days, 0, -1)
        for i in range(10)
    ]
    one_more = [orchestrator.bundle(doer, occurred_at=midnight + timedelta(hours=3), quality=0.1)]
    progress = Progress(app.stages["crl"])
    async with app.agents["crl"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.runs(today_runs, progress)
        assert sent(app, ALERTS) == [], "no baseline yet: nothing to regress against"
        await feed.runs(baseline, progress)
        await feed.runs(one_more, progress)
        alerts = [a for a in sent(app, ALERTS) if a.kind == "crl_regression"]
        assert [a.doer for a in alerts] == [doer], [a.message for a in alerts]
        assert alerts[0].evidence["baseline_count"] == len(baseline)


async def test_a_write_that_fails_part_way_leaves_no_cached_baseline_behind(
    make_app: Callable[..., LearnopsApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baselines a batch's writes change are dropped before it writes, not after."""
    from agents.crl import BatchFold

    app = make_app("crl")
    stage = app.stages["crl"]
    doer = f"Torn{tag()}"
    orchestrator = Orchestrator(seed=20261206, doers=(doer,), run_prefix=f"torn-{tag()}")
    today = datetime.now(UTC).date()
    midnight = datetime.combine(today, datetime.min.time(), UTC)
    today_runs = [
        orchestrator.bundle(doer, occurred_at=midnight + timedelta(minutes=i)) for i in range(3)
    ]
    yesterday = orchestrator.bundle(doer, occurred_at=midnight - timedelta(hours=2))
    progress = Progress(stage)
    async with app.agents["crl"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.runs(today_runs, progress)
        cached = (id(stage.by_doer), doer, today)
        assert cached in stage._baselines, "today's check caches the doer's baseline"
        written = BatchFold.write

        def torn(self: BatchFold) -> Any:
            written(self)  # the day is written (its changelog record may be sent) ...
            raise RuntimeError("changelog send failed")  # ... and the batch fails after it

        monkeypatch.setattr(BatchFold, "write", torn)
        await feed.event(RUNS, yesterday)
        await progress.done(len(today_runs) + 1)
        assert cached not in stage._baselines


@pytest.mark.parametrize("scope", ["phase", "policy"])
async def test_a_regression_in_one_phase_or_policy_alerts_for_it_when_the_doer_mean_hides_it(
    make_app: Callable[..., LearnopsApp], scope: str
) -> None:
    app = make_app("crl")
    trends = app.learning.trends
    doer = f"Phased{tag()}"
    orchestrator = Orchestrator(seed=20261204, doers=(doer,), run_prefix=f"ph-{tag()}")
    today = datetime.now(UTC).date()
    midnight = datetime.combine(today, datetime.min.time(), UTC)
    # Four phases, or four versions of the doer's policy in one phase (the phase is then
    # the doer as a whole, and does not regress either).
    parts: list[dict[str, Any]] = (
        [{"phase": p} for p in ("plan", "draft", "finalize", "review")]
        if scope == "phase"
        else [{"phase": "plan", "policy": (doer.lower(), v)} for v in (1, 2, 3, 4)]
    )
    *healthy, failing = parts
    baseline = [
        orchestrator.bundle(doer, occurred_at=midnight - timedelta(days=d, minutes=-i), **part)
        for d in range(trends.baseline_days, 0, -1)
        for i in range(8)  # x 7 days: past min_baseline_count
        for part in parts
    ]
    # Today the last phase (or version) goes bad, in a tenth of the doer's runs.
    assert 8 * trends.baseline_days >= trends.min_baseline_count
    count = trends.min_today_count + 10
    bad = [
        orchestrator.bundle(
            doer, occurred_at=midnight + timedelta(minutes=i), quality=0.05, **failing
        )
        for i in range(count)
    ]
    good = [
        orchestrator.bundle(doer, occurred_at=midnight + timedelta(minutes=i, seconds=1), **part)
        for i in range(3 * count)
        for part in healthy
    ]
    progress = Progress(app.stages["crl"])
    async with app.agents["crl"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.runs([*baseline, *good, *bad], progress)
    alerts = [a for a in sent(app, ALERTS) if a.kind == "crl_regression"]
    scopes = sorted((a.phase, a.policy_id, a.policy_version) for a in alerts)
    expected = ("review", None, None) if scope == "phase" else (None, doer.lower(), 4)
    assert scopes == [expected], [a.message for a in alerts]
    (alert,) = alerts
    assert alert.evidence["scope"] == scope
    assert alert.value is not None and alert.threshold is not None
    assert alert.value > alert.threshold, "the alert carries the figure above its threshold"
    name = "review" if scope == "phase" else f"{doer.lower()}@4"
    assert alert.message.startswith(f"{name}: ")
    assert evidence_link(alert, "http://console") == f"http://console/doers/{doer}#{scope}"


async def test_bad_records_become_one_dead_letter_each_and_the_stage_goes_on(
    make_app: Callable[..., LearnopsApp], db: Any
) -> None:
    app = make_app("crl")
    stage = app.stages["crl"]
    doer = f"Garbled{tag()}"
    orchestrator = Orchestrator(seed=5, doers=(doer,), run_prefix=f"bad-{tag()}")
    good_before, good_after = orchestrator.bundle(doer), orchestrator.bundle(doer)
    truncated = orchestrator.bundle(doer).to_json()[:60]
    out_of_range = orchestrator.bundle(doer).model_dump(mode="json")
    out_of_range["qav"]["grounding_score"] = 1.4
    misplaced = orchestrator.bundle(doer)
    unscoreable = orchestrator.bundle(doer).model_copy(update={"qav": None})
    slashed = {**orchestrator.bundle(doer).model_dump(mode="json"), "doer": f"{doer}/x"}
    bad = [
        (doer.encode(), truncated, "json"),
        (f"{doer}/x".encode(), orjson.dumps(slashed), "schema"),  # no name: docs/security.md
        (doer.encode(), orjson.dumps(out_of_range), "schema"),
        (b"SomeoneElse", misplaced.to_json(), "key"),
        (doer.encode(), unscoreable.to_json(), "bundle"),
    ]
    progress = Progress(stage)
    async with app.agents["crl"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(RUNS, good_before)
        for key, value, _ in bad:
            await feed.put(RUNS, key, value)
        await feed.event(RUNS, good_after)
        await progress.done(2 + len(bad))

        letters: list[DeadLetter] = sent(app, DLQ)
        assert [(d.offset, d.error_type) for d in letters] == [
            (1 + i, kind) for i, (_, _, kind) in enumerate(bad)
        ]
        for letter, (key, value, _) in zip(letters, bad, strict=True):
            assert (letter.topic, letter.partition, letter.stage) == (RUNS, 0, "crl")
            assert base64.b64decode(letter.value_b64) == value
            assert letter.key_b64 is not None and base64.b64decode(letter.key_b64) == key
            assert letter.consumer == app.conf.id
        reasons = {d.error_type: d.reason for d in letters}
        assert "grounding_score" in reasons["schema"], reasons["schema"]
        assert letters[1].reason.startswith("doer: has a '/'"), letters[1].reason
        assert f"{doer}/x" not in letters[1].reason and letters[1].doer == "unknown"
        assert "is not the event's doer" in reasons["key"], reasons["key"]
        assert [d.doer for d in letters if d.error_type in ("key", "bundle")] == [doer, doer]
        assert "qav" in reasons["bundle"], reasons["bundle"]
        assert reasons["json"]
        # The good records on either side went through.
        assert [r.run_id for r in sent(app, RESULTS)] == [good_before.run_id, good_after.run_id]
        assert set(await stored_runs(db, doer)) == {good_before.run_id, good_after.run_id}


async def test_a_record_with_no_value_is_dead_lettered_as_such_by_crl_and_skipped_by_the_curator(
    make_app: Callable[..., LearnopsApp],
) -> None:
    app = make_app("crl", "curator")
    doer = f"Nulled{tag()}"
    good = Orchestrator(seed=8, doers=(doer,), run_prefix=f"null-{tag()}").bundle(doer)
    progress = Progress(app.stages["crl"])
    curated = Progress(app.stages["curator"])
    async with (
        app.agents["crl"].test_context() as crl,
        app.agents["curator"].test_context() as curator,
    ):
        for agent in (crl, curator):
            feed = Feed(app, agent)
            await feed.put(RUNS, doer.encode(), None)
            await feed.event(RUNS, good)
        await progress.done(2)
        await curated.done(2)
        letters: list[DeadLetter] = sent(app, DLQ)
        # One letter, the crl stage's: the curator skips what crl dead-letters, without an error.
        assert [(d.stage, d.offset, d.error_type) for d in letters] == [("crl", 0, "json")]
        assert letters[0].reason == "the record has no value (null); every event is a JSON object"
        assert [r.run_id for r in sent(app, RESULTS)] == [good.run_id]


async def test_a_run_id_another_tenant_or_doer_holds_is_dead_lettered_not_merged(
    make_app: Callable[..., LearnopsApp], db: Any
) -> None:
    app = make_app("crl")
    doer, other_doer = f"Owner{tag()}", f"Other{tag()}"
    prefix = f"shared-{tag()}"
    acme = Orchestrator(seed=9, doers=(doer,), run_prefix=prefix)
    globex = Orchestrator(seed=9, doers=(doer, other_doer), tenant_id="globex", run_prefix=prefix)
    first = acme.bundle(doer)
    # The same run id from another tenant (same doer), and from another doer (same tenant).
    theirs = globex.bundle(doer).model_copy(update={"run_id": first.run_id})
    elsewhere = acme.bundle(doer).model_copy(update={"run_id": first.run_id, "doer": other_doer})
    resent = first.model_copy()  # the publisher's duplicate of the first: the same run
    progress = Progress(app.stages["crl"])
    async with app.agents["crl"].test_context() as agent:
        feed = Feed(app, agent)
        for bundle in (first, theirs, elsewhere, resent):
            await feed.event(RUNS, bundle)
            await progress.done(progress.events + 1)
        letters: list[DeadLetter] = sent(app, DLQ)
        assert [(d.offset, d.error_type, d.doer) for d in letters] == [
            (1, "run_id", doer),
            (2, "run_id", other_doer),
        ]
        assert all("globex" not in d.reason and "acme" not in d.reason for d in letters)
        assert letters[0].reason.startswith("the run_id is already stored for another doer")
        # Stored once, as the first sender's; emitted for the first and its duplicate only.
        row = await db.fetchrow(
            "SELECT doer, tenant_id, source_offset FROM crl_results WHERE run_id = $1",
            first.run_id,
        )
        assert (row["doer"], row["tenant_id"], row["source_offset"]) == (doer, "acme", 0)
        assert [(r.doer, r.tenant_id) for r in sent(app, RESULTS)] == [(doer, "acme")] * 2


async def test_a_secret_planted_in_bad_bundles_is_in_no_dead_letter_reason(
    make_app: Callable[..., LearnopsApp],
) -> None:
    app = make_app("crl")
    stage = app.stages["crl"]
    doer = f"Planted{tag()}"
    secret = "password=Hunter2Secret!"
    orchestrator = Orchestrator(seed=6, doers=(doer,), run_prefix=f"planted-{tag()}")
    good = orchestrator.bundle(doer).model_dump(mode="json")
    bad = [
        {**good, secret: 1},  # an unknown field named by the secret
        {**good, "run_id": [secret]},  # a wrong type holding it
        {**good, "metrics": {secret: secret}},  # a free map keyed by it
        {**good, "occurred_at": f"2026-13-01T00:00:00Z {secret}"},  # an unparsable timestamp
    ]
    raws = [orjson.dumps(b) for b in bad] + [b'{"doer": "' + secret.encode() + b'", oops']
    # A repeated key: the last would win silently; refused before validation.
    raws.append(orjson.dumps(good)[:-1] + b', "run_id": "' + secret.encode() + b'"}')
    progress = Progress(stage)
    async with app.agents["crl"].test_context() as agent:
        feed = Feed(app, agent)
        for raw in raws:
            await feed.put(RUNS, doer.encode(), raw)
        await progress.done(len(raws))
        letters: list[DeadLetter] = sent(app, DLQ)
    assert len(letters) == len(raws)
    for letter in letters:
        assert letter.reason, letter
        assert "Hunter2Secret" not in letter.reason, letter.reason
        assert "Hunter2Secret" in base64.b64decode(letter.value_b64).decode()  # kept to replay
    assert letters[-1].error_type == "json"
    assert letters[-1].reason.startswith("an object repeats a key at line 1 column ")


# ---------------------------------------------------------------------- canary

ROUTED = "learning.task-routed"
CHANGES = "learning.policy-changes"
DECISIONS = "learning.decisions"
COMMANDS = "learning.commands"
# Never decides on the statistics: only missing data, silence or a change can move it.
PATIENT = CanarySettings(min_sample_size=100_000, report_every=100_000)


async def applied(db: Any, command: Any) -> Any:
    """Apply a policy command to the store as the policy stage would; its outcome."""
    outcome = await apply_command(db, command)
    assert outcome is not None and outcome.applied, outcome
    return outcome


async def live_change(db: Any, doer: str) -> PolicyChange:
    """The doer's live state, as the policy stage publishes it after a change."""
    change = await current_change(db, doer)
    assert change is not None
    return change


async def canary_of(
    db: Any, doer: str, version: int, settings: CanarySettings
) -> tuple[str, PolicyChange]:
    """Start a canary of ``version`` (one 50 % step); its deployment id and its policy change."""
    started = await applied(db, start_canary(doer, version, settings))
    return started.deployment_id, await live_change(db, doer)


def start_canary(
    doer: str,
    version: int,
    settings: CanarySettings,
    steps: tuple[float, ...] | list[float] = (0.5,),
) -> StartCanary:
    """A forced canary of the doer's ``version`` with ``settings``, one 50 % step by default."""
    return StartCanary(
        doer=doer,
        actor="tests",
        reason=f"try v{version}",
        policy_id=doer.lower(),
        version=version,
        force=True,
        steps=list(steps),
        canary=settings,
    )


async def registered(db: Any, key: SigningKey, doer: str, versions: int) -> PolicyChange:
    """Register signed versions 1..``versions`` and promote the first; the doer's change."""
    for n in range(1, versions + 1):
        await applied(db, register(doer, key, n))
    await applied(
        db,
        PromotePolicy(
            doer=doer, actor="tests", reason="first", policy_id=doer.lower(), version=1, force=True
        ),
    )
    return await live_change(db, doer)


class Tasks:
    """An orchestrator routing tasks by a doer's live state; its routings and scored runs."""

    def __init__(self, app: LearnopsApp, change: PolicyChange, lose: str | None = None) -> None:
        self.config = app.learning
        self.simulator = CanaryOrchestrator(
            route=lambda _doer, task_id: route(change, task_id),
            quality={},
            orchestrator=Orchestrator(run_prefix=f"{change.doer}-{tag()}"),
            lose=lose,
        )

    def run(self, doer: str, n: int) -> tuple[list[TaskRouted], list[CRLComputed]]:
        """Route and run ``n`` tasks: the routings, and the results the CRL stage would emit."""
        routings: list[TaskRouted] = []
        results: list[CRLComputed] = []
        for _ in range(n):
            for event in self.simulator.task(doer):
                if isinstance(event, TaskRouted):
                    routings.append(event)
                elif isinstance(event, RunCompleted):
                    config = self.config
                    results.append(score_bundle(event, config.weights, config.objectives))
        return routings, results


def state_of(stage: Any, doer: str, deployment_id: str) -> dict[str, Any]:
    """The canary table's state of a deployment (empty when it has none)."""
    return dict(stage.states.get(f"{doer}{SEPARATOR}{deployment_id}") or {})


def lossy_traffic(
    app: LearnopsApp, doer: str, change: PolicyChange, t0: datetime
) -> tuple[list[TaskRouted], list[CRLComputed], int]:
    """Routings and results of a canary whose candidate bundles never arrive.

    The results (the control's only) arrive one second apart from ``t0`` (event
    time): the arm counts as missing once the control has results for more than
    half its tasks, and pauses MISSING_GRACE_S later, at the returned index.
    """
    tasks = Tasks(app, change, lose="candidate")
    routings, results = tasks.run(doer, 240)
    # Routing hashes random task ids, so 240 tasks gave the candidate fewer routings
    # than the missing-arm rule needs about once in 250 runs (99 of 100 once): top up.
    for _ in range(10):
        if sum(r.arm == "candidate" for r in routings) >= MISSING_MIN_ROUTED:
            break
        more_routings, more_results = tasks.run(doer, 20)
        routings += more_routings
        results += more_results
    control = sum(r.arm == "control" for r in routings)
    assert sum(r.arm == "candidate" for r in routings) >= MISSING_MIN_ROUTED
    assert {r.arm for r in results} == {"control"} and len(results) == control
    results = [
        r.model_copy(update={"run_occurred_at": t0 + timedelta(seconds=i)})
        for i, r in enumerate(results)
    ]
    first_missing = control // 2  # index of the result that takes the control past half
    pause_at = first_missing + int(MISSING_GRACE_S)
    assert pause_at < len(results), "too few control results to outlast the grace period"
    return routings, results, pause_at


async def test_an_arm_whose_results_stop_arriving_pauses_the_canary_and_alerts_once(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    app = make_app("canary")
    stage = app.stages["canary"]
    doer = f"Lossy{tag()}"
    promoted = await registered(db, signing_key, doer, 2)
    deployment_id, started = await canary_of(db, doer, 2, PATIENT)
    routings, results, pause_at = lossy_traffic(app, doer, started, datetime.now(UTC))

    progress = Progress(stage)
    async with app.agents["canary"].test_context() as agent:
        feed = Feed(app, agent)
        for change in (promoted, started):
            await feed.event(CHANGES, change)
        await progress.done(2 + await feed.traffic(routings, results))

    decisions: list[DecisionMade] = sent(app, DECISIONS)
    assert [(d.action, d.deployment_id) for d in decisions] == [("pause", deployment_id)]
    pause = decisions[0]
    assert "missing data" in pause.reason and "candidate" in pause.reason, pause.reason
    assert (pause.report.control_count, pause.report.candidate_count) == (pause_at + 1, 0)
    alerts: list[Alert] = sent(app, ALERTS)
    assert [(a.kind, a.severity, a.deployment_id) for a in alerts] == [
        ("missing_data", "critical", deployment_id)
    ]
    assert alerts[0].evidence["arm"] == "candidate"
    assert alerts[0].event_id == caused_event_id("alert", pause.event_id)
    stored = await canary_store.decisions(db, deployment_id)
    assert [d.action for d in stored] == ["pause"]
    assert sum((await canary_store.routed_counts(db, deployment_id)).values()) == len(routings)
    state = state_of(stage, doer, deployment_id)
    assert state["paused"] and state["step_runs"] == {"control": len(results), "candidate": 0}
    assert sent(app, DLQ) == []


async def test_an_operator_resumes_a_canary_paused_for_missing_data_and_it_is_judged_again(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    app = make_app("canary")
    stage = app.stages["canary"]
    doer = f"Resumed{tag()}"
    promoted = await registered(db, signing_key, doer, 2)
    deployment_id, started = await canary_of(db, doer, 2, PATIENT)
    t0 = datetime.now(UTC)
    routings, results, _ = lossy_traffic(app, doer, started, t0)

    progress = Progress(stage)
    async with app.agents["canary"].test_context() as agent:
        feed = Feed(app, agent)
        for change in (promoted, started):
            await feed.event(CHANGES, change)
        fed = 2 + await feed.traffic(routings, results)
        await progress.done(fed)
        [pause] = sent(app, DECISIONS)
        assert pause.action == "pause" and "missing data" in pause.reason
        # The policy stage applies the pause; the orchestrator's loss is fixed, and an
        # operator resumes the canary. Its PolicyChange is what the stage follows.
        paused = (await pause_deployment(db, pause)).change
        assert paused is not None
        resumed = await operator_pause(
            db,
            doer,
            deployment_id,
            pause=False,
            event_id=uuid.uuid4(),
            actor="ops",
            reason="the lost bundles were a broken exporter, fixed",
        )
        assert resumed.applied and resumed.change is not None
        await feed.event(CHANGES, paused)
        await feed.event(CHANGES, resumed.change)
        await progress.done(fed + 2)
        state = state_of(stage, doer, deployment_id)
        assert not state["paused"] and state["routing"]["resumes"] == 1
        assert state["step_runs"] == {"control": 0, "candidate": 0}
        # Not fixed after all: the canary is judged again, and pauses again.
        again_at = t0 + timedelta(seconds=len(results) + 60)
        more_routings, more_results, _ = lossy_traffic(app, doer, resumed.change, again_at)
        await progress.done(fed + 2 + await feed.traffic(more_routings, more_results))

    decisions: list[DecisionMade] = sent(app, DECISIONS)
    assert [d.action for d in decisions] == ["pause", "pause"]
    assert "missing data" in decisions[1].reason and decisions[1].event_id != pause.event_id
    # It names the resume it saw: the store applies it (a pause decided before the
    # resume would not be).
    assert (pause.resumes, decisions[1].resumes) == (0, 1)
    assert (await pause_deployment(db, decisions[1])).applied
    assert state_of(stage, doer, deployment_id)["paused"]
    assert sent(app, DLQ) == []


async def test_a_stale_policy_change_delivered_again_leaves_the_live_canary_counting(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    app = make_app("canary")
    stage = app.stages["canary"]
    doer = f"Stale{tag()}"
    promoted = await registered(db, signing_key, doer, 3)
    ended_id, first = await canary_of(db, doer, 2, PATIENT)
    await applied(db, RollbackPolicy(doer=doer, actor="tests", reason="not this one"))
    rolled_back = await live_change(db, doer)
    live_id, second = await canary_of(db, doer, 3, PATIENT)
    assert rolled_back.deployment is None and live_id != ended_id
    changes = [promoted, first, rolled_back, second]
    tasks = Tasks(app, second)

    progress = Progress(stage)
    async with app.agents["canary"].test_context() as agent:
        feed = Feed(app, agent)
        at = [await feed.event(CHANGES, change) for change in changes]
        routings, results = tasks.run(doer, 30)
        for event in [*routings, *results]:
            await feed.event(ROUTED if isinstance(event, TaskRouted) else RESULTS, event)
        handled = len(changes) + len(routings) + len(results)
        await progress.done(handled)
        assert stage.live[doer] == live_id
        assert state_of(stage, doer, ended_id)["ended"], "a rollback must end the deployment"
        assert state_of(stage, doer, live_id)["results"] == len(results)

        # A restart before the commit: the first two changes come again, at their offsets.
        for change, message in zip(changes[:2], at[:2], strict=True):
            await feed.event(CHANGES, change, offset=message.offset)
        more_routings, more_results = tasks.run(doer, 30)
        for event in [*more_routings, *more_results]:
            await feed.event(ROUTED if isinstance(event, TaskRouted) else RESULTS, event)
        await progress.done(handled + 2 + len(more_routings) + len(more_results))

    assert stage.live[doer] == live_id, "a stale change moved the live deployment"
    state = state_of(stage, doer, live_id)
    assert not state["ended"], "a stale change ended the live deployment"
    assert state["results"] == len(results) + len(more_results)
    assert sum(state["routed"].values()) == len(routings) + len(more_routings)
    assert sent(app, DLQ) == [] and sent(app, DECISIONS) == []


async def test_the_canary_dead_letters_bad_input_of_each_topic_and_goes_on(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    app = make_app("canary")
    stage = app.stages["canary"]
    doer = f"Muddled{tag()}"
    promoted = await registered(db, signing_key, doer, 2)
    deployment_id, started = await canary_of(db, doer, 2, PATIENT)
    routings, results = Tasks(app, started).run(doer, 4)
    stranger = routings[0].model_copy(
        update={"event_id": uuid.uuid4(), "deployment_id": f"dep-{tag()}"}
    )
    progress = Progress(stage)
    async with app.agents["canary"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(CHANGES, promoted)
        await feed.put(CHANGES, doer.encode(), started.to_json()[:50])
        await feed.event(CHANGES, started)
        await feed.put(ROUTED, b"SomeoneElse", routings[0].to_json())
        await feed.event(ROUTED, stranger)
        await feed.put(RESULTS, doer.encode(), b'{"loss": NaN}')
        for event in [*routings, *results]:
            await feed.event(ROUTED if isinstance(event, TaskRouted) else RESULTS, event)
        await progress.done(6 + len(routings) + len(results))

    letters: list[DeadLetter] = sent(app, DLQ)
    by_origin = {(d.topic, d.offset): d for d in letters}
    assert len(by_origin) == len(letters), "one dead letter per record"
    assert {origin: d.error_type for origin, d in by_origin.items()} == {
        (CHANGES, 1): "json",
        (ROUTED, 0): "key",
        (ROUTED, 1): "unknown_deployment",
        (RESULTS, 0): "schema",
    }
    assert all(d.stage == "canary" and d.reason for d in letters)
    assert stranger.deployment_id in by_origin[(ROUTED, 1)].reason
    # The good records around them were counted.
    state = state_of(stage, doer, deployment_id)
    assert sum(state["routed"].values()) == len(routings)
    assert state["results"] == len(results)


async def test_a_deployment_that_hears_nothing_is_paused_by_the_silence_timer(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    app = make_app("canary")
    stage = app.stages["canary"]
    doer = f"Quiet{tag()}"
    promoted = await registered(db, signing_key, doer, 2)
    quiet = PATIENT.model_copy(update={"max_silence_s": 0.2})
    deployment_id, started = await canary_of(db, doer, 2, quiet)
    routings, results = Tasks(app, started).run(doer, 10)

    progress = Progress(stage)
    async with app.agents["canary"].test_context() as agent:
        feed = Feed(app, agent)
        for event in [promoted, started, *routings, *results]:
            topic = {PolicyChange: CHANGES, TaskRouted: ROUTED}.get(type(event), RESULTS)
            await feed.event(topic, event)
        await progress.done(2 + len(routings) + len(results))
        assert sent(app, DECISIONS) == []
        # Then nothing, for longer than max_silence_s.
        owned = {stage.doers[doer] - 1}
        later = datetime.now(UTC) + timedelta(seconds=1)
        # A worker that does not own the doer's partition leaves the deployment alone.
        await stage.pause_silent(later, {p + 1 for p in owned})
        assert sent(app, DECISIONS) == []
        await stage.pause_silent(later, owned)
        # Twice: a paused deployment is not paused again.
        await stage.pause_silent(later + timedelta(seconds=1), owned)

    decisions: list[DecisionMade] = sent(app, DECISIONS)
    assert [d.action for d in decisions] == ["pause"]
    assert "no routed task or CRL result" in decisions[0].reason
    alerts: list[Alert] = sent(app, ALERTS)
    assert [(a.kind, a.threshold) for a in alerts] == [("missing_data", 0.2)]
    assert state_of(stage, doer, deployment_id)["paused"]


# ---------------------------------------------------------------------- policy


async def test_the_policy_stage_alerts_refused_commands_and_publishes_applied_ones(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    app = make_app("policy")
    stage = app.stages["policy"]
    doer = f"Refused{tag()}"
    pid = doer.lower()
    honest = register(doer, signing_key, 1)
    tampered = register(doer, signing_key, 2)
    tampered = tampered.model_copy(update={"artifact": {**tampered.artifact, "tools": ["shell"]}})
    unknown = PromotePolicy(doer=doer, actor="ops", reason="typo", policy_id=pid, version=9)
    promote = PromotePolicy(
        doer=doer, actor="ops", reason="first", policy_id=pid, version=1, force=True
    )
    progress = Progress(stage)
    async with app.agents["policy"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(COMMANDS, signed(honest))
        await feed.event(COMMANDS, signed(tampered))
        await feed.put(COMMANDS, doer.encode(), b'{"command": "promote", "doer": ')
        await feed.event(COMMANDS, signed(unknown))
        await feed.event(COMMANDS, signed(promote))
        await progress.done(5, batched=False)

    alerts: list[Alert] = sent(app, ALERTS)
    assert [(a.kind, a.severity) for a in alerts] == [
        ("signature_refused", "critical"),
        ("policy_refused", "warning"),
    ], [a.message for a in alerts]
    assert [a.event_id for a in alerts] == [
        caused_event_id("alert", tampered.event_id),
        caused_event_id("alert", unknown.event_id),
    ]
    assert (alerts[0].policy_id, alerts[0].policy_version) == (pid, 2)
    assert alerts[0].evidence["refusal"] == "signature"
    assert (alerts[1].policy_id, alerts[1].policy_version) == (pid, 9)
    refused = await outcome_of(db, tampered.event_id)
    assert refused is not None and not refused.applied and refused.refusal == "signature"
    assert await db.fetchval("SELECT count(*) FROM policies WHERE doer = $1", doer) == 1
    # The applied promotion is the one policy change; the garbled command one dead letter.
    changes: list[PolicyChange] = sent(app, CHANGES)
    assert [(c.change, c.policy_id, c.version) for c in changes] == [("promoted", pid, 1)]
    assert [unsigned(c) for c in changes] == [await current_change(db, doer)]
    letters: list[DeadLetter] = sent(app, DLQ)
    assert [(d.stage, d.error_type, d.offset) for d in letters] == [("policy", "json", 2)]


async def test_a_command_read_again_where_it_was_applied_is_a_redelivery_not_a_replay(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    """A worker that stops after applying a command and before committing its offset reads
    the same record again: nothing to do, and no `command_refused` alert, which an operator
    would read as a replay attack. The same command at another offset is one."""
    app = make_app("policy")
    stage = app.stages["policy"]
    doer = f"Redelivered{tag()}"
    promote = signed(
        PromotePolicy(
            doer=doer, actor="ops", reason="first", policy_id=doer.lower(), version=1, force=True
        )
    )
    progress = Progress(stage)
    async with app.agents["policy"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(COMMANDS, signed(register(doer, signing_key, 1)))
        first = await feed.event(COMMANDS, promote)
        await progress.done(2, batched=False)
        await feed.event(COMMANDS, promote, offset=first.offset)  # the same record again
        await progress.done(3, batched=False)
        assert sent(app, ALERTS) == []
        await feed.event(COMMANDS, promote)  # a copy published again: a replay
        await progress.done(4, batched=False)

    alerts: list[Alert] = sent(app, ALERTS)
    assert [(a.kind, a.evidence["refusal"]) for a in alerts] == [("command_refused", "replayed")]
    row = await db.fetchrow(
        "SELECT source_topic, source_partition, source_offset FROM applied_commands"
        " WHERE event_id = $1",
        promote.event_id,
    )
    assert row is not None and tuple(row) == (COMMANDS, 0, first.offset)
    changes: list[PolicyChange] = sent(app, CHANGES)
    assert [(c.change, c.version) for c in changes] == [("promoted", 1)]


async def test_a_canary_looser_than_the_limits_is_refused_whoever_signed_it(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    """An operator could otherwise promote a worse candidate: a canary serving it all the
    traffic at once, judged at alpha 0.999999 with the harm rule and the guardrails off,
    promotes after a few runs with the worker's key and no second owner. The policy stage
    refuses it (audited, alerted) and starts the same canary within the limits."""
    app = make_app("policy")
    stage = app.stages["policy"]
    doer = f"Loose{tag()}"
    await registered(db, signing_key, doer, 2)

    refused, allowed = start_canary(doer, 2, DISGUISED, [1.0]), start_canary(doer, 2, PATIENT)
    progress = Progress(stage)
    async with app.agents["policy"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(COMMANDS, signed(refused))
        await feed.event(COMMANDS, signed(allowed))
        await progress.done(2, batched=False)

    outcome = await outcome_of(db, refused.event_id)
    assert outcome is not None and not outcome.applied and outcome.refusal == "limits"
    for problem in (
        "alpha 0.999999 is above 0.1",
        "harm_alpha is off",
        "guardrails are off",
        "non_inferiority_margin 1000.0 is above 0.25",
        "min_sample_size 2 is below 30",
        "the first step 1.0 is above 0.5",
    ):
        assert problem in outcome.verdict, outcome.verdict
    alerts: list[Alert] = sent(app, ALERTS)
    assert [(a.kind, a.evidence["refusal"]) for a in alerts] == [("policy_refused", "limits")]
    started = await outcome_of(db, allowed.event_id)
    assert started is not None and started.applied, started
    changes: list[PolicyChange] = sent(app, CHANGES)
    assert [(c.change, c.deployment.steps if c.deployment else None) for c in changes] == [
        ("canary_started", [0.5])
    ]


async def test_a_policy_change_no_trusted_key_signed_is_dead_lettered_not_followed(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    """Anyone who can write learning.policy-changes could otherwise hand the canary a
    deployment of their own: all traffic at once, judged to promote whatever it sees.
    The canary (and experiments) stage takes a change only when a trusted key signed it."""
    app = make_app("canary")
    stage = app.stages["canary"]
    doer = f"Forged{tag()}"
    await registered(db, signing_key, doer, 2)
    deployment_id, started = await canary_of(db, doer, 2, PATIENT)
    routing = started.deployment
    assert routing is not None
    loose = routing.model_copy(update={"steps": [1.0], "canary": DISGUISED})
    forged = started.model_copy(update={"deployment": loose, "signature": None})
    stranger = generate_key()  # signs well, but no keyring trusts it
    forged = forged.model_copy(
        update={
            "signature": sign_event(POLICY_CHANGE_KIND, forged.model_dump(mode="json"), stranger)
        }
    )
    progress = Progress(stage)
    async with app.agents["canary"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(CHANGES, started)
        await feed.event(CHANGES, forged)
        await progress.done(2)
    letters: list[DeadLetter] = sent(app, DLQ)
    assert [(d.stage, d.error_type, d.offset) for d in letters] == [("canary", "signature", 1)]
    assert letters[0].reason.startswith("the policy change's signature is refused: ")
    state = state_of(stage, doer, deployment_id)
    assert state["routing"]["steps"] == [0.5], state["routing"]
    assert state["routing"]["canary"]["min_sample_size"] == PATIENT.min_sample_size


async def test_a_state_read_before_a_newer_change_is_not_numbered_after_it(
    db: Any, signing_key: SigningKey
) -> None:
    """Two workers on one doer for a moment (a rebalance): the one that read the state
    before a newer change numbered it later and its older state won at the Router. The
    state is read again with its number, under the doer's lock."""
    from storage.deployments import numbered_change

    doer = f"Race{tag()}"
    stale = await registered(db, signing_key, doer, 2)  # v1 active, read by worker A
    promoted = await applied(
        db,
        PromotePolicy(
            doer=doer, actor="tests", reason="v2", policy_id=doer.lower(), version=2, force=True
        ),
    )
    assert promoted.applied
    newer = await numbered_change(db, await live_change(db, doer))  # worker B: v2
    late = await numbered_change(db, stale)  # worker A, after it
    assert newer is not None and late is not None
    assert (newer.version, late.version) == (2, 2)
    assert late.sequence is not None and newer.sequence is not None
    assert late.sequence > newer.sequence
    # A state still current keeps what it says of itself, numbered.
    again = await numbered_change(db, newer)
    assert again is not None and again.event_id == newer.event_id
    assert again.sequence == late.sequence + 1


async def test_what_others_leave_last_on_policy_changes_is_followed_by_the_doers_state(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    """Compaction keeps a doer's last record, and a starting Router serves only that: an
    older signed change sent again, or an empty record, left last on the topic would be
    served. The policy stage sends the doer's state again after such a record (once it
    has stayed last a while), and leaves its own newest record alone."""
    from agents.tails import STALE_AFTER_S

    app = make_app("policy")
    stage = app.stages["policy"]
    doer = f"Tail{tag()}"
    pid = doer.lower()
    for n in (1, 2):
        await applied(db, register(doer, signing_key, n))
    first = PromotePolicy(doer=doer, actor="ops", reason="v1", policy_id=pid, version=1, force=True)
    second = PromotePolicy(
        doer=doer, actor="ops", reason="v2", policy_id=pid, version=2, force=True
    )
    progress = Progress(stage)
    async with app.agents["policy"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(COMMANDS, signed(first))
        await feed.event(COMMANDS, signed(second))
        await progress.done(2, batched=False)
        old, newest = sent(app, CHANGES)
        assert (old.version, newest.version) == (1, 2)
        # Its own newest record read back: nothing to do.
        await feed.event(CHANGES, newest)
        await progress.done(3, batched=False)
        await stage.reassert_stale(time.monotonic() + STALE_AFTER_S + 1)
        assert len(sent(app, CHANGES)) == 2

        # The older record (validly signed) sent again by someone, then an empty one, then
        # two signed by a policy signer's key (trusted for versions, not for changes): one
        # numbered past the doer's last (no worker published it: numbers come from
        # PostgreSQL first), one at the doer's last number, as a review found.
        def by_signer(record: PolicyChange, step: int) -> PolicyChange:
            assert record.sequence is not None
            unsigned = record.model_copy(
                update={"sequence": record.sequence + step, "signature": None}
            )
            signature = sign_event(
                POLICY_CHANGE_KIND, unsigned.model_dump(mode="json"), signing_key
            )
            return unsigned.model_copy(update={"signature": signature})

        makers: list[Callable[[PolicyChange], PolicyChange | None]] = [
            lambda _: old,
            lambda _: None,
            lambda last: by_signer(last, 5),
            lambda last: by_signer(last, 0),
        ]
        for make in makers:
            replanted = make(newest)
            if replanted is None:
                await feed.put(CHANGES, doer.encode(), None)
            else:
                await feed.event(CHANGES, replanted)
            await progress.done(progress.events + 1, batched=False)
            await stage.reassert_stale(time.monotonic() + 1)  # not yet: it may be on its way
            before = len(sent(app, CHANGES))
            await stage.reassert_stale(time.monotonic() + STALE_AFTER_S + 1)
            again: list[PolicyChange] = sent(app, CHANGES)[before:]
            assert [(c.version, c.status) for c in again] == [(2, "active")], again
            assert again[0].sequence is not None
            assert again[0].sequence > newest.sequence
            newest = again[0]


async def test_a_workers_own_changes_are_not_sent_again_when_its_key_is_not_trusted(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey, tmp_path: Path
) -> None:
    """A worker whose signing key the keyring does not hold (never added, or revoked) is
    refused by Routers; its policy stage must not also read each of its own changes back
    as foreign and send it again every 30 s, forever."""
    from agents.tails import STALE_AFTER_S

    untrusted = tmp_path / "untrusted.pem"
    untrusted.write_bytes(generate_key().to_pem())
    app = make_app("policy", learnops_worker_signing_key_file=untrusted)
    stage = app.stages["policy"]
    doer = f"Own{tag()}"
    await applied(db, register(doer, signing_key, 1))
    promote = PromotePolicy(
        doer=doer, actor="ops", reason="v1", policy_id=doer.lower(), version=1, force=True
    )
    progress = Progress(stage)
    async with app.agents["policy"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(COMMANDS, signed(promote))
        await progress.done(1, batched=False)
        (own,) = sent(app, CHANGES)
        await feed.event(CHANGES, own)
        await progress.done(2, batched=False)
        await stage.reassert_stale(time.monotonic() + STALE_AFTER_S + 1)
    assert len(sent(app, CHANGES)) == 1


# ------------------------------------------------------------------------- bandit

ALLOCATIONS = "learning.bandit-allocations"


async def test_what_others_leave_last_on_the_allocations_is_followed_by_the_doers_shares(
    make_app: Callable[..., LearnopsApp], db: Any, signing_key: SigningKey
) -> None:
    """An orchestrator's client that starts reads only the record compaction kept for a
    doer: an older signed allocation sent again (shares from before an option was
    excluded), a forged or an empty record left last would route its tasks. The bandit
    stage sends the doer's allocations in force again after such a record, once it has
    stayed last a while, and leaves its own newest record alone."""
    from agents.tails import STALE_AFTER_S
    from learnops.demo.bandit_scenario import TwoModelOrchestrator, control_artifact
    from models.bandit import BanditAllocations

    app = make_app("bandit")
    stage = app.stages["bandit"]
    doer = f"Shares{tag()}"
    await applied(db, register(doer, signing_key, 1, control_artifact()))
    await applied(
        db,
        PromotePolicy(
            doer=doer, actor="tests", reason="v1", policy_id=doer.lower(), version=1, force=True
        ),
    )
    config = app.learning
    orchestrator = TwoModelOrchestrator(lambda *_: None, {}, doers=(doer,), run_prefix=tag())
    results = [
        score_bundle(orchestrator.bundle(doer, policy=(doer.lower(), 1)), config.weights,
                     config.objectives)
        for _ in range(config.bandit.every)
    ]  # fmt: skip
    progress = Progress(stage)
    async with app.agents["bandit"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(RESULTS, results[0])
        await progress.done(1)
        for result in results[1:]:
            await feed.event(RESULTS, result)
        await progress.done(len(results))
        first, newest = sent(app, ALLOCATIONS)  # the version's start, its first reallocation
        assert newest.sequence > first.sequence and newest.signature is not None
        # Its own newest record read back: nothing to do.
        await feed.event(ALLOCATIONS, newest)
        await progress.done(progress.events + 1)
        await stage.reassert_stale(time.monotonic() + STALE_AFTER_S + 1)
        assert len(sent(app, ALLOCATIONS)) == 2
        stranger = generate_key()
        forged = newest.model_copy(update={"sequence": newest.sequence + 5, "signature": None})
        forged = forged.model_copy(
            update={
                "signature": sign_event(
                    "bandit-allocations", forged.model_dump(mode="json"), stranger
                )
            }
        )
        # The same sequence with the other freeze flag, signed by the worker: what a
        # record from before a freeze (which keeps the sequence) looks like sent again.
        flipped = stage._signed(
            newest.model_copy(update={"frozen": not newest.frozen, "signature": None})
        )
        for replanted in (first, None, forged, flipped):
            if replanted is None:
                await feed.put(ALLOCATIONS, doer.encode(), None)
            else:
                await feed.event(ALLOCATIONS, replanted)
            await progress.done(progress.events + 1)
            await stage.reassert_stale(time.monotonic() + 1)  # not yet: it may be on its way
            before = len(sent(app, ALLOCATIONS))
            await stage.reassert_stale(time.monotonic() + STALE_AFTER_S + 1)
            again: list[BanditAllocations] = sent(app, ALLOCATIONS)[before:]
            fields = {"event_id", "occurred_at", "signature"}
            assert [a.model_dump(exclude=fields) for a in again] == [
                newest.model_dump(exclude=fields)
            ], again
            assert again[0].signature is not None


# ------------------------------------------------------------------------- grants


@pytest.mark.parametrize("stage_name", ["crl", "dead_letters"])
async def test_a_role_without_its_grants_halts_the_stage_and_dead_letters_nothing(
    make_app: Callable[..., LearnopsApp], role_urls: dict[str, str], stage_name: str
) -> None:
    """A worker run as a role that may only read (or after a migration whose grants were not
    applied) dead-lettered every valid run and committed past them. No input causes that:
    the stage stops at once, its input unacked, and says what to check."""
    from agents.health import readiness
    from storage.pool import create_pool

    assert "reader" in role_urls, "the tests need scripts/postgres.sh's learnops_reader login"
    reader = await create_pool(role_urls["reader"], min_size=1, max_size=2)
    try:
        app = make_app(stage_name)
        app.use_pool(reader)
        stage = app.stages[stage_name]
        doer = f"Grants{tag()}"
        orchestrator = Orchestrator(seed=3, doers=(doer,), run_prefix=f"grants-{tag()}")
        progress = Progress(stage)
        halted = {"stage": stage_name}
        async with app.agents[stage_name].test_context() as agent:
            feed = Feed(app, agent)
            if stage_name == "crl":
                for bundle in orchestrator.bundles(3, doer=doer):
                    await feed.event(RUNS, bundle)
            else:
                letter = DeadLetter(
                    doer=doer,
                    stage="crl",
                    error_type="schema",
                    reason="a bad bundle",
                    value_b64=base64.b64encode(b"{").decode(),
                    topic=RUNS,
                    partition=0,
                    offset=7,
                )
                await feed.event(DLQ, letter)
            await until(
                lambda: REGISTRY.get_sample_value("learnops_stage_halted", halted) == 1,
                what=f"the {stage_name} stage to halt",
            )
            assert progress.events >= 1 and progress.finished == 0  # taken, never acked
            problems = await readiness(app)
            assert f"the {stage_name} stage has halted (stage_halted in the log)" in problems
        assert sent(app, DLQ) == []
    finally:
        await reader.close()
