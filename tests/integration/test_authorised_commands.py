"""Commands as an attacker would send them, through a real worker and broker.

Each forged, replayed, expired, under-privileged or unapproved command must be
refused with its reason (a ``command_refused`` alert, stored by the alerts
stage), leave no audit row and leave the doer's live policy as it was.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from learning.command_signing import approve_command, sign_command
from learning.signing import SigningKey, generate_key
from models.base import Event
from models.commands import PauseDeployment, PromotePolicy, StartCanary, StartShadow
from models.ids import caused_event_id
from storage.operator_keys import add_operator_key, grant_role, revoke_operator_key
from tests.integration.kafka_io import eventually, publish
from tests.integration.test_policy_agent import (
    COMMANDS,
    applied_command,
    register,
    send,
    verdict,
)
from tests.operators import APPROVER, OWNER, signed
from tests.services import WorkerProcess

pytestmark = pytest.mark.integration


async def raw(producer: Any, *events: Event) -> None:
    """Publish commands exactly as given: no signing on the way."""
    await publish(producer, COMMANDS, [(e.doer.encode(), e.to_json()) for e in events])


async def refusal(db: Any, event: Event) -> dict[str, Any]:
    """The stored command_refused alert for a command (waits for it, fails loudly if none)."""

    async def probe() -> Any:
        return await db.fetchrow(
            "SELECT kind, severity, message, evidence FROM alerts WHERE event_id = $1",
            caused_event_id("alert", event.event_id),
        )

    row = await eventually(probe, lambda r: r is not None, timeout=60)
    assert row is not None, f"no refusal alert for {event.event_id}"
    assert row["kind"] == "command_refused"
    return dict(row)


async def live_version(db: Any, doer: str) -> int | None:
    value: int | None = await db.fetchval(
        "SELECT version FROM policies WHERE doer = $1 AND status = 'active'", doer
    )
    return value


async def audit_rows(db: Any, event: Event) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM policy_promotions WHERE event_id = $1", event.event_id
    )
    return count


async def doer_with_v1_live(producer: Any, db: Any, key: SigningKey) -> str:
    """A fresh doer with v1 active and v2 registered, by the tests' two owners."""
    doer = f"Guarded{uuid.uuid4().hex[:8]}"
    first, second = register(doer, key, 1), register(doer, key, 2)
    promote = PromotePolicy(
        doer=doer, actor="ops", reason="first", policy_id=doer.lower(), version=1, force=True
    )
    await send(producer, COMMANDS, first, second, promote)
    assert (await verdict(db, promote)).applied
    assert await live_version(db, doer) == 1
    return doer


def promote_v2(doer: str, **extra: Any) -> PromotePolicy:
    return PromotePolicy(
        doer=doer, actor="mallory", reason="take over", policy_id=doer.lower(), version=2, **extra
    )


@pytest.fixture
async def key(db: Any) -> SigningKey:
    from storage import signing_keys as keys_store

    signing_key = generate_key()
    await keys_store.add_signing_key(db, signing_key.public_key, created_by="tests")
    return signing_key


async def test_the_audit_names_the_verified_signer_not_the_declared_actor(
    worker: WorkerProcess, producer: Any, db: Any, key: SigningKey
) -> None:
    doer = await doer_with_v1_live(producer, db, key)
    canary = StartCanary(
        doer=doer, actor="mallory", reason="try v2", policy_id=doer.lower(), version=2, force=True
    )
    await send(producer, COMMANDS, canary)
    assert (await verdict(db, canary)).applied
    actors = await db.fetch(
        "SELECT DISTINCT actor FROM policy_promotions WHERE doer = $1 AND event_id IS NOT NULL",
        doer,
    )
    assert {r["actor"] for r in actors} == {"tests"}
    row = await applied_command(db, canary.event_id)
    assert (row["operator"], row["key_id"], row["action"]) == (
        "tests",
        OWNER.key_id,
        "start_canary",
    )


async def test_a_forged_command_is_refused_and_the_live_policy_stays(
    worker: WorkerProcess, producer: Any, db: Any, key: SigningKey
) -> None:
    doer = await doer_with_v1_live(producer, db, key)
    honest = sign_command(
        promote_v2(doer, force=True), OWNER, now=datetime.now(UTC), approver=APPROVER
    )
    # Signed for v2 of another doer, replanted here; and one signed by a key nobody registered.
    forged = honest.model_copy(update={"version": 1, "reason": "altered"})
    stranger = sign_command(promote_v2(doer), generate_key(), now=datetime.now(UTC))
    await raw(producer, forged, stranger)
    assert (await refusal(db, forged))["evidence"]["refusal"] == "signature"
    unknown = await refusal(db, stranger)
    assert unknown["evidence"]["refusal"] == "unknown_key"
    assert "not a registered operator key" in unknown["message"]
    assert unknown["severity"] == "critical"
    assert await audit_rows(db, forged) == await audit_rows(db, stranger) == 0
    assert await live_version(db, doer) == 1


