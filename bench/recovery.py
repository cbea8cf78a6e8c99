"""A real worker's recovery time and RSS with the table state of N doers × D days, beside none.

    KAFKA_BOOTSTRAP_SERVERS=… DATABASE_URL=… python bench/recovery.py \\
        [--cases 0x30,100x30,1000x30,10000x30] [--stores memory,rocksdb]

For each store (LEARNOPS_TABLE_STORE) and each case (doers x days), in one run:

1. Writes, straight to the changelog topics of a fresh app id, the records a
   worker of the CRL, skills and canary stages holds after ``--days`` days of
   ``--runs-per-day`` runs per doer: the daily CRL aggregates per doer, phase
   and policy and the daily skill statistics (one record per key and day, in
   Faust's windowed key format ``[key, [day start, day end]]``), one live canary
   deployment, and the doer → partition tables. Values come from
   bench/state_size.py, built by the stages' own code; each doer's records go to
   the partition its runs hash to (the producer's murmur2 of the doer), with
   that partition's source mark, as the stages write them.
2. Starts a real ``learnops worker`` with that app id and times process start →
   Faust's "Ready" (recovery done), sampling the worker's RSS (VmRSS) during
   recovery and ``--settle`` seconds after it, and its peak (VmHWM).
3. Checks the worker's ``/crl/<doer>/`` view shows the synthetic history of the
   first and last doer (a wrong key or partition format shows no days).
4. With rocksdb, starts the worker a second time on its data directory: the
   restart reads only what RocksDB lacks.

The baseline is the same worker with empty tables (case 0x…). The curator's
guard records are not written (bench/state_size.py sizes them).

The default's last case, 10,000 doers × 30 days, took 11.1 GiB and 6.9 minutes
per start with the memory store on a 2-core machine, and 1.4 GiB and 6.3
minutes (3 s to restart) with RocksDB (docs/operations.md, "Memory and
recovery"); the records are built and written in a child process, which needs
about 10 GiB more while it writes. The rocksdb store needs the ``rocksdict``
package (extra ``rocksdb``) where the worker runs.

Prints the figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from agents.tables import SOURCE_OFFSETS, day_start, marked  # noqa: E402
from agents.topics import ensure, load_catalog  # noqa: E402
from bench.crl_pipeline import gc_pauses  # noqa: E402
from bench.state_size import canary_record, doer_day_records, scored_runs  # noqa: E402
from learning.trends import days_back  # noqa: E402
from tests import operators  # noqa: E402
from tests.services import (  # noqa: E402
    INPUT_TOPICS,
    WorkerProcess,
    create_migrated_database,
    drop_database,
    end_offsets,
    free_port,
    start_group_at,
)

STAGES = "crl,skills,canary"
TEMPLATE_DOER = "StateDoer"
DAY_END = 86_400 - 0.1  # Faust's tumbling window range ends 0.1 s before the next day
console = Console(width=160)


@dataclass
class Changelog:
    """The (key, value) records to write, per changelog table name and partition."""

    partitions: int
    records: dict[str, dict[int, list[tuple[bytes, bytes]]]] = field(default_factory=dict)

    def add(self, table: str, partition: int, key: bytes, value: bytes) -> None:
        """Queue one record for ``table``'s changelog partition."""
        by_partition = self.records.setdefault(table, {})
        by_partition.setdefault(partition, []).append((key, value))

    def count(self) -> int:
        """How many records are queued."""
        return sum(len(r) for p in self.records.values() for r in p.values())

    def size(self) -> int:
        """The bytes of keys and values queued."""
        return sum(len(k) + len(v) for p in self.records.values() for r in p.values() for k, v in r)


