"""`learnops demo bandit`: the bandit learns that the small model will do, and it is promoted.

A doer's signed policy leaves its draft model open between a large and a small
model that is as good and cheaper → runs routed by the bandit's allocations
(learnops.client.Allocations, pinned to the worker's key) → the shares move to
the small model → a confident allocation raises an experiment request → an
owner answers it with `learnops bandit propose` → replay on the golden set →
shadow → canary (non-inferiority) → promotion → the doer's skill card.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from learning.signing import generate_key
from learnops.cli.main import GroupedCommand, command, fail
from learnops.client import Allocations, Choice
from learnops.demo.bandit_scenario import (
    LARGE,
    PARAMETER,
    PHASE,
    SMALL,
    DeclaredModelExecutor,
    TwoModelOrchestrator,
    control_artifact,
)
from learnops.demo.commands import demo
from learnops.demo.experiments import print_canary, sandboxed, show, updated_card
from learnops.demo.experiments_scenario import (
    canary_until_decided,
    prepare,
    wait_experiment,
    wait_request,
)
from models.commands import CanarySettings
from storage import signing_keys as store
from storage.dashboard import bandit_history

ACTOR = "bandit-demo"
# Non-inferiority: the live control already runs mostly the small model, so "as good" is
# what the canary can show.
CANARY = CanarySettings(
    mode="non_inferiority",
    non_inferiority_margin=0.1,
    max_crl_increase=0.1,
    min_sample_size=100,
    report_every=200,
)


#: The simulated orchestrator's seed: one the walk-through reaches its promotion with.
DEMO_SEED = 116


@command(
    demo,
    "bandit",
    click.option(
        "--rounds", type=int, default=100, show_default=True, help="At most, of 100 runs each."
    ),
    click.option("--timeout", type=float, default=240.0, show_default=True),
)
async def bandit(self: GroupedCommand, rounds: int, timeout: float) -> None:
    """Allocations → request → `bandit propose` → replay → shadow → canary → promotion → card."""
    settings = self.settings
    console = self.console()
    worker = settings.worker_key()
    if worker is None:
        fail(
            "LEARNOPS_WORKER_SIGNING_KEY_FILE is not set: the demo verifies the bandit's "
            "allocations with the public half of the key the worker signs them with; set it "
            "to the worker's key file (`make demo` prints its path at the end)"
        )
    stamp = int(time.time())
    doer = f"BanditDemo{stamp}"
    executor = DeclaredModelExecutor()
    group_id = "learnops-demo-bandit-executor"
    async with (
        sandboxed(settings, doer, group_id, executor) as (pool, producer),
        Allocations(**settings.kafka_connection(), trusted_keys=[worker.public_key]) as allocations,
    ):
        key = generate_key()
        await store.add_signing_key(pool, key.public_key, created_by=ACTOR)
        body = {1: control_artifact()}
        prepared = await prepare(pool, producer, key, doer, body, actor=ACTOR)
        console.print(
            f"{doer}: policy {prepared.policy_id}@1 active, {PHASE}/{PARAMETER} open between "
            f"{LARGE} and {SMALL} (as good, cheaper); golden dataset {prepared.golden}"
        )

        def choose(name: str, run_id: str) -> Choice | None:
            return allocations.choice(name, PHASE, PARAMETER, run_id)

        # One seed for every demo. The routing still differs per demo (the doer's name and
        # run ids carry the time), and so does the round the request comes in: the small
        # model leaves the floor once its probes show it has fewer than twice the others'
        # events (docs/bandits.md, *Probes*). Replayed offline over 400 demo times: median
        # round 10, 99th percentile 32, latest 48 (one not confident by 100); up to 100.
        orchestrator = TwoModelOrchestrator(
            choose, {2: SMALL}, seed=DEMO_SEED, doers=(doer,), run_prefix=f"bandit-{stamp}"
        )
        reason = f"bandit:{prepared.policy_id}@1:{PHASE}/{PARAMETER}={SMALL}"
        request = await learn(
            console, producer, pool, allocations, orchestrator, doer, reason, rounds, timeout
        )
        with tempfile.TemporaryDirectory() as folder:
            key_file = Path(folder) / "owner-policy.pem"
            key_file.write_bytes(key.to_pem())
            experiment_id = propose(console, request, key_file, prepared.golden, timeout)
        row = await wait_experiment(
            pool, experiment_id, {"failed", "incomplete", "shadow", "canary"}, timeout
        )
        await show(console, pool, experiment_id)
        if row is None or row["status"] != "shadow":
            fail(f"experiment {experiment_id} did not reach its shadow")
        console.rule("[bold]4. shadow → canary (non-inferiority), decided by the canary stage")
        started, scenario, decisions = await canary_until_decided(
            settings,
            pool,
            producer,
            key,
            prepared,
            2,
            CANARY,
            actor=ACTOR,
            run_prefix=f"bandit-{stamp}-canary",
            timeout=timeout,
            orchestrator=orchestrator,
            steps=(0.5,),
        )
        print_canary(console, started, scenario, decisions)
        row = await wait_experiment(pool, experiment_id, {"promoted", "rolled_back"}, 60)
        await show(console, pool, experiment_id, replay=False)
        if row is None or row["status"] != "promoted":
            fail(f"experiment {experiment_id} was not promoted")
        await updated_card(console, pool, producer, prepared, stamp, experiment_id)
        allocated = await bandit_history(pool, doer)
        if not allocated:
            fail(f"no allocation of {doer} is stored for the console (bandit_allocations)")
        console.print(
            f"The console shows it: /doers/{doer} (its shares over {len(allocated)} "
            "allocations, its experiments and skill card) and /bandits; the API "
            f"/api/doers/{doer}/bandits/history, /api/doers/{doer}/experiments and "
            f"/api/doers/{doer}/skill-card"
        )


async def learn(
    console: Console,
    producer: Any,
    pool: Any,
    allocations: Allocations,
    orchestrator: TwoModelOrchestrator,
    doer: str,
    reason: str,
    rounds: int,
    timeout: float,
) -> Any:
    """Publish rounds of 100 runs routed by the allocations until the bandit raises its request."""
    console.rule("[bold]1. the bandit's allocations over time (learning.bandit-allocations)")
    table = Table(title=f"{doer}: {PHASE}/{PARAMETER}")
    for column in (
        "runs",
        "sequence",
        f"share {LARGE}",
        f"share {SMALL}",
        "runs of each",
        "probes asked",
        "probes run",
    ):
        table.add_column(column)
    used = {LARGE: 0, SMALL: 0}
    probed = 0
    request = None
    for _ in range(rounds):
        runs = []
        for _ in range(100):
            # Dated now: the skill card at the end counts the last 30 days' runs.
            run = orchestrator.bundle(doer, occurred_at=datetime.now(UTC), policy=(doer.lower(), 1))
            assert run.options is not None
            used[run.options[PARAMETER]] += 1
            runs.append(run)
            # Options on probation the allocation asks to see in shadow on this task, published
            # right after its live run: the probe tests weigh a task's runs together.
            for option in allocations.probes(doer, PHASE, PARAMETER, run.run_id):
                runs.append(orchestrator.probe(run, option))
                probed += 1
        sent = [
            await producer.send("learning.run-completed", key=doer.encode(), value=r.to_json())
            for r in runs
        ]
        await asyncio.gather(*sent)
        total = sum(used.values())
        latest = await _allocated(allocations, doer, total, timeout)
        table.add_row(
            str(latest.runs),
            str(latest.sequence),
            f"{latest.shares[LARGE]:.3f}",
            f"{latest.shares[SMALL]:.3f}",
            f"{used[LARGE]} / {used[SMALL]}",
            ", ".join(latest.probes) or "none",
            str(probed),
        )
        # The stage files its request right after sending the allocation that made it
        # confident (agents/bandit.py, _flush): a second is plenty, and a request missed
        # here is found after the next round, since it stays open.
        request = await wait_request(pool, doer, reason, timeout=1.0)
        if request is not None:
            break
    console.print(table)
    if request is None:  # the last round's, if it made the bandit confident
        request = await wait_request(pool, doer, reason, timeout=timeout)
    if request is None:
        fail(f"no experiment request {reason!r} after {sum(used.values())} runs")
    console.rule("[bold]2. the bandit is confident: one experiment request")
    evidence = request["evidence"]
    console.print(
        f"request {request['request_id']} ({request['reason']}): P(best) of {SMALL} "
        f"{evidence['p_best'][SMALL]:.3f} after {evidence['runs']} runs; proposes "
        f"{evidence['experiment_type']} experiment {evidence['experiment_id']} fixing "
        f"{evidence['candidate_artifact']['fixed']}"
    )
    return request


async def _allocated(allocations: Allocations, doer: str, runs: int, timeout: float) -> Any:
    """The doer's allocation of the parameter once it has folded ``runs`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = allocations.latest(doer)
        found = latest.allocation(PHASE, PARAMETER) if latest is not None else None
        if found is not None and found.runs >= runs:
            return found
        await asyncio.sleep(0.3)
    raise RuntimeError(f"no allocation of {doer} folding {runs} runs in {timeout:g}s")


def propose(console: Console, request: Any, key_file: Path, golden: str, timeout: float) -> str:
    """Run `learnops bandit propose` as the owner would; the experiment id it filed."""
    console.rule("[bold]3. an owner signs the proposal: learnops bandit propose")
    request_id = str(request["request_id"])
    learnops = str(Path(sys.executable).with_name("learnops"))
    argv = ["bandit", "propose", request_id, "--key", str(key_file), "--golden", golden]
    console.print("$ learnops " + " ".join(argv[:3]) + " --key owner-policy.pem --golden " + golden)
    done = subprocess.run(
        [learnops, *argv, "--actor", ACTOR, "--timeout", str(timeout)],
        capture_output=True,
        text=True,
        check=False,
    )
    console.print(done.stdout.strip())
    if done.returncode != 0:
        fail(f"bandit propose failed: {done.stderr.strip()}")
    return str(request["evidence"]["experiment_id"])
