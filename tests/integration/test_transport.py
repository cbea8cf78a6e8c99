"""The learnops transport on the real broker: every offset processed, every offset committed.

The workers are minimal Faust apps on ``agents.faust_internals.transport`` with a small stream
buffer, so buffer pressure (and the short polls that follow it) happens all the
time; each worker appends ``partition offset`` per event to its own file. This
module is also the worker: ``python -m tests.integration.test_transport ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from learnops.simulation.orchestrator import Orchestrator
from tests.integration.kafka_io import eventually, publish
from tests.services import REPO, end_offsets

PARTITIONS = 4


def run_worker(argv: Sequence[str] | None = None) -> None:
    """A one-agent Faust worker on the learnops transport that records what it processed."""
    import faust
    from faust.worker import Worker

    from agents.faust_internals.transport import (
        PRODUCER_LINGER_S,
        PRODUCER_MAX_BATCH_BYTES,
        broker_urls,
    )
    from models.events import RunCompleted

    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--topic", "--group", "--seen", "--datadir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=0, help="batches of this size at most")
    args = parser.parse_args(argv)

    app = faust.App(
        args.group,
        broker=broker_urls([args.bootstrap]),
        producer_linger=PRODUCER_LINGER_S,
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        store="memory://",
        datadir=args.datadir,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        web_enabled=False,
        autodiscover=False,
        # A small buffer puts the stream under pressure again and again.
        stream_buffer_maxsize=1024,
        broker_commit_interval=0.5,
    )
    source = app.topic(args.topic, key_type=bytes, value_type=bytes)
    seen = Path(args.seen).open("a", buffering=1)  # noqa: SIM115 - open for the worker's life

    if args.batch:
        from agents.streams import batches, unacked_if_cut_short

        @app.agent(source, name="record")
        async def record_batches(stream: Any) -> None:
            # As the stages do: the effect (here, the line per offset) at the end of the body.
            async for events in batches(stream, args.batch):
                async with unacked_if_cut_short(events, stage="record"):
                    await asyncio.sleep(args.delay)
                    for event in events:
                        seen.write(f"{event.message.partition} {event.message.offset}\n")

        Worker(app, loglevel="info", quiet=True, redirect_stdouts=False).execute_from_commandline()
        return

    @app.agent(source, name="record")
    async def record(stream: Any) -> None:
        async for event in stream.events():
            RunCompleted.model_validate_json(event.value)
            if args.delay:
                await asyncio.sleep(args.delay)
            seen.write(f"{event.message.partition} {event.message.offset}\n")

    Worker(app, loglevel="info", quiet=True, redirect_stdouts=False).execute_from_commandline()


@dataclass
class RecordingWorker:
    """A worker process of :func:`run_worker`, its log, and the offsets it processed."""

    process: subprocess.Popen[bytes]
    seen: Path
    log: Path

    def processed(self) -> list[tuple[int, int]]:
        """(partition, offset) of every event the worker finished, in order."""
        if not self.seen.exists():
            return []
        lines = self.seen.read_text().splitlines()
        return [(int(p), int(o)) for p, o in (line.split() for line in lines if line.strip())]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if Faust hangs in shutdown."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_worker(
    bootstrap: str, topic: str, group: str, workdir: Path, *, delay: float = 0.0, batch: int = 0
) -> RecordingWorker:
    """Start a recording worker and wait until Faust reports it ready."""
    name = uuid.uuid4().hex[:8]
    seen, log, datadir = workdir / f"{name}.seen", workdir / f"{name}.log", workdir / name
    datadir.mkdir()
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.test_transport",
                *("--bootstrap", bootstrap, "--topic", topic, "--group", group),
                *("--seen", str(seen), "--datadir", str(datadir), "--delay", str(delay)),
                *("--batch", str(batch)),
            ],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = RecordingWorker(process, seen, log)
    deadline = time.monotonic() + 90
    while "[^Worker]: Ready" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError(f"worker not ready:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.25)
    return worker


@pytest.fixture
async def topic(kafka_bootstrap: str) -> AsyncIterator[str]:
    """A fresh topic with four partitions, deleted afterwards."""
    name = f"test.transport-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


async def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """The group's committed offsets."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items()}


