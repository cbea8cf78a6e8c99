"""The experiments stage driven in process: what a killed worker left undone, and retries.

The stage records each step in PostgreSQL before it sends what the step
publishes (an ``ExperimentChanged``, a deployment command), so a worker killed
between the two leaves a step recorded and unsent. These tests put the
database in that state with the same store calls the stage makes, then run the
stage's timer on a fresh app (a restarted worker) and read what it sends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from agents.app import LearnopsApp
from learning.signing import generate_key
from learnops.cli.experiments import experiment_report
from models.commands import CreateExperiment, RunReplay, StartShadow
from models.events import ExperimentChanged, ReplayTask
from models.ids import experiment_event_id
from storage import experiments as store
from storage.policy_commands import apply_command
from tests import operators
from tests.integration.test_experiment_evidence import SEEDS, Doer, make_doer, scored
from tests.integration.test_policy_store import promote
from tests.integration.test_stages_in_process import Feed, Progress, make_app, sent
from tests.operators import signed
from tests.services import run_learnops

__all__ = ["make_app"]  # the fixture, imported for this module's tests

COMMANDS = "learning.commands"
EXPERIMENTS = "learning.experiments"
RESULTS = "learning.crl-computed"
TASKS = "learning.replay-tasks"


@pytest.fixture
def experiments_app(make_app: Callable[..., LearnopsApp], tmp_path: Path) -> LearnopsApp:
    """An app with the experiments stage and the worker's operator key (tests.operators)."""
    key = tmp_path / "worker.pem"
    key.write_bytes(operators.WORKER.to_pem())
    return make_app("experiments", learnops_worker_key=key)


def after_settling() -> datetime:
    """A time at which the timer takes up a step recorded now."""
    return datetime.now(UTC) + store.SETTLE_AFTER + timedelta(seconds=1)


def ours(app: LearnopsApp, topic: str, doer: Doer) -> list[Any]:
    """What the app sent to ``topic`` about ``doer``'s policy, in order.

    The stage's timer takes up every row of the session's database, and test files
    running beside this one (or before it) leave experiments of their own doers
    mid-step, so a test reads only what concerns its doer.
    """
    return [event for event in sent(app, topic) if event.policy_id == doer.name.lower()]


async def deployed_unsent(doer: Doer) -> tuple[str, uuid.UUID]:
    """An experiment whose passing verdict and deployment command are recorded, nothing sent.

    The store calls are the stage's (``_begin``, ``_finished``, ``_deploy``),
    stopped before each send, as a worker killed there leaves them.
    """
    experiment = await doer.experiment(2, 1)
    control = await doer.replay(1, "self", 0.5)
    candidate = await doer.replay(2, control, 0.3)
    await doer.replaying(experiment, candidate, control)
    command_id = experiment_event_id("deploy", experiment)
    assert await store.record_deploy_command(
        doer.db, experiment, command_id, await doer.evidence(experiment)
    )
    return experiment, command_id


async def test_transitions_and_a_deployment_a_killed_worker_never_sent_are_sent_once(
    experiments_app: LearnopsApp, db: Any
) -> None:
    doer = await make_doer(db)
    experiment, command_id = await deployed_unsent(doer)
    app = experiments_app
    stage = app.stages["experiments"]

    # The path that recorded the steps has its turn first: nothing is sent yet.
    await stage.expire_replays(datetime.now(UTC))
    assert ours(app, COMMANDS, doer) == [] and ours(app, EXPERIMENTS, doer) == []

    later = after_settling()
    await stage.expire_replays(later)
    commands = ours(app, COMMANDS, doer)
    assert [(type(c), c.event_id, c.version) for c in commands] == [(StartShadow, command_id, 2)]
    assert commands[0].operator_signature is not None, "signed with the worker's key"
    changes: list[ExperimentChanged] = ours(app, EXPERIMENTS, doer)
    assert [(c.status, c.previous_status) for c in changes] == [
        ("created", None),
        ("replaying", "created"),
    ]
    assert [c.event_id for c in changes] == [
        experiment_event_id("experiment", experiment, seq) for seq in (0, 1)
    ]
    row = await store.get_experiment(db, experiment)
    assert row["published_seq"] == 1 and row["deploy_sent_at"] is not None

    # Once acknowledged, neither is sent again.
    await stage.expire_replays(later)
    assert len(ours(app, COMMANDS, doer)) == 1 and len(ours(app, EXPERIMENTS, doer)) == 2


