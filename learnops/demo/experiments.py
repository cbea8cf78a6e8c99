"""`learnops demo experiments`: the learning loop, end to end, printed with rich.

A doer's runs regress → the learning triggers raise one experiment request →
a stand-in synthesizer answers it with a signed candidate and an experiment
naming the request → the replay table (candidate and control per seed) →
shadow → canary, promoted by the canary stage → a worse candidate fails its
replay against the new policy → the doer's updated skill card. Runs the local
replay executor in-process; talks to the worker only through Kafka.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from learning.replay import Executor
from learning.signing import SigningKey, generate_key
from learnops.cli.experiments import experiment_report
from learnops.cli.main import GroupedCommand, command
from learnops.cli.skills import print_card
from learnops.client.replay_executor import serve
from learnops.demo.commands import demo
from learnops.demo.experiments_scenario import (
    BETTER,
    CONTROL,
    WORSE,
    ExperimentDoer,
    canary_until_decided,
    create_experiment,
    prepare,
    register,
    regression_runs,
    wait_experiment,
    wait_request,
)
from learnops.demo.operators import demo_signed
from learnops.simulation.orchestrator import Orchestrator
from models.commands import CanarySettings
from storage import signing_keys as store
from storage.experiments import get_blob
from storage.pool import create_pool
from storage.skills import current_card, list_requests

ACTOR = "experiments-demo"


@command(
    demo,
    "experiments",
    click.option("--min-samples", type=int, default=100, show_default=True),
    click.option("--timeout", type=float, default=240.0, show_default=True),
)
async def experiments(self: GroupedCommand, min_samples: int, timeout: float) -> None:
    """Regression → request → experiment → replay → canary → promotion → updated skill card."""
    settings = self.settings
    console = self.console()
    stamp = int(time.time())
    doer = f"LoopDemo{stamp}"
    async with sandboxed(settings, doer, "learnops-demo-executor") as (pool, producer):
        key = generate_key()
        await store.add_signing_key(pool, key.public_key, created_by=ACTOR)
        prepared = await prepare(pool, producer, key, doer, {1: CONTROL}, actor=ACTOR)
        console.print(
            f"{doer}: policy {prepared.policy_id}@1 active; golden dataset {prepared.golden} "
            f"({len(prepared.sample_ids)} samples)"
        )
        quick = CanarySettings(min_sample_size=min_samples, report_every=200)
        request = await regress(console, pool, producer, prepared, stamp, timeout)
        if request is None:
            return
        promoted = await answer(
            console, settings, pool, producer, key, prepared, request, quick, timeout
        )
        if promoted is None:
            return
        console.rule("[bold]5. another synthesized candidate (worse) against the new policy")
        await register(pool, producer, key, doer, 3, WORSE, actor=ACTOR, reason="synthesized")
        worse = create_experiment(
            prepared,
            3,
            actor=ACTOR,
            reason="another synthesized revision",
            hypothesis="revision 3 lowers the CRL further",
        )
        worse = await demo_signed(pool, worse)
        await producer.send_and_wait("learning.commands", key=doer.encode(), value=worse.to_json())
        await wait_experiment(
            pool, worse.experiment_id, {"failed", "incomplete", "shadow"}, timeout
        )
        await show(console, pool, worse.experiment_id)
        await updated_card(console, pool, producer, prepared, stamp, promoted, worse.experiment_id)
        rates = await pool.fetch(
            "SELECT * FROM v_experiment_success_rate WHERE doer = $1 ORDER BY experiment_type", doer
        )
        for rate in rates:
            console.print(
                f"v_experiment_success_rate {rate['experiment_type']} {doer}: "
                f"{rate['promoted']} promoted of {rate['concluded']} concluded "
                f"({(rate['success_rate'] or 0) * 100:.0f} %)"
            )


@asynccontextmanager
async def sandboxed(
    settings: Any, doer: str, group_id: str, executor: Executor | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """A pool, a started producer, and the sandbox (a replay executor) serving ``doer`` only."""
    pool = await create_pool(settings.database_dsn, min_size=1, max_size=4)
    producer = settings.kafka_producer(linger_ms=5)
    await producer.start()
    stop = asyncio.Event()
    sandbox = asyncio.create_task(
        serve(
            **settings.kafka_connection(),
            fetch_blob=lambda digest: get_blob(pool, digest),
            group_id=group_id,
            doers=re.escape(doer),
            executor=executor,
            stop=stop,
        )
    )
    try:
        yield pool, producer
    finally:
        stop.set()
        await sandbox
        await producer.stop()
        await pool.close()


async def regress(
    console: Console,
    pool: Any,
    producer: Any,
    prepared: ExperimentDoer,
    stamp: int,
    timeout: float,
) -> Any:
    """Publish a week of good runs and today's bad ones; the experiment request they raise."""
    console.rule("[bold]1. regression: the doer's runs get worse today")
    runs = regression_runs(
        prepared.name, (prepared.policy_id, 1), datetime.now(UTC), run_prefix=f"loop-{stamp}"
    )
    sent = [
        await producer.send("learning.run-completed", key=r.doer.encode(), value=r.to_json())
        for r in runs
    ]
    await asyncio.gather(*sent)
    today = sum(1 for r in runs if r.occurred_at.date() == datetime.now(UTC).date())
    console.print(
        f"published {len(runs) - today} runs over the last 7 days (good) and {today} today (bad)"
    )
    request = await wait_request(pool, prepared.name, timeout=timeout)
    if request is None:
        console.print("[red]no experiment request was raised: is the worker running?[/red]")
        return None
    console.rule("[bold]2. learning trigger: one experiment request")
    table = Table(title=f"open experiment requests of {prepared.name} (experiment_requests)")
    for name in ("request", "reason", "opened", "message"):
        table.add_column(name)
    for r in await list_requests(pool, doer=prepared.name):
        table.add_row(
            str(r["request_id"]),
            r["reason"],
            r["opened_at"].isoformat(timespec="seconds"),
            r["message"],
        )
    console.print(table)
    evidence = {k: request["evidence"].get(k) for k in ("day", "value", "baseline", "threshold")}
    console.print(f"evidence: {orjson.dumps(evidence).decode()}")
    return request


