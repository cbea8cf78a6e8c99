"""`learnops demo experiments`: a worse candidate fails its replay; a better one replays, canaries
and is promoted. Runs the local replay executor in-process."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import click
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from agents.canary_scenario import CanaryScenario
from agents.cli import GroupedCommand, command
from agents.demo import demo
from agents.experiments_cli import experiment_report
from agents.experiments_scenario import artifact, prepare, submit, wait_experiment
from agents.replay_executor import serve
from agents.router import Router
from learning.signing import generate_key
from models.commands import CanarySettings, CreateExperiment, StartCanary
from storage import policies as store
from storage.pool import create_pool


@command(
    demo,
    "experiments",
    click.option("--min-samples", type=int, default=100, show_default=True),
    click.option("--timeout", type=float, default=240.0, show_default=True),
)
async def experiments(self: GroupedCommand, min_samples: int, timeout: float) -> None:
    """Replay a worse and a better candidate against the control; take the better one live."""
    settings = self.lapp.settings
    console = Console()
    pool = await create_pool(settings.database_dsn, min_size=1, max_size=4)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        linger_ms=5,
        **settings.kafka_client_options(),
    )
    await producer.start()
    stop = asyncio.Event()
    doer = f"ExperimentDemo{int(time.time())}"
    # The sandbox: the local executor, serving this demo's doer only.
    sandbox = asyncio.create_task(
        serve(settings, group_id="learnops-demo-executor", doers=re.escape(doer), stop=stop)
    )
    try:
        key = generate_key()
        await store.add_signing_key(pool, key.public_key, created_by="experiments-demo")
        versions = {1: artifact("control", 0.5), 2: artifact("better", 0.85)}
        versions[3] = artifact("worse", 0.2)
        prepared = await prepare(pool, producer, key, doer, versions)
        console.print(
            f"{doer}: control {prepared.policy_id}@1 active; golden dataset {prepared.golden} "
            f"({len(prepared.sample_ids)} samples), seeds 42,43,44"
        )
        quick = CanarySettings(min_sample_size=min_samples, report_every=200)
        for version, label in ((3, "worse"), (2, "better")):
            create = CreateExperiment(
                doer=doer,
                actor="experiments-demo",
                reason=f"try the {label} revision",
                experiment_id=f"exp-demo-{uuid.uuid4().hex[:8]}",
                hypothesis=f"revision {version} lowers the CRL",
                policy_id=prepared.policy_id,
                version=version,
                dataset=prepared.golden,
                seeds=[42, 43, 44],
                plan={"canary": quick.model_dump(mode="json")},
            )
            await producer.send_and_wait(
                "learning.commands", key=doer.encode(), value=create.to_json()
            )
            done = {"failed", "incomplete", "shadow", "canary"}
            row = await wait_experiment(pool, create.experiment_id, done, timeout)
            console.rule(f"[bold]experiment {create.experiment_id}: {label} candidate")
            await show(console, pool, create.experiment_id)
            if row is None or row["status"] != "shadow":
                continue
            await canary(
                console, settings, pool, producer, key, prepared.policy_id, doer, quick, timeout
            )
            await wait_experiment(pool, create.experiment_id, {"promoted", "rolled_back"}, 30)
            await show(console, pool, create.experiment_id, replay=False)
        rates = await pool.fetch(
            "SELECT * FROM v_experiment_success_rate WHERE doer = $1 ORDER BY experiment_type", doer
        )
        for rate in rates:
            console.print(
                f"v_experiment_success_rate {rate['experiment_type']} {doer}: "
                f"{rate['promoted']} promoted of {rate['concluded']} concluded "
                f"({(rate['success_rate'] or 0) * 100:.0f} %)"
            )
    finally:
        stop.set()
        await sandbox
        await producer.stop()
        await pool.close()


async def canary(
    console: Console,
    settings: Any,
    pool: Any,
    producer: Any,
    key: Any,
    policy_id: str,
    doer: str,
    quick: CanarySettings,
    timeout: float,
) -> None:
    """Move the shadow on to a canary and run live traffic until the canary stage decides."""
    async with Router(settings) as router:
        await router.wait_for(doer, lambda c: c.status == "shadow")
        started = await submit(
            pool,
            producer,
            StartCanary(
                doer=doer,
                actor="experiments-demo",
                reason="the shadow ran clean",
                policy_id=policy_id,
                version=2,
                steps=[0.1, 0.25, 0.5],
                canary=quick,
            ),
        )
        console.print(f"start_canary: {started.verdict}")
        live = await router.wait_for(doer, lambda c: c.status == "canary")
        assert live.deployment is not None
        scenario = CanaryScenario(pool, producer, router, doer, key, {1: 0.8, 2: 0.95})
        scenario.deployment_id = live.deployment.deployment_id
        decisions = await scenario.run_until(scenario.simulator(), timeout=timeout)
        final = [d for d in decisions if d.action != "report"]
        console.print(
            "canary decisions: "
            + ", ".join(f"{d.action} (step {d.step})" for d in final)
            + f" after {scenario.published_tasks} live tasks"
        )


async def show(console: Console, pool: Any, experiment_id: str, replay: bool = True) -> None:
    """Print an experiment's replay table (candidate and control per seed) and its history."""
    report = await experiment_report(pool, experiment_id)
    if report is None:
        console.print(f"[red]no experiment {experiment_id}[/red]")
        return
    side = report["replay"]
    if replay and side is not None:
        table = Table(title=f"replay {side['replay_id']} on {side['dataset']}")
        for column in ("arm", "policy", "seed", "runs", "mean CRL"):
            table.add_column(column)
        for arm, data in (("candidate", side), ("control", side["control"])):
            if data is None:
                continue
            for seed, figures in data["per_seed"].items():
                table.add_row(
                    arm, data["policy"], seed, str(figures["runs"]), f"{figures['mean_crl']:.4f}"
                )
            if data["mean_crl"] is not None:
                table.add_row(
                    arm,
                    data["policy"],
                    "all",
                    str(data["runs"]),
                    f"{data['mean_crl']:.4f} ± {data['std_crl']:.4f} "
                    f"(stability {data['stability']:.3f})",
                )
        console.print(table)
        if side["verdict"] is not None:
            console.print(f"verdict: {side['verdict']['reason']}")
    for h in report["history"]:
        console.print(f"  {h['at']}  {h['from'] or '-':>11} → {h['to']:<11} {h['reason']}")
