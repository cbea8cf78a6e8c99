"""Policy commands and decisions through a real worker: PostgreSQL rows, policy changes, alerts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agents.canary import signed_decision
from agents.topics import read_from_start
from learning.signing import (
    POLICY_CHANGE_KIND,
    SigningKey,
    generate_key,
    sign_event,
    signed_artifact,
)
from learnops.client.router import Router
from models import ids
from models.base import Event
from models.commands import PromotePolicy, RegisterPolicy, RollbackPolicy, StartCanary
from models.events import Alert, DeadLetter, DecisionMade, DecisionReport, PolicyChange
from storage import audit as audit_store
from storage import deployments as deployments_store
from storage import signing_keys as keys_store
from tests.integration.kafka_io import eventually, publish, unsigned
from tests.operators import signed
from tests.services import WorkerProcess, run_learnops

COMMANDS = "learning.commands"
DECISIONS = "learning.decisions"
CHANGES = "learning.policy-changes"


def artifact(n: int) -> dict[str, Any]:
    return {
        "prompts": {"system": f"You write PRDs, revision {n}. Keep them short; cite sources."},
        "hyper": {"temperature": round(0.1 * n, 2), "max_tokens": 2048},
        "tools": ["search", "repo_read"][: 1 + n % 2],
    }


def register(doer: str, key: SigningKey, n: int, body: dict[str, Any] | None = None) -> Any:
    body = body if body is not None else artifact(n)
    return RegisterPolicy(
        doer=doer,
        actor="pipeline",
        reason=f"trained revision {n}",
        policy_id=doer.lower(),
        version=n,
        **signed_artifact(body, key, doer=doer, policy_id=doer.lower(), version=n),
    )


async def send(producer: Any, topic: str, *events: Event) -> None:
    """Publish events; commands signed as an owner would (tests.operators)."""
    if topic == COMMANDS:
        events = tuple(signed(e) for e in events)
    await publish(producer, topic, [(e.doer.encode(), e.to_json()) for e in events])


async def verdict(db: Any, event: Event, timeout: float = 60.0) -> audit_store.Outcome:
    async def probe() -> audit_store.Outcome | None:
        return await audit_store.outcome_of(db, event.event_id)

    outcome = await eventually(probe, lambda o: o is not None, timeout=timeout)
    assert outcome is not None, f"the worker never recorded {type(event).__name__}"
    return outcome


async def applied_command(db: Any, event_id: Any, timeout: float = 60.0) -> Any:
    """The command's applied_commands row, waited for.

    A stage records a command as applied after its effects (agents/command_auth.py),
    so the row can follow the audit row or the published state by a moment.
    """

    async def probe() -> Any:
        return await db.fetchrow("SELECT * FROM applied_commands WHERE event_id = $1", event_id)

    row = await eventually(probe, lambda found: found is not None, timeout=timeout)
    assert row is not None, f"no applied_commands row for {event_id} after {timeout} s"
    return row


async def latest_changes(settings: Any) -> dict[str, PolicyChange]:
    """learning.policy-changes read from the beginning, folded by key: the last record wins.

    Only records keyed by their own doer count: the Router test plants one under
    another key, as a forger would, and the Router refuses it too.
    """
    latest: dict[str, PolicyChange] = {}
    for record in await read_from_start(settings, CHANGES):
        change = PolicyChange.from_json(record.value)
        if record.key == change.doer.encode():
            latest[record.key.decode()] = change
    return latest


def promote_decision(doer: str, deployment_id: str, **update: Any) -> DecisionMade:
    """An unsigned canary decision to promote version 2 of the doer's policy."""
    return DecisionMade(
        doer=doer,
        deployment_id=deployment_id,
        candidate_policy_id=doer.lower(),
        candidate_version=2,
        action="promote",
        reason="candidate better, p=0.002",
        step=1,
        report=DecisionReport(
            control_mean=0.4,
            candidate_mean=0.3,
            control_count=500,
            candidate_count=480,
            delta=-0.1,
            p_value=0.002,
        ),
    ).model_copy(update=update)


