"""Experiment evidence on real PostgreSQL: what a decision stood on never changes afterwards."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from learning.curation import content_hash
from learning.replay import ReplayRule, replay_id
from models.crl import CRLTerms
from models.events import CRLComputed, CurationLabels, ReplayTask, SampleCurated
from storage import experiments as store
from storage.datasets import freeze, insert_samples
from tests.integration.test_policy_store import bootstrap, trusted_key

SEEDS = [1, 2, 3]  # the fewest a replay verdict accepts
RULE = ReplayRule()


def scored(task: ReplayTask, loss: float) -> CRLComputed:
    """The CRL result of one replay task, with ``loss`` all on the gate term."""
    assert task.run_id is not None
    return CRLComputed(
        doer=task.doer,
        source_event_id=uuid.uuid4(),
        run_occurred_at=datetime.now(UTC),
        run_id=task.run_id,
        phase=task.phase,
        policy_id=task.policy_id,
        policy_version=task.policy_version,
        tenant_id="tests",
        replay_id=task.replay_id,
        terms=CRLTerms(
            gate_pass_rate=1 - loss / 3,
            contradiction_rate=0.0,
            grounding_score=1.0,
            cost_over_budget_pct=0.0,
            latency_p95_norm=0.0,
            security_criticals=0,
            api_breakages=0,
            db_migration_fail=0,
            rag_coverage=1.0,
        ),
        loss=loss,
        contributions={"gate_pass_rate": loss},
        weights_version="default-v1",
        security_criticals=0,
    )


class Doer:
    """A doer with versions 1 (active), 2 and 3 registered and a frozen golden dataset."""

    def __init__(self, db: Any, name: str, golden: store.Golden) -> None:
        self.db, self.name, self.golden = db, name, golden

    async def replay(
        self,
        version: int,
        control_rid: str | None,
        loss: float | None,
        *,
        settle: bool = True,
        seeds: list[int] = SEEDS,
    ) -> str:
        """Start the replay of ``version`` against ``control_rid``; finish it at ``loss``.

        ``control_rid`` "self" makes the replay its own control, as the experiments
        stage does for the active policy. ``settle=False`` stops before the verdicts,
        as a worker killed after recording the last result does.
        """
        start = await self.start(version, control_rid, seeds)
        if loss is not None:
            for task in start.tasks:
                await store.record_result(self.db, scored(task, loss))
        if settle:
            await store.settle_verdicts(self.db, start.replay_id, RULE)
        return start.replay_id

    async def start(
        self,
        version: int,
        control_rid: str | None,
        seeds: list[int] = SEEDS,
        *,
        force: bool = False,
    ) -> store.ReplayStart:
        """Start the replay of ``version`` against ``control_rid`` ("self": its own control);
        ``force``: its next attempt, as `replay run --force` asks."""
        policy = await store.find_policy_row(self.db, self.name.lower(), version)
        if control_rid == "self":
            control_rid = replay_id(policy["content_hash"], self.golden.manifest_hash, seeds)
        return await store.start_replay(
            self.db,
            policy=policy,
            golden=self.golden,
            seeds=seeds,
            requested_by=uuid.uuid4(),
            actor="tests",
            timeout_s=600,
            force=force,
            control_replay_id=control_rid,
        )

    async def experiment(
        self, candidate: int, control: int, plan: dict[str, Any] | None = None
    ) -> str:
        experiment_id = f"{self.name}-v{candidate}-vs-v{control}"
        created = await store.insert_experiment(
            self.db,
            experiment_id=experiment_id,
            created_by=uuid.uuid4(),
            experiment_type="prompt_synthesis",
            doer=self.name,
            phase="draft",
            hypothesis=f"v{candidate} beats v{control}",
            actor="tests",
            reason="evidence test",
            golden=self.golden,
            seeds=SEEDS,
            policy_id=self.name.lower(),
            policy_version=candidate,
            control=await store.find_policy_row(self.db, self.name.lower(), control),
            deploy="shadow",
            plan=plan or {},
            created_at=datetime.now(UTC),
        )
        assert created
        return experiment_id

    async def replaying(self, experiment_id: str, rid: str, control_rid: str) -> None:
        moved = await store.move_experiment(
            self.db,
            experiment_id,
            "replaying",
            "replaying",
            {"replay_id": rid, "control_replay_id": control_rid},
            replay_id=rid,
            control_replay_id=control_rid,
        )
        assert moved is not None

    async def evidence(self, experiment_id: str) -> dict[str, Any]:
        """What the experiments stage records when it judges (agents.experiments._judge)."""
        row = await store.get_experiment(self.db, experiment_id)
        replay = await store.get_replay(self.db, row["replay_id"])
        assert replay["control_replay_id"] == row["control_replay_id"]
        assert replay["verdict"] is not None
        return {
            "replay_id": row["replay_id"],
            "control_replay_id": row["control_replay_id"],
            "verdict": replay["verdict"],
        }


async def make_doer(db: Any) -> Doer:
    name = f"Evidence{uuid.uuid4().hex[:8]}"
    await bootstrap(db, name, await trusted_key(db), versions=3)
    return Doer(db, name, await frozen_golden(db, name))


async def frozen_golden(db: Any, name: str) -> store.Golden:
    """Two accepted draft samples of doer ``name`` (acme's), frozen as golden-{name}."""
    dataset = f"acme/{name}/draft"
    texts = ["Write the PRD for search.", "Write the PRD for checkout."]
    await insert_samples(
        db,
        [
            SampleCurated(
                doer=name,
                sample_id=f"{name}-s{i}",
                run_id=f"{name}-run{i}",
                phase="draft",
                policy_id=name.lower(),
                policy_version=1,
                artifact_id=f"a{i}",
                kind="prd",
                origin="human",
                accepted=True,
                content=text,
                content_hash=content_hash(text),
                labels=CurationLabels(specificity=0.5, origin="human", synthetic_confidence=0.0),
                dataset=dataset,
                tenant_id="acme",
            )
            for i, text in enumerate(texts)
        ],
    )
    frozen = await freeze(db, "acme", dataset, f"golden-{name.lower()}", actor="tests")
    golden = await store.find_golden(db, frozen.name, frozen.version)
    assert golden is not None
    return golden


async def test_two_experiments_sharing_a_replay_keep_their_own_control_and_verdict(
    db: Any,
) -> None:
    doer = await make_doer(db)
    # A: v2 against the active v1; v2 is better, so A deploys it (and it is promoted).
    a = await doer.experiment(2, 1)
    r1 = await doer.replay(1, "self", 0.5)
    r2 = await doer.replay(2, r1, 0.3)
    await doer.replaying(a, r2, r1)
    a_evidence = await doer.evidence(a)
    assert a_evidence["verdict"]["passed"] is True
    await db.execute(
        "UPDATE experiments SET deploy_command_id = $2, outcome = $3 WHERE experiment_id = $1",
        a,
        uuid.uuid4(),
        a_evidence,
    )
    for status in ("shadow", "promoted"):
        assert await store.move_experiment(db, a, status, f"candidate is {status}") is not None

    # B: v3 against v2, now the control. v2's replay is shared: as B's control it is
    # compared with itself, and the shared row's control and verdict are rewritten.
    b = await doer.experiment(3, 2)
    assert await doer.replay(2, r2, None) == r2
    r3 = await doer.replay(3, r2, 0.4)
    await doer.replaying(b, r3, r2)
    b_evidence = await doer.evidence(b)
    assert b_evidence["verdict"]["passed"] is False
    assert await store.move_experiment(
        db, b, "failed", b_evidence["verdict"]["reason"], b_evidence, outcome=b_evidence
    )
    shared = await store.get_replay(db, r2)
    assert shared["control_replay_id"] == r2  # the latest comparison: v2 against itself
    assert shared["verdict"] != a_evidence["verdict"]

    # A still shows its own control and verdict; so does B.
    a_row = await store.get_experiment(db, a)
    a_comparison = await store.experiment_comparison(db, a)
    assert (a_comparison["replay_id"], a_comparison["control_replay_id"]) == (r2, r1)
    assert a_comparison["verdict"] == a_evidence["verdict"]
    assert a_row["outcome"] == a_evidence
    as_judged = await store.get_replay(db, r2, comparison_id=a_row["comparison_id"])
    assert as_judged["control_replay_id"] == r1
    assert as_judged["verdict"] == a_evidence["verdict"]
    assert as_judged["mean_crl"] == pytest.approx(0.3)
    control = await store.get_replay(db, r1, result_hash=as_judged["control_result_hash"])
    assert control["mean_crl"] == pytest.approx(0.5)
    # What `learnops experiment show` prints for A: its own control and verdict.
    from learnops.cli.experiments import experiment_report

    report = await experiment_report(db, a)
    assert report is not None
    assert report["replay"]["control"]["replay_id"] == r1
    assert report["replay"]["control"]["mean_crl"] == pytest.approx(0.5)
    assert report["replay"]["verdict"] == a_evidence["verdict"]
    b_comparison = await store.experiment_comparison(db, b)
    assert (b_comparison["replay_id"], b_comparison["control_replay_id"]) == (r3, r2)
    assert b_comparison["verdict"] == b_evidence["verdict"]


async def test_the_database_refuses_to_rewrite_a_decided_experiment_s_evidence(db: Any) -> None:
    doer = await make_doer(db)
    a = await doer.experiment(2, 1)
    r1 = await doer.replay(1, "self", 0.5)
    r2 = await doer.replay(2, r1, 0.6)
    await doer.replaying(a, r2, r1)
    evidence = await doer.evidence(a)
    assert await store.move_experiment(db, a, "failed", "worse", evidence, outcome=evidence)
    comparison = await store.experiment_comparison(db, a)
    assert comparison is not None
    for statement, value in (
        ("UPDATE experiments SET control_replay_id = $2 WHERE experiment_id = $1", r2),
        ("UPDATE experiments SET replay_id = $2 WHERE experiment_id = $1", r1),
        ("UPDATE experiments SET outcome = $2 WHERE experiment_id = $1", {"verdict": None}),
    ):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="cannot change"):
            await db.execute(statement, a, value)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="cannot change"):
        await db.execute("UPDATE experiments SET comparison_id = NULL WHERE experiment_id = $1", a)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
        await db.execute(
            "UPDATE replay_comparisons SET verdict = '{}' WHERE id = $1", comparison["id"]
        )
    # Moving on (a status, a timestamp) is still allowed.
    await db.execute("UPDATE experiments SET updated_at = now() WHERE experiment_id = $1", a)


