"""Experiments and offline replays through a real worker, the local executor, Kafka, PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agents.topics import read_from_start
from learning.replay import replay_id, task_id
from learning.signing import SigningKey, content_digest
from learnops.client.router import Router
from learnops.demo.canary_scenario import CanaryScenario
from learnops.demo.experiments_scenario import (
    BETTER,
    CONTROL,
    SAMPLES,
    SEEDS,
    WORSE,
    ExperimentDoer,
    prepare,
)
from learnops.demo.experiments_scenario import wait_experiment as wait_for_experiment
from models.base import Event
from models.commands import (
    CanarySettings,
    CreateExperiment,
    RollbackPolicy,
    RunReplay,
    StartCanary,
)
from models.events import Alert, DeadLetter, ExperimentChanged
from models.ids import experiment_event_id
from storage import audit as audit_store
from storage import experiments as experiments_store
from storage import policies as store
from tests.integration.kafka_io import LAG_S, eventually, publish
from tests.integration.test_authorised_commands import raw, refusal
from tests.integration.test_policy_agent import verdict
from tests.operators import signed
from tests.services import WorkerProcess, run_learnops, start_executor

COMMANDS = "learning.commands"


async def send(producer: Any, *events: Event) -> list[Event]:
    """Publish commands signed as an owner would (tests.operators); what was sent."""
    sent = [signed(e) for e in events]
    await publish(producer, COMMANDS, [(e.doer.encode(), e.to_json()) for e in sent])
    return sent


async def make_doer(db: Any, producer: Any, key: SigningKey, prefix: str) -> ExperimentDoer:
    """A doer with CONTROL active (v1), BETTER (v2) and WORSE (v3) registered, and a golden set."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    return await prepare(db, producer, key, name, {1: CONTROL, 2: BETTER, 3: WORSE}, actor="tests")


async def replay_json(settings_env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = await asyncio.to_thread(run_learnops, settings_env, "replay", "run", *args, "--json")
    assert result.stdout.strip(), result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout[result.stdout.index("{") :])


@pytest.fixture(scope="session")
async def replayed(
    worker: WorkerProcess,
    executor: WorkerProcess,
    producer: Any,
    db: Any,
    signing_key: SigningKey,
    settings_env: dict[str, str],
) -> tuple[ExperimentDoer, dict[str, Any]]:
    doer = await make_doer(db, producer, signing_key, "Replayed")
    code, report = await replay_json(
        settings_env,
        "--policy",
        f"{doer.policy_id}@2",
        "--dataset",
        doer.golden,
        "--seeds",
        ",".join(map(str, SEEDS)),
    )
    assert code == 0, report
    return doer, report


async def test_a_replay_runs_through_the_topics_and_passes_against_the_control(
    replayed: tuple[ExperimentDoer, dict[str, Any]], db: Any
) -> None:
    doer, report = replayed
    policy_hash = content_digest(BETTER)
    assert report["replay_id"] == replay_id(policy_hash, doer.manifest_hash, SEEDS)
    assert report["status"] == "complete" and report["from_record"] is False
    assert set(report["per_seed"]) == {str(s) for s in SEEDS}
    assert all(seed["runs"] == len(SAMPLES) for seed in report["per_seed"].values())
    means = [seed["mean_crl"] for seed in report["per_seed"].values()]
    assert report["mean_crl"] == pytest.approx(sum(means) / len(SEEDS))
    assert report["std_crl"] > 0 and 0.9 <= report["stability"] <= 1
    control = report["control"]
    assert control["policy"] == f"{doer.policy_id}@1"
    assert control["replay_id"] == replay_id(content_digest(CONTROL), doer.manifest_hash, SEEDS)
    assert control["mean_crl"] > report["mean_crl"]
    assert report["verdict"]["passed"] is True
    assert report["verdict"]["numbers"]["control_mean_crl"] == control["mean_crl"]
    # One task per (sample, seed), each with the id its inputs determine.
    tasks = await experiments_store.replay_tasks(db, report["replay_id"])
    expected = {
        task_id(report["replay_id"], sample, seed) for seed in SEEDS for sample in doer.sample_ids
    }
    assert {t["task_id"] for t in tasks} == expected and len(tasks) == len(SAMPLES) * len(SEEDS)
    assert all(t["loss"] is not None and t["output_hash"] for t in tasks)
    # Inputs and outputs are stored content-addressed.
    blob = await experiments_store.get_blob(db, policy_hash)
    assert blob is not None and json.loads(blob) == BETTER
    assert await experiments_store.get_blob(db, report["result_hash"]) is not None