async def replaying_unscored(doer: Doer, *, control_loss: float) -> tuple[str, Any]:
    """An experiment of v2 against v1, replaying: the control scored, the candidate's tasks
    out; its creation and start recorded and never sent (as a kill before the sends)."""
    experiment = await doer.experiment(2, 1)
    control = await doer.replay(1, "self", control_loss)
    candidate = await doer.start(2, control)
    await doer.replaying(experiment, candidate.replay_id, control)
    return experiment, candidate


async def score(app: LearnopsApp, replay: Any, loss: float) -> None:
    """Deliver the CRL results of every task of ``replay`` to the stage; wait until handled."""
    progress = Progress(app.stages["experiments"])
    async with app.agents["experiments"].test_context() as agent:
        feed = Feed(app, agent)
        for task in replay.tasks:
            await feed.event(RESULTS, scored(task, loss))
        await progress.done(len(replay.tasks), batched=False)


async def test_a_later_move_sends_what_a_kill_left_unsent_first_in_order(
    experiments_app: LearnopsApp, db: Any
) -> None:
    """The experiment's creation and start were recorded and never sent; its replay's last
    result then fails it, and the failure is published after them, in their order."""
    doer = await make_doer(db)
    experiment, candidate = await replaying_unscored(doer, control_loss=0.3)
    app = experiments_app
    await score(app, candidate, 0.6)

    changes: list[ExperimentChanged] = ours(app, EXPERIMENTS, doer)
    assert [(c.status, c.previous_status) for c in changes] == [
        ("created", None),
        ("replaying", "created"),
        ("failed", "replaying"),
    ]
    assert (await store.get_experiment(db, experiment))["published_seq"] == 2


async def test_a_no_worse_replay_waits_for_a_control_running_again_and_names_what_it_judged(
    experiments_app: LearnopsApp, db: Any
) -> None:
    """A review found the no-worse gate reading the control's task losses while a forced
    attempt was refilling them: it paired the few back so far (a candidate twice as bad on
    half the samples passed). It now waits until both replays are complete again."""
    doer = await make_doer(db)
    margin = {"non_inferiority_margin": 0.1, "max_crl_increase": 0.1}
    plan = {"canary": {"mode": "non_inferiority", **margin}}
    experiment = await doer.experiment(2, 1, plan)
    control = await doer.replay(1, "self", 0.5)
    candidate = await doer.replay(2, control, 0.5)  # a match: "better" fails, "no worse" passes
    await doer.replaying(experiment, candidate, control)
    again = await doer.start(1, control, force=True)  # `replay run --force` of the control
    assert again.tasks, "the forced attempt publishes its tasks again"
    for task in again.tasks[:2]:  # two of its results are back, the rest are not
        await store.record_result(db, scored(task, 0.5))
    stage = experiments_app.stages["experiments"]
    await stage._judge(await store.get_experiment(db, experiment))
    row = await store.get_experiment(db, experiment)
    assert (row["status"], row["deploy_command_id"]) == ("replaying", None), row["outcome"]
    for task in again.tasks[2:]:
        await store.record_result(db, scored(task, 0.5))
    await stage._judge(await store.get_experiment(db, experiment))
    row = await store.get_experiment(db, experiment)
    assert row["deploy_command_id"] is not None, dict(row)
    gate = row["outcome"]["verdict"]
    assert gate["rule"] == "non_inferiority" and gate["passed"], gate
    assert row["outcome"]["replay_verdict"]["passed"] is False
    assert gate["judged"]["control_attempt"] == 2 and gate["judged"]["candidate_attempt"] == 1
    assert gate["numbers"]["paired_samples"] == len(doer.golden.samples)
    # The replay's own verdict, as `experiment show` prints it, against the control's attempt
    # it was given on (the review found it printing the control's current attempt).
    report = await experiment_report(db, experiment)
    assert report is not None and report["replay"]["control"]["attempt"] == 1, report["replay"]


