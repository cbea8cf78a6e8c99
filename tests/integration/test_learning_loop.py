"""The learning loop over a real worker, the local executor, Kafka and PostgreSQL.

Runs of a doer regress → the triggers raise one experiment request → a
"synthesizer" (this test) answers it with a signed candidate and an
experiment naming the request → the replay runs through learning.replay-tasks
and beats the control → shadow → canary → promoted by the canary stage's own
decision; the request is closed with the experiment. A worse candidate then
fails at replay against the new active policy, and the doer's skill card (in
PostgreSQL and on learning.skill-cards) lists both experiments and that policy.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from agents.topics import read_from_start
from learning.signing import SigningKey
from learnops.demo.experiments_scenario import (
    BETTER,
    CONTROL,
    SAMPLES,
    SEEDS,
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
from learnops.simulation.orchestrator import SIMULATED_TENANT, Orchestrator
from models.commands import POLICY_COMMANDS, CanarySettings, RequestExperiment
from models.events import DeadLetter, ExperimentChanged, SkillCard
from storage import experiments as experiments_store
from storage.skills import current_card
from tests.integration.kafka_io import LAG_S, eventually, publish
from tests.operators import signed
from tests.services import WorkerProcess, run_learnops

RUNS = "learning.run-completed"
QUICK = CanarySettings(min_sample_size=50, report_every=100, missing_grace_s=LAG_S)
ACTOR = "synthesizer"


def learnops_json(settings_env: dict[str, str], *args: str) -> Any:
    """Run a learnops command with --json; its parsed output."""
    done = run_learnops(settings_env, *args, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    start = min(i for i in (done.stdout.find("{"), done.stdout.find("[")) if i >= 0)
    return json.loads(done.stdout[start:])


async def requests_on_topic(
    settings: Any, doer: str, worker: WorkerProcess
) -> list[RequestExperiment]:
    """This worker's RequestExperiment events for the doer (other workers share the broker)."""
    found = []
    for record in await read_from_start(settings, "learning.commands"):
        if record.key != doer.encode():
            continue
        command = POLICY_COMMANDS.validate_json(record.value)
        if isinstance(command, RequestExperiment) and (
            command.evidence.get("raised_by") == worker.app_id
        ):
            found.append(command)
    return found


@pytest.fixture(scope="module")
async def regressed(
    worker: WorkerProcess, producer: Any, db: Any, signing_key: SigningKey, settings: Any
) -> dict[str, Any]:
    """A doer with CONTROL active whose runs regress today, and the request that raised."""
    tag = uuid.uuid4().hex[:8]
    prepared = await prepare(
        db, producer, signing_key, f"Loop{tag}", {1: CONTROL}, actor="orchestrator"
    )
    runs = regression_runs(
        prepared.name, (prepared.policy_id, 1), datetime.now(UTC), run_prefix=f"loop-{tag}"
    )
    await publish(producer, RUNS, [(r.doer.encode(), r.to_json()) for r in runs])
    request = await wait_request(db, prepared.name)
    assert request is not None, "no experiment request for the regression"
    open_rows = await db.fetch(
        "SELECT * FROM experiment_requests WHERE doer = $1 AND status = 'open'", prepared.name
    )
    events = await eventually(
        lambda: requests_on_topic(settings, prepared.name, worker), bool, timeout=30
    )
    return {"doer": prepared, "tag": tag, "request": request, "open": open_rows, "events": events}


async def test_a_regression_in_a_doers_runs_raises_one_experiment_request(
    regressed: dict[str, Any],
) -> None:
    request = regressed["request"]
    assert [(r["reason"], r["request_id"]) for r in regressed["open"]] == [
        ("crl_regression", request["request_id"])
    ]
    assert request["evidence"]["value"] > request["evidence"]["threshold"]
    (event,) = regressed["events"]
    assert event.event_id == request["request_id"]
    assert event.reason.startswith("crl_regression: regression: today's mean CRL")