async def test_the_same_replay_twice_gives_byte_identical_per_seed_results(
    replayed: tuple[ExperimentDoer, dict[str, Any]], settings_env: dict[str, str], db: Any
) -> None:
    doer, first = replayed
    shuffled = ",".join(map(str, reversed(SEEDS)))  # the order of the seeds does not matter
    args = ["--policy", f"{doer.policy_id}@2", "--dataset", doer.golden, "--seeds", shuffled]
    code, recorded = await replay_json(settings_env, *args)
    assert code == 0 and recorded["from_record"] is True and recorded["attempt"] == 1
    code, forced = await replay_json(settings_env, *args, "--force")
    assert code == 0 and forced["from_record"] is False and forced["attempt"] == 2
    assert forced["replay_id"] == first["replay_id"]
    assert json.dumps(forced["per_seed"], sort_keys=True) == json.dumps(
        first["per_seed"], sort_keys=True
    )
    assert forced["result_hash"] == first["result_hash"]
    assert (forced["mean_crl"], forced["std_crl"]) == (first["mean_crl"], first["std_crl"])
    runs = await db.fetch(
        "SELECT run_id FROM offline_replay_tasks WHERE replay_id = $1", first["replay_id"]
    )
    assert all(r["run_id"].endswith(":2") for r in runs)  # the second attempt's results
    shown = await asyncio.to_thread(
        run_learnops, settings_env, "replay", "show", first["replay_id"], "--json"
    )
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout[shown.stdout.index("{") :])
    assert report["per_seed"] == forced["per_seed"] and report["verdict"] == forced["verdict"]


async def test_replay_bundles_do_not_move_live_statistics(
    replayed: tuple[ExperimentDoer, dict[str, Any]],
    db: Any,
    settings: Any,
    settings_env: dict[str, str],
) -> None:
    doer, _ = replayed
    stored = await db.fetchval(
        "SELECT count(*) FROM crl_results WHERE doer = $1 AND replay_id IS NOT NULL", doer.name
    )
    assert stored >= 72  # candidate and control, scored by the CRL stage
    assert (
        await db.fetchval("SELECT count(*) FROM learning_progress WHERE doer = $1", doer.name) == 0
    )
    performance = await db.fetch(
        "SELECT version, runs FROM v_policy_performance WHERE doer = $1 ORDER BY version",
        doer.name,
    )
    assert [(r["version"], r["runs"]) for r in performance] == [(1, 0), (2, 0), (3, 0)]
    port = settings_env["LEARNOPS_WEB_PORT"]
    url = f"http://127.0.0.1:{port}/crl/{doer.name}/"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        view = await response.json()
    assert view["days"] == {}
    # No regression alert: replay runs never reach the daily aggregates. (Other
    # alerts may name this doer: test workers of other sessions share the broker.)
    alerts = [
        Alert.from_json(r.value)
        for r in await read_from_start(settings, "learning.alerts")
        if r.key == doer.name.encode()
    ]
    assert [a for a in alerts if a.kind == "crl_regression"] == []
    # Nor a skill card: the doer has had no live run.
    cards = await db.fetchval(
        "SELECT coalesce(max(runs), 0) FROM skill_cards WHERE doer = $1", doer.name
    )
    assert cards == 0


async def wait_experiment(db: Any, experiment_id: str, statuses: set[str]) -> Any:
    row = await wait_for_experiment(db, experiment_id, statuses)
    assert row is not None and row["status"] in statuses, row and dict(row)
    return row


def experiment(doer: ExperimentDoer, version: int, **extra: Any) -> CreateExperiment:
    return CreateExperiment(
        doer=doer.name,
        actor="tests",
        reason="gate failures up",
        experiment_id=f"exp-{uuid.uuid4().hex[:10]}",
        hypothesis="a stricter prompt cuts contradictions",
        policy_id=doer.policy_id,
        version=version,
        experiment_type="prompt_synthesis",
        dataset=doer.golden,
        seeds=SEEDS,
        **extra,
    )