class RefusingOutbox(list[tuple[str, Any]]):
    """An app's outbox whose sends to some topics fail as a broker that is down refuses them."""

    def __init__(self, *refused: str) -> None:
        super().__init__()
        self.refused = set(refused)

    def append(self, item: tuple[str, Any]) -> None:
        if item[0] in self.refused:
            raise KafkaTimeoutError(f"{item[0]}: the broker did not answer")
        super().append(item)


@pytest.mark.parametrize("passes", [True, False])
async def test_a_send_the_broker_refuses_is_left_to_the_timer_and_the_input_is_not_dead_lettered(
    experiments_app: LearnopsApp, db: Any, passes: bool
) -> None:
    """The candidate's last result decides it while the broker refuses sends: passing, its
    deployment command is recorded and unsent; failing, its failure is. Neither dead-letters
    the result (a valid input); the timer sends both once the broker is back."""
    doer = await make_doer(db)
    experiment, candidate = await replaying_unscored(doer, control_loss=0.5)
    app = experiments_app
    app.outbox = RefusingOutbox(EXPERIMENTS, COMMANDS)
    stage = app.stages["experiments"]
    await score(app, candidate, 0.3 if passes else 0.7)
    assert list(app.outbox) == [], "nothing sent, nothing dead-lettered"
    row = await store.get_experiment(db, experiment)
    assert row["published_seq"] == -1
    assert (row["deploy_command_id"] is not None) is passes and row["deploy_sent_at"] is None

    app.outbox = []  # the broker is back
    await stage.expire_replays(after_settling())
    statuses = ["created", "replaying"] + ([] if passes else ["failed"])
    assert [c.status for c in ours(app, EXPERIMENTS, doer)] == statuses
    assert [type(c) for c in ours(app, COMMANDS, doer)] == ([StartShadow] if passes else [])


async def sent_a_day_ago(db: Any, experiment_id: str) -> None:
    """As if the experiment's deployment command went out a day ago, long past its validity."""
    await db.execute(
        "UPDATE experiments SET deploy_sent_at = now() - interval '1 day' WHERE experiment_id = $1",
        experiment_id,
    )


@pytest.fixture
def keyless_app(make_app: Callable[..., LearnopsApp], tmp_path: Path) -> LearnopsApp:
    """An app with the experiments stage whose worker key no database has registered."""
    key = tmp_path / "stranger.pem"
    key.write_bytes(generate_key().to_pem())
    return make_app("experiments", learnops_worker_key=key)


async def test_a_deployment_command_refused_at_its_envelope_fails_the_experiment(
    keyless_app: LearnopsApp, db: Any
) -> None:
    """A refused envelope (here the worker's key is registered nowhere) leaves no row in the
    policy store; the stage asks its command's envelope of its own database and fails the
    experiment with the reason (never from another consumer group's alert on a shared
    broker, which may refuse what this database accepts)."""
    doer = await make_doer(db)
    experiment, _ = await deployed_unsent(doer)
    await store.mark_deploy_sent(db, experiment)
    stage = keyless_app.stages["experiments"]
    # While the command sent can still be applied (signed then with a key that may have
    # been valid: this worker may have restarted with another), it is left alone.
    await stage.expire_replays(after_settling())
    assert (await store.get_experiment(db, experiment))["status"] == "replaying"
    await sent_a_day_ago(db, experiment)
    await stage.expire_replays(after_settling())
    assert (await store.get_experiment(db, experiment))["status"] == "failed"
    last = (await store.experiment_history(db, experiment))[-1]
    assert last["reason"].startswith("the policy stage refuses the deployment command: ")
    assert "is not a registered operator key" in last["reason"], last["reason"]
    assert last["evidence"]["refusal"] is not None