async def alerts_caused_by(settings: Any, doer: str, event: Event) -> list[Alert]:
    """The alerts on learning.alerts (key ``doer``) that ``event`` caused."""
    records = await read_from_start(settings, "learning.alerts")
    found = [Alert.from_json(r.value) for r in records if r.key == doer.encode()]
    return [a for a in found if a.evidence.get("event_id") == str(event.event_id)]


@pytest.fixture
async def key(db: Any) -> SigningKey:
    signing_key = generate_key()
    await keys_store.add_signing_key(db, signing_key.public_key, created_by="tests")
    return signing_key


async def test_commands_through_the_worker_are_stored_and_publish_the_live_policy(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, key: SigningKey
) -> None:
    doer = f"AgentDoer{uuid.uuid4().hex[:8]}"
    pid = doer.lower()
    first = [register(doer, key, 1), register(doer, key, 2)]
    await send(producer, COMMANDS, *first)
    for event in first:
        assert (await verdict(db, event)).applied
    promote = PromotePolicy(
        doer=doer, actor="ops", reason="first policy", policy_id=pid, version=1, force=True
    )
    canary = StartCanary(
        doer=doer,
        actor="ops",
        reason="try v2",
        policy_id=pid,
        version=2,
        force=True,
        steps=[0.05, 0.5],
    )
    await send(producer, COMMANDS, promote, canary)
    assert (await verdict(db, promote)).applied
    started = await verdict(db, canary)
    assert started.applied and started.deployment_id

    async def live() -> PolicyChange | None:
        return (await latest_changes(settings)).get(doer)

    change = await eventually(live, lambda c: c is not None and c.status == "canary")
    assert change is not None and change.change == "canary_started"
    # The verified signer (tests.operators' owner), not the declared "ops".
    assert (change.policy_id, change.version, change.actor) == (pid, 1, "tests")
    assert change.deployment is not None
    assert change.deployment.deployment_id == started.deployment_id
    assert (change.deployment.candidate_version, change.deployment.allocation) == (2, 0.05)
    assert unsigned(change) == await deployments_store.current_change(db, doer)

    rollback = RollbackPolicy(doer=doer, actor="ops", reason="latency up")
    await send(producer, COMMANDS, rollback)
    assert (await verdict(db, rollback)).applied
    change = await eventually(live, lambda c: c is not None and c.change == "rolled_back")
    assert change is not None and change.status == "active" and change.deployment is None
    assert worker.process is not None and worker.process.poll() is None


async def start_canary(producer: Any, db: Any, doer: str, key: SigningKey) -> str:
    """Versions 1 and 2 of the doer registered, 1 active, 2 in a canary; the deployment's id."""
    pid = doer.lower()
    setup: list[Event] = [
        register(doer, key, 1),
        register(doer, key, 2),
        PromotePolicy(doer=doer, actor="ops", reason="first", policy_id=pid, version=1, force=True),
        StartCanary(doer=doer, actor="ops", reason="go", policy_id=pid, version=2, force=True),
    ]
    await send(producer, COMMANDS, *setup)
    started = await verdict(db, setup[-1])
    assert started.applied and started.deployment_id
    return started.deployment_id


async def test_a_replayed_decision_through_the_worker_leaves_one_audit_row(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, key: SigningKey
) -> None:
    doer = f"Decided{uuid.uuid4().hex[:8]}"
    deployment_id = await start_canary(producer, db, doer, key)
    made = signed_decision(promote_decision(doer, deployment_id), settings.worker_key())
    # The same bytes three times, as a redelivery would bring them.
    await send(producer, DECISIONS, made, made, made)
    outcome = await verdict(db, made)
    assert outcome.applied and outcome.to_status == "active"

    async def changes() -> PolicyChange | None:
        return (await latest_changes(settings)).get(doer)

    change = await eventually(changes, lambda c: c is not None and c.change == "promoted")
    assert change is not None and (change.version, change.previous_version) == (2, 1)
    # Let the two copies be handled, then count.
    marker = register(doer, key, 3)
    await send(producer, COMMANDS, marker)
    await verdict(db, marker)
    rows = await db.fetchval(
        "SELECT count(*) FROM policy_promotions WHERE event_id = $1", made.event_id
    )
    assert rows == 1
    report = await db.fetchval(
        "SELECT decision_report FROM policy_promotions WHERE event_id = $1", made.event_id
    )
    assert report["p_value"] == 0.002