@pytest.fixture(scope="module")
async def answered(
    regressed: dict[str, Any],
    worker: WorkerProcess,
    executor: WorkerProcess,
    producer: Any,
    db: Any,
    signing_key: SigningKey,
    settings: Any,
) -> dict[str, Any]:
    """The synthesizer answers the request with BETTER (v2); it runs to the canary's decision."""
    prepared: ExperimentDoer = regressed["doer"]
    (event,) = regressed["events"]  # what a synthesizer sees: the request on learning.commands
    await register(
        db, producer, signing_key, prepared.name, 2, BETTER, actor=ACTOR, reason="synthesized"
    )
    create = signed(
        create_experiment(
            prepared,
            2,
            actor=ACTOR,
            reason=f"answers {event.event_id}",
            hypothesis=event.hypothesis,
            request_id=event.event_id,
            canary=QUICK,
        )
    )
    await publish(producer, "learning.commands", [(prepared.name.encode(), create.to_json())])
    shadow = await wait_experiment(db, create.experiment_id, {"shadow", "failed", "incomplete"})
    assert shadow is not None and shadow["status"] == "shadow", shadow and dict(shadow)
    started, canary, decisions = await canary_until_decided(
        settings,
        db,
        producer,
        signing_key,
        prepared,
        2,
        QUICK,
        actor="ops",
        run_prefix=f"loop-{regressed['tag']}-canary",
    )
    assert started.applied, started.verdict
    row = await wait_experiment(db, create.experiment_id, {"promoted", "rolled_back"}, 60)
    return {
        "create": create,
        "shadow": shadow,
        "canary": canary,
        "decisions": decisions,
        "row": row,
    }


async def test_the_answer_replays_beats_the_control_and_is_promoted_by_the_canary(
    regressed: dict[str, Any], answered: dict[str, Any], db: Any, settings: Any
) -> None:
    prepared: ExperimentDoer = regressed["doer"]
    create = answered["create"]
    final = [d.action for d in answered["decisions"] if d.action != "report"]
    assert final[-1:] == ["promote"], final
    row = answered["row"]
    assert row["status"] == "promoted" and row["concluded_at"] is not None
    assert row["request_id"] == regressed["request"]["request_id"]
    assert row["deployment_id"] == answered["canary"].deployment_id
    history = await experiments_store.experiment_history(db, create.experiment_id)
    assert [h["to_status"] for h in history] == [
        "created",
        "replaying",
        "shadow",
        "canary",
        "promoted",
    ]
    asked = history[0]["evidence"]["request"]
    assert asked["request_id"] == str(regressed["request"]["request_id"])
    assert asked["reason"] == "crl_regression"
    assert asked["evidence"]["value"] == regressed["request"]["evidence"]["value"]
    # The replay went through the topics: every task of both arms came back scored.
    replay = await experiments_store.get_replay(db, row["replay_id"])
    control = await experiments_store.get_replay(db, row["control_replay_id"])
    assert replay["status"] == control["status"] == "complete"
    assert replay["verdict"]["passed"] is True
    assert replay["mean_crl"] < control["mean_crl"] and replay["stability"] >= 0.9
    assert replay["runs"] == control["runs"] == len(SAMPLES) * len(SEEDS)  # 12 × 16
    active = await db.fetchrow(
        "SELECT policy_id, version FROM policies WHERE doer = $1 AND status = 'active'",
        prepared.name,
    )
    assert (active["policy_id"], active["version"]) == (prepared.policy_id, 2)
    # Every transition is on learning.experiments, naming the request it answers. The stage
    # publishes a transition after it stores it, so the last one may still be on its way.
    statuses = {"created", "replaying", "shadow", "canary", "promoted"}

    async def published() -> list[ExperimentChanged]:
        events = [
            ExperimentChanged.from_json(r.value)
            for r in await read_from_start(settings, "learning.experiments")
            if r.key == prepared.name.encode()
        ]
        return [e for e in events if e.experiment_id == create.experiment_id]

    mine = await eventually(published, lambda got: {e.status for e in got} >= statuses)
    assert {e.status for e in mine} >= statuses
    assert {e.request_id for e in mine} == {regressed["request"]["request_id"]}


