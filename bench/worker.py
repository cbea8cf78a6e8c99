"""The whole worker under a realistic mix, at a ladder of rates: where does it stop keeping up?

    KAFKA_BOOTSTRAP_SERVERS=… DATABASE_URL=… python bench/worker.py \\
        [--rates 50,100,170,300,500,1000] [--seconds 60] [--split] [--doers 40]

Set-up: a database of its own (created beside DATABASE_URL's, migrated, dropped
at the end), the topics, the worker's operator and signing keys, and worker
processes as users run them: one `learnops worker` with every stage, or with
``--split`` the stages spread over four processes (``LEARNOPS_STAGES``: crl ·
curator · datasets · the rest), each with its own consumer group. A live canary
runs on one doer (two signed versions of equal quality, so it keeps reporting
without deciding), whose tasks carry their learning.task-routed events.

For each rate the simulated orchestrator publishes, paced in 20 ms ticks, run
bundles with human notes (PII, near-duplicates, copies of our own outputs) for
``--doers`` doers, a tenth of them the canary doer's routed tasks, for
``--seconds``. Meanwhile it measures:

* consumer lag per topic and consumer group every 2 s (the stages that read a
  topic share its lag within a group);
* publish → visible effect, per run: its record on learning.crl-computed; its
  samples in PostgreSQL (``dataset_samples``, polled every 100 ms for one run in
  ten); the next skill card of its doer after its CRL result; for the canary,
  the CRL result → the decision whose counts include the run;
* worker CPU (share of one core) and peak RSS from /proc.

A rate is *bounded* when, for every topic, the lag at the end of the window is
under six seconds of that topic's traffic (lag is read from committed offsets,
which move every 2.8 s commit interval), and is not both above two seconds of
traffic and growing over the window's last two thirds by more than 5 % of the
topic's rate per second. The ladder stops at
the first rate that is not (``--all`` runs every rate). Each rate then drains
before the next starts. The baseline in the same run is the rate the
orchestrator itself published (what the broker and the load generator alone
sustain on this machine).

``--backlog N`` then publishes N runs at once and times until every stage has
committed them all: the worker's capacity with a backlog's large batches, a
steadier figure than the ladder's pass or fail (``--rates ''`` runs it alone).

Prints a table (``--markdown FILE`` also writes it); asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agents.app import STAGES, create_app  # noqa: E402
from agents.settings import Settings  # noqa: E402
from agents.topics import ensure, load_catalog  # noqa: E402
from learning.signing import generate_key  # noqa: E402
from learnops.client.router import Router  # noqa: E402
from learnops.demo.canary_scenario import CanaryScenario  # noqa: E402
from learnops.simulation.orchestrator import NoteMix, Orchestrator  # noqa: E402
from models.commands import CanarySettings  # noqa: E402
from storage.migrate import migrate  # noqa: E402
from storage.operator_keys import add_operator_key, grant_role  # noqa: E402
from storage.pool import create_pool  # noqa: E402
from storage.signing_keys import add_signing_key  # noqa: E402
from tests.services import (  # noqa: E402
    WorkerProcess,
    drop_database,
    free_port,
    start_after_inputs,
)

console = Console(width=220)
TICK_S = 0.02
COMMIT_SLACK_S = 6.0
SPLIT = ("crl", "curator", "datasets")  # each alone; every other stage in a fourth process
WATCHED = (
    "learning.run-completed",
    "learning.task-routed",
    "learning.crl-computed",
    "learning.samples",
    "learning.alerts",
)


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def consumed_topics(stages: str) -> set[str]:
    """The topics the agents of these stages read (from an app built, not started, for them)."""
    settings = Settings(kafka_bootstrap_servers="localhost:9092", database_url="postgresql:///x")
    app = create_app(settings, stages=stages.split(","))
    return {topic for agent in app.agents.values() for topic in agent.channel.topics}


def stage_groups(split: bool, alone: tuple[str, ...] = SPLIT) -> list[str]:
    """The LEARNOPS_STAGES of each worker process: each of ``alone``, then the rest, when split."""
    if not split:
        return [",".join(STAGES)]
    unknown = set(alone) - set(STAGES)
    if unknown:
        raise SystemExit(f"--alone names no stage: {', '.join(sorted(unknown))}")
    rest = ",".join(name for name in STAGES if name not in alone)
    return [*alone, rest]


@dataclass
class Window:
    """What one rate's window measured."""

    rate: int
    published: int = 0
    publish_s: float = 0.0
    crl_latency: list[float] = field(default_factory=list)
    sample_latency: list[float] = field(default_factory=list)
    card_latency: list[float] = field(default_factory=list)
    decision_latency: list[float] = field(default_factory=list)
    crl_in_window: int = 0
    lag: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    topic_rate: dict[str, float] = field(default_factory=dict)
    cpu: float = 0.0
    rss_mb: float = 0.0
    drain_s: float | None = None

    def bounded(self) -> tuple[bool, str]:
        """Whether every topic's lag stayed bounded, and which did not."""
        worst = []
        for name, points in self.lag.items():
            if len(points) < 4:
                continue
            rate = max(self.topic_rate.get(name.split(" ")[0], 0.0), 1.0)
            tail = [p for p in points if p[0] >= points[-1][0] * 1 / 3]
            slope = _slope(tail)
            end = points[-1][1]
            # Lag is read from committed offsets, which move every commit interval
            # (Faust's 2.8 s) and after a batch: a few seconds of traffic is normal.
            growing = slope > 0.05 * rate and end > max(50, 2 * rate)
            if end > max(200, COMMIT_SLACK_S * rate) or growing:
                worst.append(f"{name} lag {end} ({slope:+.0f}/s)")
        return (not worst, "; ".join(worst))