async def test_a_tampered_registration_is_refused_recorded_and_alerted(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, key: SigningKey
) -> None:
    doer = f"Tampered{uuid.uuid4().hex[:8]}"
    honest = register(doer, key, 1)
    tampered = honest.model_copy(update={"artifact": {**honest.artifact, "tools": ["shell"]}})
    await send(producer, COMMANDS, tampered)
    outcome = await verdict(db, tampered)
    assert not outcome.applied and outcome.refusal == "signature"
    assert await db.fetchval("SELECT count(*) FROM policies WHERE doer = $1", doer) == 0

    async def alerts() -> list[Alert]:
        records = await read_from_start(settings, "learning.alerts")
        found = [Alert.from_json(r.value) for r in records if r.key == doer.encode()]
        return [a for a in found if a.evidence.get("event_id") == str(tampered.event_id)]

    # Workers of other test sessions on the same topics may alert on the same command
    # (against their own databases); every copy carries the same derived event id.
    found = await eventually(alerts, lambda got: any("content hash" in a.message for a in got))
    assert {a.event_id for a in found} == {ids.caused_event_id("alert", tampered.event_id)}
    assert {(a.kind, a.severity) for a in found} == {("signature_refused", "critical")}
    assert any("content hash" in a.message for a in found)


async def test_an_undecodable_command_goes_to_the_dlq_and_the_agent_goes_on(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, key: SigningKey
) -> None:
    doer = f"Garbled{uuid.uuid4().hex[:8]}"
    bad = [
        (doer.encode(), b'{"command": "promote", "doer": '),
        (doer.encode(), json.dumps({"command": "explode", "doer": doer}).encode()),
    ]
    metadata = await publish(producer, COMMANDS, bad)
    positions = {(m.topic, m.partition, m.offset) for m in metadata}

    async def letters() -> dict[tuple[str, int, int], set[tuple[str, str]]]:
        # By source position: other sessions' workers may dead-letter the same bytes.
        by_position: dict[tuple[str, int, int], set[tuple[str, str]]] = {}
        for record in await read_from_start(settings, "learning.dlq"):
            if record.key != doer.encode():
                continue
            letter = DeadLetter.from_json(record.value)
            position = (letter.topic, letter.partition, letter.offset)
            if position in positions:
                by_position.setdefault(position, set()).add((letter.stage, letter.error_type))
        return by_position

    found = await eventually(letters, lambda got: len(got) == len(positions))
    assert [found[p] for p in sorted(positions)] == [{("policy", "json")}, {("policy", "schema")}]
    after = register(doer, key, 1)
    await send(producer, COMMANDS, after)
    assert (await verdict(db, after)).applied


async def test_the_compacted_topic_read_from_the_beginning_gives_each_doers_latest_policy(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, key: SigningKey
) -> None:
    tag = uuid.uuid4().hex[:6]
    doers = [f"Fleet{tag}{i}" for i in range(4)]
    last: list[Event] = []
    for i, doer in enumerate(doers):
        pid = doer.lower()
        events: list[Event] = [register(doer, key, n) for n in (1, 2, 3)]
        # Each doer ends in a different state: v1, v2 or v3 active, or v2 with a v3 canary.
        for n in range(1, [2, 3, 4, 3][i]):
            events.append(
                PromotePolicy(
                    doer=doer, actor="ops", reason=f"v{n}", policy_id=pid, version=n, force=True
                )
            )
        if i == 3:
            events.append(
                StartCanary(
                    doer=doer, actor="ops", reason="try v3", policy_id=pid, version=3, force=True
                )
            )
        await send(producer, COMMANDS, *events)
        last.append(events[-1])
    for event in last:
        outcome = await verdict(db, event)
        assert outcome.applied, outcome

    expected = {doer: await deployments_store.current_change(db, doer) for doer in doers}
    assert [expected[d].version for d in doers] == [1, 2, 3, 2]  # type: ignore[union-attr]
    assert expected[doers[3]].status == "canary"  # type: ignore[union-attr]

    async def folded() -> dict[str, PolicyChange]:
        latest = (await latest_changes(settings)).items()
        return {d: unsigned(c) for d, c in latest if d in doers}

    latest = await eventually(folded, lambda got: got == expected)
    assert latest == expected