async def test_the_answered_request_is_closed_with_its_experiment(
    regressed: dict[str, Any], answered: dict[str, Any], db: Any, settings_env: dict[str, str]
) -> None:
    prepared: ExperimentDoer = regressed["doer"]
    create = answered["create"]
    request = await db.fetchrow(
        "SELECT * FROM experiment_requests WHERE request_id = $1",
        regressed["request"]["request_id"],
    )
    assert request["status"] == "closed" and request["experiment_id"] == create.experiment_id
    assert request["closed_reason"] == f"answered by experiment {create.experiment_id}"
    # Closed when the experiment was created (one transaction), before its replay began.
    history = await experiments_store.experiment_history(db, create.experiment_id)
    assert request["closed_at"] < history[1]["occurred_at"]
    shown = await asyncio.to_thread(
        learnops_json, settings_env, "experiment", "show", create.experiment_id
    )
    assert shown["request"]["request_id"] == str(request["request_id"])
    assert shown["request"]["reason"] == "crl_regression"
    assert shown["request"]["evidence"]["threshold"] == request["evidence"]["threshold"]
    assert shown["request"]["status"] == "closed"
    # The start of the id (skill cards shorten them) shows the same; a request's id is
    # said to be a request's.
    short = await asyncio.to_thread(
        learnops_json, settings_env, "experiment", "show", create.experiment_id[:10]
    )
    assert short["experiment_id"] == create.experiment_id
    asked = await asyncio.to_thread(
        run_learnops, settings_env, "experiment", "show", str(request["request_id"])[:8]
    )
    assert asked.returncode == 1 and "is an experiment request, not an experiment" in (
        asked.stderr
    ), asked.stderr
    listed = await asyncio.to_thread(
        learnops_json, settings_env, "experiment", "requests", "--doer", prepared.name, "--all"
    )
    mine = [r for r in listed if r["request_id"] == str(request["request_id"])]
    assert [(r["status"], r["experiment_id"], r["experiment_status"]) for r in mine] == [
        ("closed", create.experiment_id, "promoted")
    ]
    assert all(r["closed_at"] is not None for r in mine)
    # An open request has no closing time: null in JSON, never a table's "-".
    assert all(r["closed_at"] is None for r in listed if r["status"] == "open")
    assert all(r["closed_at"] != "-" for r in listed)
    still_open = await asyncio.to_thread(
        learnops_json, settings_env, "experiment", "requests", "--doer", prepared.name
    )
    assert str(request["request_id"]) not in {r["request_id"] for r in still_open}


@pytest.fixture(scope="module")
async def worse(
    regressed: dict[str, Any],
    answered: dict[str, Any],
    executor: WorkerProcess,
    producer: Any,
    db: Any,
    signing_key: SigningKey,
) -> Any:
    """A second, worse candidate (v3) for the same doer, against the new active policy."""
    prepared: ExperimentDoer = regressed["doer"]
    await register(db, producer, signing_key, prepared.name, 3, WORSE, actor=ACTOR)
    create = signed(
        create_experiment(
            prepared,
            3,
            actor=ACTOR,
            reason="another synthesized revision",
            hypothesis="revision 3 lowers the CRL further",
        )
    )
    await publish(producer, "learning.commands", [(prepared.name.encode(), create.to_json())])
    row = await wait_experiment(db, create.experiment_id, {"failed", "shadow", "incomplete"})
    assert row is not None
    return row