def bundles(n: int, seed: int, doers: tuple[str, ...] | None = None) -> list[tuple[bytes, bytes]]:
    """``n`` (doer, bundle) messages from the simulated orchestrator."""
    orchestrator = Orchestrator(seed=seed, doers=doers) if doers else Orchestrator(seed=seed)
    return [(b.doer.encode(), b.to_json()) for b in orchestrator.bundles(n)]


def every_offset(ends: dict[Any, int]) -> set[tuple[int, int]]:
    """(partition, offset) of every record below the end offsets."""
    return {(tp.partition, offset) for tp, end in ends.items() for offset in range(end)}


async def test_every_offset_is_processed_once_and_committed(
    kafka_bootstrap: str, topic: str, producer: Any, tmp_path: Path
) -> None:
    # Five doers over four partitions: one partition gets most events, some get none,
    # which is when a fetch for the idle partitions used to park for 1.5 s.
    await publish(producer, topic, bundles(5_000, seed=21))
    ends = await end_offsets(kafka_bootstrap, (topic,))
    group = f"test-transport-{uuid.uuid4().hex[:8]}"

    worker = start_worker(kafka_bootstrap, topic, group, tmp_path)
    try:
        done = await eventually(
            lambda: committed(kafka_bootstrap, group),
            lambda offsets: all(offsets.get(tp, 0) == end for tp, end in ends.items() if end),
            timeout=120,
        )
        processed = worker.processed()
    finally:
        worker.stop()

    assert {tp: done.get(tp, 0) for tp, end in ends.items() if end} == {
        tp: end for tp, end in ends.items() if end
    }, "committed offsets are the end offsets"
    repeated = [position for position, n in Counter(processed).items() if n > 1]
    assert not repeated, f"processed more than once: {repeated[:10]}"
    assert set(processed) == every_offset(ends)


async def test_a_rebalance_loses_no_offset(
    kafka_bootstrap: str, topic: str, producer: Any, tmp_path: Path
) -> None:
    doers = tuple(f"Doer{i}" for i in range(40))  # every partition gets events
    await publish(producer, topic, bundles(2_000, seed=22, doers=doers))
    group = f"test-transport-{uuid.uuid4().hex[:8]}"

    first = start_worker(kafka_bootstrap, topic, group, tmp_path, delay=0.002)
    second: RecordingWorker | None = None
    try:

        async def processed_by_first() -> int:
            return len(first.processed())

        await eventually(processed_by_first, lambda n: n >= 300)
        # A second member joins: the group rebalances while the first is mid-backlog.
        second = start_worker(kafka_bootstrap, topic, group, tmp_path, delay=0.002)
        await publish(producer, topic, bundles(2_000, seed=23, doers=doers))
        ends = await end_offsets(kafka_bootstrap, (topic,))
        done = await eventually(
            lambda: committed(kafka_bootstrap, group),
            lambda offsets: all(offsets.get(tp, 0) == end for tp, end in ends.items()),
            timeout=120,
        )
        processed = first.processed() + second.processed()
        split = (len(first.processed()), len(second.processed()))
    finally:
        first.stop()
        if second is not None:
            second.stop()

    assert {tp: done.get(tp, 0) for tp in ends} == ends, "committed offsets are the end offsets"
    assert set(processed) == every_offset(ends), "every offset processed at least once"
    assert all(split), f"both members processed events after the rebalance: {split}"
    # At-least-once: a redelivery after the handover is allowed, a loss is not.
    assert len(processed) - len(set(processed)) < len(processed) // 2