async def answer(
    console: Console,
    settings: Any,
    pool: Any,
    producer: Any,
    key: SigningKey,
    prepared: ExperimentDoer,
    request: Any,
    quick: CanarySettings,
    timeout: float,
) -> str | None:
    """A synthesizer's answer: a signed candidate and an experiment naming the request."""
    console.rule("[bold]3. experiment: a synthesized candidate answers the request")
    await register(pool, producer, key, prepared.name, 2, BETTER, actor="synthesizer")
    create = create_experiment(
        prepared,
        2,
        actor="synthesizer",
        reason=f"answers request {request['request_id']}",
        hypothesis=request["hypothesis"],
        request_id=request["request_id"],
        canary=quick,
    )
    create = await demo_signed(pool, create)
    await producer.send_and_wait(
        "learning.commands", key=prepared.name.encode(), value=create.to_json()
    )
    done = {"failed", "incomplete", "shadow", "canary"}
    row = await wait_experiment(pool, create.experiment_id, done, timeout)
    await show(console, pool, create.experiment_id)
    if row is None or row["status"] != "shadow":
        return None
    console.rule("[bold]4. shadow → canary, decided by the canary stage")
    started, scenario, decisions = await canary_until_decided(
        settings,
        pool,
        producer,
        key,
        prepared,
        2,
        quick,
        actor=ACTOR,
        run_prefix=f"loop-{int(time.time())}-canary",
        timeout=timeout,
    )
    print_canary(console, started, scenario, decisions)
    await wait_experiment(pool, create.experiment_id, {"promoted", "rolled_back"}, 30)
    await show(console, pool, create.experiment_id, replay=False)
    return create.experiment_id


def print_canary(console: Console, started: Any, scenario: Any, decisions: list[Any]) -> None:
    """The start_canary verdict and the canary stage's decisions (its reports left out)."""
    console.print(f"start_canary: {started.verdict}")
    final = [d for d in decisions if d.action != "report"]
    console.print(
        "canary decisions: "
        + ", ".join(f"{d.action} (step {d.step})" for d in final)
        + f" after {scenario.published_tasks} live tasks"
    )


async def updated_card(
    console: Console,
    pool: Any,
    producer: Any,
    prepared: ExperimentDoer,
    stamp: int,
    *experiment_ids: str,
) -> None:
    """Run the doer a little under its new policy; print its card once it has both experiments."""
    console.rule("[bold]6. the doer's updated skill card (skill_cards, learning.skill-cards)")
    orchestrator = Orchestrator(seed=3, run_prefix=f"loop-{stamp}-after")
    for _ in range(5):
        run = orchestrator.bundle(
            prepared.name,
            occurred_at=datetime.now(UTC),
            policy=(prepared.policy_id, 2),
            quality=0.95,
        )
        await producer.send_and_wait(
            "learning.run-completed", key=prepared.name.encode(), value=run.to_json()
        )
    deadline = time.monotonic() + 60
    card = await current_card(pool, prepared.name, orchestrator.tenant_id)
    while time.monotonic() < deadline and not (
        card is not None
        and {e["experiment_id"] for e in card.experiments} >= set(experiment_ids)
        and card.policy_version == 2
    ):
        await asyncio.sleep(0.5)
        card = await current_card(pool, prepared.name, orchestrator.tenant_id)
    if card is None:
        console.print(f"[red]no skill card for {prepared.name}[/red]")
        return
    print_card(console, card, await list_requests(pool, doer=prepared.name))


async def show(console: Console, pool: Any, experiment_id: str, replay: bool = True) -> None:
    """Print an experiment's replay table (candidate and control per seed) and its history."""
    report = await experiment_report(pool, experiment_id)
    if report is None:
        console.print(f"[red]no experiment {experiment_id}[/red]")
        return
    console.print(
        f"experiment {experiment_id}: candidate {report['candidate']} vs control "
        f"{report['control']}, status [bold]{report['status']}[/bold]"
    )
    if report["request"] is not None:
        asked = report["request"]
        console.print(
            f"answers request {asked['request_id']} ({asked['reason']}), now {asked['status']}"
        )
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