async def test_a_worse_candidate_ends_failed_at_replay_with_its_numbers(
    worker: WorkerProcess,
    executor: WorkerProcess,
    producer: Any,
    db: Any,
    signing_key: SigningKey,
    settings: Any,
    settings_env: dict[str, str],
) -> None:
    doer = await make_doer(db, producer, signing_key, "Worse")
    create = experiment(doer, 3)
    await send(producer, create)
    row = await wait_experiment(db, create.experiment_id, {"failed"})
    history = await experiments_store.experiment_history(db, create.experiment_id)
    assert [h["to_status"] for h in history] == ["created", "replaying", "failed"]
    numbers = row["outcome"]["verdict"]["numbers"]
    assert numbers["candidate_mean_crl"] > numbers["control_mean_crl"] > 0
    assert numbers["improvement"] < 0
    assert "candidate mean CRL" in history[-1]["reason"]
    assert row["control_policy_id"] == doer.policy_id and row["control_version"] == 1
    worse = await store.find_policy(db, doer.policy_id, 3)
    assert worse is not None and worse.status == "draft"  # never deployed
    # Every transition was published, with an id derived from its history row.
    events = {
        (e.event_id, e.status)
        for r in await read_from_start(settings, "learning.experiments")
        if r.key == doer.name.encode()
        for e in [ExperimentChanged.from_json(r.value)]
        if e.experiment_id == create.experiment_id
    }
    for h in history:
        assert (
            experiment_event_id("experiment", create.experiment_id, h["seq"]),
            h["to_status"],
        ) in events
    rates = await db.fetchrow("SELECT * FROM v_experiment_success_rate WHERE doer = $1", doer.name)
    assert (rates["experiments"], rates["concluded"], rates["promoted"]) == (1, 1, 0)
    assert rates["success_rate"] == 0
    # An operator may still start it, and is told its experiment failed (nothing was said).
    started = await asyncio.to_thread(
        run_learnops, settings_env, "policy", "shadow", f"{doer.policy_id}@3", "--no-wait"
    )
    assert started.returncode == 0, started.stderr
    assert f"note: experiment {create.experiment_id} of {doer.policy_id}@3 ended failed" in (
        " ".join(started.stderr.split())
    ), started.stderr


async def test_a_forged_or_unsigned_experiment_or_replay_is_refused_and_nothing_starts(
    worker: WorkerProcess, producer: Any, db: Any, signing_key: SigningKey
) -> None:
    doer = await make_doer(db, producer, signing_key, "Attacked")
    unsigned = experiment(doer, 2, deploy="canary")
    # Signed by a registered owner for a shadow, then altered to go straight to canary.
    forged = signed(experiment(doer, 2)).model_copy(update={"deploy": "canary"})
    replay = RunReplay(
        doer=doer.name,
        actor="tests",
        reason="unsigned",
        policy_id=doer.policy_id,
        version=2,
        dataset=doer.golden,
        seeds=SEEDS,
    )
    await raw(producer, unsigned, forged, replay)
    for command, why in ((unsigned, "unsigned"), (forged, "signature"), (replay, "unsigned")):
        alert = await refusal(db, command)
        assert alert["evidence"]["refusal"] == why, alert["message"]
        assert alert["message"].startswith(f"{command.command} refused: ")
    # Each refusal is sent before anything is acted on, and the doer's events are handled in order.
    created = await db.fetchval(
        "SELECT count(*) FROM experiments WHERE experiment_id = ANY($1::text[])",
        [unsigned.experiment_id, forged.experiment_id],
    )
    replays = await db.fetchval(
        "SELECT count(*) FROM offline_replays WHERE requested_by = ANY($1::uuid[])",
        [unsigned.event_id, forged.event_id, replay.event_id],
    )
    deployments = await db.fetchval(
        "SELECT count(*) FROM shadow_deployments WHERE doer = $1", doer.name
    )
    applied = await db.fetchval(
        "SELECT count(*) FROM applied_commands WHERE event_id = ANY($1::uuid[])",
        [unsigned.event_id, forged.event_id, replay.event_id],
    )
    assert (created, replays, deployments, applied) == (0, 0, 0, 0)
    candidate = await store.find_policy(db, doer.policy_id, 2)
    assert candidate is not None and candidate.status == "draft"