async def test_a_deployment_command_unanswered_past_its_validity_is_sent_again(
    experiments_app: LearnopsApp, db: Any
) -> None:
    """Accepted by this database's keys but unanswered: the policy stage may be behind (it
    is left alone) or may have read it expired (sent again, signed afresh, same event id)."""
    doer = await make_doer(db)
    experiment, command_id = await deployed_unsent(doer)
    await store.mark_deploy_sent(db, experiment)
    stage = experiments_app.stages["experiments"]
    await stage.expire_replays(after_settling())
    assert ours(experiments_app, COMMANDS, doer) == []  # behind, not expired: left alone
    await sent_a_day_ago(db, experiment)
    await stage.expire_replays(after_settling())
    resent = ours(experiments_app, COMMANDS, doer)
    assert [(type(c), c.event_id) for c in resent] == [(StartShadow, command_id)]
    row = await store.get_experiment(db, experiment)
    assert row["status"] == "replaying" and row["deploy_sent_at"] > datetime.now(UTC) - (
        timedelta(minutes=1)
    )


async def expired(doer: Doer, rid: str) -> None:
    """End a running replay as its deadline would, and settle its verdict."""
    await doer.db.execute(
        "UPDATE offline_replays SET deadline = now() - interval '1 second' WHERE replay_id = $1",
        rid,
    )
    assert rid in await store.expire_replays(doer.db)
    await store.settle_verdicts(doer.db, rid, store.ReplayRule())