async def test_steps_a_killed_worker_left_undone_are_found_for_the_timer(db: Any) -> None:
    """A kill between recording a replay's last result and settling its verdict (or between
    the verdict and judging the experiment) left the experiment replaying for good: a
    redelivered result is already taken, and nothing else settles or judges. The timer's
    queries find both states, once the path that took the step has had its time."""
    doer = await make_doer(db)
    experiment = await doer.experiment(2, 1)
    r1 = await doer.replay(1, "self", 0.5)
    # Complete, with no verdict: the kill came after the last result was recorded.
    r2 = await doer.replay(2, r1, 0.3, settle=False)
    await doer.replaying(experiment, r2, r1)
    now = datetime.now(UTC)
    later = now + store.SETTLE_AFTER + timedelta(seconds=1)
    assert r2 not in await store.replays_ended_without_verdict(db, now)  # its path's turn
    assert r2 in await store.replays_ended_without_verdict(db, later)
    assert await store.settle_verdicts(db, r2, RULE) == [r2]
    assert r2 not in await store.replays_ended_without_verdict(db, later)
    # Settled, and killed before judging: the experiment waits on a verdict it has.
    waiting = {row["experiment_id"] for row in await store.judged_but_waiting(db, later)}
    assert experiment in waiting
    assert experiment not in {r["experiment_id"] for r in await store.judged_but_waiting(db, now)}
    await db.execute(
        "UPDATE experiments SET deploy_command_id = $2 WHERE experiment_id = $1",
        experiment,
        uuid.uuid4(),
    )
    assert experiment not in {r["experiment_id"] for r in await store.judged_but_waiting(db, later)}