async def test_an_unsigned_command_is_refused(
    worker: WorkerProcess, producer: Any, db: Any, key: SigningKey
) -> None:
    doer = await doer_with_v1_live(producer, db, key)
    bare = promote_v2(doer, force=True)
    await raw(producer, bare)
    assert (await refusal(db, bare))["evidence"]["refusal"] == "unsigned"
    assert await live_version(db, doer) == 1


async def test_a_replayed_command_is_refused_also_after_a_worker_restart(
    worker: WorkerProcess, producer: Any, db: Any, key: SigningKey
) -> None:
    doer = await doer_with_v1_live(producer, db, key)
    to_v2 = signed(promote_v2(doer, force=True))
    to_v3 = signed(
        PromotePolicy(
            doer=doer, actor="ops", reason="v3", policy_id=doer.lower(), version=3, force=True
        )
    )
    await raw(producer, to_v2, signed(register(doer, key, 3)), to_v3)
    assert (await verdict(db, to_v3)).applied
    assert await live_version(db, doer) == 3
    rows = await audit_rows(db, to_v2)
    # The worker restarts; the attacker sends the captured promotion to v2 again.
    await asyncio.to_thread(worker.stop)
    await asyncio.to_thread(worker.start)
    await raw(producer, to_v2)
    replayed = await refusal(db, to_v2)
    assert replayed["evidence"]["refusal"] == "replayed"
    assert "already applied" in replayed["message"]
    assert await live_version(db, doer) == 3
    assert await audit_rows(db, to_v2) == rows == 1


async def test_an_expired_command_is_refused(
    worker: WorkerProcess, producer: Any, db: Any, key: SigningKey
) -> None:
    doer = await doer_with_v1_live(producer, db, key)
    stale = sign_command(
        promote_v2(doer, force=True),
        OWNER,
        now=datetime.now(UTC) - timedelta(hours=1),
        ttl=timedelta(minutes=10),
        approver=APPROVER,
    )
    await raw(producer, stale)
    found = await refusal(db, stale)
    assert found["evidence"]["refusal"] == "expired"
    assert "expired at" in found["message"]
    assert await audit_rows(db, stale) == 0
    assert await live_version(db, doer) == 1


async def test_viewers_and_operators_lacking_the_role_are_refused(
    worker: WorkerProcess, producer: Any, db: Any, key: SigningKey
) -> None:
    doer = await doer_with_v1_live(producer, db, key)
    viewer, operator = generate_key(), generate_key()
    await add_operator_key(db, viewer.public_key, operator="vera", actor="tests")
    await grant_role(db, viewer.key_id, doer, "viewer", actor="tests")
    await add_operator_key(db, operator.public_key, operator="otto", actor="tests")
    await grant_role(db, operator.key_id, "Guarded*", "operator", actor="tests")
    canary = StartCanary(
        doer=doer, actor="vera", reason="try", policy_id=doer.lower(), version=2, force=True
    )
    by_viewer = sign_command(canary, viewer, now=datetime.now(UTC))
    by_operator = sign_command(promote_v2(doer), operator, now=datetime.now(UTC))
    await raw(producer, by_viewer, by_operator)
    seen = await refusal(db, by_viewer)
    assert seen["evidence"]["refusal"] == "role"
    assert "needs the operator role" in seen["message"]
    denied = await refusal(db, by_operator)
    assert "needs the owner role" in denied["message"]
    assert await audit_rows(db, by_viewer) == await audit_rows(db, by_operator) == 0
    assert await live_version(db, doer) == 1
    # A revoked key is refused too, even with the role.
    await revoke_operator_key(db, operator.key_id, actor="tests", note="lost laptop")
    rollback_attempt = sign_command(
        StartCanary(doer=doer, actor="otto", reason="x", policy_id=doer.lower(), version=2),
        operator,
        now=datetime.now(UTC),
    )
    await raw(producer, rollback_attempt)
    assert (await refusal(db, rollback_attempt))["evidence"]["refusal"] == "revoked_key"