@pytest.mark.parametrize("missing", ["candidate", "control"])
async def test_an_incomplete_experiment_resumes_when_its_replay_runs_again(
    experiments_app: LearnopsApp, db: Any, missing: str
) -> None:
    """The tasks of one replay (the candidate's, or the control's, which leaves the
    candidate's verdict incomplete too) did not all return; a replay run of that policy
    starts the replay's next attempt, the experiment goes back to replaying, and the new
    results decide it, with the incomplete decision kept in its history."""
    doer = await make_doer(db)
    experiment = await doer.experiment(2, 1)
    control = await doer.replay(1, "self", 0.5 if missing == "candidate" else None)
    candidate = await doer.replay(2, control, 0.3 if missing == "control" else None)
    await doer.replaying(experiment, candidate, control)
    rerun_rid, version, loss = (candidate, 2, 0.3) if missing == "candidate" else (control, 1, 0.5)
    await expired(doer, rerun_rid)
    assert (await store.get_replay(db, candidate))["verdict"]["incomplete"] is True
    assert await store.move_experiment(db, experiment, "incomplete", f"{missing} missing")

    app = experiments_app
    stage = app.stages["experiments"]
    progress = Progress(stage)
    async with app.agents["experiments"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(COMMANDS, signed(rerun(doer, version)))
        await progress.done(1, batched=False)
        assert (await store.get_experiment(db, experiment))["status"] == "replaying"
        assert (await store.get_replay(db, candidate))["verdict"] is None
        # The active policy is its own control: its run starts the same replay twice.
        tasks: dict[str, ReplayTask] = {t.task_id: t for t in ours(app, TASKS, doer)}
        assert {t.replay_id for t in tasks.values()} == {rerun_rid}
        assert {t.run_id.rsplit(":", 1)[1] for t in tasks.values() if t.run_id} == {"2"}
        for task in tasks.values():
            await feed.event(RESULTS, scored(task, loss))
        await progress.done(1 + len(tasks), batched=False)

    row = await store.get_experiment(db, experiment)
    assert row["deploy_command_id"] == experiment_event_id("deploy", experiment)
    assert row["outcome"]["verdict"]["passed"] is True, row["outcome"]
    assert [type(c) for c in ours(app, COMMANDS, doer)] == [StartShadow]
    history = await store.experiment_history(db, experiment)
    assert [h["to_status"] for h in history] == ["created", "replaying", "incomplete", "replaying"]
    assert history[2]["reason"] == f"{missing} missing"
    assert history[3]["reason"] == f"replay {rerun_rid} started again (attempt 2)"


def rerun(doer: Doer, version: int) -> RunReplay:
    """An operator's replay run of one of the doer's versions on its golden dataset."""
    return RunReplay(
        doer=doer.name,
        actor="tests",
        reason="the executor is back",
        policy_id=doer.name.lower(),
        version=version,
        dataset=f"{doer.golden.name}@{doer.golden.version}",
        seeds=SEEDS,
    )


async def incomplete_for_its_candidate(doer: Doer) -> tuple[str, str, str]:
    """An experiment of v2 against v1 that ended incomplete: v2's tasks did not return."""
    experiment = await doer.experiment(2, 1)
    control = await doer.replay(1, "self", 0.5)
    candidate = await doer.replay(2, control, None)
    await doer.replaying(experiment, candidate, control)
    await expired(doer, candidate)
    assert await store.move_experiment(doer.db, experiment, "incomplete", "candidate missing")
    return experiment, candidate, control


async def test_an_incomplete_experiment_whose_replay_is_now_compared_with_another_control_stays(
    experiments_app: LearnopsApp, db: Any
) -> None:
    """Replay rows are shared: after v3 became the doer's active policy, a replay run of v2
    compares v2's row with v3's. That attempt cannot decide an experiment of v2 against v1,
    which stays incomplete instead of waiting in replaying for a verdict that never comes."""
    doer = await make_doer(db)
    experiment, candidate, _ = await incomplete_for_its_candidate(doer)
    promoted = await apply_command(db, promote(doer.name, 3, force=True, reason="v3 now"))
    assert promoted is not None and promoted.applied
    app = experiments_app
    progress = Progress(app.stages["experiments"])
    async with app.agents["experiments"].test_context() as agent:
        await Feed(app, agent).event(COMMANDS, signed(rerun(doer, 2)))
        await progress.done(1, batched=False)
    assert {t.replay_id for t in ours(app, TASKS, doer)} >= {candidate}  # its new attempt ran
    assert (await store.get_experiment(db, experiment))["status"] == "incomplete"
    await app.stages["experiments"].expire_replays(after_settling())
    assert (await store.get_experiment(db, experiment))["status"] == "incomplete"


@pytest.mark.parametrize("by", ["result", "timer"])
async def test_a_replaying_experiment_whose_candidate_is_compared_with_another_control_ends(
    experiments_app: LearnopsApp, db: Any, by: str
) -> None:
    """An experiment of v2 against v1 replays; v3 is promoted meanwhile and a replay run of
    v2 compares v2's shared row with v3's. That verdict cannot decide the experiment, and
    its own comparison never comes back: it ends incomplete, saying why, when the verdict
    is settled (``result``) or, for one a worker left waiting, by the timer (``timer``)."""
    doer = await make_doer(db)
    experiment = await doer.experiment(2, 1)
    control = await doer.replay(1, "self", 0.5)
    candidate = await doer.start(2, control)
    await doer.replaying(experiment, candidate.replay_id, control)
    promoted = await apply_command(db, promote(doer.name, 3, force=True, reason="v3 now"))
    assert promoted is not None and promoted.applied
    other = await doer.replay(3, "self", 0.4)
    assert (await doer.start(2, other)).replay_id == candidate.replay_id  # the shared row
    app = experiments_app
    if by == "result":
        await score(app, candidate, 0.3)
    else:
        for task in candidate.tasks:
            await store.record_result(db, scored(task, 0.3))
        assert await store.settle_verdicts(db, candidate.replay_id, store.ReplayRule())
        await app.stages["experiments"].expire_replays(after_settling())

    row = await store.get_experiment(db, experiment)
    assert row["status"] == "incomplete"
    last = (await store.experiment_history(db, experiment))[-1]
    assert last["reason"].startswith(
        f"its candidate's replay {candidate.replay_id} is now compared with {other}, "
        f"not with this experiment's control {control}"
    ), last["reason"]
    assert last["evidence"]["compared_with"] == other
    changes: list[ExperimentChanged] = ours(app, EXPERIMENTS, doer)
    assert [c.status for c in changes][-1] == "incomplete"
    # Incomplete, it is not resumed by the timer: its row still has the other control.
    await app.stages["experiments"].expire_replays(after_settling())
    assert (await store.get_experiment(db, experiment))["status"] == "incomplete"


async def test_the_timer_resumes_an_experiment_a_kill_left_incomplete_after_its_rerun(
    experiments_app: LearnopsApp, db: Any
) -> None:
    """Killed between starting the replay's new attempt and moving the experiment: the
    redelivered command is answered from the record once the attempt ran, so nothing else
    would resume it."""
    doer = await make_doer(db)
    experiment, candidate, control = await incomplete_for_its_candidate(doer)
    again = await doer.start(2, control)  # the new attempt, as the stage starts it
    assert (again.replay_id, again.attempt) == (candidate, 2)
    stage = experiments_app.stages["experiments"]
    await stage.expire_replays(datetime.now(UTC))  # the stage's own turn first
    assert (await store.get_experiment(db, experiment))["status"] == "incomplete"
    await stage.expire_replays(after_settling())
    row = await store.get_experiment(db, experiment)
    assert row["status"] == "replaying"
    last = (await store.experiment_history(db, experiment))[-1]
    assert last["reason"] == "its replays run again (taken up by the timer)"


async def test_experiment_show_says_how_to_resume_an_incomplete_experiment(
    db: Any, settings_env: dict[str, str]
) -> None:
    doer = await make_doer(db)
    experiment, _, _ = await incomplete_for_its_candidate(doer)
    shown = await asyncio.to_thread(run_learnops, settings_env, "experiment", "show", experiment)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "  to resume: with a replay executor serving the doer" in "\n".join(lines)
    golden = f"{doer.golden.name}@{doer.golden.version}"
    command = f"learnops replay run --policy {doer.name.lower()}@2 --dataset {golden} --seeds 1,2,3"
    assert [line.strip() for line in lines if "replay run" in line] == [command]
    # Its missing tasks are counted, a few listed: --json has them all.
    assert "candidate  missing 6 tasks:" in lines


async def test_replay_show_of_a_replay_no_result_has_reached_says_so(
    db: Any, settings_env: dict[str, str]
) -> None:
    """A replay just started: no per-seed table with nothing under its header."""
    doer = await make_doer(db)
    control = await doer.start(1, "self")
    shown = await asyncio.to_thread(run_learnops, settings_env, "replay", "show", control.replay_id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1] == "no result has come back yet", shown.stdout
    assert not any("mean CRL" in line for line in lines), shown.stdout
    # Its results in, the table is back.
    for task in control.tasks:
        await store.record_result(db, scored(task, 0.5))
    shown = await asyncio.to_thread(run_learnops, settings_env, "replay", "show", control.replay_id)
    assert "mean CRL" in shown.stdout.splitlines()[1], shown.stdout


async def empty_golden(doer: Doer) -> None:
    """Give the doer a golden dataset with no samples (frozen by hand, not by `freeze`)."""
    name = f"golden-{doer.name.lower()}-empty"
    await doer.db.execute(
        "INSERT INTO golden_datasets (name, version, dataset, frozen_by, manifest, "
        "manifest_hash, sample_count, tenant_id) VALUES ($1, 1, $2, 'tests', '{}', $3, 0, 'acme')",
        name,
        f"acme/{doer.name}/draft",
        "0" * 64,
    )
    golden = await store.find_golden(doer.db, name, 1)
    assert golden is not None and not golden.samples
    doer.golden = golden


async def test_a_replay_on_a_golden_dataset_no_replay_can_run_on_is_dead_lettered_with_why(
    experiments_app: LearnopsApp, db: Any
) -> None:
    """A replay run and an experiment on a golden dataset with no samples: the run is
    dead-lettered with the reason (not an internal error that counts towards halting the
    stage), the experiment fails with it."""
    doer = await make_doer(db)
    await empty_golden(doer)
    experiment = await doer.experiment(2, 1)
    app = experiments_app
    progress = Progress(app.stages["experiments"])
    async with app.agents["experiments"].test_context() as agent:
        await Feed(app, agent).event(COMMANDS, signed(rerun(doer, 2)))
        await progress.done(1, batched=False)
    letters = [d for d in sent(app, "learning.dlq") if d.doer == doer.name]
    assert [(d.error_type, d.reason) for d in letters] == [
        (
            "replay",
            f"golden dataset {doer.golden.name}@{doer.golden.version} has no samples",
        )
    ]
    await app.stages["experiments"]._begin(experiment)
    row = await store.get_experiment(db, experiment)
    assert row["status"] == "failed"
    last = (await store.experiment_history(db, experiment))[-1]
    assert last["reason"] == f"golden dataset {doer.golden.name}@1 has no samples", last["reason"]


async def test_an_experiment_whose_stored_plan_is_not_canary_settings_fails_at_deployment(
    experiments_app: LearnopsApp, db: Any
) -> None:
    """A plan stored before CreateExperiment checked it: the passing experiment fails with
    the reason, nothing is sent, and the timer's later looks are not stopped by it."""
    doer = await make_doer(db)
    experiment, candidate = await replaying_unscored(doer, control_loss=0.5)
    await db.execute(
        "UPDATE experiments SET plan = $2 WHERE experiment_id = $1",
        experiment,
        {"canary": {"alpha": 5}},
    )
    app = experiments_app
    await score(app, candidate, 0.3)
    row = await store.get_experiment(db, experiment)
    assert row["status"] == "failed"
    last = (await store.experiment_history(db, experiment))[-1]
    assert last["reason"].startswith(
        "its plan's canary settings are not valid (alpha: 5 is not below 1)"
    ), last["reason"]
    assert ours(app, COMMANDS, doer) == []
    # The timer's look goes past it: another experiment's unsent steps still go out.
    other = await make_doer(db)
    await replaying_unscored(other, control_loss=0.5)
    await app.stages["experiments"].expire_replays(after_settling())
    assert [c.status for c in ours(app, EXPERIMENTS, other)] == ["created", "replaying"]


def creation(doer: Doer, name: str, **fields: Any) -> CreateExperiment:
    """A create_experiment of the doer's v2 against its active v1, named ``{doer}-{name}``."""
    return CreateExperiment(
        doer=doer.name,
        actor="tests",
        reason=name,
        experiment_id=f"{doer.name}-{name}",
        hypothesis="v2 is no worse",
        policy_id=doer.name.lower(),
        version=2,
        **fields,
    )


async def test_an_experiment_planning_a_canary_looser_than_the_limits_is_not_created(
    experiments_app: LearnopsApp, db: Any
) -> None:
    """Its deployment command would be refused when the replay passes: dead-lettered now."""
    doer = await make_doer(db)
    create = creation(
        doer,
        "loose",
        dataset=f"{doer.golden.name}@{doer.golden.version}",
        plan={"canary": {"harm_alpha": None, "min_sample_size": 5}},
    )
    app = experiments_app
    progress = Progress(app.stages["experiments"])
    async with app.agents["experiments"].test_context() as agent:
        await Feed(app, agent).event(COMMANDS, signed(create))
        await progress.done(1, batched=False)
    letters = [d for d in sent(app, "learning.dlq") if d.doer == doer.name]
    assert [d.error_type for d in letters] == ["limits"]
    assert "harm_alpha is off (None); min_sample_size 5 is below 30" in letters[0].reason
    assert await store.get_experiment(db, create.experiment_id) is None
    assert ours(app, TASKS, doer) == []


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ((), "name the golden dataset to replay on: --dataset NAME[@VERSION], or --phase PHASE"),
        (("--dataset", "golden-nosuch"), "no golden dataset golden-nosuch"),
        (("--phase", "review"), "no golden dataset frozen from {doer}/review"),
        (("--dataset", "{golden}@9"), "no golden dataset {golden}@9; {golden}'s latest is @1"),
        (("--dataset", "{golden}x"), "did you mean '{golden}'?"),
    ],
)
async def test_experiment_create_without_a_golden_dataset_to_replay_on_sends_nothing(
    db: Any, settings_env: dict[str, str], where: tuple[str, ...], said: str
) -> None:
    """The stage would create it and fail it at once (and close the request it answers)."""
    doer = await make_doer(db)
    experiment_id = f"{doer.name}-nogolden"
    created = await asyncio.to_thread(
        run_learnops,
        settings_env,
        *("experiment", "create", "--policy", f"{doer.name.lower()}@2", "--hypothesis", "h"),
        *("--id", experiment_id, *(w.format(golden=doer.golden.name) for w in where)),
    )
    assert created.returncode == 1, created.stdout
    assert said.format(doer=doer.name, golden=doer.golden.name) in created.stderr, created.stderr
    assert "nothing sent" in created.stderr
    assert await store.get_experiment(db, experiment_id) is None


