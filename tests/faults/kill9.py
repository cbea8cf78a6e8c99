"""kill -9 of a worker running every stage, at random points while bundles, routings and live
canaries flow; restarted each time; then a clean finish and an exact count.

    python -m tests.faults.kill9 [--kills 20] [--seed 1]

Checks: every published run in crl_results once; learning_progress and the
three daily Faust aggregates equal to PostgreSQL's counts per key; every routing
stored once; the patient canary's arm counts equal to its stored routings; no
step-up, promotion or rollback twice; no dead letters; committed offsets at the
end. Recovery time: from the kill to the first run stored by the restarted worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from learnops.client.router import Router
from tests.faults.ledger import Report
from tests.faults.rig import (
    Services,
    Workers,
    operator_keys,
    run_script,
    settings_for,
    wait_for,
    workers,
)
from tests.faults.traffic import Traffic
from tests.faults.verdict import finish, stored_runs
from tests.services import start_executor


async def kill9(
    found: Services,
    pool: Any,
    *,
    kills: int = 20,
    seed: int = 1,
    bundles: int = 3,
    tasks: int = 1,
    every: float = 0.5,
    max_up_s: float = 6.0,
    starting_share: float = 0.25,
    session_timeout_s: float | None = None,
    experiment_every: int = 10,
    static: bool = False,
    store: str = "memory",
) -> Report:
    """Kill the worker ``kills`` times while traffic flows; the report of what was counted.

    A killed worker stays in its consumer group until its session times out, and
    the restarted one gets the partitions only then: ``session_timeout_s``
    (LEARNOPS_SESSION_TIMEOUT_S, default the worker's 10 s) sets most of the
    recovery time, and nothing of what is checked, unless ``static``: then the
    worker is a static member of its group (LEARNOPS_GROUP_INSTANCE_ID) and its
    restart takes the partitions back at once. Every ``experiment_every``
    rounds an experiment is created (0: none), replayed by a local executor
    that is never killed.
    """
    member = ", a static group member" if static else ""
    tables = "" if store == "memory" else f", {store} tables"
    report = Report(
        f"kill9: {kills} kills -9 of one worker (all stages{member}{tables}), seed {seed}"
    )
    rng = random.Random(seed)
    in_start = 0
    settings = settings_for(found)
    producer = settings.kafka_producer(linger_ms=5)
    await producer.start()
    owner, key_env = await operator_keys(found, pool)
    prefix = f"F{uuid.uuid4().hex[:6]}"
    try:
        async with (
            Router(**settings.kafka_connection(), allow_unverified=True) as router,
            workers(
                found,
                "kill9-static" if static else "kill9",
                extra_env={
                    **_session(session_timeout_s),
                    **key_env,
                    "LEARNOPS_TABLE_STORE": store,
                },
                static=static,
            ) as group,
            executor(group, f"{prefix}Exp" if experiment_every else None),
        ):
            await group.start()
            traffic = Traffic(
                pool,
                producer,
                router,
                prefix=prefix,
                experiment_every=experiment_every,
                operator_key=owner,
            )
            await traffic.setup()
            doers = traffic.all_doers
            stop = asyncio.Event()
            flow = asyncio.create_task(
                traffic.flow(stop, bundles=bundles, tasks=tasks, every=every)
            )
            for i in range(kills):
                await asyncio.sleep(rng.uniform(0.2, max_up_s))
                if flow.done():
                    flow.result()  # the publisher failed: say why
                group.kill9()
                killed_at = time.monotonic()
                before = await stored_runs(pool, doers)
                if rng.random() < starting_share:
                    # Killed again while it starts: in the changelog recovery or just after.
                    await group.kill_while_starting(rng.uniform(0.5, 6.0))
                    in_start += 1
                await group.start()
                await wait_for(
                    lambda: stored_runs(pool, doers),
                    lambda n, before=before: n > before,
                    timeout=180,
                    interval=0.1,
                    what=f"progress after kill {i + 1}",
                )
                report.recovery_s.append(time.monotonic() - killed_at)
                print(f"kill {i + 1}/{kills}: back in {report.recovery_s[-1]:.1f}s", flush=True)
            stop.set()
            await flow
            report.notes.append(f"{in_start} more kills while the restarted worker was starting")
            await finish(report, found, pool, group, traffic)
    finally:
        await producer.stop()
    return report


@contextlib.asynccontextmanager
async def executor(group: Workers, doer: str | None) -> AsyncIterator[None]:
    """The local replay executor for ``doer`` while the run lasts (None: no executor)."""
    if doer is None:
        yield
        return
    process = await start_executor(group.env("executor"), group.log_dir / "executor.log", doer)
    try:
        yield
    finally:
        await asyncio.to_thread(process.stop)


def _session(timeout_s: float | None) -> dict[str, str]:
    """The workers' environment for a session timeout (none: the worker's default)."""
    return {} if timeout_s is None else {"LEARNOPS_SESSION_TIMEOUT_S": f"{timeout_s:g}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bundles", type=int, default=3, help="plain bundles per round")
    parser.add_argument("--tasks", type=int, default=1, help="tasks per canary per round")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between rounds")
    parser.add_argument(
        "--static",
        action="store_true",
        help="the worker joins as a static member (LEARNOPS_GROUP_INSTANCE_ID)",
    )
    parser.add_argument(
        "--store",
        choices=["memory", "rocksdb"],
        default="memory",
        help="LEARNOPS_TABLE_STORE (rocksdb: each restart keeps its data directory)",
    )
    args = parser.parse_args()

    async def scenario(found: Services, pool: Any) -> Report:
        return await kill9(
            found,
            pool,
            kills=args.kills,
            seed=args.seed,
            bundles=args.bundles,
            tasks=args.tasks,
            every=args.every,
            static=args.static,
            store=args.store,
        )

    run_script("kill9-static" if args.static else "kill9", scenario)


if __name__ == "__main__":
    main()