async def test_a_worse_candidate_ends_failed_at_replay_against_the_new_policy(
    regressed: dict[str, Any], worse: Any, db: Any
) -> None:
    prepared: ExperimentDoer = regressed["doer"]
    assert worse["status"] == "failed", dict(worse)
    assert (worse["control_policy_id"], worse["control_version"]) == (prepared.policy_id, 2)
    assert worse["request_id"] is None
    history = await experiments_store.experiment_history(db, worse["experiment_id"])
    assert [h["to_status"] for h in history] == ["created", "replaying", "failed"]
    numbers = worse["outcome"]["verdict"]["numbers"]
    assert numbers["candidate_mean_crl"] > numbers["control_mean_crl"] > 0
    assert numbers["improvement"] < 0
    assert "candidate mean CRL" in history[-1]["reason"]


async def test_the_skill_card_lists_both_experiments_and_the_new_active_policy(
    regressed: dict[str, Any],
    answered: dict[str, Any],
    worse: Any,
    producer: Any,
    db: Any,
    settings: Any,
) -> None:
    prepared: ExperimentDoer = regressed["doer"]
    promoted = answered["create"].experiment_id
    # The orchestrator goes on running the doer, now under v2: its card is rebuilt.
    orchestrator = Orchestrator(seed=3, run_prefix=f"loop-{regressed['tag']}-after")
    runs = [
        orchestrator.bundle(
            prepared.name,
            occurred_at=datetime.now(UTC),
            policy=(prepared.policy_id, 2),
            quality=0.95,
        )
        for _ in range(5)
    ]
    await publish(producer, RUNS, [(r.doer.encode(), r.to_json()) for r in runs])

    def complete(card: SkillCard | None) -> bool:
        if card is None:
            return False
        statuses = {e["experiment_id"]: e["status"] for e in card.experiments}
        return statuses == {promoted: "promoted", worse["experiment_id"]: "failed"} and (
            card.policy_id,
            card.policy_version,
        ) == (prepared.policy_id, 2)

    card = await eventually(
        lambda: current_card(db, prepared.name, SIMULATED_TENANT), complete, timeout=90
    )
    assert complete(card), card and card.experiments
    assert card is not None
    by_id = {e["experiment_id"]: e for e in card.experiments}
    assert by_id[promoted]["request_id"] == str(regressed["request"]["request_id"])
    assert by_id[promoted]["request_reason"] == "crl_regression"
    assert by_id[promoted]["policy_version"] == 2
    assert "request_id" not in by_id[worse["experiment_id"]]
    assert by_id[worse["experiment_id"]]["policy_version"] == 3

    async def latest_on_topic() -> SkillCard | None:
        latest = None
        for record in await read_from_start(settings, "learning.skill-cards"):
            if record.key == f"{SIMULATED_TENANT}/{prepared.name}".encode():
                latest = SkillCard.from_json(record.value)
        return latest

    published = await eventually(
        latest_on_topic, lambda c: c is not None and c.content_hash == card.content_hash
    )
    assert published is not None and complete(published)


async def test_an_experiment_naming_an_unknown_request_goes_to_the_dlq(
    regressed: dict[str, Any], worker: WorkerProcess, producer: Any, db: Any, settings: Any
) -> None:
    prepared: ExperimentDoer = regressed["doer"]
    create = signed(
        create_experiment(
            prepared,
            1,
            actor=ACTOR,
            reason="answers a request nobody raised",
            hypothesis="none",
            request_id=uuid.uuid4(),
        )
    )
    await publish(producer, "learning.commands", [(prepared.name.encode(), create.to_json())])

    async def letters() -> list[DeadLetter]:
        return [
            d
            for r in await read_from_start(settings, "learning.dlq")
            for d in [DeadLetter.from_json(r.value)]
            if d.doer == prepared.name and d.stage == "experiments" and d.consumer == worker.app_id
        ]

    found = await eventually(letters, bool, timeout=60)
    assert len(found) == 1 and f"no experiment request {create.request_id}" in found[0].reason
    assert found[0].value == create.to_json()
    assert await experiments_store.get_experiment(db, create.experiment_id) is None
