"""The bandit's proposal all the way to promotion: real workers, real Kafka and PostgreSQL.

A doer's signed policy leaves its draft model open between a large model and a
small one that is as good and cheaper (the demo's doer,
``learnops.demo.bandit_scenario``). Runs routed by the bandit's pinned
allocations move traffic to the small model; the confident allocation raises an
experiment request; `learnops bandit propose` signs the candidate fixing the
small model and files the tool_tuning experiment; the experiments stage replays
it on the golden set (the demo's sandbox executor), starts its shadow; an
operator moves it to a one-step canary that the canary stage promotes. The
candidate is then the active version, the experiment is promoted after every
stage of the path, and the doer's skill card lists it.

Workers: the session worker (every stage but the bandit, packaged settings) and
a bandit-only worker of this module whose small model (not the policy's
default) leaves the floor after 2 runs without a guardrail event (not 20) and
is confidently best at P(best) 0.85 (not 0.95) after 50 runs (not 200): the
small model's CRL is lower by about 8 %, and at 0.9 one run in two needed more
than 800 runs. The walk takes two to four minutes on the shared VM.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from learning.signing import SigningKey
from learnops.client import Allocations
from learnops.demo import bandit_scenario as scenario
from learnops.demo.bandit import CANARY, learn
from learnops.demo.experiments import sandboxed, updated_card
from learnops.demo.experiments_scenario import canary_until_decided, prepare, wait_experiment
from learnops.simulation.orchestrator import SIMULATED_TENANT
from storage.experiments import experiment_history
from storage.policies import find_policy
from storage.skills import active_policy, current_card
from tests.integration.kafka_io import LAG_S, eventually
from tests.services import REPO, WorkerProcess, free_port, run_learnops, start_after_inputs

TIMEOUT = 90.0


@pytest.fixture(scope="module")
async def bandit_stage(
    topics: Any, settings_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """A worker running only the bandit stage: probation 2 runs, P(best) 0.85 after 50 runs,
    released on evidence of no harm at 25 %.

    It allocates every 100 runs, as packaged: the rounds of 100 runs below wait for each
    round's allocation (one allocation per batch at most, so a smaller ``every`` may
    leave a round's last runs unallocated).
    """
    folder = tmp_path_factory.mktemp("bandit-promotion")
    config = folder / "learning.yaml"
    packaged = (REPO / "config" / "learning.yaml").read_text()
    small = (
        packaged.replace("  min_runs: 200 ", "  min_runs: 50 ")
        .replace("  probation_runs: 20 ", "  probation_runs: 2 ")
        .replace("  level: 0.95 ", "  level: 0.85 ")
        # Evidence of no harm at 25 % instead of 5 %: about half the probes' events (the
        # level itself is the unit tests' and bench/bandit_sim.py's; this test is the walk).
        .replace("  release_alpha: 0.05 ", "  release_alpha: 0.25 ")
    )
    for setting in ("min_runs: 50 ", "probation_runs: 2 ", "level: 0.85 ", "release_alpha: 0.25 "):
        assert setting in small, (
            f"the packaged bandit settings moved: update this fixture ({setting})"
        )
    config.write_text(small)
    env = {
        **settings_env,
        "LEARNOPS_STAGES": "bandit",
        "LEARNOPS_CONFIG_FILE": str(config),
        "LEARNOPS_WEB_PORT": str(free_port()),
    }
    process = WorkerProcess(env=env, log_path=folder / "worker.log")
    await start_after_inputs(process)
    yield process
    await asyncio.to_thread(process.stop)


async def test_the_bandits_proposal_walks_replay_shadow_canary_to_promotion(
    worker: WorkerProcess,
    bandit_stage: WorkerProcess,
    settings: Any,
    settings_env: dict[str, str],
    signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    # "Unserved": the session's executor leaves the doer to this test's sandbox executor.
    doer = f"UnservedBandit{uuid.uuid4().hex[:8]}"
    quiet = Console(file=io.StringIO(), width=120)
    worker_key = settings.worker_key()
    assert worker_key is not None
    async with (
        sandboxed(
            settings, doer, f"tests-bandit-promotion-{doer}", scenario.DeclaredModelExecutor()
        ) as (
            pool,
            producer,
        ),
        Allocations(**settings.kafka_connection(), trusted_keys=[worker_key.public_key]) as client,
    ):
        prepared = await prepare(
            pool, producer, signing_key, doer, {1: scenario.control_artifact()}
        )
        assert await active_policy(pool, doer) == (prepared.policy_id, 1)
        orchestrator = scenario.TwoModelOrchestrator(
            lambda name, run_id: client.choice(name, scenario.PHASE, scenario.PARAMETER, run_id),
            {2: scenario.SMALL},
            # Twice the demo's incidents: the probes show the small model no worse in about
            # half the runs (the events are the evidence), and this test is about what follows.
            incidents=2 * scenario.INCIDENTS,
            seed=20,
            doers=(doer,),
            run_prefix=doer.lower(),
        )
        reason = (
            f"bandit:{prepared.policy_id}@1:{scenario.PHASE}/{scenario.PARAMETER}={scenario.SMALL}"
        )
        # Up to the demo's 100 rounds: the small model leaves the floor once its probes show
        # it has fewer than twice the large model's events (round 10 of the demo's loop at
        # the median at the demo's incidents, past 20 on 30 of 400 demo times).
        request = await learn(
            quiet, producer, pool, client, orchestrator, doer, reason, 100, TIMEOUT
        )
        evidence = request["evidence"]
        assert evidence["p_best"][scenario.SMALL] >= 0.85
        experiment_id = str(evidence["experiment_id"])
        # From here on the canary decides on the CRL: incidents only add noise to it (the
        # canary's guardrails are tested in test_canary.py).
        orchestrator.incidents = 0.0

        # The owner signs the candidate and files the experiment, as an operator would.
        key_file = tmp_path / "owner-policy.pem"
        key_file.write_bytes(signing_key.to_pem())
        proposed = await asyncio.to_thread(
            run_learnops,
            settings_env,
            "bandit",
            "propose",
            str(request["request_id"]),
            "--key",
            str(key_file),
            "--golden",
            prepared.golden,
            "--actor",
            "owner",
        )
        assert proposed.returncode == 0, proposed.stderr
        candidate = await find_policy(pool, prepared.policy_id, 2)
        assert candidate is not None and candidate.artifact["fixed"] == {
            scenario.PHASE: {scenario.PARAMETER: scenario.SMALL}
        }

        # Replay on the golden set (the sandbox runs the model each version declares) → shadow.
        row = await wait_experiment(
            pool, experiment_id, {"failed", "incomplete", "shadow", "canary"}, TIMEOUT
        )
        assert row is not None and row["status"] == "shadow", row and dict(row)

        # Shadow → a one-step canary in non-inferiority mode; the canary stage decides.
        # The demo's canary with a wide margin (25 % of the control's mean CRL) and smaller
        # samples, so that a few hundred runs decide.
        canary = CANARY.model_copy(
            update={
                "non_inferiority_margin": 0.25,
                "max_crl_increase": 0.25,
                "min_sample_size": 50,
                "report_every": 100,
                "missing_grace_s": LAG_S,
            }
        )
        started, _, decisions = await canary_until_decided(
            settings,
            pool,
            producer,
            signing_key,
            prepared,
            2,
            canary,
            actor="tests",
            run_prefix=f"{doer.lower()}-canary",
            timeout=TIMEOUT,
            orchestrator=orchestrator,
            steps=(0.5,),
        )
        assert started.applied, started.verdict
        actions = [d.action for d in decisions]
        assert [a for a in actions if a != "report"][-1:] == ["promote"], actions
        row = await wait_experiment(pool, experiment_id, {"promoted", "rolled_back"}, TIMEOUT)
        assert row is not None and row["status"] == "promoted", row and dict(row)
        history = await experiment_history(pool, experiment_id)
        path = "created replaying shadow canary promoted"
        assert " ".join(h["to_status"] for h in history) == path
        assert await active_policy(pool, doer) == (prepared.policy_id, 2)

        # The skill card lists the promoted experiment once the doer runs under version 2 (a
        # card built from runs scored before the promotion was recorded may still say canary:
        # each probe runs the doer a little more).
        async def card_after_runs() -> Any:
            await updated_card(quiet, pool, producer, prepared, uuid.uuid4().int % 10**9)
            return await current_card(pool, doer, SIMULATED_TENANT)

        def lists_promoted(card: Any) -> bool:
            if card is None or card.policy_version != 2:
                return False
            listed = {str(e["experiment_id"]): e["status"] for e in card.experiments}
            return listed.get(experiment_id) == "promoted"

        await eventually(card_after_runs, lists_promoted, timeout=TIMEOUT)

    # The last record holds version 1's shares; version 2 fixes the model, so no shares
    # will follow, and `bandit show` says so (it said "until its first shares").
    shown = await asyncio.to_thread(run_learnops, settings_env, "bandit", "show", doer)
    assert shown.returncode == 0, shown.stderr
    note = " ".join(shown.stderr.split())
    assert f"active policy is {prepared.policy_id}@2" in note, note
    assert "take what it fixes: it declares no options to allocate" in note, note