def synthetic_state(doers: int, days: int, runs_per_day: int, partitions: int) -> Changelog:
    """The changelog records of ``doers`` doers × ``days`` days to today, as Faust writes them."""
    results = scored_runs(runs_per_day)
    per_day = doer_day_records(results)
    per_day.pop("folded-run marks (baseline only)")
    canary_key, canary_value = canary_record(results)
    # Each table's keys (their doer part swapped per doer) and its values per partition.
    templates: dict[str, list[tuple[str, list[bytes]]]] = {}
    for table, records in per_day.items():
        templates[table] = []
        for key, value in records:
            decoded = orjson.loads(value)
            mark = max(int(m) for m in decoded.pop(SOURCE_OFFSETS).values())
            by_partition = [orjson.dumps(marked(decoded, p, mark)) for p in range(partitions)]
            templates[table].append((orjson.loads(key)[0], by_partition))
    windows = [(day_start(day), day_start(day) + DAY_END) for day in days_back(today(), days)]
    partitioner = DefaultPartitioner()
    every_partition = list(range(partitions))
    changelog = Changelog(partitions)
    for i in range(doers):
        doer = f"Rec{i:05d}"
        partition = partitioner(doer.encode(), every_partition, every_partition)

        def rename(text: str, doer: str = doer) -> str:
            return text.replace(TEMPLATE_DOER, doer).replace(TEMPLATE_DOER.lower(), doer.lower())

        for table, keys in templates.items():
            for key, values in keys:
                named = rename(key)
                for window in windows:
                    key_bytes = orjson.dumps([named, window])
                    changelog.add(table, partition, key_bytes, values[partition])
        changelog.add(
            "canary-deployments",
            partition,
            rename(canary_key.decode()).encode(),
            rename(canary_value.decode())
            .replace("crl-computed#0", f"crl-computed#{partition}")
            .encode(),
        )
        changelog.add("canary-live", partition, orjson.dumps(doer), orjson.dumps("dep-1"))
        for table in ("canary-doers", "skills-doers"):
            changelog.add(table, partition, orjson.dumps(doer), orjson.dumps(partition + 1))
    return changelog


def today() -> Any:
    """Today's UTC date: the daily tables keep the 30 days behind the newest event."""
    return datetime.now(UTC).date()


async def write_changelog(bootstrap: str, app_id: str, changelog: Changelog) -> float:
    """Create ``app_id``'s changelog topics and write the records; the seconds it took."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    f"{app_id}-{table}-changelog",
                    changelog.partitions,
                    1,
                    topic_configs={"cleanup.policy": "compact"},
                )
                for table in changelog.records
            ]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for table, by_partition in changelog.records.items():
            topic = f"{app_id}-{table}-changelog"
            for partition, records in by_partition.items():
                for key, value in records:
                    pending.append(
                        await producer.send(topic, key=key, value=value, partition=partition)
                    )
                    if len(pending) >= 50_000:
                        await asyncio.gather(*pending)
                        pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def write_state(
    bootstrap: str, app_id: str, shape: tuple[int, int, int, int]
) -> tuple[int, int, float]:
    """Build and write one case's changelog: its records, bytes and seconds to write."""
    doers, days, runs_per_day, partitions = shape
    changelog = synthetic_state(doers, days, runs_per_day, partitions)
    written = asyncio.run(write_changelog(bootstrap, app_id, changelog)) if doers else 0.0
    return changelog.count(), changelog.size(), written


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB; empty once it has gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        name: int(rest.split()[0])
        for name, _, rest in (line.partition(":") for line in lines)
        if name in ("VmRSS", "VmHWM")
    }


@dataclass
class Start:
    """One worker start: seconds to Ready and RSS in MiB (max sampled during, after, peak)."""

    seconds: float
    rss_during: float
    rss_after: float
    peak: float


