"""Two workers with one app id, one killed -9 mid-stream (each in turn): nothing lost or counted
twice, and how long the killed worker's partitions stand still before the survivor takes them.

    python -m tests.faults.two_workers [--kills 2]

Recovery time: from the kill until every doer (spread over every partition)
has a run stored after it, i.e. the survivor owns the dead one's partitions
and processes them. It is bounded below by the group's session timeout
(LEARNOPS_SESSION_TIMEOUT_S; Faust's own default is 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from agents.settings import Settings
from learnops.client.router import Router
from tests.faults.ledger import Report
from tests.faults.rig import Services, run_script, settings_for, wait_for, workers
from tests.faults.traffic import Traffic
from tests.faults.verdict import finish, stored_per_doer


async def all_moved(pool: Any, doers: list[str], before: dict[str, int]) -> bool:
    """Whether every doer has a run stored beyond ``before``."""
    now = await stored_per_doer(pool, doers)
    return all(now.get(d, 0) > before.get(d, 0) for d in doers)


async def two_workers(
    found: Services,
    pool: Any,
    *,
    kills: int = 2,
    bundles: int = 8,
    tasks: int = 2,
    every: float = 0.5,
) -> Report:
    """Kill one of two workers ``kills`` times (alternating), restarting it after the takeover."""
    default = Settings.model_fields["learnops_session_timeout_s"].default
    timeout = os.environ.get("LEARNOPS_SESSION_TIMEOUT_S", f"{default:g}")
    report = Report(
        f"two_workers: {kills} kills -9 of one of two workers (session timeout {timeout} s)"
    )
    settings = settings_for(found)
    producer = settings.kafka_producer(linger_ms=5)
    await producer.start()
    try:
        async with (
            Router(**settings.kafka_connection(), allow_unverified=True) as router,
            workers(found, "two_workers") as group,
        ):
            await group.start("a")
            # Two plain doers on each of the four partitions, so every partition moves.
            traffic = Traffic(pool, producer, router, per_partition=2)
            await traffic.setup()
            await group.start("b")
            doers = traffic.doers
            stop = asyncio.Event()
            flow = asyncio.create_task(
                traffic.flow(stop, bundles=bundles, tasks=tasks, every=every)
            )
            for i in range(kills):
                # Both workers own partitions and process them before the kill.
                before = await stored_per_doer(pool, doers)
                await wait_for(
                    lambda before=before: all_moved(pool, doers, before),
                    bool,
                    timeout=120,
                    what="both workers processing",
                )
                await asyncio.sleep(3)
                slot = "b" if i % 2 == 0 else "a"
                group.kill9(slot)
                killed_at = time.monotonic()
                before = await stored_per_doer(pool, doers)
                await wait_for(
                    lambda before=before: all_moved(pool, doers, before),
                    bool,
                    timeout=240,
                    interval=0.2,
                    what=f"takeover after kill {i + 1}",
                )
                report.recovery_s.append(time.monotonic() - killed_at)
                print(
                    f"kill {i + 1}/{kills} of worker {slot}: taken over in "
                    f"{report.recovery_s[-1]:.1f}s",
                    flush=True,
                )
                await group.start(slot)
            stop.set()
            await flow
            await finish(report, found, pool, group, traffic)
    finally:
        await producer.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=2)
    args = parser.parse_args()

    async def scenario(found: Services, pool: Any) -> Report:
        return await two_workers(found, pool, kills=args.kills)

    run_script("two_workers", scenario)


if __name__ == "__main__":
    main()
