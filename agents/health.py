"""The worker's health, readiness and Prometheus pages, and the metrics every stage reports.

* ``GET /healthz``: the process answers (200).
* ``GET /readyz``: 200 once table recovery has finished, no rebalance is under
  way, PostgreSQL answers ``SELECT 1`` and the Kafka cluster answers a metadata
  request; 503 with the reasons otherwise. Orchestrators route and restart on it.
* ``GET /metrics``: Prometheus text: the project's counters (this module,
  agents/dlq.py, agents/stage.py, storage/pool.py) and Faust's sensor
  (agents/monitor.py: messages received and sent per topic, commit latency,
  rebalances, assignments). No label grows with
  the data: stages, topics, partitions, error types and actions only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from aiokafka.errors import KafkaError
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agents.faust_internals.introspection import committed_offsets, kafka_client
from agents.monitor import WorkerMonitor

log = logging.getLogger("learnops.health")

EVENTS_IN = Counter(
    "learnops_events_in_total", "Events a stage took from its input topics.", ["stage"]
)
EVENTS_OUT = Counter("learnops_events_out_total", "Events the worker sent, by topic.", ["topic"])
BATCH_SIZE = Histogram(
    "learnops_batch_size",
    "Events per batch, by stage.",
    ["stage"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
BATCH_SECONDS = Histogram(
    "learnops_batch_duration_seconds",
    "Time to process one batch (or one event, for stages that take them one by one).",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
DECISIONS = Counter(
    "learnops_canary_decisions_total", "Canary decisions emitted, by action.", ["action"]
)
DECISION_SECONDS = Histogram(
    "learnops_canary_decision_seconds",
    "From a CRL result's Kafka timestamp to the canary decision that counts it, as sent.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CONSUMER_LAG = Gauge(
    "learnops_consumer_lag",
    "Records between the partition's end and its committed offset, or its log start "
    "before the first commit (at the last scrape).",
    ["topic", "partition"],
)
RECOVERING = Gauge(
    "learnops_table_recovery",
    "1 while the worker recovers its tables from their changelogs or rebalances.",
)
GC_PAUSES = Histogram(
    "learnops_gc_pause_seconds",
    "How long the worker stood still for each garbage collection, by generation.",
    ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
READY = Gauge(
    "learnops_ready",
    "1 when the worker is ready as /readyz says (checked at every scrape), else 0.",
)
DEPENDENCY_UP = Gauge(
    "learnops_dependency_up",
    "1 when PostgreSQL or Kafka answered the readiness check within 2 s (at the last "
    "scrape or /readyz), else 0: an outage shows here with no traffic flowing.",
    ["dependency"],
)
READY_CHECK_S = 2.0  # how long /readyz waits for PostgreSQL or Kafka


class GCPauses:
    """A ``gc.callbacks`` entry that times every collection into ``learnops_gc_pause_seconds``.

    A collection stops the event loop: its pause is added to the latency of every
    event waiting meanwhile, and the oldest generation's grows with the objects
    the worker keeps (tables in the memory store).
    """

    def __init__(self) -> None:
        self.started = 0.0
        self.pauses = [GC_PAUSES.labels(str(generation)) for generation in range(3)]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses[info["generation"]].observe(time.perf_counter() - self.started)


def watch_gc_pauses() -> None:
    """Time the process's garbage collections from now on (once per process)."""
    if not any(isinstance(callback, GCPauses) for callback in gc.callbacks):
        gc.callbacks.append(GCPauses())


async def readiness(app: Any) -> list[str]:
    """Why the worker is not ready; an empty list when it is."""
    problems = [
        f"the {name} stage has halted (stage_halted in the log)"
        for name, stage in app.stages.items()
        if stage.halted
    ]
    if app.in_recovery or not app.tables.recovery.completed.is_set():
        problems.append("tables are recovering from their changelogs")
    if app.rebalancing:
        problems.append("a rebalance is under way")
    # Both at once: a scrape during an outage waits for one timeout, not two.
    for found in await asyncio.gather(_postgres_problem(app), _kafka_problem(app)):
        if found is not None:
            problems.append(found)
    return problems


async def _postgres_problem(app: Any) -> str | None:
    """Why PostgreSQL is not usable (setting ``learnops_dependency_up``), or None."""
    if not app.pool_open:
        return "the PostgreSQL pool is not open yet"
    problem = None
    try:
        # Through the stages' pool: a pool whose every connection stays busy for the
        # whole wait reads as not answering too.
        await asyncio.wait_for(app.pool.fetchval("SELECT 1"), READY_CHECK_S)
    except (OSError, TimeoutError) as exc:
        problem = f"PostgreSQL does not answer ({type(exc).__name__})"
    except Exception as exc:  # noqa: BLE001 - any driver error means "not ready", named
        problem = f"PostgreSQL refused a query ({type(exc).__name__})"
    DEPENDENCY_UP.labels("postgres").set(0 if problem else 1)
    return problem


