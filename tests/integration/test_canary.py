"""Canaries through a real worker, Kafka and PostgreSQL, driven by a simulated orchestrator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest

from agents.topics import read_from_start
from learning.signing import SigningKey, generate_key
from learnops.client.router import Router
from learnops.demo.canary_scenario import CanaryScenario
from models.commands import CanarySettings
from models.events import Alert, PolicyChange, TaskRouted
from storage import canary as canary_store
from tests.integration.kafka_io import LAG_S, eventually, stays
from tests.services import WorkerProcess

QUICK = CanarySettings(min_sample_size=50, report_every=100, missing_grace_s=LAG_S)


@pytest.fixture(scope="module")
async def key(db: Any) -> SigningKey:
    from storage import signing_keys as keys_store

    signing_key = generate_key()
    await keys_store.add_signing_key(db, signing_key.public_key, created_by="tests")
    return signing_key


@pytest.fixture
async def router(settings: Any, key: SigningKey) -> AsyncIterator[Router]:
    """A Router pinned to the test workers' key and the policy signer's.

    The scenarios wait on it for every state they route under, so they pass only
    when the worker's own changes verify (older sessions' records are refused).
    """
    pinned = [settings.worker_key().public_key, key.public_key]
    async with Router(**settings.kafka_connection(), trusted_keys=pinned) as running:
        yield running


async def patient_canary(run: CanaryScenario) -> tuple[str, Any]:
    """A started canary that never decides (min sample size out of reach), and a simulator.

    It only reports, every 50 results, so the reports show what was counted.
    """
    await run.setup()
    patient = CanarySettings(min_sample_size=100_000, report_every=50, missing_grace_s=LAG_S)
    return await run.start_canary(2, patient, [0.5]), run.simulator()


def scenario(db: Any, producer: Any, router: Router, key: SigningKey, name: str, q: float) -> Any:
    doer = f"{name}{uuid.uuid4().hex[:8]}"
    return CanaryScenario(db, producer, router, doer, key, {1: 0.8, 2: q})


async def changes_of(settings: Any, doer: str) -> list[PolicyChange]:
    records = await read_from_start(settings, "learning.policy-changes")
    return [PolicyChange.from_json(r.value) for r in records if r.key == doer.encode()]


async def audit(db: Any, deployment_id: str) -> list[Any]:
    return list(
        await db.fetch(
            "SELECT * FROM policy_promotions WHERE deployment_id = $1 AND source = 'decision' "
            "ORDER BY id",
            deployment_id,
        )
    )


async def test_a_better_candidate_walks_the_steps_and_is_promoted(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, router: Router, key: SigningKey
) -> None:
    run = scenario(db, producer, router, key, "Better", 0.95)
    await run.setup()
    deployment_id = await run.start_canary(2, QUICK, [0.1, 0.5])
    decisions = await run.run_until(run.simulator())
    actions = [d.action for d in decisions if d.action != "report"]
    assert actions == ["step_up", "promote"], (actions, worker.tail())
    step_up, promote = (d for d in decisions if d.action != "report")
    assert step_up.step == 1 and promote.step == 1
    report = promote.report
    assert report["candidate_mean"] < report["control_mean"] and report["ci_high"] < 0
    assert report["candidate_count"] >= 50 and report["control_count"] >= 50
    assert {"security", "cost", "latency", "sample_ratio"} <= {
        g["name"] for g in report["guardrails"]
    }
    # The policy agent applied it: the audit row carries the report, the live policy moved.
    rows = await eventually(lambda: audit(db, deployment_id), lambda r: len(r) == 1)
    assert [(r["action"], r["outcome"], r["to_status"]) for r in rows] == [
        ("promote", "applied", "active")
    ]
    assert rows[0]["decision_report"]["p_value"] == report["p_value"]
    live = await router.wait_for(run.doer, lambda c: c.change == "promoted")
    assert (live.version, live.previous_version, live.deployment) == (2, 1, None)
    kinds = [c.change for c in await changes_of(settings, run.doer)]
    assert kinds[-3:] == ["canary_started", "step_changed", "promoted"]
    stored = await canary_store.routed_counts(db, deployment_id)
    assert set(stored) == {(0, "control"), (0, "candidate"), (1, "control"), (1, "candidate")}


async def test_a_worse_candidate_is_rolled_back(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, router: Router, key: SigningKey
) -> None:
    run = scenario(db, producer, router, key, "Worse", 0.6)
    await run.setup()
    deployment_id = await run.start_canary(2, QUICK, [0.1, 0.5])
    decisions = await run.run_until(run.simulator())
    final = [d for d in decisions if d.action != "report"]
    # A step ends after min_sample_size runs per arm (dwell), so the worse candidate may
    # meet its rollback at the second step; it is never promoted.
    assert [d.action for d in final if d.action != "step_up"] == ["rollback"], worker.tail()
    assert final[-1].action == "rollback" and final[-1].report["delta"] > 0
    rows = await eventually(lambda: audit(db, deployment_id), lambda r: len(r) == 1)
    assert [(r["action"], r["to_status"]) for r in rows] == [("rollback", "rolled_back")]
    live = await router.wait_for(run.doer, lambda c: c.change == "rolled_back")
    assert (live.version, live.deployment) == (1, None)


async def alerts(settings: Any, doer: str, deployment_id: str) -> list[Alert]:
    """The alerts raised for a deployment."""
    records = await read_from_start(settings, "learning.alerts")
    found = [Alert.from_json(r.value) for r in records if r.key == doer.encode()]
    return [a for a in found if a.deployment_id == deployment_id]


async def assert_paused(db: Any, router: Router, doer: str, deployment_id: str) -> None:
    """The policy store paused the deployment, and the router sees it paused."""
    live = await router.wait_for(doer, lambda c: c.change == "paused")
    assert live.deployment is not None and live.deployment.paused
    assert await db.fetchval(
        "SELECT paused_at IS NOT NULL FROM shadow_deployments WHERE deployment_id = $1",
        deployment_id,
    )


async def test_a_biased_router_pauses_the_canary_and_alerts(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, router: Router, key: SigningKey
) -> None:
    run = scenario(db, producer, router, key, "Biased", 0.8)
    await run.setup()
    deployment_id = await run.start_canary(2, QUICK, [0.1, 0.5])
    decisions = await run.run_until(run.simulator(bias=0.15))
    pauses = [d for d in decisions if d.action == "pause"]
    assert len(pauses) == 1 and "sample ratio mismatch" in pauses[0].reason, worker.tail()
    srm = next(g for g in pauses[0].report["guardrails"] if g["name"] == "sample_ratio")
    assert not srm["passed"] and srm["value"] < 0.001
    await assert_paused(db, router, run.doer, deployment_id)
    found = await eventually(
        partial(alerts, settings, run.doer, deployment_id), lambda a: len(a) > 0
    )
    assert [(a.kind, a.severity) for a in found] == [("sample_ratio_mismatch", "critical")]
    assert found[0].value is not None and found[0].value < 0.001


async def test_a_passing_shadow_moves_to_canary_and_never_serves_meanwhile(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, router: Router, key: SigningKey
) -> None:
    run = scenario(db, producer, router, key, "Shadowed", 0.95)
    await run.setup()
    advance = QUICK.model_copy(update={"advance_shadow": True})
    shadow_id = await run.start_shadow(2, advance, mirror=0.5)
    assert all(router.route(run.doer, f"t{i}").version == 1 for i in range(200))
    decisions = await run.run_until(
        run.simulator(), lambda d: any(x.action == "step_up" for x in d)
    )
    moves = [(d.action, d.reason) for d in decisions if d.action != "report"]
    assert [m[0] for m in moves] == ["step_up"], moves
    assert decisions[-1].report["deployment_mode"] == "shadow"
    live = await router.wait_for(run.doer, lambda c: c.status == "canary")
    assert live.deployment is not None and live.deployment.deployment_id != shadow_id
    assert live.version == 1  # the control still serves; the candidate now earns traffic
    rows = await db.fetch(
        "SELECT * FROM policy_promotions WHERE doer = $1 AND source = 'decision'", run.doer
    )
    assert [(r["action"], r["to_status"]) for r in rows] == [("start_canary", "canary")]


async def test_a_worker_restart_mid_canary_loses_no_statistics(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, router: Router, key: SigningKey
) -> None:
    run = scenario(db, producer, router, key, "Restarted", 0.8)
    deployment_id, simulator = await patient_canary(run)
    before = 600
    await run.run_until(
        simulator, lambda _: run.published_tasks >= before, pause=lambda n: n >= before, timeout=60
    )
    assert run.published_tasks == before  # published, not timed out (it used to idle 60 s here)

    async def routed() -> int:
        return sum((await routed_per_arm(db, deployment_id)).values())

    found = await eventually(run.decisions, lambda d: counted(d) >= before - 50, timeout=60)
    assert counted(found) >= before - 50
    assert await eventually(routed, lambda n: n == before) == before
    await asyncio.to_thread(worker.stop)
    await asyncio.to_thread(worker.start)
    after = 300
    total = before + after
    found = await run.run_until(
        simulator, lambda d: counted(d) >= total - 50, pause=lambda n: n >= total, timeout=120
    )
    # Lost state would start counting again from zero: at most `after` runs.
    assert total - 50 <= counted(found) <= total, worker.tail()
    # No routing is stored twice, across the restart.
    stored = await eventually(
        lambda: routed_per_arm(db, deployment_id), lambda r: sum(r.values()) == total
    )
    assert await distinct_tasks(db, deployment_id) == sum(stored.values()) == total
    # Every run counted, none twice.
    found = await eventually(run.decisions, lambda d: counted(d) >= total)
    assert last_counts(found) == stored, worker.tail()


async def routed_per_arm(db: Any, deployment_id: str) -> dict[str, int]:
    """Stored routings of a deployment per arm."""
    found = {"control": 0, "candidate": 0}
    for (_, arm), n in (await canary_store.routed_counts(db, deployment_id)).items():
        found[arm] += n
    return found


async def distinct_tasks(db: Any, deployment_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(DISTINCT task_id) FROM deployment_routings WHERE deployment_id = $1",
            deployment_id,
        )
    )


def last_counts(decisions: list[Any]) -> dict[str, int]:
    """Results counted per arm in the decision that had counted the most."""
    counts = [(d.report["control_count"], d.report["candidate_count"]) for d in decisions]
    control, candidate = max(counts, key=sum, default=(0, 0))
    return {"control": control, "candidate": candidate}


def counted(decisions: list[Any]) -> int:
    """Results counted by the decision that had counted the most."""
    return sum(last_counts(decisions).values())


async def missing_routings(settings: Any, db: Any, doer: str, worker: WorkerProcess) -> str:
    """Where the doer's routings that never reached PostgreSQL sit on the topic, and the log."""
    records = await read_from_start(settings, "learning.task-routed")
    mine = [r for r in records if r.key == doer.encode()]
    stored = {
        str(row["event_id"])
        for row in await db.fetch("SELECT event_id FROM deployment_routings WHERE doer = $1", doer)
    }
    lost = [
        (r.partition, r.offset)
        for r in mine
        if str(TaskRouted.from_json(r.value).event_id) not in stored
    ]
    return f"{len(mine)} on the topic, not stored (partition, offset): {lost}\n{worker.tail(150)}"