async def test_experiment_create_checks_the_canary_it_asks_for_before_sending(
    db: Any, settings_env: dict[str, str]
) -> None:
    """A margin without its mode, or a canary looser than the worker's limits, would be
    dead-lettered by the stage; the CLI says so and sends nothing."""
    doer = await make_doer(db)
    for asked, said in (
        (("superiority", "0.05"), "give it with --canary-mode non_inferiority; nothing sent"),
        (("non_inferiority", "0.9"), "non_inferiority_margin 0.9 is above 0.25"),
    ):
        experiment_id = f"{doer.name}-{asked[0]}"
        refused = await asyncio.to_thread(
            run_learnops,
            settings_env,
            *("experiment", "create", "--policy", f"{doer.name.lower()}@2", "--hypothesis", "h"),
            *("--id", experiment_id, "--dataset", doer.golden.name),
            *("--canary-mode", asked[0], "--margin", asked[1]),
        )
        assert refused.returncode == 1, refused.stdout
        assert said in refused.stderr and "nothing sent" in refused.stderr, refused.stderr
        assert await store.get_experiment(db, experiment_id) is None


async def test_experiment_create_refuses_another_doers_tasks_another_phase_and_no_candidate(
    db: Any, settings_env: dict[str, str]
) -> None:
    """A replay id names no doer: another doer's golden dataset would score nothing this
    doer does, and read that doer's results as this one's. Nor may a phase's tasks stand
    for another's, or the active policy be its own candidate (the stage's own refusal
    of the first two: the next test)."""
    doer, other = await make_doer(db), await make_doer(db)
    own = f"{doer.golden.name}@{doer.golden.version}"
    foreign = f"{other.golden.name}@{other.golden.version}"

    async def create(version: int, *where: str) -> Any:
        return await asyncio.to_thread(
            run_learnops,
            settings_env,
            *("experiment", "create", "--policy", f"{doer.name.lower()}@{version}"),
            *("--hypothesis", "h", *where),
        )

    for version, where, said in (
        (2, ("--dataset", foreign), f"{other.name}'s tasks, not {doer.name}'s"),
        (2, ("--dataset", own, "--phase", "review"), "holds draft tasks"),
        (1, ("--dataset", own), f"is {doer.name}'s active policy"),
    ):
        refused = await create(version, *where)
        assert refused.returncode == 1, refused.stdout
        assert said in refused.stderr and "nothing sent" in refused.stderr, refused.stderr
    assert other.golden.mismatch(doer.name) is not None
    assert doer.golden.mismatch(doer.name, "draft") is None


