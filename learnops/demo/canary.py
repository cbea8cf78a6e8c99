"""`learnops demo canary`: one canary promoted, one rolled back, with their reports."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from learning.signing import generate_key
from learnops.cli.main import GroupedCommand, command
from learnops.demo.canary_scenario import CanaryScenario
from learnops.demo.commands import demo
from learnops.demo.experiments_scenario import demo_router
from models.commands import CanarySettings
from storage import signing_keys as store
from storage.pool import create_pool


@command(
    demo,
    "canary",
    click.option("--min-samples", type=int, default=100, show_default=True),
    click.option("--timeout", type=float, default=240.0, show_default=True),
)
async def canary(self: GroupedCommand, min_samples: int, timeout: float) -> None:
    """Run a better candidate through its canary steps to promotion, and a worse one to rollback."""
    settings = self.settings
    console = self.console()
    pool = await create_pool(settings.database_dsn, min_size=1, max_size=4)
    producer = settings.kafka_producer(linger_ms=5)
    await producer.start()
    try:
        key = generate_key()
        await store.add_signing_key(pool, key.public_key, created_by="canary-demo")
        tag = int(time.time())
        async with await demo_router(settings, pool, key) as router:
            for name, candidate in (("better", 0.95), ("worse", 0.6)):
                doer = f"CanaryDemo{name.title()}{tag}"
                scenario = CanaryScenario(pool, producer, router, doer, key, {1: 0.8, 2: candidate})
                await scenario.setup()
                deployment_id = await scenario.start_canary(
                    2,
                    CanarySettings(min_sample_size=min_samples, report_every=200),
                    [0.1, 0.25, 0.5],
                )
                console.rule(f"[bold]{doer}: canary of revision 2 ({name} than revision 1)")
                decisions = await scenario.run_until(scenario.simulator(), timeout=timeout)
                show(console, deployment_id, decisions, scenario.published_tasks)
                # The decision is out; the policy agent's change follows it on policy-changes.
                change = router.live(doer)
                for _ in range(100):
                    if change is not None and change.status == "active":
                        break
                    await asyncio.sleep(0.1)
                    change = router.live(doer)
                if change is not None:
                    console.print(
                        f"live policy now: [bold]{change.policy_id}@{change.version}[/bold] "
                        f"({change.status}; the last change: {change.change.replace('_', ' ')})"
                    )
    finally:
        await producer.stop()
        await pool.close()


def show(console: Console, deployment_id: str, decisions: list[Any], tasks: int) -> None:
    """Print a deployment's decisions and the full report of its last one."""
    table = Table(title=f"{deployment_id}: decisions ({tasks} tasks routed)")
    for column in ("action", "step", "control CRL (n)", "candidate CRL (n)", "delta %", "p"):
        table.add_column(column)
    for d in decisions:
        r = d.report
        pct = r.get("delta_pct")
        table.add_row(
            d.action,
            str(d.step),
            f"{r['control_mean']:.3f} ({r['control_count']})",
            f"{r['candidate_mean']:.3f} ({r['candidate_count']})",
            "-" if pct is None else f"{pct * 100:+.1f} %",
            f"{r['p_value']:.3g}",
        )
    console.print(table)
    if not decisions:
        console.print("[red]no decision yet[/red]")
        return
    last = decisions[-1]
    r = last.report
    console.print(f"[bold]{last.action}[/bold] at step {last.step}: {last.reason}")
    console.print(
        f"always-valid {r.get('confidence', 0.95) * 100:g} % CI for delta: "
        f"[{_f(r.get('ci_low'))}, {_f(r.get('ci_high'))}], recommendation "
        f"{r.get('recommendation')}"
    )
    # Each row's value, threshold and bound mean what its statistic and rule say: a
    # p-value must stay above its threshold, a harm's lower bound below 0.
    guards = Table(title="guardrails (each row's rule in its last column)")
    for column in ("name", "critical", "statistic", "value", "threshold", "bound", "passed"):
        guards.add_column(column)
    guards.add_column("rule", overflow="fold")
    for g in r.get("guardrails", []):
        guards.add_row(
            g["name"],
            str(g.get("critical", False)),
            g.get("statistic", ""),
            _f(g["value"]),
            _f(g["threshold"]),
            _f(g.get("bound")),
            "yes" if g["passed"] else "[red]NO[/red]",
            g.get("reason") or "",
        )
    console.print(guards)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4g}"