def run_cli(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = run_learnops(env, "policy", *args)
    if ok:
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


async def test_the_cli_round_trip_register_promote_inspect(
    worker: WorkerProcess, settings_env: dict[str, str], tmp_path: Path, db: Any
) -> None:
    env = {**settings_env, "LEARNOPS_WEB_ENABLED": "false"}
    doer = f"Cli{uuid.uuid4().hex[:8]}"
    pid = doer  # the CLI's default policy id is the doer
    key_file = tmp_path / "signer.pem"
    generated = run_cli(env, "keys", "generate", "--out", str(key_file), "--note", "cli test")
    assert "trusted" in generated.stdout
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = run_cli(env, "keys", "generate", "--out", str(key_file), ok=False)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr

    v1 = tmp_path / "v1.yaml"
    v1.write_text("prompts:\n  system: You write PRDs.\nhyper:\n  temperature: 0.2\n")
    v2 = tmp_path / "v2.json"
    v2.write_text(
        json.dumps(
            {
                "prompts": {"system": "You write PRDs."},
                "hyper": {"temperature": 0.4},
                "tools": ["search"],
            }
        )
    )
    out = run_cli(
        env,
        "register",
        str(v1),
        "--doer",
        doer,
        "--key",
        str(key_file),
        "--dataset",
        "golden-1",
        "--actor",
        "carol",
    )
    assert f"{pid}@1" in out.stdout and "applied" in out.stdout
    assert f"note: {doer!r} has no policy and no runs yet: this registers the first policy" in (
        out.stderr
    )
    # An operator key where a policy signing key belongs: said so, not "unknown key id".
    operator_key = env["LEARNOPS_OPERATOR_KEY"]
    wrong = run_cli(env, "register", str(v2), "--doer", doer, "--key", operator_key, ok=False)
    assert wrong.returncode == 1 and "operator key (it signs commands" in wrong.stderr, wrong.stderr
    # A file that is not there is named as a file, not looked up as a policy.
    nofile = run_cli(env, "diff", f"{pid}@1", str(tmp_path / "v9.yaml"), ok=False)
    assert nofile.returncode == 1 and "no such file" in nofile.stderr, nofile.stderr
    # A malformed declaration of options is refused before anything is signed: once
    # registered, every run of the version would be dead-lettered by the bandit stage.
    bad = tmp_path / "bad-tunables.json"
    bad.write_text(json.dumps({"prompt": "x", "tunables": {"draft": ["model-a"]}}))
    malformed = run_cli(env, "register", str(bad), "--doer", doer, "--key", str(key_file), ok=False)
    assert malformed.returncode == 1, malformed.stdout
    assert "policy tunables.draft: Input should be a valid dictionary" in malformed.stderr
    assert "nothing signed or sent" in malformed.stderr
    # The doer's name in another case is a typo far more often than a new doer: refused.
    twin = run_cli(
        env, "register", str(v2), "--doer", doer.lower(), "--key", str(key_file), ok=False
    )
    assert twin.returncode == 1, twin.stdout
    assert f"doer {doer.lower()!r} is not known, but {doer!r} is" in twin.stderr, twin.stderr
    out = run_cli(
        env,
        "register",
        str(v2),
        "--doer",
        doer,
        "--key",
        str(key_file),
        "--parent",
        f"{pid}@1",
        "--experiment",
        "exp-9",
        "--actor",
        "carol",
    )
    assert f"{pid}@2" in out.stdout and "applied" in out.stdout

    refused = run_cli(env, "promote", f"{pid}@1", ok=False)
    assert refused.returncode == 1 and "refused (lifecycle)" in refused.stderr
    # Under --json a refusal is one error object on stderr, and stdout stays empty.
    refused = run_cli(env, "promote", f"{pid}@1", "--json", ok=False)
    assert refused.returncode == 1 and refused.stdout == "", refused.stdout
    error = json.loads(refused.stderr)
    assert error["exit_code"] == 1 and error["error"].startswith("refused (lifecycle)"), error
    alone = run_cli(env, "promote", f"{pid}@1", "--force", "--reason", "first", ok=False)
    # Refused before anything is sent (the agent's own refusal: test_authorised_commands).
    assert alone.returncode == 2 and "--approver-key" in alone.stderr, alone.stderr
    assert "second owner" in alone.stderr
    # A forced promotion carries a second owner's approval.
    approver = ("--approver-key", env["LEARNOPS_TEST_APPROVER_KEY"])
    run_cli(env, "promote", f"{pid}@1", "--force", "--reason", "first policy", *approver)
    run_cli(env, "promote", f"{pid}@2", "--force", "--reason", "hotfix", *approver)

    listing = run_cli(env, "list", "--doer", doer).stdout
    assert f"{pid}@2" in listing and "active" in listing and "archived" in listing
    # Each forced promotion names its verified second owner beside the first.
    trail = json.loads(run_cli(env, "history", doer, "--json").stdout)["promotions"]
    forced = [
        (p["version"], p["actor"], p["approver"])
        for p in trail
        if p["action"] == "promote" and p["outcome"] == "applied"
    ]
    approver_name = await db.fetchval(
        "SELECT approver FROM applied_commands WHERE doer = $1 AND approver IS NOT NULL LIMIT 1",
        doer,
    )
    assert approver_name and [(v, a) for v, _, a in forced] == [
        (1, approver_name),
        (2, approver_name),
    ], forced
    assert all(actor != approver_name for _, actor, _ in forced)
    assert f"+ {approver_name}" in run_cli(env, "history", doer).stdout

    # A canary judged by the operator's settings (repeatable --setting KEY=VALUE).
    run_cli(env, "register", str(v2), "--doer", doer, "--key", str(key_file))
    started = run_cli(
        env,
        *("canary", f"{pid}@3", "--force", "--reason", "try", "--steps", "0.1,0.5"),
        *("--setting", "min_sample_size=50", "--setting", "mode=non_inferiority", "--json"),
    )
    assert json.loads(started.stdout)["command"] == "start_canary"
    deployment_id, judged, fields = await db.fetchrow(
        "SELECT deployment_id, canary, canary->>'min_sample_size' FROM shadow_deployments"
        " WHERE doer = $1 AND version = 3",
        doer,
    )
    assert fields == "50", fields  # an object SQL can read, not a JSON string
    assert (judged["min_sample_size"], judged["mode"]) == (50, "non_inferiority"), judged
    run_cli(env, "rollback", "--deployment", deployment_id, "--reason", "done")
    shown = run_cli(env, "show", f"{pid}@2", "--json").stdout
    document = json.loads(shown)
    assert document["policy"]["parent_policy_id"] == pid
    assert [p["action"] for p in document["promotions"]] == ["register", "promote"]

    diff = run_cli(env, "diff", f"{pid}@1", f"{pid}@2").stdout
    assert "~ hyper.temperature: 0.2 → 0.4" in diff and '+ tools = ["search"]' in diff

    now = datetime.now(UTC).isoformat()
    history = run_cli(env, "history", doer, "--at", now).stdout
    assert f"{pid}@2 was live" in history
    naive = run_cli(env, "history", doer, "--at", "2026-01-01T00:00:00", ok=False)
    assert "has no timezone" in naive.stderr

    lineage = json.loads(run_cli(env, "lineage", f"{pid}@2", "--json").stdout)
    assert [(e["version"], e["experiment_id"]) for e in lineage] == [(2, "exp-9"), (1, None)]
    assert lineage[1]["dataset_ids"] == ["golden-1"]

    keys = run_cli(env, "keys", "list").stdout
    key_id = SigningKey.from_pem(key_file.read_bytes()).key_id
    assert key_id in keys and "active" in keys

    # A doer whose policy line has another id (lower-cased, as the demo's are): a new
    # version without --policy-id joins that line instead of starting a second one.
    other = f"Low{uuid.uuid4().hex[:8]}"
    run_cli(
        env,
        "register",
        str(v1),
        "--doer",
        other,
        "--key",
        str(key_file),
        "--policy-id",
        other.lower(),
    )
    joined = run_cli(env, "register", str(v2), "--doer", other, "--key", str(key_file))
    assert f"{other.lower()}@2" in joined.stdout, joined.stdout
    run_cli(
        env,
        "register",
        str(v2),
        "--doer",
        other,
        "--key",
        str(key_file),
        "--policy-id",
        "second-line",
    )
    several = run_cli(env, "register", str(v2), "--doer", other, "--key", str(key_file), ok=False)
    assert several.returncode == 2 and "name one with --policy-id" in several.stderr, several


# ------------------------------------------------------------- decisions, as an attacker would try


async def test_forged_unsigned_revoked_and_misaddressed_decisions_are_refused_and_alerted(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, key: SigningKey
) -> None:
    doer = f"Forged{uuid.uuid4().hex[:8]}"
    deployment_id = await start_canary(producer, db, doer, key)
    other = f"Other{uuid.uuid4().hex[:8]}"
    other_deployment = await start_canary(producer, db, other, key)
    revoked = generate_key()
    await keys_store.add_signing_key(db, revoked.public_key, created_by="tests")
    await keys_store.revoke_signing_key(db, revoked.key_id, actor="tests", note="worker host lost")
    retired = generate_key()  # a worker key rotated out: it may sign nothing new
    await keys_store.add_signing_key(db, retired.public_key, created_by="tests")
    await keys_store.retire_signing_key(db, retired.key_id, actor="tests", note="rotated")
    worker_key = settings.worker_key()
    honest = promote_decision(doer, deployment_id)
    attempts = {
        "forged": signed_decision(honest, generate_key()),  # a key nobody trusts
        "unsigned": promote_decision(doer, deployment_id),
        "revoked": signed_decision(promote_decision(doer, deployment_id), revoked),
        "retired": signed_decision(promote_decision(doer, deployment_id), retired),
        # Signed by the worker's key, then changed: the signature gives it away.
        "tampered": signed_decision(promote_decision(doer, deployment_id), worker_key).model_copy(
            update={"candidate_version": 1}
        ),
        # A decision of doer A naming doer B's deployment.
        "misaddressed": signed_decision(promote_decision(doer, other_deployment), worker_key),
    }
    await send(producer, DECISIONS, *attempts.values())
    expected = {
        "forged": ("signature_refused", "unknown key id"),
        "unsigned": ("signature_refused", "the decision event is not signed"),
        "revoked": ("signature_refused", f"key {revoked.key_id} revoked"),
        "retired": ("signature_refused", f"key {retired.key_id} was retired at"),
        "tampered": ("signature_refused", "signature does not match"),
        "misaddressed": (
            "decision_refused",
            f"{other_deployment} belongs to doer {other!r}, not {doer!r}",
        ),
    }
    for name, decision in attempts.items():
        kind, reason = expected[name]
        # Workers of other test sessions on the same broker refuse it too, against their
        # own keyrings and databases, with their own reasons: ours is among them.
        found = await eventually(
            partial(alerts_caused_by, settings, doer, decision),
            lambda got, kind=kind, reason=reason: any(
                a.kind == kind and reason in a.message for a in got
            ),
        )
        assert found, name
        # Not the id of the canary's own alert about the decision (a pause's, a
        # rollback's): alerts are stored once per id, and neither may drop the other.
        assert {a.event_id for a in found} == {
            ids.caused_event_id("decision-refusal", decision.event_id)
        }, name
        assert await audit_store.outcome_of(db, decision.event_id) is None, name
    statuses = {
        (r["doer"], r["version"]): r["status"]
        for r in await db.fetch(
            "SELECT doer, version, status FROM policies WHERE doer = ANY($1::text[])",
            [doer, other],
        )
    }
    assert statuses == {
        (doer, 1): "active",
        (doer, 2): "canary",
        (other, 1): "active",
        (other, 2): "canary",
    }
    # The worker's own signature is accepted: the same decision, signed, promotes.
    signed = signed_decision(promote_decision(doer, deployment_id), worker_key)
    await send(producer, DECISIONS, signed)
    assert (await verdict(db, signed)).to_status == "active"


# --------------------------------------------------------- the Router, as an attacker would try


async def test_the_router_serves_signed_changes_and_keeps_the_last_good_one_against_forgeries(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any, key: SigningKey
) -> None:
    doer = f"Routed{uuid.uuid4().hex[:8]}"
    pid = doer.lower()
    worker_key = settings.worker_key()
    pinned = [worker_key.public_key, key.public_key]
    async with Router(
        **settings.kafka_connection(), trusted_keys=pinned, worker_keys=[worker_key.public_key]
    ) as router:
        setup: list[Event] = [
            register(doer, key, 1),
            register(doer, key, 2),
            PromotePolicy(
                doer=doer, actor="ops", reason="1st", policy_id=pid, version=1, force=True
            ),
        ]
        await send(producer, COMMANDS, *setup)
        live = await router.wait_for(doer, lambda c: c.version == 1)
        assert live.sequence is not None and live.signature is not None
        assert live.policy_signature is not None
        assert router.route(doer, "task-1").version == 1

        # A forger who can write the topic: version 2, its own key, a replay of an older
        # record under a higher-looking key, a record under another doer's key.
        forged = live.model_copy(update={"version": 2, "sequence": live.sequence + 1})
        forged = forged.model_copy(
            update={
                "signature": sign_event(
                    POLICY_CHANGE_KIND, forged.model_dump(mode="json"), generate_key()
                )
            }
        )
        # Signed by the policy signer's key, numbered far ahead: a signer signs versions,
        # not changes, when the Router pins the workers' keys apart.
        by_signer = live.model_copy(update={"version": 2, "sequence": 2**31 - 1})
        by_signer = by_signer.model_copy(
            update={
                "signature": sign_event(POLICY_CHANGE_KIND, by_signer.model_dump(mode="json"), key)
            }
        )
        elsewhere = live.model_copy(update={"event_id": uuid.uuid4()})
        await publish(
            producer,
            CHANGES,
            [
                (doer.encode(), forged.to_json()),
                (doer.encode(), by_signer.to_json()),
                (b"SomeoneElse", elsewhere.to_json()),
            ],
        )
        # The worker's own next change (a promotion of version 2) still gets through.
        promote = PromotePolicy(
            doer=doer, actor="ops", reason="2nd", policy_id=pid, version=2, force=True
        )
        await send(producer, COMMANDS, promote)
        await verdict(db, promote)
        await router.wait_for(doer, lambda c: c.version == 2)
        await eventually(
            lambda: asyncio.sleep(0.2, dict(router.refused)),
            lambda got: got.get("signature", 0) >= 2 and got.get("key", 0) >= 1,
        )
        stale = live  # version 1's record again, signed, with its old sequence number
        await publish(producer, CHANGES, [(doer.encode(), stale.to_json())])
        await eventually(lambda: asyncio.sleep(0.2, router.refused["sequence"]), lambda n: n >= 1)
        served = router.live(doer)
        assert served is not None and served.sequence is not None
        assert served.sequence > live.sequence
        assert router.route(doer, "task-1").version == served.version
