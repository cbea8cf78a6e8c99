"""A broker restart and a 30 s PostgreSQL outage while bundles, routings and canaries are in
flight (the worker behind, not caught up), then a clean finish and an exact count.

    python -m tests.faults.outages [--pg-outage 30] [--broker-down 5]

Needs services of its own (it stops and starts them with scripts/kafka.sh and
scripts/postgres.sh); refuses when KAFKA_BOOTSTRAP_SERVERS/DATABASE_URL are set.
Recovery time: from the service being back to the first run stored after it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg

from learnops.client.router import Router
from tests.faults.ledger import Report
from tests.faults.rig import Services, Workers, run_script, settings_for, wait_for, workers
from tests.faults.traffic import Traffic
from tests.faults.verdict import finish, stored_runs

#: What a query of a database that is down (or just back) raises.
DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def stored_or_none(pool: Any, doers: list[str]) -> int | None:
    """Runs stored so far, or None while PostgreSQL does not answer."""
    try:
        return await stored_runs(pool, doers)
    except DOWN:
        return None


async def in_flight(pool: Any, traffic: Traffic) -> int:
    """Published runs not stored yet (the fault must land while this is above zero)."""
    stored = await stored_or_none(pool, traffic.all_doers)
    return len(traffic.published.runs) - (stored or 0)


async def revive(report: Report, group: Workers, when: str) -> None:
    """A worker that exited, or whose app crashed (Faust then hangs in its shutdown), is a
    failure; it is killed and started again so that the run can still be counted."""
    process = group.running.get("a")
    code = process.process.poll() if process and process.process else None
    crashed = process is not None and "Crashed reason=" in process.log_path.read_text(
        errors="replace"
    )
    if process is not None and code is None and not crashed:
        return
    why = f"exited with {code}" if code is not None else "crashed (its app stopped; see its log)"
    report.fail(f"the worker {why} {when}: {process.log_path if process else ''}")
    if process is not None:
        group.kill9("a")
    await group.start()


async def progress_after(
    report: Report, pool: Any, doers: list[str], since: float, what: str
) -> None:
    """Note the seconds from ``since`` until a run more is stored than when asked."""
    try:
        before = await wait_for(
            lambda: stored_or_none(pool, doers), lambda n: n is not None, timeout=120, what=what
        )
        await wait_for(
            lambda: stored_or_none(pool, doers),
            lambda n: n is not None and n > before,
            timeout=120,
            interval=0.2,
            what=f"progress after the {what}",
        )
    except TimeoutError as exc:
        report.fail(str(exc))
        return
    report.recovery_s.append(time.monotonic() - since)
    print(f"{what}: progress {report.recovery_s[-1]:.1f}s after it was back", flush=True)


async def outages(
    found: Services,
    pool: Any,
    *,
    broker_down_s: float = 5.0,
    pg_outage_s: float = 30.0,
    bundles: int = 6,
    tasks: int = 2,
    every: float = 0.5,
    burst: int = 1500,
) -> Report:
    """Restart the broker, then stop PostgreSQL for ``pg_outage_s``, with traffic in flight."""
    report = Report(
        f"outages: broker restart ({broker_down_s:.0f}s down), PostgreSQL down {pg_outage_s:.0f}s"
    )
    if not found.own:
        report.fail(
            "outages stops and starts the broker and PostgreSQL: it needs its own; "
            "unset KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL"
        )
        return report
    settings = settings_for(found)
    producer = settings.kafka_producer(linger_ms=5, request_timeout_ms=15_000)
    await producer.start()
    try:
        async with (
            Router(**settings.kafka_connection(), allow_unverified=True) as router,
            workers(found, "outages") as group,
        ):
            await group.start()
            traffic = Traffic(pool, producer, router)
            await traffic.setup()
            doers = traffic.all_doers
            stop = asyncio.Event()
            flow = asyncio.create_task(
                traffic.flow(stop, bundles=bundles, tasks=tasks, every=every)
            )
            # A burst first, so the fault lands mid-stream with runs not stored yet.
            await traffic.send(traffic.round(burst, 0))
            await wait_for(lambda: in_flight(pool, traffic), lambda n: n >= 50, timeout=60)
            report.notes.append(
                f"broker stopped with {await in_flight(pool, traffic)} runs unstored"
            )
            await asyncio.to_thread(found.kafka, "down")
            await asyncio.sleep(broker_down_s)
            await asyncio.to_thread(found.kafka, "up")
            back = time.monotonic()
            await progress_after(report, pool, doers, back, "broker restart")
            await asyncio.sleep(10)
            await revive(report, group, "after the broker restart")

            await traffic.send(traffic.round(burst, 0))
            await wait_for(lambda: in_flight(pool, traffic), lambda n: n >= 50, timeout=60)
            report.notes.append(
                f"PostgreSQL stopped with {await in_flight(pool, traffic)} runs unstored"
            )
            await asyncio.to_thread(found.postgres, "down")
            await asyncio.sleep(pg_outage_s)
            await asyncio.to_thread(found.postgres, "up")
            back = time.monotonic()
            await progress_after(report, pool, doers, back, "PostgreSQL outage")
            await asyncio.sleep(10)  # traffic after both faults
            await revive(report, group, "after the PostgreSQL outage")
            stop.set()
            await flow
            await finish(report, found, pool, group, traffic)
    finally:
        await producer.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-down", type=float, default=5.0, help="seconds the broker is down")
    parser.add_argument("--pg-outage", type=float, default=30.0, help="seconds PostgreSQL is down")
    args = parser.parse_args()

    async def scenario(found: Services, pool: Any) -> Report:
        return await outages(
            found, pool, broker_down_s=args.broker_down, pg_outage_s=args.pg_outage
        )

    run_script("outages", scenario)


if __name__ == "__main__":
    main()
