"""Faust against raw aiokafka on one worker: events/s, CPU, and publish→output latency.

    .venv/bin/python bench/faust_throughput.py [--bootstrap 127.0.0.1:19292] [--events 100000]
        [--repeat 3] [--rate 1000] [--seconds 10] [--only throughput|latency]

Throughput: creates a topic with 4 partitions, publishes ``--events`` realistic
bundles from ``learnops.simulation.orchestrator.Orchestrator`` keyed by doer, then, ``--repeat``
times and interleaved so both sides see the same machine:

* raw aiokafka ``getmany`` over the 4 partitions, decoding with orjson, and
  again validating with ``RunCompleted.model_validate_json`` — the baselines;
* a minimal Faust app (``value_serializer="raw"``, memory store) whose agent
  counts (``count``), validates (``validate``) or validates and sends the raw
  bytes on to an output topic (``forward``), each with Faust's stock aiokafka
  transport (``kafka://``) and with ``agents.faust_internals.transport`` (``learnops-kafka://``).

Every consumer runs in its own process from its first event to its Nth, so its
``time.process_time()`` (all threads) over that wall time is its CPU use.

Latency: a Faust ``forward`` agent (stock, then fixed) on a fresh topic pair;
the bench publishes at a paced ``--rate`` for ``--seconds`` and its own aiokafka
consumer on the output topic takes, per bundle, the time from ``send`` to
receipt (one process, one clock; bundles matched by run id).

Prints medians over the repeats; asserts nothing about time. Run it on a broker
of your own: it creates and deletes ``bench.*`` topics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.table import Table

PARTITIONS = 4
CHILD_STOP_GRACE = 20.0
console = Console()


# --- the consumers, each run in a child process ----------------------------------------


@dataclass
class Clock:
    """Wall and process time from the first event to the last counted one."""

    target: int
    count: int = 0
    wall0: float = 0.0
    cpu0: float = 0.0

    def tick(self, n: int = 1) -> bool:
        """Count ``n`` events; True once ``target`` events have been counted."""
        if self.count == 0:
            self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.count += n
        return self.count >= self.target

    def result(self) -> dict[str, float]:
        """events/s and CPU % since the first event."""
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        return {"events": self.count, "seconds": wall, "eps": self.count / wall, "cpu": cpu / wall}


async def consume_raw(spec: dict[str, Any]) -> dict[str, float]:
    """Read ``events`` records of the topic with aiokafka ``getmany`` and decode each one."""
    from models.events import RunCompleted

    def by_orjson(value: bytes) -> object:
        return orjson.loads(value)

    def by_pydantic(value: bytes) -> object:
        return RunCompleted.model_validate_json(value)

    decode = by_orjson if spec["decode"] == "orjson" else by_pydantic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=spec["bootstrap"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(spec["topic"], p) for p in range(PARTITIONS)])
        clock = Clock(spec["events"])
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    decode(record.value)
                if records and clock.tick(len(records)):
                    return clock.result()
    finally:
        await consumer.stop()


def consume_faust(spec: dict[str, Any]) -> None:
    """Run a one-agent Faust worker; write the figures to ``spec['result']`` after N events."""
    import faust
    from faust.worker import Worker

    from models.events import RunCompleted

    if spec["transport"] == "fixed":
        # What build_app configures: our transport and producer batching.
        from agents.faust_internals.transport import (
            PRODUCER_LINGER_S,
            PRODUCER_MAX_BATCH_BYTES,
            broker_urls,
        )

        tuning: dict[str, Any] = {
            "broker": broker_urls([spec["bootstrap"]]),
            "producer_linger": PRODUCER_LINGER_S,
            "producer_max_batch_size": PRODUCER_MAX_BATCH_BYTES,
        }
    else:
        tuning = {"broker": [f"kafka://{spec['bootstrap']}"]}
    app = faust.App(
        spec.get("app_id") or f"bench-{spec['transport']}-{uuid.uuid4().hex[:8]}",
        **tuning,
        store="memory://",
        datadir=spec["datadir"],
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        web_enabled=False,
        autodiscover=False,
    )
    source = app.topic(spec["topic"], key_type=bytes, value_type=bytes)
    output = app.topic(spec["output"], key_type=bytes, value_type=bytes)
    worker = Worker(app, loglevel="info", quiet=True, redirect_stdouts=False)
    clock = Clock(spec["events"] or sys.maxsize)
    work = spec["work"]
    stopping: set[asyncio.Future[None]] = set()

    async def finish() -> None:
        if work == "forward":
            await app.producer.flush()
        Path(spec["result"]).write_text(json.dumps(clock.result()))
        stopping.add(asyncio.ensure_future(worker.stop()))

    @app.agent(source, name="bench")
    async def bench(stream: Any) -> None:
        async for key, value in stream.items():
            if work != "count":
                RunCompleted.model_validate_json(value)
            if work == "forward":
                await output.send(key=key, value=value)
            if clock.tick() and clock.count == clock.target:
                await finish()

    worker.execute_from_commandline()


def child_main(spec: dict[str, Any]) -> None:
    """Entry point of a child process: one consumer, figures to the result file."""
    if spec["kind"] == "raw":
        figures = asyncio.run(consume_raw(spec))
        Path(spec["result"]).write_text(json.dumps(figures))
    else:
        consume_faust(spec)


# --- the parent: topics, publishing, children, figures ---------------------------------


@dataclass(frozen=True)
class Scenario:
    """One consumer to measure: raw aiokafka or a Faust agent with a transport."""

    label: str
    kind: str  # raw | faust
    decode: str = ""  # raw: orjson | pydantic
    transport: str = ""  # faust: stock | fixed
    work: str = ""  # faust: count | validate | forward


SCENARIOS = (
    Scenario("raw aiokafka + orjson", "raw", decode="orjson"),
    Scenario("raw aiokafka + pydantic", "raw", decode="pydantic"),
    Scenario("Faust stock · count", "faust", transport="stock", work="count"),
    Scenario("Faust fixed · count", "faust", transport="fixed", work="count"),
    Scenario("Faust stock · validate", "faust", transport="stock", work="validate"),
    Scenario("Faust fixed · validate", "faust", transport="fixed", work="validate"),
    Scenario("Faust stock · validate + send", "faust", transport="stock", work="forward"),
    Scenario("Faust fixed · validate + send", "faust", transport="fixed", work="forward"),
)


@dataclass
class Child:
    """A running child process and where its figures and log go."""

    process: asyncio.subprocess.Process
    result: Path
    log: Path

    async def figures(self, timeout: float) -> dict[str, float]:
        """Wait for the result file (then for the process to end, killing it if it hangs)."""
        deadline = time.monotonic() + timeout
        while not self.result.exists() or not self.result.read_text():
            if self.process.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                tail = self.log.read_text()[-3000:] if self.log.exists() else ""
                raise RuntimeError(
                    f"child gave no figures (exit {self.process.returncode}):\n{tail}"
                )
            await asyncio.sleep(0.1)
        await self.stop(exit_by_itself=CHILD_STOP_GRACE)
        return dict(json.loads(self.result.read_text()))

    async def stop(self, exit_by_itself: float = 0.0) -> None:
        """Give it time to exit, then SIGTERM, then SIGKILL (a Faust worker can hang stopping)."""
        if self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), timeout=exit_by_itself)
                return
            except TimeoutError:
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=CHILD_STOP_GRACE)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_child(spec: dict[str, Any], workdir: Path) -> Child:
    """Start ``python bench/faust_throughput.py --child SPEC``; its output goes to a log file."""
    name = uuid.uuid4().hex[:8]
    result, log = workdir / f"{name}.json", workdir / f"{name}.log"
    datadir = workdir / f"{name}-data"
    datadir.mkdir()
    spec = {**spec, "result": str(result), "datadir": str(datadir)}
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            json.dumps(spec),
            stdout=sink,
            stderr=sink,
            stdin=asyncio.subprocess.DEVNULL,
        )
    return Child(process, result, log)


async def create_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Create fresh topics with ``PARTITIONS`` partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Delete the bench's topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(names))
    finally:
        await admin.close()


def bundles(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``n`` serialized (doer, bundle) pairs from the simulated orchestrator."""
    from learnops.simulation.orchestrator import Orchestrator

    return [(b.doer.encode(), b.to_json()) for b in Orchestrator(seed=seed).bundles(n)]