async def test_the_stage_fails_an_experiment_and_dead_letters_a_replay_on_another_doers_tasks(
    experiments_app: LearnopsApp, db: Any
) -> None:
    """The same refusal where a command comes from another client than the CLI."""
    doer, other = await make_doer(db), await make_doer(db)
    foreign = f"{other.golden.name}@{other.golden.version}"
    create = creation(doer, "foreign", dataset=foreign)
    replay = rerun(doer, 2).model_copy(update={"dataset": foreign})
    app = experiments_app
    progress = Progress(app.stages["experiments"])
    async with app.agents["experiments"].test_context() as agent:
        feed = Feed(app, agent)
        await feed.event(COMMANDS, signed(create))
        await feed.event(COMMANDS, signed(replay))
        await progress.done(2, batched=False)
    row = await store.get_experiment(db, create.experiment_id)
    assert row is not None and row["status"] == "failed"
    reason = (await store.experiment_history(db, create.experiment_id))[-1]["reason"]
    assert reason.endswith(f"{other.name}'s tasks, not {doer.name}'s"), reason
    letters = [d for d in sent(app, "learning.dlq") if d.doer == doer.name]
    assert len(letters) == 1 and letters[0].reason.endswith(f"not {doer.name}'s")
    assert ours(app, TASKS, doer) == []