async def test_an_experiment_follows_its_shadow_to_a_rollback(
    worker: WorkerProcess,
    executor: WorkerProcess,
    producer: Any,
    db: Any,
    signing_key: SigningKey,
    settings_env: dict[str, str],
) -> None:
    doer = await make_doer(db, producer, signing_key, "RolledBack")
    experiment_id = f"exp-{uuid.uuid4().hex[:10]}"
    created = await asyncio.to_thread(
        run_learnops,
        settings_env,
        "experiment",
        "create",
        "--policy",
        f"{doer.policy_id}@2",
        "--hypothesis",
        "better grounding",
        "--type",
        "rag_optimization",
        "--id",
        experiment_id,
        "--dataset",
        doer.golden,
        "--seeds",
        "42,43,44",
        "--canary-mode",
        "non_inferiority",
        "--margin",
        "0.05",
    )
    assert created.returncode == 0, created.stderr
    row = await wait_experiment(db, experiment_id, {"shadow"})
    assert row["experiment_type"] == "rag_optimization" and row["phase"] == "draft"
    assert row["deployment_id"] is not None
    # The shadow judges it as asked: no worse than the control by 5 %.
    canary = await db.fetchval(
        "SELECT canary FROM shadow_deployments WHERE deployment_id = $1", row["deployment_id"]
    )
    assert (canary["mode"], canary["non_inferiority_margin"]) == ("non_inferiority", 0.05)
    assert row["plan"]["canary"]["mode"] == "non_inferiority"
    assert row["outcome"]["verdict"]["passed"] is True
    shadow = await audit_store.outcome_of(db, row["deploy_command_id"])
    assert shadow is not None and shadow.applied and shadow.action == "start_shadow"
    rollback = RollbackPolicy(doer=doer.name, actor="ops", reason="shadow cost too much")
    await send(producer, rollback)
    assert (await verdict(db, rollback)).applied
    row = await wait_experiment(db, experiment_id, {"rolled_back"})
    history = await experiments_store.experiment_history(db, experiment_id)
    assert [h["to_status"] for h in history] == ["created", "replaying", "shadow", "rolled_back"]
    assert "shadow cost too much" in history[-1]["reason"]
    assert row["concluded_at"] is not None
    rates = await db.fetchrow("SELECT * FROM v_experiment_success_rate WHERE doer = $1", doer.name)
    assert (rates["concluded"], rates["promoted"], rates["success_rate"]) == (1, 0, 0.0)
    performance = await db.fetchrow(
        "SELECT promotions, rollbacks FROM v_policy_performance "
        "WHERE policy_id = $1 AND version = 2",
        doer.policy_id,
    )
    assert (performance["promotions"], performance["rollbacks"]) == (0, 1)
    shown = await asyncio.to_thread(
        run_learnops, settings_env, "experiment", "show", experiment_id, "--json"
    )
    report = json.loads(shown.stdout[shown.stdout.index("{") :])
    assert [h["to"] for h in report["history"]] == ["created", "replaying", "shadow", "rolled_back"]
    assert report["replay"]["verdict"]["passed"] is True
    assert report["control"] == f"{doer.policy_id}@1"
    listed = await asyncio.to_thread(
        run_learnops, settings_env, "experiment", "list", "--doer", doer.name, "--json"
    )
    items = json.loads(listed.stdout[listed.stdout.index("[") :])
    assert [(i["experiment_id"], i["status"]) for i in items] == [(experiment_id, "rolled_back")]
    # Typed in another case, the doer's name finds the same experiments.
    folded = await asyncio.to_thread(
        run_learnops, settings_env, "experiment", "list", "--doer", doer.name.lower(), "--json"
    )
    assert folded.returncode == 0, folded.stderr
    assert json.loads(folded.stdout[folded.stdout.index("[") :]) == items