async def publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> list[int]:
    """Publish every message (acks=all) and return the record count per partition."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in messages]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    per_partition = [0] * PARTITIONS
    for metadata in sent:
        per_partition[metadata.partition] += 1
    return per_partition


async def measure_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, list[dict]]:
    """Publish once, then run every scenario ``--repeat`` times, interleaved."""
    tag = uuid.uuid4().hex[:8]
    topic, output = f"bench.throughput-{tag}", f"bench.throughput-out-{tag}"
    await create_topics(args.bootstrap, [topic, output])
    try:
        messages = bundles(args.events, seed=11)
        size = statistics.mean(len(v) for _, v in messages)
        started = time.perf_counter()
        per_partition = await publish(args.bootstrap, topic, messages)
        console.print(
            f"published {args.events:,} bundles of {size:.0f} bytes (mean) in "
            f"{time.perf_counter() - started:.1f} s; per partition {per_partition}"
        )
        chosen = [s for s in SCENARIOS if s.kind == "raw" or args.match in s.label]
        runs: dict[str, list[dict]] = {s.label: [] for s in chosen}
        for repeat in range(1, args.repeat + 1):
            for scenario in chosen:
                spec = {
                    "kind": scenario.kind,
                    "decode": scenario.decode,
                    "transport": scenario.transport,
                    "work": scenario.work,
                    "bootstrap": args.bootstrap,
                    "topic": topic,
                    "output": output,
                    "events": args.events,
                }
                child = await start_child(spec, workdir)
                figures = await child.figures(timeout=60 + args.events / 500)
                runs[scenario.label].append(figures)
                console.print(
                    f"  [{repeat}/{args.repeat}] {scenario.label:<32} "
                    f"{figures['eps']:>9,.0f} events/s  CPU {100 * figures['cpu']:>4.0f} %",
                    highlight=False,
                )
        return runs
    finally:
        await delete_topics(args.bootstrap, [topic, output])


async def measure_latency(
    args: argparse.Namespace, transport: str, workdir: Path, seed: int
) -> dict[str, float]:
    """Publish at a paced rate through a Faust forward agent; latency send → output receipt."""
    tag = uuid.uuid4().hex[:8]
    source, output = f"bench.latency-{tag}", f"bench.latency-out-{tag}"
    await create_topics(args.bootstrap, [source, output])
    total = int(args.rate * args.seconds)
    warmup = bundles(200, seed=seed + 1)
    messages = bundles(total, seed=seed)
    run_ids = [orjson.loads(v)["run_id"] for _, v in messages]
    sent: dict[str, float] = {}
    latencies: list[float] = []
    seen_warmup = asyncio.Event()
    everything_seen = asyncio.Event()

    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    # The measuring consumer must not be the one that waits: short broker waits.
    receiver = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await producer.start()
    await receiver.start()
    receiver.assign([TopicPartition(output, p) for p in range(PARTITIONS)])
    child = await start_child(
        {
            "kind": "faust",
            "transport": transport,
            "work": "forward",
            "bootstrap": args.bootstrap,
            "topic": source,
            "output": output,
            "events": 0,
        },
        workdir,
    )

    async def receive() -> None:
        while True:
            batches = await receiver.getmany(timeout_ms=200)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    at = sent.get(orjson.loads(record.value)["run_id"])
                    if at is None:
                        seen_warmup.set()
                    else:
                        latencies.append(now - at)
            if len(latencies) >= total:
                everything_seen.set()

    receiving = asyncio.create_task(receive())
    try:
        # Warm up until the worker has its partitions and forwards.
        for key, value in warmup:
            await producer.send_and_wait(source, key=key, value=value)
            if seen_warmup.is_set():
                break
            await asyncio.sleep(0.25)
        else:
            raise RuntimeError("the Faust worker forwarded nothing during warm-up")
        await asyncio.sleep(1.0)

        started = time.perf_counter()
        for i, ((key, value), run_id) in enumerate(zip(messages, run_ids, strict=True)):
            delay = started + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[run_id] = time.perf_counter()
            await producer.send(source, key=key, value=value)
        await producer.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everything_seen.wait(), timeout=15)
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        await child.stop()
        await producer.stop()
        await receiver.stop()
        await delete_topics(args.bootstrap, [source, output])
    ms = np.array(latencies) * 1000.0
    return {
        "received": len(latencies),
        "sent": total,
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "max": float(ms.max()) if len(ms) else float("nan"),
    }


# --- figures --------------------------------------------------------------------------


def throughput_table(runs: dict[str, list[dict]]) -> Table:
    """Median events/s and CPU per scenario, with ratios to both raw baselines."""
    medians = {label: statistics.median(r["eps"] for r in rs) for label, rs in runs.items()}
    raw_orjson = medians[SCENARIOS[0].label]
    raw_pydantic = medians[SCENARIOS[1].label]
    table = Table(title="Throughput, one consumer process (median of repeats)")
    for name in ("consumer", "events/s", "min – max", "CPU %", "÷ raw orjson", "÷ raw pydantic"):
        table.add_column(name, justify="left" if name == "consumer" else "right")
    for label, rs in runs.items():
        eps = [r["eps"] for r in rs]
        table.add_row(
            label,
            f"{medians[label]:,.0f}",
            f"{min(eps):,.0f} – {max(eps):,.0f}",
            f"{100 * statistics.median(r['cpu'] for r in rs):.0f}",
            f"{medians[label] / raw_orjson:.2f}",
            f"{medians[label] / raw_pydantic:.2f}",
        )
    return table


def latency_table(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> Table:
    """Median over repeats of p50 / p99 / max publish→output latency per transport."""
    table = Table(
        title=f"Publish → output latency at {args.rate:,.0f} events/s for {args.seconds:.0f} s "
        "(Faust validate + send; median of repeats, ms)"
    )
    for name in ("transport", "p50", "p99", "max", "p99 per run", "received / sent"):
        table.add_column(name, justify="left" if name == "transport" else "right")
    for transport, rs in results.items():
        table.add_row(
            transport,
            f"{statistics.median(r['p50'] for r in rs):.1f}",
            f"{statistics.median(r['p99'] for r in rs):.1f}",
            f"{statistics.median(r['max'] for r in rs):.1f}",
            " ".join(f"{r['p99']:.0f}" for r in rs),
            " ".join(f"{r['received']:.0f}/{r['sent']:.0f}" for r in rs),
        )
    return table


async def main(args: argparse.Namespace) -> None:
    """Run the throughput and latency measurements and print their tables."""
    with tempfile.TemporaryDirectory(prefix="faust-bench-") as scratch:
        workdir = Path(scratch)
        if args.only in (None, "throughput"):
            runs = await measure_throughput(args, workdir)
            console.print(throughput_table(runs))
        if args.only in (None, "latency"):
            results: dict[str, list[dict[str, float]]] = {"stock": [], "fixed": []}
            for repeat in range(1, args.repeat + 1):
                for transport in results:
                    figures = await measure_latency(args, transport, workdir, seed=100 + repeat)
                    results[transport].append(figures)
                    console.print(
                        f"  [{repeat}/{args.repeat}] latency {transport:<6} p50 "
                        f"{figures['p50']:.1f} ms  p99 {figures['p99']:.1f} ms  "
                        f"max {figures['max']:.1f} ms  ({figures['received']:.0f}/"
                        f"{figures['sent']:.0f})",
                        highlight=False,
                    )
            console.print(latency_table(results, args))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19292")
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--only", choices=("throughput", "latency"))
    parser.add_argument(
        "--match", default="", help="only the Faust consumers whose label contains this"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args()
    if options.child:
        child_main(json.loads(options.child))
    else:
        asyncio.run(main(options))