def timed_start(worker: WorkerProcess, settle: float, timeout: float) -> Start:
    """Start the worker and measure it until ``settle`` seconds after it is ready."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while worker.process is None and not done.is_set():
            time.sleep(0.01)
        while not done.is_set() and worker.process is not None:
            samples.append(memory_kib(worker.process.pid).get("VmRSS", 0))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    worker.start(ready_timeout=timeout)
    seconds = time.perf_counter() - began
    done.set()
    sampler.join()
    time.sleep(settle)
    assert worker.process is not None
    now = memory_kib(worker.process.pid)
    return Start(
        seconds,
        max(samples, default=0) / 1024,
        now.get("VmRSS", 0) / 1024,
        now.get("VmHWM", 0) / 1024,
    )


def check_view(port: str, doers: int, days: int, runs_per_day: int) -> str:
    """Whether the worker's /crl/<doer>/ view shows the synthetic history (first and last doer)."""
    if doers == 0:
        return "-"
    for doer in (f"Rec{0:05d}", f"Rec{doers - 1:05d}"):
        found = httpx.get(f"http://127.0.0.1:{port}/crl/{doer}/", timeout=30).json()
        counts = [d["count"] for d in found["days"].values()]
        if len(counts) != days or any(c != runs_per_day for c in counts):
            raise SystemExit(
                f"the worker's view of {doer} shows {len(counts)} days of counts {counts[:3]}…, "
                f"not {days} days of {runs_per_day}: the synthetic changelog format is wrong"
            )
    return "ok"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases",
        default="0x30,100x30,1000x30,10000x30",
        help="doers x days, comma-separated; 0 doers is the baseline (empty tables)",
    )
    parser.add_argument("--runs-per-day", type=int, default=200)
    parser.add_argument("--stores", default="memory", help="memory, rocksdb or both")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before RSS 'after'")
    parser.add_argument("--timeout", type=float, default=1800.0, help="longest wait for Ready")
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    server_dsn = os.environ.get(
        "DATABASE_URL", "postgresql://learnops:learnops@127.0.0.1:15432/learnops"
    )
    from agents.settings import Settings

    catalog = load_catalog(REPO / "topics.yaml")
    await ensure(Settings(kafka_bootstrap_servers=bootstrap, database_url=server_dsn), catalog)
    partitions = catalog.partitions
    tag = uuid.uuid4().hex[:8]
    name = f"learnops_recovery_{tag}"
    dsn = await create_migrated_database(server_dsn, name, operators=True)
    keys = operators.write_keys(Path(tempfile.mkdtemp(prefix="recovery-keys-")))
    cases = [tuple(int(n) for n in case.split("x")) for case in args.cases.split(",")]
    table = Table(
        title=(
            f"Worker recovery ({STAGES} stages, {args.runs_per_day} runs/doer/day, "
            f"{partitions} partitions; doers 0 = the baseline, empty tables)"
        )
    )
    for column in (
        "store",
        "doers",
        "days",
        "records",
        "MiB",
        "write s",
        "start → Ready s",
        "records/s",
        "RSS during MiB",
        "RSS after MiB",
        "peak MiB",
        "GC s (gen 2 count)",
        "view",
    ):
        table.add_column(column, justify="right")
    try:
        for store in args.stores.split(","):
            for doers, days in cases:
                app_id = f"recovery-{tag}-{store}-{doers}-{days}"
                # In a child process: the records (and what aiokafka keeps of them) take
                # gigabytes at 10,000 doers × 30 days, which this process would keep from
                # the worker it starts next; the child's exit gives them back.
                with ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")
                ) as pool:
                    records, size, written = await asyncio.get_running_loop().run_in_executor(
                        pool,
                        write_state,
                        bootstrap,
                        app_id,
                        (doers, days, args.runs_per_day, partitions),
                    )
                data_dir = tempfile.mkdtemp(prefix="recovery-data-")
                port = str(free_port())
                env = {
                    **os.environ,
                    **keys,
                    "DATABASE_URL": dsn,
                    "LEARNOPS_WEB_PORT": port,
                    "LEARNOPS_DATA_DIR": data_dir,
                    "LEARNOPS_STAGES": STAGES,
                    "LEARNOPS_TABLE_STORE": store,
                }
                # The group begins after the input events already on the broker.
                inputs = await end_offsets(bootstrap, INPUT_TOPICS)
                await start_group_at(bootstrap, app_id, inputs)
                runs = ["first start"] + (["restart"] if store == "rocksdb" else [])
                for run in runs:
                    # A log of its own: the worker is ready when "Ready" appears in it.
                    log_path = Path(tempfile.mkdtemp(prefix="recovery-log-")) / "worker.log"
                    worker = WorkerProcess(env=env, log_path=log_path, app_id=app_id)
                    began = time.perf_counter()
                    measured = await asyncio.to_thread(
                        timed_start, worker, args.settle, args.timeout
                    )
                    view = check_view(port, doers, days, args.runs_per_day)
                    paused = await gc_pauses(port)
                    await asyncio.to_thread(worker.stop)
                    console.print(
                        f"{store} {doers} doers × {days} days, {run}: {measured.seconds:.1f} s "
                        f"to Ready, RSS {measured.rss_after:.0f} MiB "
                        f"({time.perf_counter() - began:.0f} s)"
                    )
                    table.add_row(
                        store if run == "first start" else f"{store} ({run})",
                        f"{doers:,}",
                        str(days),
                        f"{records:,}",
                        f"{size / 2**20:,.1f}",
                        f"{written:.1f}",
                        f"{measured.seconds:.1f}",
                        f"{records / measured.seconds:,.0f}" if doers and run == runs[0] else "-",
                        f"{measured.rss_during:,.0f}",
                        f"{measured.rss_after:,.0f}",
                        f"{measured.peak:,.0f}",
                        f"{paused.seconds:.1f} ({paused.counts[2]:.0f})",
                        view,
                    )
                shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        console.print(table)
        await drop_database(server_dsn, name)
    console.print(
        f"machine: {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM"
    )


if __name__ == "__main__":
    asyncio.run(main())