async def test_a_replay_whose_tasks_do_not_return_ends_incomplete_listing_them(
    worker: WorkerProcess,
    executor: WorkerProcess,
    producer: Any,
    db: Any,
    signing_key: SigningKey,
    settings_env: dict[str, str],
    tmp_path: Path,
) -> None:
    doer = await make_doer(db, producer, signing_key, "Unserved")
    code, report = await replay_json(
        settings_env,
        "--policy",
        f"{doer.policy_id}@2",
        "--dataset",
        doer.golden,
        "--seeds",
        "1,2",
        "--timeout",
        "2",
    )
    assert code == 1
    assert report["status"] == "incomplete" and report["mean_crl"] is None
    assert report["per_seed"] == {}
    missing = report["missing_tasks"]
    assert len(missing) == 2 * len(SAMPLES)
    assert {(m["sample_id"], m["seed"]) for m in missing} == {
        (s, seed) for s in doer.sample_ids for seed in (1, 2)
    }
    # The same request again, once an executor serves the doer, starts the next attempt
    # (an incomplete replay is no answer; no --force needed) and it completes.
    served = await start_executor(settings_env, tmp_path / "executor.log", doer.name)
    try:
        again, rerun = await replay_json(
            settings_env,
            *("--policy", f"{doer.policy_id}@2", "--dataset", doer.golden, "--seeds", "1,2"),
        )
    finally:
        await asyncio.to_thread(served.stop)
    assert again == 0, rerun
    assert (rerun["status"], rerun["attempt"], rerun["from_record"]) == ("complete", 2, False)
    logged = (tmp_path / "executor.log").read_text()  # an operator sees it work
    assert "replay_executor_ready group=" in logged and f"doers={doer.name}" in logged
    assert logged.count("replay_task_done") >= 2 * len(SAMPLES), logged[-2000:]
    assert rerun["replay_id"] == report["replay_id"] and rerun["missing_tasks"] in (None, [])


async def test_a_replay_of_an_unknown_policy_goes_to_the_dlq(
    worker: WorkerProcess, producer: Any, settings: Any, db: Any
) -> None:
    doer = f"Nobody{uuid.uuid4().hex[:8]}"
    request = RunReplay(
        doer=doer,
        actor="tests",
        reason="typo",
        policy_id="no-such-policy",
        version=1,
        dataset="no-such-golden",
        seeds=[1],
    )
    (sent,) = await send(producer, request)

    async def letters() -> list[DeadLetter]:
        found = [
            DeadLetter.from_json(r.value) for r in await read_from_start(settings, "learning.dlq")
        ]
        # This session's worker only: other sessions' workers share the broker.
        return [
            d
            for d in found
            if d.doer == doer and d.stage == "experiments" and d.consumer == worker.app_id
        ]

    found = await eventually(letters, bool, timeout=60)
    assert len(found) == 1 and "not registered" in found[0].reason
    assert found[0].value == sent.to_json()
    # Dead-lettered, not applied: no audit row says it was, and the same command sent
    # again from the DLQ (once the policy exists) is not refused as a replay.
    applied = await db.fetchval(
        "SELECT count(*) FROM applied_commands WHERE event_id = $1", sent.event_id
    )
    assert applied == 0


async def test_a_malformed_replay_task_goes_to_the_dlq_and_the_executor_goes_on(
    executor: WorkerProcess, producer: Any, settings: Any
) -> None:
    doer = f"BadTask{uuid.uuid4().hex[:8]}"
    await publish(
        producer,
        "learning.replay-tasks",
        [(doer.encode(), b'{"doer": "' + doer.encode() + b'", "seed": -1}')],
    )

    async def letters() -> list[DeadLetter]:
        found = [
            DeadLetter.from_json(r.value) for r in await read_from_start(settings, "learning.dlq")
        ]
        return [d for d in found if d.stage == "replay-executor" and d.doer == doer]

    found = await eventually(letters, bool, timeout=60)
    assert found and "seed" in found[0].reason
    assert executor.process is not None and executor.process.poll() is None