async def test_only_an_operator_pauses_a_canary_and_the_audit_names_the_signer(
    worker: WorkerProcess, producer: Any, db: Any, key: SigningKey
) -> None:
    doer = await doer_with_v1_live(producer, db, key)
    start = StartCanary(
        doer=doer, actor="ops", reason="try", policy_id=doer.lower(), version=2, force=True
    )
    await send(producer, COMMANDS, start)
    assert (await verdict(db, start)).applied
    deployment = await db.fetchval(
        "SELECT deployment_id FROM shadow_deployments WHERE doer = $1 AND ended_at IS NULL", doer
    )
    viewer, operator = generate_key(), generate_key()
    await add_operator_key(db, viewer.public_key, operator="vera", actor="tests")
    await grant_role(db, viewer.key_id, doer, "viewer", actor="tests")
    await add_operator_key(db, operator.public_key, operator="otto", actor="tests")
    await grant_role(db, operator.key_id, doer, "operator", actor="tests")

    def pause(by: SigningKey) -> Event:
        asked = PauseDeployment(doer=doer, actor="mallory", reason="x", deployment_id=deployment)
        return sign_command(asked, by, now=datetime.now(UTC))

    by_viewer = pause(viewer)
    await raw(producer, by_viewer)
    seen = await refusal(db, by_viewer)
    assert seen["evidence"]["refusal"] == "role" and "needs the operator role" in seen["message"]
    by_operator = pause(operator)
    await raw(producer, by_operator)

    async def audited() -> Any:
        return await db.fetchrow(
            "SELECT action, outcome, actor FROM deployment_steps WHERE event_id = $1",
            by_operator.event_id,
        )

    row = await eventually(audited, lambda r: r is not None, timeout=60)
    assert row is not None and dict(row) == {
        "action": "pause",
        "outcome": "applied",
        "actor": "otto",  # the verified signer, not the declared "mallory"
    }
    steps = await db.fetch(
        "SELECT event_id FROM deployment_steps WHERE deployment_id = $1", deployment
    )
    assert [r["event_id"] for r in steps] == [by_operator.event_id]  # none for the viewer's
    assert (
        await db.fetchval(
            "SELECT paused_reason FROM shadow_deployments WHERE deployment_id = $1", deployment
        )
        == "paused by otto: x"
    )


async def test_a_forced_promotion_without_a_second_approver_is_refused(
    worker: WorkerProcess, producer: Any, db: Any, key: SigningKey
) -> None:
    doer = await doer_with_v1_live(producer, db, key)
    alone = sign_command(promote_v2(doer, force=True), OWNER, now=datetime.now(UTC))
    self_approved = approve_command(
        sign_command(promote_v2(doer, force=True), OWNER, now=datetime.now(UTC)), OWNER
    )
    await raw(producer, alone, self_approved)
    missing = await refusal(db, alone)
    assert missing["evidence"]["refusal"] == "second_approver"
    assert "second owner" in missing["message"]
    assert "another operator" in (await refusal(db, self_approved))["message"]
    assert await live_version(db, doer) == 1
    approved = approve_command(
        sign_command(promote_v2(doer, force=True), OWNER, now=datetime.now(UTC)), APPROVER
    )
    await raw(producer, approved)
    assert (await verdict(db, approved)).applied
    assert await live_version(db, doer) == 2


async def test_one_owner_cannot_take_a_draft_live_through_shadow_and_canary_alone(
    worker: WorkerProcess, producer: Any, db: Any, key: SigningKey
) -> None:
    """Each single step is allowed, so unforced the promote would have put v2 live with no
    run counted and no second owner: the skip a forced promotion guards, in three commands."""
    doer = await doer_with_v1_live(producer, db, key)
    shadow = StartShadow(doer=doer, actor="mallory", reason="a", policy_id=doer.lower(), version=2)
    canary = StartCanary(doer=doer, actor="mallory", reason="b", policy_id=doer.lower(), version=2)
    await send(producer, COMMANDS, shadow, canary)
    assert (await verdict(db, canary)).applied
    early = promote_v2(doer)
    await send(producer, COMMANDS, early)
    refused = await verdict(db, early)
    assert not refused.applied and refused.refusal == "lifecycle", refused
    assert "overrides the canary and needs force, a reason and a second owner" in refused.verdict
    alone = sign_command(promote_v2(doer, force=True), OWNER, now=datetime.now(UTC))
    await raw(producer, alone)
    assert (await refusal(db, alone))["evidence"]["refusal"] == "second_approver"
    assert await live_version(db, doer) == 1
    approved = promote_v2(doer, force=True)
    await send(producer, COMMANDS, approved)  # signed by both owners
    outcome = await verdict(db, approved)
    assert outcome.applied, outcome
    assert await live_version(db, doer) == 2
    forced = await db.fetchval(
        "SELECT forced FROM policy_promotions WHERE event_id = $1", approved.event_id
    )
    assert forced is True


async def test_operator_key_history_is_append_only(db: Any) -> None:
    import asyncpg

    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
        await db.execute("UPDATE operator_key_events SET actor = 'nobody'")
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
        await db.execute("DELETE FROM operator_key_events")
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="not registered"):
        await grant_role(db, "0123456789abcdef", "*", "owner", actor="mallory")