async def test_replays_whose_seed_sets_overlap_each_count_every_seed_they_name(db: Any) -> None:
    """Seeds 2 and 3 are in both replays of v1: each replay has its own tasks for them.

    Task ids were of (policy, manifest, sample, seed) alone: the second replay found
    those tasks taken by the first, dropped its own results for them and completed on
    seed 4 alone (a verdict on fewer seeds than it named, nothing said)."""
    doer = await make_doer(db)
    first = await doer.replay(1, "self", 0.5)
    second = await doer.start(1, "self", [2, 3, 4])
    assert len(second.tasks) == 6
    first_tasks = {t["task_id"] for t in await store.replay_tasks(db, first)}
    assert first_tasks.isdisjoint(t.task_id for t in second.tasks)
    for task in second.tasks:
        await store.record_result(db, scored(task, 0.25))
    row = await store.get_replay(db, second.replay_id)
    assert row["status"] == "complete" and row["runs"] == 6, dict(row)
    assert sorted(row["per_seed"], key=int) == ["2", "3", "4"]
    # The first replay's results are its own still.
    earlier = await store.get_replay(db, first)
    assert earlier["status"] == "complete" and earlier["runs"] == 6
    assert all(t["loss"] == 0.5 for t in await store.replay_tasks(db, first))