async def test_a_better_candidate_goes_through_shadow_and_canary_to_promotion_by_the_canary_stage(
    worker: WorkerProcess,
    executor: WorkerProcess,
    producer: Any,
    db: Any,
    signing_key: SigningKey,
    settings: Any,
) -> None:
    doer = await make_doer(db, producer, signing_key, "Looped")
    quick = CanarySettings(min_sample_size=50, report_every=100, missing_grace_s=LAG_S)
    create = experiment(doer, 2, plan={"canary": quick.model_dump(mode="json")})
    await send(producer, create)
    row = await wait_experiment(db, create.experiment_id, {"shadow"})
    shadow_deployment = row["deployment_id"]
    async with Router(**settings.kafka_connection(), allow_unverified=True) as router:
        await router.wait_for(doer.name, lambda c: c.status == "shadow")
        # An operator moves the shadow on to a two-step canary; the canary stage decides.
        canary = StartCanary(
            doer=doer.name,
            actor="ops",
            reason="shadow looks fine",
            policy_id=doer.policy_id,
            version=2,
            steps=[0.1, 0.5],
            canary=quick,
        )
        await send(producer, canary)
        assert (await verdict(db, canary)).applied
        live = await router.wait_for(doer.name, lambda c: c.status == "canary")
        assert live.deployment is not None
        # Live traffic: the control and the candidate as the orchestrator would run them.
        run = CanaryScenario(db, producer, router, doer.name, signing_key, {1: 0.8, 2: 0.95})
        run.deployment_id = live.deployment.deployment_id
        decisions = await run.run_until(run.simulator())
    assert [d.action for d in decisions if d.action != "report"][-1:] == ["promote"]
    row = await wait_experiment(db, create.experiment_id, {"promoted"})
    history = await experiments_store.experiment_history(db, create.experiment_id)
    assert [h["to_status"] for h in history] == [
        "created",
        "replaying",
        "shadow",
        "canary",
        "promoted",
    ]
    assert row["deployment_id"] == run.deployment_id != shadow_deployment
    assert history[2]["evidence"]["change"] == "shadow_started"
    assert history[3]["evidence"]["change"] == "canary_started"
    rates = await db.fetchrow("SELECT * FROM v_experiment_success_rate WHERE doer = $1", doer.name)
    assert (rates["promoted"], rates["success_rate"]) == (1, 1.0)

    async def performance_of_v2() -> Any:
        # One statement, one snapshot: the view against the live rows it summarises.
        return await db.fetchrow(
            """
            SELECT v.runs, v.mean_crl, v.ci_low, v.ci_high, v.promotions,
                   (SELECT count(*) FROM crl_results r
                    WHERE r.policy_id = v.policy_id AND r.policy_version = v.version
                      AND r.replay_id IS NULL AND NOT r.shadow) AS live_rows
            FROM v_policy_performance v WHERE v.policy_id = $1 AND v.version = 2
            """,
            doer.policy_id,
        )

    performance = await eventually(performance_of_v2, lambda p: p["runs"] >= 10, timeout=30)
    assert performance["runs"] == performance["live_rows"] >= 10
    assert performance["promotions"] == 1
    assert performance["ci_low"] < performance["mean_crl"] < performance["ci_high"]
    assert history[-1]["evidence"]["change"] == "promoted"