def operator_cli(env: dict[str, str], *args: str) -> Any:
    from tests.services import run_learnops

    return run_learnops(env, "operator", "keys", *args)


async def test_operator_keys_cli_adds_grants_lists_and_revokes_with_an_audited_history(
    settings_env: dict[str, str], db: Any, tmp_path: Any
) -> None:
    env = {**settings_env, "LEARNOPS_WEB_ENABLED": "false"}
    name = f"carol{uuid.uuid4().hex[:6]}"
    key_file = tmp_path / "carol.pem"
    added = operator_cli(
        env, "add", "--operator", name, "--generate", "--out", str(key_file),
        "--doer", "PRD*", "--role", "owner", "--actor", "admin", "--json",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    key_id = json.loads(added.stdout)["key_id"]
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = operator_cli(env, "add", "--operator", name, "--generate", "--out", str(key_file))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    # Carol's public key added again under another name: it would grant carol's key.
    public = tmp_path / "carol.pub.pem"
    public.write_bytes(SigningKey.from_pem(key_file.read_bytes()).public_key.to_pem())
    stolen = operator_cli(
        env,
        "add",
        "--operator",
        "mallory",
        "--public",
        str(public),
        "--doer",
        "*",
        "--role",
        "owner",
    )
    assert stolen.returncode == 1, stolen.stdout
    assert f"registered to operator {name!r}, not 'mallory'; nothing granted" in stolen.stderr
    granted = operator_cli(env, "grant", key_id, "Coder", "operator", "--actor", "admin", "--json")
    assert granted.returncode == 0, granted.stderr
    assert json.loads(granted.stdout) == {
        "key_id": key_id,
        "doer_pattern": "Coder",
        "role": "operator",
    }
    unknown = operator_cli(env, "grant", "0123456789abcdef", "*", "owner")
    assert unknown.returncode == 1 and "no operator key" in unknown.stderr
    listed = json.loads(operator_cli(env, "list", "--json").stdout)
    mine = next(k for k in listed if k["key_id"] == key_id)
    assert mine["operator"] == name and mine["status"] == "active"
    assert {(g["doer_pattern"], g["role"]) for g in mine["grants"]} == {
        ("PRD*", "owner"),
        ("Coder", "operator"),
    }
    text = operator_cli(env, "list").stdout
    header = text.splitlines()[0].split()
    assert header[:4] == ["key", "operator", "status", "roles"], text
    assert next(line for line in text.splitlines() if key_id in line).split()[1:3] == [
        name,
        "active",
    ]
    revoked = operator_cli(env, "revoke", key_id, "--note", "left", "--actor", "admin", "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout) == {"key_id": key_id, "revoked": True}
    listed = json.loads(operator_cli(env, "list", "--json").stdout)
    assert next(k for k in listed if k["key_id"] == key_id)["status"] == "revoked"
    history = await db.fetch(
        "SELECT kind, actor FROM operator_key_events WHERE key_id = $1 ORDER BY id", key_id
    )
    assert [(r["kind"], r["actor"]) for r in history] == [
        ("add", "admin"),
        ("grant", "admin"),
        ("grant", "admin"),
        ("revoke", "admin"),
    ]


async def test_the_cli_refuses_to_send_a_command_without_an_operator_key(
    settings_env: dict[str, str], db: Any, tmp_path: Any
) -> None:
    from tests.services import run_learnops

    env = {k: v for k, v in settings_env.items() if k != "LEARNOPS_OPERATOR_KEY"}
    env["LEARNOPS_WEB_ENABLED"] = "false"
    signer = tmp_path / "signer.pem"
    made = run_learnops(env, "policy", "keys", "generate", "--out", str(signer))
    assert made.returncode == 0, made.stderr
    body = tmp_path / "v1.json"
    body.write_text(json.dumps({"prompts": {"system": "You write PRDs."}}))
    doer = f"Keyless{uuid.uuid4().hex[:8]}"
    result = run_learnops(
        env, "policy", "register", str(body), "--doer", doer, "--key", str(signer), "--no-wait"
    )
    assert result.returncode == 1
    assert "set LEARNOPS_OPERATOR_KEY" in result.stderr
    assert "signed by key" not in result.stdout  # said before the refusal, as if done
    # The policy signing key given as the operator's: said so, not only "not registered".
    mixed = run_learnops(
        {**env, "LEARNOPS_OPERATOR_KEY": str(signer)},
        *("policy", "register", str(body), "--doer", doer, "--key", str(signer), "--no-wait"),
    )
    assert mixed.returncode == 1
    assert "LEARNOPS_OPERATOR_KEY is a policy signing key" in mixed.stderr, mixed.stderr
    assert "nothing sent" in mixed.stderr and "signed by key" not in mixed.stdout
    assert await db.fetchval("SELECT count(*) FROM policies WHERE doer = $1", doer) == 0