async def test_a_worker_stopped_mid_batch_does_not_commit_the_unfinished_batch(
    kafka_bootstrap: str, topic: str, producer: Any, tmp_path: Path
) -> None:
    doers = tuple(f"Doer{i}" for i in range(40))
    await publish(producer, topic, bundles(3_000, seed=24, doers=doers))
    ends = await end_offsets(kafka_bootstrap, (topic,))
    group = f"test-transport-{uuid.uuid4().hex[:8]}"

    # Each batch body takes 0.5 s before its effect: a SIGTERM lands inside one.
    first = start_worker(kafka_bootstrap, topic, group, tmp_path, delay=0.5, batch=200)
    try:

        async def processed_by_first() -> int:
            return len(first.processed())

        await eventually(processed_by_first, lambda n: n >= 200, timeout=60)
    finally:
        first.stop()
    stopped = await committed(kafka_bootstrap, group)
    done_before = set(first.processed())
    assert len(done_before) < sum(ends.values()), "the first worker stopped before the end"
    below_commit = {
        (tp.partition, offset) for tp, end in stopped.items() for offset in range(max(end, 0))
    }
    assert below_commit <= done_before, (
        f"{len(below_commit - done_before)} offsets committed without being processed"
    )

    second = start_worker(kafka_bootstrap, topic, group, tmp_path, delay=0.0, batch=200)
    try:
        await eventually(
            lambda: committed(kafka_bootstrap, group),
            lambda offsets: all(offsets.get(tp, 0) == end for tp, end in ends.items()),
            timeout=120,
        )
    finally:
        second.stop()
    assert done_before | set(second.processed()) == every_offset(ends)


if __name__ == "__main__":
    run_worker()


async def test_stage_outputs_land_on_the_default_partitioners_partition(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    # send_acknowledged picks the partition itself (a cached murmur2 per key) once
    # the topic's metadata is known; a doer's records must still land where
    # aiokafka's and Java's default partitioners put them, or its events and
    # table state would part.
    import faust
    from aiokafka import AIOKafkaConsumer
    from aiokafka.partitioner import DefaultPartitioner
    from prometheus_client import REGISTRY

    from agents.event_topics import EventTopic
    from agents.faust_internals.transport import Producer, broker_urls
    from models.events import Alert

    app = faust.App(
        f"partition-test-{uuid.uuid4().hex[:8]}",
        broker=broker_urls([kafka_bootstrap]),
        datadir=str(tmp_path),
        web_enabled=False,
        autodiscover=False,
    )
    app.outbox = None  # as LearnopsApp's, outside tests that collect sends in process
    producer = app.producer
    assert isinstance(producer, Producer)
    keys = [f"Doer{i}".encode() for i in range(200)]
    outputs: EventTopic[Alert] = EventTopic(app, topic, Alert)
    counted = {"topic": topic}
    before = REGISTRY.get_sample_value("learnops_events_out_total", counted) or 0.0
    await producer.start()
    try:
        assert producer.partition_of(topic, keys[0]) is None  # no metadata yet: aiokafka picks
        sent = []
        for key in keys:
            alert = Alert(doer=key.decode(), kind="crl_regression", severity="info", message="m")
            sent.append(await outputs.send(alert))
        chosen = [producer.partition_of(topic, key) for key in keys]
        for acknowledged in sent:
            await acknowledged
    finally:
        await producer.stop()
    assert REGISTRY.get_sample_value("learnops_events_out_total", counted) == before + len(keys)
    every = list(range(PARTITIONS))
    expected = {key: DefaultPartitioner()(key, every, every) for key in keys}
    assert chosen == [expected[key] for key in keys]
    assert len(set(chosen)) == PARTITIONS

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    landed: dict[bytes, int] = {}
    try:
        deadline = time.monotonic() + 30
        while len(landed) < len(keys) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                landed.update((record.key, record.partition) for record in records)
    finally:
        await consumer.stop()
    assert landed == expected
