"""Raise the partition count from 4 to 8 under live traffic: every count and decision carries over.

    python -m tests.faults.repartition [--seconds 25] [--store rocksdb]

One worker runs every stage under the fault traffic (plain doers on every one
of the 8 partitions-to-be, two canaries, a bandit doer, experiments). The
orchestrator pauses, the worker catches up and stops, and `learnops topics
repartition` grows the topics to 8 partitions and moves the tables' state to a
new app id; a producer that knows the new count resumes, and two workers run
under the new app id. The same checks as every fault script then compare the
new app id's tables with PostgreSQL: each daily aggregate counts every run of
both halves once, the canaries' evidence and the bandit's books are whole.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from agents.repartition import partition_of
from agents.settings import packaged
from agents.topics import load_catalog
from learnops.client.router import Router
from tests.faults.ledger import Report, caught_up
from tests.faults.rig import Services, run_script, settings_for, wait_for, workers
from tests.faults.traffic import Traffic
from tests.faults.verdict import finish, stored_runs
from tests.services import run_learnops

OLD, NEW = 4, 8


def _wider(path: Any) -> Any:
    """topics.yaml with every topic at ``NEW`` partitions, written to ``path``."""
    text = packaged("topics.yaml").read_text(encoding="utf-8")
    assert f"  partitions: {OLD}\n" in text, "topics.yaml's default count moved"
    path.write_text(text.replace(f"  partitions: {OLD}\n", f"  partitions: {NEW}\n", 1))
    assert load_catalog(path).partitions == NEW
    return path


async def _half(traffic: Traffic, seconds: float, *, bundles: int, tasks: int) -> int:
    stop = asyncio.Event()
    flow = asyncio.create_task(traffic.flow(stop, bundles=bundles, tasks=tasks, every=0.5))
    await asyncio.sleep(seconds)
    stop.set()
    await flow
    return len(traffic.published.runs)


async def repartition(
    found: Services,
    pool: Any,
    *,
    seconds: float = 25.0,
    bundles: int = 3,
    tasks: int = 1,
    store: str = "memory",
) -> Report:
    """One worker at 4 partitions, the move, two workers at 8; the usual checks at the end."""
    report = Report(
        f"repartition: {OLD} → {NEW} partitions between two halves of {seconds:g} s of "
        f"traffic; one worker before, two after; {store} tables"
    )
    settings = settings_for(found)
    producer = settings.kafka_producer(linger_ms=5)
    await producer.start()
    try:
        async with (
            Router(**settings.kafka_connection(), allow_unverified=True) as router,
            workers(found, "repartition") as group,
        ):
            # Slot a keeps its data directory across the move, as a host would.
            group.extra_env["LEARNOPS_TABLE_STORE"] = store
            await group.start("a")
            traffic = Traffic(pool, producer, router, per_partition=1, partitions=NEW)
            await traffic.setup()
            moving = [
                d
                for d in traffic.doers
                if partition_of(d.encode(), OLD) != partition_of(d.encode(), NEW)
            ]
            first = await _half(traffic, seconds, bundles=bundles, tasks=tasks)
            # The orchestrator paused: the worker catches up and stops.
            await wait_for(
                lambda: stored_runs(pool, traffic.all_doers),
                lambda n: n >= first,
                timeout=300,
                what="every run of the first half stored",
            )
            await caught_up(found.bootstrap, group.app_id, timeout=300)
            codes = await group.stop_all()
            report.notes.append(f"{first} runs at {OLD} partitions; clean stop {codes}")

            wider = _wider(group.log_dir / "topics-8.yaml")
            new_app = f"learnops-faults-{uuid.uuid4().hex[:8]}"
            env = {
                **group.env("tool"),
                "LEARNOPS_APP_ID": group.app_id,
                "LEARNOPS_TOPICS_FILE": str(wider),
            }
            started = time.monotonic()
            moved = await asyncio.to_thread(
                run_learnops, env, "topics", "repartition", "--to-app-id", new_app
            )
            took = time.monotonic() - started
            if moved.returncode != 0:
                report.fail(f"repartition exited {moved.returncode}: {moved.stderr.strip()}")
                return report
            report.notes.append(
                f"`topics repartition` in {took:.1f} s; {len(moved_lines(moved.stdout))} "
                f"changelogs copied; {len(moving)} of {len(traffic.doers)} plain doers move"
            )
            print(moved.stdout, flush=True)

            # Under the new app id and count; a producer that knows the new count.
            group.app_id = new_app
            group.extra_env["LEARNOPS_TOPICS_FILE"] = str(wider)
            await producer.stop()
            producer = settings.kafka_producer(linger_ms=5)
            await producer.start()
            traffic.producer = producer
            await group.start("a")
            await group.start("b")
            await _half(traffic, seconds, bundles=bundles, tasks=tasks)
            await finish(report, found, pool, group, traffic)
    finally:
        await producer.stop()
    return report


def moved_lines(output: str) -> list[str]:
    """The command's lines for the changelogs it copied."""
    return [line for line in output.splitlines() if line.startswith("copied")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="traffic before and after")
    parser.add_argument(
        "--store", choices=["memory", "rocksdb"], default="memory", help="LEARNOPS_TABLE_STORE"
    )
    args = parser.parse_args()

    async def scenario(found: Services, pool: Any) -> Report:
        return await repartition(found, pool, seconds=args.seconds, store=args.store)

    run_script("repartition", scenario)


if __name__ == "__main__":
    main()
