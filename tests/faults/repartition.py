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

With ``--stale-producer`` the orchestrator's producer and Router are not
restarted after the move (the step an operator trial skipped): they keep
placing doers by the old count for the whole second half. The workers refuse
those records into learning.dlq (error type ``partition``) instead of
splitting the moved doers' state over two partitions; once the half is over,
`learnops dlq replay --error-type partition` publishes them where they
belong, and the same checks must hold.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import orjson

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
    stale_producer: bool = False,
) -> Report:
    """One worker at 4 partitions, the move, two workers at 8; the usual checks at the end."""
    report = Report(
        f"repartition: {OLD} → {NEW} partitions between two halves of {seconds:g} s of "
        f"traffic; one worker before, two after; {store} tables"
        + ("; the producers keep the old count, then a replay" if stale_producer else "")
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

            # Under the new app id and count; a producer that knows the new count, unless
            # the scenario keeps the one (and the Router) that knew the old.
            group.app_id = new_app
            group.extra_env["LEARNOPS_TOPICS_FILE"] = str(wider)
            if not stale_producer:
                await producer.stop()
                producer = settings.kafka_producer(linger_ms=5)
                await producer.start()
                traffic.producer = producer
            await group.start("a")
            await group.start("b")
            await _half(traffic, seconds, bundles=bundles, tasks=tasks)
            if stale_producer and not await _replay_misplaced(report, found, pool, group, env):
                return report
            await finish(report, found, pool, group, traffic)
    finally:
        await producer.stop()
    return report


async def _replay_misplaced(
    report: Report, found: Services, pool: Any, group: Any, env: dict[str, str]
) -> bool:
    """Once the workers refused every misplaced record, replay them; False if none were."""
    await caught_up(found.bootstrap, group.app_id, timeout=300)
    letters = await pool.fetch(
        'SELECT DISTINCT topic, partition, "offset" FROM dead_letters'
        " WHERE error_type = 'partition' AND consumer = $1",
        group.app_id,
    )
    topics = sorted({r["topic"] for r in letters})
    replay = await asyncio.to_thread(
        run_learnops,
        {**env, "LEARNOPS_APP_ID": group.app_id},
        *("dlq", "replay", "--error-type", "partition", "--json", "--actor", "faults"),
    )
    if replay.returncode != 0:
        report.fail(f"dlq replay exited {replay.returncode}: {replay.stderr.strip()}")
        return False
    published = orjson.loads(replay.stdout)["published"]
    report.notes.append(
        f"stale producers: {len(letters)} records refused as misplaced ({', '.join(topics)}); "
        f"`dlq replay` published {len(published)} again"
    )
    if not letters or len(published) != len(letters):
        report.fail("the stale producers' misplaced records were not all refused and replayed")
        return False
    return True


def moved_lines(output: str) -> list[str]:
    """The command's lines for the changelogs it copied."""
    return [line for line in output.splitlines() if line.startswith("copied")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="traffic before and after")
    parser.add_argument(
        "--store", choices=["memory", "rocksdb"], default="memory", help="LEARNOPS_TABLE_STORE"
    )
    parser.add_argument(
        "--stale-producer",
        action="store_true",
        help="keep the producers that know the old count; refused records are replayed",
    )
    args = parser.parse_args()

    async def scenario(found: Services, pool: Any) -> Report:
        return await repartition(
            found, pool, seconds=args.seconds, store=args.store, stale_producer=args.stale_producer
        )

    run_script("repartition", scenario)


if __name__ == "__main__":
    main()