async def test_a_replay_of_the_active_policy_says_it_is_its_own_control(
    replayed: tuple[ExperimentDoer, dict[str, Any]], settings_env: dict[str, str]
) -> None:
    """The doer's active policy is its own control: no comparison, not a failed one."""
    doer, _ = replayed
    seeds = ",".join(map(str, SEEDS))
    shown = await asyncio.to_thread(
        run_learnops,
        settings_env,
        *("replay", "run", "--policy", f"{doer.policy_id}@1", "--dataset", doer.golden),
        *("--seeds", seeds),
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    expected = f"verdict: none — {doer.policy_id}@1 is the doer's active policy, its own control"
    assert lines[-1] == expected, shown.stdout
    assert not any(line.startswith("control ") for line in lines)


async def test_a_verdict_from_the_record_shows_the_control_it_was_given_on(
    replayed: tuple[ExperimentDoer, dict[str, Any]], settings_env: dict[str, str], db: Any
) -> None:
    """The control replayed again since (a forced attempt from another executor, other
    figures) left the candidate's recorded verdict beside the control's new figures."""
    doer, first = replayed
    control_id = first["control"]["replay_id"]
    before = await db.fetchrow(
        "SELECT attempt, result_hash, per_seed, mean_crl, std_crl, stability, runs"
        " FROM offline_replays WHERE replay_id = $1",
        control_id,
    )
    figures = {
        "per_seed": {str(s): {"runs": 3, "mean_crl": 9.0} for s in SEEDS},
        "mean_crl": 9.0,
        "std_crl": 0.5,
        "stability": 1.0,
        "runs": 3 * len(SEEDS),
    }
    digest = await experiments_store.put_blob(db, json.dumps(figures).encode())
    await db.execute(
        "UPDATE offline_replays SET attempt = attempt + 1, result_hash = $2, per_seed = $3,"
        " mean_crl = 9.0, std_crl = 0.5, stability = 1.0, runs = $4 WHERE replay_id = $1",
        control_id,
        digest,
        figures["per_seed"],
        figures["runs"],
    )
    try:
        args = ["--policy", f"{doer.policy_id}@2", "--dataset", doer.golden]
        code, recorded = await replay_json(
            settings_env, *args, "--seeds", ",".join(map(str, SEEDS))
        )
        assert code == 0 and recorded["from_record"] is True, recorded
        control = recorded["control"]
        assert control["mean_crl"] == recorded["verdict"]["numbers"]["control_mean_crl"]
        assert control["mean_crl"] == first["control"]["mean_crl"] != 9.0
        assert (control["attempt"], control["replaced_by_attempt"]) == (
            before["attempt"],
            before["attempt"] + 1,
        )
        shown = await asyncio.to_thread(
            run_learnops, settings_env, "replay", "show", first["replay_id"]
        )
        assert shown.returncode == 0, shown.stderr
        assert (
            f"note: the control {doer.policy_id}@1 was replayed again since this verdict "
            f"(attempt {before['attempt'] + 1};"
        ) in shown.stdout, shown.stdout
    finally:
        await db.execute(
            "UPDATE offline_replays SET attempt = $2, result_hash = $3, per_seed = $4,"
            " mean_crl = $5, std_crl = $6, stability = $7, runs = $8 WHERE replay_id = $1",
            control_id,
            *before.values(),
        )


async def test_a_candidate_planned_no_worse_is_replayed_no_worse_and_goes_on_to_shadow(
    worker: WorkerProcess,
    executor: WorkerProcess,
    producer: Any,
    db: Any,
    signing_key: SigningKey,
    settings_env: dict[str, str],
) -> None:
    """A bandit's proposal (the control with its best option fixed) matches the control:
    the replay rule's "better" fails it, so with the local executor every such experiment
    ended failed at replay. Planned "no worse", its replay is judged so at its margin."""
    name = f"NoWorse{uuid.uuid4().hex[:8]}"
    same = {**CONTROL, "fixed": {"draft": {"router.model": "model-c-small"}}}
    doer = await prepare(db, producer, signing_key, name, {1: CONTROL, 2: same}, actor="tests")
    experiment_id = f"exp-{uuid.uuid4().hex[:10]}"
    created = await asyncio.to_thread(
        run_learnops,
        settings_env,
        *("experiment", "create", "--policy", f"{doer.policy_id}@2", "--hypothesis", "as good"),
        *("--type", "tool_tuning", "--id", experiment_id, "--dataset", doer.golden),
        *("--seeds", ",".join(map(str, SEEDS)), "--canary-mode", "non_inferiority"),
        *("--margin", "0.1"),
    )
    assert created.returncode == 0, created.stderr
    row = await wait_experiment(db, experiment_id, {"shadow", "failed"})
    outcome = row["outcome"]
    assert outcome["verdict"]["rule"] == "non_inferiority", outcome
    assert outcome["verdict"]["passed"] is True, outcome["verdict"]["reason"]
    assert outcome["replay_verdict"]["passed"] is False, outcome["replay_verdict"]["reason"]
    assert row["status"] == "shadow", row["status"]
    shown = await asyncio.to_thread(run_learnops, settings_env, "experiment", "show", experiment_id)
    assert shown.returncode == 0, shown.stderr
    assert "gate: PASSED — passed: no worse than the control by 10.0%" in shown.stdout, shown.stdout
    assert "verdict: NOT PASSED" in shown.stdout  # the replay rule's own, beside it
    rollback = RollbackPolicy(doer=doer.name, actor="ops", reason="done")
    await send(producer, rollback)
    assert (await verdict(db, rollback)).applied
