"""The console's response times with 1,000 doers x 30 days of runs, beside a same-run baseline.

Builds a fresh database on the server of DATABASE_URL (dropped at the end unless
``--keep``), fills it with SQL (runs, skill cards, experiments, alerts, dead
letters) and through the policy store (signed policies, promotions, canaries and
their decisions, as the policy agent writes them), serves the console with uvicorn
on a loopback port and requests every page and API call ``--requests`` times in
turn. It prints the median and p95 of each beside two baselines measured in the
same run: ``/healthz`` (no database) and ``/readyz`` (a ``SELECT 1``), then the
``EXPLAIN ANALYZE`` of the slowest queries.

    DATABASE_URL=postgresql://... .venv/bin/python bench/console.py --doers 1000 --days 30

Target (issue 18): every page and API call under 200 ms at p95.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import uvicorn

from learning.signing import generate_key, signed_artifact
from learnops.console import create_console
from models.commands import PromotePolicy, RegisterPolicy, StartCanary
from models.events import DecisionMade, DecisionReport
from storage import canary as canary_store
from storage import policy_commands, signing_keys
from storage.migrate import migrate
from storage.pool import create_pool
from tests.services import drop_database

RUNS = """
INSERT INTO crl_results (run_id, event_id, source_event_id, doer, phase, policy_id,
                         policy_version, tenant_id, occurred_at, loss, terms, contributions,
                         weights_version, gate_failures)
SELECT format('r-%s-%s-%s', d, day, i), gen_random_uuid(), gen_random_uuid(),
       'Doer' || d, (ARRAY['plan', 'draft', 'review'])[1 + i % 3], 'doer' || d, 1, 't',
       date_trunc('day', now()) - make_interval(days => day) + make_interval(mins => i * 7),
       0.2 + 0.3 * (d % 10) / 10.0 + 0.1 * random(), '{}', '{}', 'v1',
       CASE WHEN random() < 0.1 THEN ARRAY['lint'] ELSE '{}' END
FROM generate_series(1, $1::int) d, generate_series(0, $2::int - 1) day,
     generate_series(1, $3::int) i
"""

CARDS = """
INSERT INTO skill_cards (doer, event_id, as_of, content_hash, runs, gate_pass_rate, mean_crl,
                         delta_7d, delta_30d, policy_id, policy_version, card, computed_at)
SELECT 'Doer' || d, gen_random_uuid(), now()::date, md5(d::text) || md5(d::text), $2,
       0.9, 0.2 + 0.3 * (d % 10) / 10.0, 0.01 * (d % 7 - 3), 0.0, 'doer' || d, 1,
       jsonb_build_object('gate_failures_30d',
           jsonb_build_object('lint', d % 5, 'tests', d % 3, 'gate' || (d % 40), 1)),
       now()
FROM generate_series(1, $1::int) d
"""

EXPERIMENTS = """
INSERT INTO experiments (experiment_id, created_by, experiment_type, doer, phase, hypothesis,
                         actor, reason, seeds, policy_id, policy_version, status, created_at,
                         concluded_at)
SELECT format('exp-%s-%s', d, k), gen_random_uuid(),
       (ARRAY['prompt_synthesis', 'adapter_training', 'tool_tuning',
              'rag_optimization'])[1 + k % 4],
       'Doer' || d, 'plan', 'better', 'bench', 'bench', '{1,2,3}', 'doer' || d, 1,
       (ARRAY['failed', 'rolled_back', 'incomplete', 'replaying'])[1 + (d + k) % 4],
       now() - make_interval(days => (d + k) % $2::int), now()
FROM generate_series(1, $1::int) d, generate_series(1, 4) k
"""

ALERTS = """
INSERT INTO alerts (event_id, doer, kind, severity, message, value, threshold, occurred_at)
SELECT gen_random_uuid(), 'Doer' || (1 + n % $1::int), 'crl_regression', 'warning',
       'mean CRL up', 0.4, 0.3, now() - make_interval(mins => n)
FROM generate_series(1, 5000) n
"""

DEAD_LETTERS = """
INSERT INTO dead_letters (event_id, doer, stage, error_type, reason, topic, partition,
                          "offset", occurred_at)
SELECT gen_random_uuid(), 'Doer' || (1 + n % $1::int), (ARRAY['crl', 'curator'])[1 + n % 2],
       'validation', 'reason ' || (n % 50), 'learning.run-completed', 0, n,
       now() - make_interval(mins => n)
