"""The end of every traffic-driven fault run: let it finish, stop cleanly, then count everything."""

from __future__ import annotations

from typing import Any

from tests.faults.ledger import (
    Report,
    caught_up,
    check_aggregates,
    check_bandit,
    check_canary,
    check_experiments,
    check_logs,
    check_offsets,
    check_runs,
    check_samples,
    crl_rows,
    dead_letters,
    describe_startups,
    experiment_rows,
    experiments_settled,
    sample_ids,
    settle,
)
from tests.faults.rig import Services, Workers
from tests.faults.traffic import Traffic


async def stored_runs(pool: Any, doers: list[str]) -> int:
    """How many of this run's runs crl_results holds."""
    return int(
        await pool.fetchval("SELECT count(*) FROM crl_results WHERE doer = ANY($1::text[])", doers)
    )


async def stored_per_doer(pool: Any, doers: list[str]) -> dict[str, int]:
    """How many runs crl_results holds per doer of this run."""
    rows = await pool.fetch(
        "SELECT doer, count(*) AS n FROM crl_results WHERE doer = ANY($1::text[]) GROUP BY doer",
        doers,
    )
    return {r["doer"]: int(r["n"]) for r in rows}


async def finish(
    report: Report, found: Services, pool: Any, group: Workers, traffic: Traffic
) -> None:
    """Wait for every published run and every commit, stop the workers cleanly, then check."""
    published = traffic.published
    doers = traffic.all_doers
    total = len(published.runs)
    try:
        # Until every run is stored, or nothing more is for a minute (a loss: counted below).
        stored = await settle(
            lambda: stored_runs(pool, doers), quiet_s=60, timeout=600, until=lambda n: n >= total
        )
        if stored < total:
            report.notes.append(f"{total - stored} runs never stored; nothing moved for 60s")
        # Every stage done with every event (its offsets committed), then a clean stop.
        waited = await caught_up(found.bootstrap, group.app_id, timeout=600)
        report.notes.append(f"caught up {waited:.0f}s after the last run was stored")
        if published.experiments:
            # A step a kill left recorded and unsent waits for the stage's timer.
            expected = len(published.experiments)
            await settle(
                lambda: experiment_rows(pool, published.experiments),
                quiet_s=90,
                timeout=300,
                until=lambda rows: experiments_settled(rows, expected),
            )
            # Settling, the experiments stage may publish one more alert (a failure
            # rate) that the worker's own alert stages read: caught up again before
            # the stop, or the stop races that record's commit.
            await caught_up(found.bootstrap, group.app_id, timeout=600)
    except TimeoutError as exc:
        report.fail(str(exc))
    codes = await group.stop_all()
    if any(code not in (0, None) for code in codes.values()):
        report.notes.append(f"clean stop exit codes: {codes}")
    rows = await crl_rows(pool, doers)
    letters = await dead_letters(found.bootstrap, group.app_id)
    # A refused record published again by `learnops dlq replay` (the stale-producer
    # scenario) is counted through its copy: the checks below must find it once.
    replayed = {
        (r["topic"], r["partition"], r["offset"])
        for r in await pool.fetch('SELECT topic, partition, "offset" FROM dead_letter_replays')
    }
    letters = [d for d in letters if (d.topic, d.partition, d.offset) not in replayed]
    check_runs(report, published.runs, rows, dlq=len(letters))
    check_samples(report, published.runs, await sample_ids(pool, doers))
    await check_aggregates(report, pool, found.bootstrap, group.app_id, rows, set(doers))
    await check_bandit(
        report, found.bootstrap, pool, group.app_id, published.runs, rows, traffic.bandit_doer
    )
    await check_experiments(report, pool, found.bootstrap, published.experiments)
    await check_canary(
        report,
        pool,
        found.bootstrap,
        group.app_id,
        traffic.patient,
        published.routings,
        set(doers),
    )
    if letters:
        report.fail(f"{len(letters)} dead letters from valid traffic: {letters[0].reason}")
    await check_offsets(report, found.bootstrap, group.app_id)
    check_logs(report, group.log_text())
    describe_startups(report, group.logs())
    report.notes.append(
        f"{total} runs and {len(published.routings)} routings published, "
        f"{published.resent_rounds} rounds resent; logs in {group.log_dir}"
    )