async def test_a_replay_short_of_tasks_of_its_own_does_not_complete_and_ends_listing_them(
    db: Any,
) -> None:
    """A replay started by the code before tasks were the replay's, while an earlier one
    held its shared tasks, has no rows for them: its own results in, it stays running,
    and its deadline ends it incomplete with the pairs it has no task for."""
    doer = await make_doer(db)
    start = await doer.start(1, "self", [2, 3, 4])
    await db.execute(
        "DELETE FROM offline_replay_tasks WHERE replay_id = $1 AND seed = 2", start.replay_id
    )
    for task in start.tasks:
        if task.seed != 2:
            await store.record_result(db, scored(task, 0.25))
    assert (await store.get_replay(db, start.replay_id))["status"] == "running"
    await db.execute(
        "UPDATE offline_replays SET deadline = now() - interval '1 second' WHERE replay_id = $1",
        start.replay_id,
    )
    assert start.replay_id in await store.expire_replays(db)
    row = await store.get_replay(db, start.replay_id)
    assert row["status"] == "incomplete"
    assert [(m["task_id"], m["seed"]) for m in row["missing_tasks"]] == [
        (None, 2) for _ in doer.golden.samples
    ]


async def test_an_experiment_row_without_history_is_left_alone_not_failed_on(db: Any) -> None:
    """Found by a red-team trial: an experiments row written around learnops (no history)
    made every move of its doer's deployments fail in the experiments stage (a NOT NULL
    history seq), each an internal error toward halting the stage."""
    doer = await make_doer(db)
    real = await doer.experiment(2, 1)
    forged = f"{real}-forged"
    async with db.acquire() as conn, conn.transaction():  # one session: the temp table
        await conn.execute(
            "CREATE TEMP TABLE forged ON COMMIT DROP AS "
            "SELECT * FROM experiments WHERE experiment_id = $1",
            real,
        )
        await conn.execute(
            "UPDATE forged SET experiment_id = $1, created_by = gen_random_uuid()", forged
        )
        await conn.execute("INSERT INTO experiments SELECT * FROM forged")
    assert await store.move_experiment(db, forged, "replaying", "replaying") is None
    row = await db.fetchrow("SELECT status FROM experiments WHERE experiment_id = $1", forged)
    assert row["status"] == "created"
    # A real one moves as ever.
    assert await store.move_experiment(db, real, "failed", "stopped") is not None