FROM generate_series(1, 20000) n
"""


async def policies(pool: Any, doers: int, canaries: int) -> list[str]:
    """Version 1 active for every doer; version 2 in canary for CANARIES doers: their ids."""
    key = generate_key()
    await signing_keys.add_signing_key(pool, key.public_key, created_by="bench", note="console")
    gate = asyncio.Semaphore(4)

    async def doer(d: int) -> str | None:
        name, policy_id = f"Doer{d}", f"doer{d}"
        versions = (1, 2) if d <= canaries else (1,)
        commands: list[Any] = [
            RegisterPolicy(
                doer=name,
                actor="bench",
                reason="bench",
                policy_id=policy_id,
                version=v,
                **signed_artifact(
                    {"prompts": {"system": "Write."}, "revision": v},
                    key,
                    doer=name,
                    policy_id=policy_id,
                    version=v,
                ),
            )
            for v in versions
        ]
        commands.append(
            PromotePolicy(
                doer=name, actor="bench", reason="first", policy_id=policy_id, version=1, force=True
            )
        )
        if d <= canaries:
            commands.append(
                StartCanary(
                    doer=name,
                    actor="bench",
                    reason="try",
                    policy_id=policy_id,
                    version=2,
                    force=True,
                )
            )
        async with gate:
            for command in commands:
                outcome = await policy_commands.apply_command(pool, command)
                assert outcome is not None and outcome.applied, outcome
            if d > canaries:
                return None
            return str(
                await pool.fetchval(
                    "SELECT deployment_id FROM shadow_deployments"
                    " WHERE doer = $1 AND ended_at IS NULL",
                    name,
                )
            )

    found = await asyncio.gather(*(doer(d) for d in range(1, doers + 1)))
    return [deployment for deployment in found if deployment]


async def decisions(pool: Any, deployments: list[str]) -> None:
    """Ten reports per canary; then a third promoted, a third rolled back, a third in flight."""
    start = datetime.now(UTC) - timedelta(days=20)
    for n, deployment_id in enumerate(deployments):
        row = await pool.fetchrow(
            "SELECT doer, policy_id FROM shadow_deployments WHERE deployment_id = $1",
            deployment_id,
        )
        doer = row["doer"]
        ending = ("promote", "rollback", "report")[n % 3]
        made = []
        for k in range(1, 11):
            action = ending if k == 10 else "report"
            count = 100 * k
            made.append(
                DecisionMade(
                    doer=doer,
                    occurred_at=start + timedelta(days=n % 20, minutes=k),
                    deployment_id=deployment_id,
                    candidate_policy_id=row["policy_id"],
                    candidate_version=2,
                    action=action,
                    reason=f"{action} after {2 * count} results",
                    step=0,
                    report=DecisionReport(
                        control_mean=0.40,
                        candidate_mean=0.37 if ending == "promote" else 0.43,
                        control_count=count,
                        candidate_count=count,
                        delta=-0.03 if ending == "promote" else 0.03,
                        p_value=0.5 / k,
                        ci_low=None if k == 1 else -0.1 / k,
                        ci_high=None if k == 1 else 0.1 / k,
                        confidence=0.95,
                    ),
                )
            )
        await canary_store.insert_decisions(pool, made)
        if ending != "report":
            outcome = await policy_commands.apply_decision(pool, made[-1])
            assert outcome is not None and outcome.applied, outcome
        if ending == "promote":
            await pool.execute(
                "INSERT INTO experiments (experiment_id, created_by, experiment_type, doer, phase,"
                " hypothesis, actor, reason, seeds, policy_id, policy_version, status,"
                " deployment_id, created_at, concluded_at) VALUES ($1, $2, 'prompt_synthesis',"
                " $3, 'plan', 'better', 'bench', 'bench', '{1}', $4, 2, 'promoted', $5, $6, $6)",
                f"exp-promoted-{n}",
                uuid.uuid4(),
                doer,
                row["policy_id"],
                deployment_id,
                made[-1].occurred_at,
            )


async def fill(dsn: str, doers: int, days: int, runs: int, canaries: int) -> list[str]:
    """Fill the fresh database at DSN; returns the canary deployment ids."""
    pool = await create_pool(dsn, min_size=1, max_size=5)
    try:
        await migrate(pool)
        started = time.perf_counter()
        await pool.execute(RUNS, doers, days, runs)
        for query, *args in (
            (CARDS, doers, runs),
            (EXPERIMENTS, doers, days),
            (ALERTS, doers),
            (DEAD_LETTERS, doers),
        ):
            await pool.execute(query, *args)
        deployments = await policies(pool, doers, canaries)
        await decisions(pool, deployments)
        await pool.execute("VACUUM ANALYZE")
        print(
            f"filled: {doers} doers x {days} days x {runs} runs/day"
            f" = {doers * days * runs:,} runs, {len(deployments)} canaries"
            f" in {time.perf_counter() - started:.1f} s"
        )
        return deployments
    finally:
        await pool.close()


def serve(dsn: str) -> tuple[uvicorn.Server, threading.Thread, str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(create_console(dsn), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the console did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def paths(deployment: str) -> list[str]:
    doer = "Doer1"
    return [
        "/healthz",
        "/readyz",
        "/",
        f"/doers/{doer}",
        "/progress",
        "/policies",
        "/skills",
        "/canaries",
        f"/canaries/{deployment}",
        "/dead-letters",
        "/live",
        "/api/crl/trend",
        "/api/crl/trend/phases",
        "/api/experiments/per-day",
        "/api/doers",
        f"/api/doers/{doer}/trend",
        f"/api/doers/{doer}/trend/phases",
        f"/api/doers/{doer}/trend/policies",
        f"/api/doers/{doer}/skill-card",
        f"/api/doers/{doer}/policy-history",
        f"/api/doers/{doer}/experiments",
        "/api/progress",
        "/api/policies",
        "/api/skills",
        "/api/canaries",
        "/api/canaries?in_flight=true",
        f"/api/canaries/{deployment}",
        "/api/dead-letters",
        "/api/live",
        "/openapi.json",
    ]


def measure(base: str, targets: list[str], requests: int) -> dict[str, list[float]]:
    """Seconds per request of each target, requested in turn (load hits every one alike)."""
    samples: dict[str, list[float]] = {path: [] for path in targets}
    with httpx.Client(base_url=base, timeout=30) as client:
        for path in targets:  # warm up: plans cached, pool connections open
            client.get(path).raise_for_status()
        for _ in range(requests):
            for path in random.sample(targets, len(targets)):
                started = time.perf_counter()
                client.get(path).raise_for_status()
                samples[path].append(time.perf_counter() - started)
    return samples


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


PLANS = {
    "v_crl_trend_overall (overview)": "SELECT * FROM v_crl_trend_overall"
    " WHERE day > (SELECT max(day) FROM v_crl_trend_overall) - 30",
    "v_crl_trend_by_phase (overview)": "SELECT * FROM v_crl_trend_by_phase"
    " WHERE day > (SELECT max(day) FROM crl_daily) - 30",
    "v_doers_latest (overview)": "SELECT * FROM v_doers_latest ORDER BY doer",
    # What the overview's doer list read before v_doers_latest: every doer's whole history.
    "v_crl_trend_by_doer, latest day per doer": "SELECT DISTINCT ON (doer) doer, day,"
    " mean_crl_7d, delta_vs_baseline FROM v_crl_trend_by_doer ORDER BY doer, day DESC",
    "v_dead_letters_by_reason (dead letters)": "SELECT * FROM v_dead_letters_by_reason"
    " ORDER BY latest_at DESC LIMIT 200",
    "v_skill_card_ranking (skill cards)": "SELECT * FROM v_skill_card_ranking"
    " WHERE rank_best <= 10",
    "v_failure_modes (skill cards)": "SELECT * FROM v_failure_modes",
    "v_policy_moves_per_week (policies)": "SELECT * FROM v_policy_moves_per_week",
}


async def plans(dsn: str, names: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name in names:
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + PLANS[name])
            print(f"\n-- {name}\n" + "\n".join(row[0] for row in rows))
    finally:
        await conn.close()


async def timed_queries(dsn: str) -> list[tuple[float, str]]:
    """The median time of each query of PLANS over 5 runs, slowest first."""
    conn = await asyncpg.connect(dsn)
    try:
        times = []
        for name, query in PLANS.items():
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                await conn.fetch(query)
                runs.append(time.perf_counter() - started)
            times.append((statistics.median(runs), name))
        return sorted(times, reverse=True)
    finally:
        await conn.close()


async def database(server: str, name: str, create: bool) -> None:
    if not create:
        await drop_database(server, name)
        return
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--doers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs-per-day", type=int, default=10)
    parser.add_argument("--canaries", type=int, default=90)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    server_dsn = os.environ.get("DATABASE_URL")
    if not server_dsn:
        parser.error("set DATABASE_URL to a PostgreSQL server this bench may create a database on")
    random.seed(18)
    name = f"learnops_bench_console_{uuid.uuid4().hex[:8]}"
    dsn = urlunsplit(urlsplit(server_dsn)._replace(path=f"/{name}"))
    asyncio.run(database(server_dsn, name, create=True))
    try:
        deployments = asyncio.run(
            fill(dsn, args.doers, args.days, args.runs_per_day, args.canaries)
        )
        server, thread, base = serve(dsn)
        try:
            samples = measure(base, paths(deployments[-1]), args.requests)
        finally:
            server.should_exit = True
            thread.join(10)
        print(f"\n{'request':50} {'median ms':>10} {'p95 ms':>8}  ({args.requests} each)")
        for path, values in sorted(samples.items(), key=lambda kv: -p95(kv[1])):
            mark = " (baseline)" if path in ("/healthz", "/readyz") else ""
            over = "  OVER 200 ms" if p95(values) > 0.2 else ""
            print(
                f"{path + mark:50} {statistics.median(values) * 1000:10.1f}"
                f" {p95(values) * 1000:8.1f}{over}"
            )
        slowest = asyncio.run(timed_queries(dsn))
        print(
            "\nqueries, median of 5 (ms): " + ", ".join(f"{n} {t * 1000:.1f}" for t, n in slowest)
        )
        asyncio.run(plans(dsn, [n for _, n in slowest[:3]]))
    finally:
        if not args.keep:
            asyncio.run(database(server_dsn, name, create=False))


if __name__ == "__main__":
    main()