async def test_a_policy_change_delivered_again_does_not_end_the_live_canary(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, router: Router, key: SigningKey
) -> None:
    run = scenario(db, producer, router, key, "Redelivered", 0.8)
    deployment_id, simulator = await patient_canary(run)
    await run.publish_tasks(simulator, 200)
    found = await eventually(run.decisions, lambda d: counted(d) >= 200)
    assert counted(found) == 200, worker.tail()
    # What a restart before the commit of their offsets does: the doer's earlier changes
    # (v1 promoted with no deployment, then the canary started) arrive once more.
    earlier = await changes_of(settings, run.doer)
    assert [c.change for c in earlier][-2:] == ["promoted", "canary_started"]
    await run.send("learning.policy-changes", *earlier[-2:])
    await router.wait_for(run.doer, lambda c: c.event_id == earlier[-1].event_id)
    await run.publish_tasks(simulator, 200)
    found = await eventually(run.decisions, lambda d: counted(d) >= 400)
    stored = await eventually(
        lambda: routed_per_arm(db, deployment_id), lambda r: sum(r.values()) == 400
    )
    assert last_counts(found) == stored, worker.tail()
    assert sum(stored.values()) == 400


async def test_a_canary_that_stops_hearing_anything_is_paused_once_and_alerts(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, router: Router, key: SigningKey
) -> None:
    run = scenario(db, producer, router, key, "Silent", 0.8)
    await run.setup()
    quiet = CanarySettings(
        min_sample_size=100_000, report_every=50, max_silence_s=3.0, missing_grace_s=LAG_S
    )
    deployment_id = await run.start_canary(2, quiet, [0.5])
    await run.publish_tasks(run.simulator(), 100)  # some traffic, then none
    found = await eventually(
        run.decisions, lambda d: any(x.action == "pause" for x in d), timeout=120
    )
    pauses = [d for d in found if d.action == "pause"]
    assert len(pauses) == 1 and "missing data" in pauses[0].reason, worker.tail()
    assert "no routed task or CRL result" in pauses[0].reason
    row = next(g for g in pauses[0].report["guardrails"] if g["name"] == "silence")
    assert row["value"] > 3.0 and row["threshold"] == 3.0 and not row["passed"]
    # The silence began after the traffic: every run was counted before the pause.
    assert pauses[0].report["control_count"] + pauses[0].report["candidate_count"] == 100
    await assert_paused(db, router, run.doer, deployment_id)
    of_deployment = partial(alerts, settings, run.doer, deployment_id)
    raised = await eventually(of_deployment, lambda a: len(a) > 0)
    assert [(a.kind, a.severity, a.threshold) for a in raised] == [
        ("missing_data", "critical", 3.0)
    ]

    # The silence goes on: still one pause and one alert while the timer ticks on
    # (it judges silence every second: SILENCE_CHECK_S; watched for four ticks).
    async def pauses_and_alerts() -> tuple[int, int]:
        actions = [d.action for d in await run.decisions()]
        return actions.count("pause"), len(await of_deployment())

    await stays(pauses_and_alerts, lambda seen: seen == (1, 1), seconds=4.0)


async def test_a_worker_stopped_while_tasks_flow_stores_every_routing_once(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, router: Router, key: SigningKey
) -> None:
    run = scenario(db, producer, router, key, "Interrupted", 0.8)
    deployment_id, simulator = await patient_canary(run)
    total = 1500

    async def publish() -> None:
        while run.published_tasks < total:
            await run.publish_tasks(simulator, 50)
            await asyncio.sleep(0.05)

    publisher = asyncio.create_task(publish())
    # Stop the worker while routings and results are in flight, start it again: the
    # records fetched around the restart's seek used to be skipped
    # (agents/faust_internals/offsets.py).
    await eventually(lambda: routed_per_arm(db, deployment_id), lambda r: sum(r.values()) >= 300)
    await asyncio.to_thread(worker.stop)
    await asyncio.to_thread(worker.start)
    await publisher
    stored = await eventually(
        lambda: routed_per_arm(db, deployment_id), lambda r: sum(r.values()) == total, timeout=90
    )
    assert sum(stored.values()) == total, await missing_routings(settings, db, run.doer, worker)
    assert await distinct_tasks(db, deployment_id) == total
    found = await eventually(run.decisions, lambda d: counted(d) >= total)
    assert last_counts(found) == stored, worker.tail()