async def _kafka_problem(app: Any) -> str | None:
    """Why Kafka is not usable (setting ``learnops_dependency_up``), or None."""
    client = kafka_client(app)
    if client is None:
        return "the Kafka producer has not started"
    problem = None
    try:
        await asyncio.wait_for(client.fetch_all_metadata(), READY_CHECK_S)
    except Exception as exc:  # noqa: BLE001 - any client error means "not ready", named
        problem = f"Kafka does not answer ({type(exc).__name__})"
    DEPENDENCY_UP.labels("kafka").set(0 if problem else 1)
    return problem


#: How long a scrape waits for log starts it asked for (it never asks twice at once).
LOG_START_WAIT_S = 1.0
#: How long a partition's log start is taken as known (retention moves it slowly).
LOG_START_TTL_S = 60.0


async def observe_lag(app: Any) -> None:
    """Set the lag gauge of every input partition this worker actively owns.

    The lag is the partition's end minus its committed offset; a partition
    with no commit yet (a new group, or one stuck before its first commit)
    lags by everything from its log start, where the group begins reading,
    so it has a series too. While the worker rebalances or recovers its
    tables, Faust has dropped the committed offsets it knew: only committed
    partitions are shown then, never a log start in place of an offset about
    to be read from the broker. A partition it no longer has (a rebalance
    gave it to another worker) loses its series: left, it would show the lag
    of the moment it moved, frozen.
    """
    consumer = app.consumer
    # Per app: tests run several in one process, each with its own partitions.
    previous: set[tuple[str, str]] = getattr(app, "_learnops_lag_series", set())
    positions = dict(committed_offsets(app))
    if not (app.rebalancing or app.in_recovery):
        uncommitted = [tp for tp in _owned_inputs(app) if tp not in positions]
        positions.update(await _log_starts(app, uncommitted))
    seen: set[tuple[str, str]] = set()
    for tp, position in positions.items():
        try:
            end = consumer.highwater(tp)
        except (AssertionError, KafkaError):  # aiokafka's: moved away under the scrape
            continue
        if end is not None:
            labels = (tp.topic, str(tp.partition))
            CONSUMER_LAG.labels(*labels).set(max(0, end - position))
            seen.add(labels)
    for labels in previous - seen:
        CONSUMER_LAG.remove(*labels)
    app._learnops_lag_series = seen


async def _log_starts(app: Any, partitions: list[Any]) -> dict[Any, int]:
    """The known log starts of ``partitions``; asks the broker for the missing or stale.

    One request at a time: Faust runs it on its consumer thread, beside the
    fetches and commits, so a broker that does not answer holds at most one
    of that thread's workers, however often Prometheus scrapes; the scrape
    waits for it up to ``LOG_START_WAIT_S`` and otherwise shows those
    partitions at a later scrape.
    """
    if not partitions:
        return {}
    known: dict[Any, tuple[int, float]] = getattr(app, "_learnops_log_starts", {})
    app._learnops_log_starts = known
    now = time.monotonic()
    stale = [tp for tp in partitions if tp not in known or now - known[tp][1] >= LOG_START_TTL_S]
    asking: asyncio.Task[None] | None = getattr(app, "_learnops_log_start_ask", None)
    if stale and (asking is None or asking.done()):

        async def ask() -> None:
            try:
                starts = await app.consumer.earliest_offsets(*stale)
            except (KafkaError, AssertionError) as exc:  # the next stale scrape asks again
                log.debug("lag_log_start_unknown partitions=%d error=%r", len(stale), exc)
                return
            at = time.monotonic()
            known.update({tp: (start, at) for tp, start in starts.items() if start is not None})

        asking = app._learnops_log_start_ask = asyncio.create_task(ask())
    if asking is not None and not asking.done():
        await asyncio.wait({asking}, timeout=LOG_START_WAIT_S)
    return {tp: known[tp][0] for tp in partitions if tp in known}


def _owned_inputs(app: Any) -> list[Any]:
    """The input partitions (no table changelog) this worker is assigned as active."""
    assignor = getattr(app, "assignor", None)
    if assignor is None:
        return []
    changelogs = app.tables.changelog_topics
    return [tp for tp in assignor.assigned_actives() if tp.topic not in changelogs]


def register_pages(app: Any) -> None:
    """Serve /healthz, /readyz and /metrics on the worker's web server."""
    # Faust's sensor in a registry of this app's own: tests build several apps in
    # one process, and Prometheus refuses a metric registered twice.
    faust_registry = CollectorRegistry(auto_describe=True)
    app.monitor = WorkerMonitor(registry=faust_registry)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        problems = await readiness(app)
        if problems:
            return web.json({"status": "not ready", "reasons": problems}, status=503)
        return web.json({"status": "ready"})

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        RECOVERING.set(1 if app.in_recovery or app.rebalancing else 0)
        # Readiness too, so that an outage with no traffic flowing (nothing retried,
        # nothing dead-lettered) still shows: /readyz itself is no scrape target.
        READY.set(0 if await readiness(app) else 1)
        await observe_lag(app)
        body = generate_latest(REGISTRY) + generate_latest(faust_registry)
        return web.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])