@dataclass
class Capacity:
    """What the backlog measured: runs, seconds to publish them and to drain them, CPU seconds."""

    runs: int
    published_s: float
    drained_s: float | None
    cpu_s: float

    def line(self) -> str:
        if self.drained_s is None:
            return f"backlog of {self.runs} runs: not drained within --drain seconds"
        return (
            f"backlog of {self.runs} runs: published in {self.published_s:.1f} s, every stage "
            f"done in {self.drained_s:.1f} s: {self.runs / self.drained_s:.0f} runs/s, "
            f"worker CPU {self.cpu_s / self.drained_s:.2f} cores, "
            f"{1000 * self.cpu_s / self.runs:.2f} ms/run"
        )


def _slope(points: list[tuple[float, int]]) -> float:
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [float(p[1]) for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "–"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.0f}"


class Proc:
    """CPU seconds and RSS of a process and its live children (curation processes), from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks = os.sysconf("SC_CLK_TCK")

    def _pids(self) -> list[int]:
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(stat[1]) == self.pid:
                        children.append(int(entry.name))
        return [self.pid, *children]

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / self.ticks
        return total

    def rss_mb(self) -> float:
        total = 0.0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        return total


class Bench:
    """The broker, the database, the worker processes and the probes of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        self.server_dsn = os.environ["DATABASE_URL"]
        self.tag = uuid.uuid4().hex[:6]
        self.database = f"learnops_bench_{self.tag}"
        self.dsn = _with_database(self.server_dsn, self.database)
        self.workers: list[WorkerProcess] = []
        self.groups: list[str] = []  # one consumer group (app id) per stage group
        self.reads: list[set[str]] = []  # the watched topics each group reads
        self.pool: Any = None
        self.producer: Any = None
        self.published_at: dict[str, float] = {}  # run id → monotonic publish time
        self.doer_of: dict[str, str] = {}
        self.crl_at: dict[str, float] = {}  # run id → arrival of its CRL result
        self.tracers: set[str] = set()
        self.window: Window | None = None
        self.canary_runs: list[float] = []  # arrivals of the canary doer's CRL results, in order
        self.canary_doer = f"BenchCanary{self.tag}"
        self.doers = [f"Bench{self.tag}D{i:03d}" for i in range(args.doers)]
        self.pending_cards: dict[str, list[str]] = defaultdict(list)

    # -- set-up -------------------------------------------------------------

    async def setup(self) -> None:
        admin = await asyncpg.connect(self.server_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        self.pool = await create_pool(self.dsn, min_size=1, max_size=4)
        await migrate(self.pool)
        self.keys = Path(tempfile.mkdtemp(prefix="bench-worker-keys-"))
        operator, signer = generate_key(), generate_key()
        await add_operator_key(self.pool, operator.public_key, operator="worker", actor="bench")
        await grant_role(self.pool, operator.key_id, "*", "operator", actor="bench")
        await add_signing_key(self.pool, signer.public_key, created_by="bench", note="bench worker")
        for name, key in (("worker.pem", operator), ("signing.pem", signer)):
            (self.keys / name).write_bytes(key.to_pem())
        self.settings = Settings(
            kafka_bootstrap_servers=self.bootstrap,
            database_url=self.dsn,
            learnops_worker_key=str(self.keys / "worker.pem"),
            learnops_worker_signing_key_file=str(self.keys / "signing.pem"),
        )
        await ensure(self.settings, load_catalog(REPO / "topics.yaml"))
        for stages in stage_groups(self.args.split, self.args.alone):
            env = {
                **os.environ,
                "DATABASE_URL": self.dsn,
                "LEARNOPS_WEB_PORT": str(free_port()),
                "LEARNOPS_DATA_DIR": tempfile.mkdtemp(prefix="bench-worker-data-"),
                "LEARNOPS_WORKER_KEY": str(self.keys / "worker.pem"),
                "LEARNOPS_WORKER_SIGNING_KEY_FILE": str(self.keys / "signing.pem"),
                "LEARNOPS_STAGES": stages,
            }
            if self.args.canary_fetch_min_bytes is not None:
                # Only the canary's process: the others keep the worker's default.
                env.pop("LEARNOPS_FETCH_MIN_BYTES", None)
                if stages == "canary":
                    env["LEARNOPS_FETCH_MIN_BYTES"] = str(self.args.canary_fetch_min_bytes)
            for variable in ("LEARNOPS_MIGRATE_DATABASE_URL", "LEARNOPS_KEYADMIN_DATABASE_URL"):
                env.pop(variable, None)
            group = f"bench-{self.tag}-{len(self.groups)}"
            self.groups.append(group)
            self.reads.append(consumed_topics(stages) & set(WATCHED))
            for replica in range(self.args.replicas):
                env = {
                    **env,
                    "LEARNOPS_WEB_PORT": str(free_port()),
                    "LEARNOPS_DATA_DIR": tempfile.mkdtemp(prefix="bench-worker-data-"),
                }
                log = Path(tempfile.mkdtemp(prefix="bench-worker-log-")) / "worker.log"
                worker = WorkerProcess(env=env, log_path=log, app_id=group)
                if replica == 0:
                    await start_after_inputs(worker)
                else:
                    await asyncio.to_thread(worker.start)
                self.workers.append(worker)
        console.print(
            f"{len(self.workers)} worker process(es), {self.args.replicas} per group: "
            + " · ".join(s for s in stage_groups(self.args.split, self.args.alone))
            + (
                ""
                if self.args.canary_fetch_min_bytes is None
                else f" (canary: LEARNOPS_FETCH_MIN_BYTES={self.args.canary_fetch_min_bytes})"
            )
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, max_batch_size=256 << 10
        )
        await self.producer.start()
        await self._start_canary()

    async def _start_canary(self) -> None:
        key = generate_key()
        await add_signing_key(self.pool, key.public_key, created_by="bench", note="bench canary")
        self.router_cm = Router(**self.settings.kafka_connection(), allow_unverified=True)
        router = await self.router_cm.__aenter__()
        self.scenario = CanaryScenario(
            self.pool, self.producer, router, self.canary_doer, key, {1: 0.8, 2: 0.8}
        )
        await self.scenario.setup()
        await self.scenario.start_canary(
            2,
            # A report every 10 counted runs: at 170 runs/s (a tenth of them the canary's)
            # that is ~1.7 decisions a second, enough for a p99 over a 45 s window.
            CanarySettings(min_sample_size=1_000_000, report_every=10),
            [0.5],
        )
        self.canary_sim = self.scenario.simulator()

    async def close(self) -> None:
        for worker in self.workers:
            await asyncio.to_thread(worker.stop)
        if self.producer is not None:
            await self.producer.stop()
        with contextlib.suppress(Exception):
            await self.router_cm.__aexit__(None, None, None)
        if self.pool is not None:
            await self.pool.close()
        await drop_database(self.server_dsn, self.database)

    # -- load ---------------------------------------------------------------

    def messages(self, n: int, seed: int, name: str) -> list[tuple[str, bytes, bytes, str | None]]:
        """``n`` runs' messages: (topic, key, value, run id or None), in publish order."""
        orchestrator = Orchestrator(
            seed=seed, doers=tuple(self.doers), run_prefix=f"b{self.tag}-{name}"
        )
        now = datetime.now(UTC)
        out: list[tuple[str, bytes, bytes, str | None]] = []
        for i in range(n):
            if i % 10 == 9:
                for event in self.canary_sim.task(self.canary_doer):
                    topic = (
                        "learning.task-routed"
                        if type(event).__name__ == "TaskRouted"
                        else "learning.run-completed"
                    )
                    run = getattr(event, "run_id", None) if topic.endswith("completed") else None
                    out.append((topic, event.doer.encode(), event.to_json(), run))
                    if run:
                        self.doer_of[run] = event.doer
                continue
            doer = self.doers[i % len(self.doers)]
            bundle = orchestrator.bundle(doer, occurred_at=now, notes=NoteMix())
            out.append(("learning.run-completed", doer.encode(), bundle.to_json(), bundle.run_id))
            self.doer_of[bundle.run_id] = doer
        return out

    async def publish(
        self, rate: int, messages: list[tuple[str, bytes, bytes, str | None]]
    ) -> None:
        """Publish ``messages`` at ``rate`` runs per second, in ticks."""
        per_tick = rate * TICK_S
        started = time.monotonic()
        owed = 0.0
        i = 0
        tracer_every = 10
        while i < len(messages):
            owed += per_tick
            futures = []
            while owed >= 1 and i < len(messages):
                topic, key, value, run = messages[i]
                i += 1
                if run is not None:
                    owed -= 1
                    self.published_at[run] = time.monotonic()
                    if i % tracer_every == 0:
                        self.tracers.add(run)
                futures.append(await self.producer.send(topic, key=key, value=value))
            ticks = (time.monotonic() - started) / TICK_S
            await asyncio.sleep(max(0.0, started + (int(ticks) + 1) * TICK_S - time.monotonic()))
            if futures:
                await asyncio.gather(*futures)
        assert self.window is not None
        self.window.publish_s = time.monotonic() - started

    # -- probes -------------------------------------------------------------

    async def follow(self, stop: asyncio.Event) -> None:
        """Read crl-computed, skill cards and decisions from their ends; note what arrives."""
        consumer = AIOKafkaConsumer(
            "learning.crl-computed",
            "learning.skill-cards",
            "learning.decisions",
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=5000)
                now = time.monotonic()
                for tp, records in batch.items():
                    for record in records:
                        self._arrived(tp.topic, record.value, now)
        finally:
            await consumer.stop()

    def _arrived(self, topic: str, value: bytes, now: float) -> None:
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        window = self.window
        if topic == "learning.crl-computed":
            run = body.get("run_id")
            published = self.published_at.get(run)
            if published is None or run in self.crl_at:
                return
            self.crl_at[run] = now
            if window is not None:
                window.crl_latency.append(now - published)
                window.crl_in_window += 1
            if body.get("doer") == self.canary_doer and body.get("deployment_id"):
                self.canary_runs.append(now)
            if run in self.tracers:
                self.pending_cards[body.get("doer", "")].append(run)
        elif topic == "learning.skill-cards":
            for run in self.pending_cards.pop(body.get("doer", ""), []):
                if window is not None:
                    window.card_latency.append(now - self.published_at[run])
        elif (
            topic == "learning.decisions"
            and body.get("deployment_id") == self.scenario.deployment_id
        ):
            report = body.get("report") or {}
            counted = int(report.get("control_count", 0)) + int(report.get("candidate_count", 0))
            if window is not None and 0 < counted <= len(self.canary_runs):
                window.decision_latency.append(now - self.canary_runs[counted - 1])

    async def poll_samples(self, stop: asyncio.Event) -> None:
        """Every 100 ms: which tracer runs have their samples stored in PostgreSQL."""
        seen: set[str] = set()
        while not stop.is_set():
            pending = list(self.tracers - seen)
            if pending:
                rows = await self.pool.fetch(
                    "SELECT DISTINCT run_id FROM dataset_samples WHERE run_id = ANY($1::text[])",
                    pending,
                )
                now = time.monotonic()
                for row in rows:
                    seen.add(row["run_id"])
                    if self.window is not None:
                        self.window.sample_latency.append(now - self.published_at[row["run_id"]])
            await asyncio.sleep(0.1)

    async def sample_lag(self, stop: asyncio.Event, started: float) -> None:
        """Every 2 s: each group's lag per watched topic, and each topic's end offsets."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await admin.start()
        await reader.start()
        first_ends: dict[str, int] = {}
        try:
            while not stop.is_set():
                t = time.monotonic() - started
                ends: dict[Any, int] = {}
                for number, group in enumerate(self.groups):
                    offsets = await admin.list_consumer_group_offsets(group)
                    tps = [tp for tp in offsets if tp.topic in self.reads[number]]
                    ends.update(await reader.end_offsets(tps) if tps else {})
                    per: dict[str, int] = defaultdict(int)
                    for tp in tps:
                        per[tp.topic] += max(0, ends[tp] - offsets[tp].offset)
                    for topic, lag in per.items():
                        name = topic.split(".", 1)[1]
                        if len(self.groups) > 1:
                            first = stage_groups(True, self.args.alone)[number].split(",")[0]
                            name = f"{name} ({first}…)"
                        assert self.window is not None
                        self.window.lag[name].append((t, lag))
                totals: dict[str, int] = defaultdict(int)
                for tp, end in ends.items():
                    totals[tp.topic] += end
                for topic, end in totals.items():
                    name = topic.split(".", 1)[1]
                    first_ends.setdefault(name, end)
                    if t > 0 and self.window is not None:
                        self.window.topic_rate[name] = (end - first_ends[name]) / max(t, 1e-3)
                await asyncio.sleep(2.0)
        finally:
            await reader.stop()
            await admin.close()

    # -- one rate -----------------------------------------------------------

    async def run_rate(self, rate: int) -> Window:
        console.print(f"[bold]{rate} runs/s[/bold] for {self.args.seconds} s: generating …")
        messages = await asyncio.to_thread(
            self.messages, rate * self.args.seconds, rate, f"r{rate}"
        )
        window = Window(rate=rate, published=sum(1 for m in messages if m[3]))
        self.window = window
        procs = [Proc(w.process.pid) for w in self.workers if w.process]
        cpu0 = [p.cpu_s() for p in procs]
        stop = asyncio.Event()
        started = time.monotonic()
        probes = [
            asyncio.create_task(self.sample_lag(stop, started)),
            asyncio.create_task(self.rss(stop, procs, window)),
        ]
        await self.publish(rate, messages)
        window.cpu = sum(p.cpu_s() - c for p, c in zip(procs, cpu0, strict=True)) / max(
            1e-3, time.monotonic() - started
        )
        await asyncio.sleep(2.1)  # one more lag sample at the window's end
        stop.set()
        await asyncio.gather(*probes)
        self.window = None
        # Drain before the next rate; latencies still arriving are this rate's.
        drained = time.monotonic()
        runs = [m[3] for m in messages if m[3]]
        while time.monotonic() - drained < self.args.drain:
            if all(r in self.crl_at for r in runs):
                window.drain_s = time.monotonic() - drained
                break
            self.window = window
            await asyncio.sleep(0.5)
        self.window = None
        await asyncio.sleep(3.0)
        return window

    async def lag_total(self, admin: Any, reader: Any) -> int:
        """Records not yet committed, summed over every group's watched topics."""
        total = 0
        for number, group in enumerate(self.groups):
            offsets = await admin.list_consumer_group_offsets(group)
            tps = [tp for tp in offsets if tp.topic in self.reads[number]]
            ends = await reader.end_offsets(tps) if tps else {}
            total += sum(max(0, ends[tp] - offsets[tp].offset) for tp in tps)
        return total

    async def run_backlog(self, runs: int) -> Capacity:
        """Publish ``runs`` runs at once and time until every stage has committed all of them.

        The worker's capacity with the batches a backlog gives (the ladder's rates
        give smaller ones): from the first publish until every run has its CRL
        result and no group has an uncommitted record on a watched topic. The
        load generator publishes as fast as it can meanwhile, on the same cores.
        """
        console.print(f"[bold]backlog of {runs} runs[/bold]: generating …")
        messages = await asyncio.to_thread(self.messages, runs, 1, "backlog")
        procs = [Proc(w.process.pid) for w in self.workers if w.process]
        cpu0 = [p.cpu_s() for p in procs]
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await admin.start()
        await reader.start()
        try:
            started = time.monotonic()
            for _topic, _key, _value, run in messages:
                if run is not None:
                    self.published_at[run] = started
            for chunk in range(0, len(messages), 1000):
                futures = [
                    await self.producer.send(topic, key=key, value=value)
                    for topic, key, value, _run in messages[chunk : chunk + 1000]
                ]
                await asyncio.gather(*futures)
            published_s = time.monotonic() - started
            ids = [m[3] for m in messages if m[3]]
            done: float | None = None
            while time.monotonic() - started < self.args.drain + published_s:
                if all(r in self.crl_at for r in ids) and await self.lag_total(admin, reader) == 0:
                    done = time.monotonic() - started
                    break
                await asyncio.sleep(0.5)
            cpu = sum(p.cpu_s() - c for p, c in zip(procs, cpu0, strict=True))
            if done is None:
                missing = sum(1 for r in ids if r not in self.crl_at)
                lag = await self.lag_total(admin, reader)
                console.print(f"  not drained: {missing} runs without a CRL result, lag {lag}")
        finally:
            await reader.stop()
            await admin.close()
        return Capacity(len(ids), published_s, done, cpu)

    async def rss(self, stop: asyncio.Event, procs: list[Proc], window: Window) -> None:
        while not stop.is_set():
            window.rss_mb = max(window.rss_mb, sum(p.rss_mb() for p in procs))
            await asyncio.sleep(1.0)


def report(windows: list[Window], groups: list[str]) -> str:
    """The results as a markdown table (also printed)."""
    layout = (
        f"stages split over {len(groups)} processes ({' · '.join(groups)})"
        if len(groups) > 1
        else "one worker, every stage"
    )
    table = Table(title=f"bench/worker.py — {layout}")
    headers = [
        "runs/s offered",
        "published/s",
        "crl/s in window",
        "p50/p99 → crl (ms)",
        "p50/p99 → sample stored",
        "p50/p99 → skill card",
        "p50/p99 crl → canary decision (decisions)",
        "CPU (cores)",
        "CPU ms/run",
        "RSS MB",
        "drain s",
        "lag bounded",
    ]
    for h in headers:
        table.add_column(h, justify="right")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for w in windows:
        ok, why = w.bounded()
        row = [
            str(w.rate),
            f"{w.published / max(w.publish_s, 1e-3):.0f}",
            f"{w.crl_in_window / max(w.publish_s, 1e-3):.0f}",
            f"{_pct(w.crl_latency, 0.5)} / {_pct(w.crl_latency, 0.99)}",
            f"{_pct(w.sample_latency, 0.5)} / {_pct(w.sample_latency, 0.99)}",
            f"{_pct(w.card_latency, 0.5)} / {_pct(w.card_latency, 0.99)}",
            f"{_pct(w.decision_latency, 0.5)} / {_pct(w.decision_latency, 0.99)} "
            f"({len(w.decision_latency)})",
            f"{w.cpu:.2f}",
            f"{1000 * w.cpu * max(w.publish_s, 1e-3) / max(w.crl_in_window, 1):.1f}",
            f"{w.rss_mb:.0f}",
            "–" if w.drain_s is None else f"{w.drain_s:.1f}",
            "yes" if ok else f"no: {why}",
        ]
        table.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
    console.print(table)
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="50,100,170,300,500,1000")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument(
        "--drain", type=float, default=120.0, help="Seconds to wait for a rate to drain."
    )
    parser.add_argument("--doers", type=int, default=40)
    parser.add_argument("--split", action="store_true", help="Stages over four worker processes.")
    parser.add_argument(
        "--alone",
        type=lambda text: tuple(name for name in text.split(",") if name),
        default=SPLIT,
        help=f"With --split, the stages that run each in a process of its own "
        f"(default {','.join(SPLIT)}); every other stage shares one more.",
    )
    parser.add_argument(
        "--canary-fetch-min-bytes",
        type=int,
        help="LEARNOPS_FETCH_MIN_BYTES of the process that runs the canary alone "
        "(--split --alone …,canary); unset, the worker's default.",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="Worker processes per stage group, sharing its app id (scale-out).",
    )
    parser.add_argument("--all", action="store_true", help="Run every rate, bounded or not.")
    parser.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="After the ladder, publish this many runs at once and time every stage's drain.",
    )
    parser.add_argument("--markdown", type=Path, help="Also write the table here.")
    args = parser.parse_args()
    if args.canary_fetch_min_bytes is not None:
        if not (args.split and "canary" in args.alone):
            parser.error("--canary-fetch-min-bytes needs --split --alone …,canary")
        if not 1 <= args.canary_fetch_min_bytes <= 1024 * 1024:
            parser.error("--canary-fetch-min-bytes must be 1 to 1048576 (LEARNOPS_FETCH_MIN_BYTES)")
    bench = Bench(args)
    windows: list[Window] = []
    capacity: Capacity | None = None
    await bench.setup()
    stop = asyncio.Event()
    followers = [
        asyncio.create_task(bench.follow(stop)),
        asyncio.create_task(bench.poll_samples(stop)),
    ]
    try:
        await asyncio.sleep(3.0)
        for rate in (int(r) for r in args.rates.split(",") if r):
            window = await bench.run_rate(rate)
            windows.append(window)
            ok, why = window.bounded()
            console.print(f"  {rate}/s: {'bounded' if ok else 'NOT bounded: ' + why}")
            if not ok and not args.all:
                break
        if args.backlog:
            capacity = await bench.run_backlog(args.backlog)
    finally:
        stop.set()
        await asyncio.gather(*followers, return_exceptions=True)
        text = report(windows, stage_groups(args.split, args.alone))
        if capacity is not None:
            console.print(capacity.line())
            text += "\n\n" + capacity.line()
        if args.markdown:
            args.markdown.write_text(text + "\n")
        for worker in bench.workers:
            console.print(f"worker log: {worker.log_path}")
        await bench.close()


if __name__ == "__main__":
    asyncio.run(main())
