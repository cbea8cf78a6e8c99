"""The policy store on real PostgreSQL: signatures, lifecycle, idempotence, concurrency, history."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from agents.canary import _decision as decision_of
from learning.deployments import DeploymentState
from learning.promotion import IDENTITY_RULE
from learning.signing import SigningKey, content_digest, generate_key, signed_artifact
from models.commands import (
    ArchivePolicy,
    PromotePolicy,
    RegisterPolicy,
    RollbackPolicy,
    StartCanary,
    StartShadow,
)
from models.events import DecisionMade, DecisionReport
from storage import audit as audit_store
from storage import canary as canary_store
from storage import deployments as deployments_store
from storage import policies as store
from storage import policy_commands as commands_store
from storage import signing_keys as keys_store
from storage import verification
from tests.integration.kafka_io import eventually
from tests.unit.test_deployments import feed as feed_canary
from tests.unit.test_deployments import routing as deployment_routing

ARTIFACT = {
    "prompts": {"system": "You write product requirement documents. Be precise. ✍️"},
    "hyper": {"temperature": 0.2, "top_p": 0.95, "max_tokens": 4096},
    "router": [{"if": "phase == 'draft'", "model": "small"}],
    "tools": ["search", "repo_read"],
}


def unique_doer(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def trusted_key(db: Any) -> SigningKey:
    key = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="tests", note="store tests")
    return key


def register(
    doer: str,
    key: SigningKey,
    version: int,
    artifact: dict[str, Any] | None = None,
    *,
    policy_id: str | None = None,
    **extra: Any,
) -> RegisterPolicy:
    artifact = artifact if artifact is not None else {**ARTIFACT, "revision": version}
    policy_id = policy_id or doer.lower()
    return RegisterPolicy(
        doer=doer,
        actor="alice",
        reason="new prompt",
        policy_id=policy_id,
        version=version,
        **signed_artifact(artifact, key, doer=doer, policy_id=policy_id, version=version),
        **extra,
    )


def promote(doer: str, version: int, **extra: Any) -> PromotePolicy:
    fields: dict[str, Any] = {"actor": "alice", "reason": "go", **extra}
    return PromotePolicy(doer=doer, policy_id=doer.lower(), version=version, **fields)


async def status_of(db: Any, doer: str) -> dict[int, str]:
    rows = await db.fetch("SELECT version, status FROM policies WHERE doer = $1", doer)
    return {r["version"]: r["status"] for r in rows}


async def audit_rows(db: Any, event_id: uuid.UUID) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM policy_promotions WHERE event_id = $1", event_id)
    )


async def bootstrap(db: Any, doer: str, key: SigningKey, versions: int = 2) -> None:
    """Register versions 1..n and make version 1 active (a forced first promotion)."""
    for n in range(1, versions + 1):
        outcome = await commands_store.apply_command(db, register(doer, key, n))
        assert outcome is not None and outcome.applied, outcome
    first = await commands_store.apply_command(
        db, promote(doer, 1, force=True, reason="first policy")
    )
    assert first is not None and first.applied, first


def decision(doer: str, version: int, deployment_id: str | None, action: str) -> DecisionMade:
    assert deployment_id is not None
    return DecisionMade(
        doer=doer,
        deployment_id=deployment_id,
        candidate_policy_id=doer.lower(),
        candidate_version=version,
        action=action,
        reason="candidate CRL lower with p=0.003",
        step=3,
        report=DecisionReport(
            control_mean=0.41,
            candidate_mean=0.35,
            control_count=900,
            candidate_count=880,
            delta=-0.06,
            delta_pct=-0.146,
            p_value=0.003,
            ci_low=-0.09,
            ci_high=-0.03,
        ),
    )


# --------------------------------------------------------------------------- signatures


async def test_a_tampered_artifact_is_refused_at_registration(db: Any) -> None:
    doer = unique_doer("Tamper")
    key = await trusted_key(db)
    honest = register(doer, key, 1)
    tampered = honest.model_copy(
        update={"artifact": {**honest.artifact, "tools": ["search", "shell"]}}
    )
    outcome = await commands_store.apply_command(db, tampered)
    assert outcome is not None and not outcome.applied
    assert outcome.refusal == "signature"
    assert "content hash" in outcome.verdict
    # Re-hashed by the tamperer: the signature still gives it away.
    rehashed = tampered.model_copy(
        update={"event_id": uuid.uuid4(), "content_hash": content_digest(tampered.artifact)}
    )
    outcome = await commands_store.apply_command(db, rehashed)
    assert outcome is not None and outcome.refusal == "signature"
    assert "signature does not match" in outcome.verdict
    assert "with this artifact" in outcome.verdict
    assert await status_of(db, doer) == {}


@pytest.mark.parametrize(
    "declared",
    [
        {"draft": {"router.model": ["model-a"]}},  # one option: nothing to choose
        {"draft": {"router.model": ["model-a", "model-a"]}},
        {"draft": {"rag.top_k": [4, 8]}},  # options are names
        {"draft": ["model-a", "model-b"]},
    ],
)
async def test_a_malformed_declaration_of_options_is_refused_at_registration(
    db: Any, declared: Any
) -> None:
    doer = unique_doer("Tunables")
    key = await trusted_key(db)
    outcome = await commands_store.apply_command(
        db, register(doer, key, 1, {**ARTIFACT, "tunables": declared})
    )
    assert outcome is not None and not outcome.applied
    assert outcome.refusal == "artifact"
    assert outcome.verdict.startswith(f"{doer.lower()}@1: policy tunables"), outcome.verdict
    assert await status_of(db, doer) == {}


async def test_a_parameter_both_open_and_fixed_is_refused_at_registration(db: Any) -> None:
    doer = unique_doer("Tunables")
    key = await trusted_key(db)
    both = {
        **ARTIFACT,
        "tunables": {"draft": {"router.model": ["a", "b"]}},
        "fixed": {"draft": {"router.model": "c"}},
    }
    outcome = await commands_store.apply_command(db, register(doer, key, 1, both))
    assert outcome is not None and not outcome.applied and outcome.refusal == "artifact"
    assert "'router.model' of phase 'draft' is both tunable (a, b) and fixed (c)" in (
        outcome.verdict
    )
    assert await status_of(db, doer) == {}


async def live_of(db: Any, doer: str) -> list[tuple[str, int, str]]:
    rows = await db.fetch(
        "SELECT policy_id, version, status FROM policies WHERE doer = $1 "
        "AND status IN ('active', 'shadow', 'canary') ORDER BY policy_id, version",
        doer,
    )
    return [(r["policy_id"], r["version"], r["status"]) for r in rows]


async def test_an_artifact_signed_for_one_doer_is_refused_under_another_and_nothing_moves(
    db: Any,
) -> None:
    victim, attacker_target = unique_doer("Signed"), unique_doer("Target")
    key = await trusted_key(db)
    await bootstrap(db, victim, key, versions=1)
    await bootstrap(db, attacker_target, key, versions=1)
    before = await live_of(db, attacker_target)
    # Everything the attacker needs is readable on learning.commands: the signed registration.
    signed = register(victim, key, 1)
    stolen = {
        k: getattr(signed, k) for k in ("artifact", "content_hash", "signature", "signature_key_id")
    }
    policy_id = attacker_target.lower()
    replanted = RegisterPolicy(
        doer=attacker_target,
        actor="mallory",
        reason="hotfix",
        policy_id=policy_id,
        version=2,
        **stolen,
    )
    outcome = await commands_store.apply_command(db, replanted)
    assert outcome is not None and not outcome.applied and outcome.refusal == "signature"
    assert IDENTITY_RULE in outcome.verdict
    assert f"this signature was made for {victim.lower()}@1 of doer {victim}" in outcome.verdict
    assert await store.find_policy(db, policy_id, 2) is None
    forced = await commands_store.apply_command(
        db,
        PromotePolicy(
            doer=attacker_target,
            actor="mallory",
            reason="urgent",
            policy_id=policy_id,
            version=2,
            force=True,
        ),
    )
    assert forced is not None and not forced.applied and forced.refusal == "unknown"
    assert await live_of(db, attacker_target) == before == [(policy_id, 1, "active")]


async def test_a_version_number_changed_after_signing_is_refused(db: Any) -> None:
    doer = unique_doer("Renumbered")
    key = await trusted_key(db)
    await bootstrap(db, doer, key, versions=1)
    signed_as_2 = register(doer, key, 2)
    renumbered = signed_as_2.model_copy(update={"version": 3, "event_id": uuid.uuid4()})
    outcome = await commands_store.apply_command(db, renumbered)
    assert outcome is not None and not outcome.applied and outcome.refusal == "signature"
    assert f"not made for {doer.lower()}@3 of doer {doer}" in outcome.verdict
    assert IDENTITY_RULE in outcome.verdict
    assert await status_of(db, doer) == {1: "active"}
    # The same signature under the number it was made for registers.
    honest = await commands_store.apply_command(db, signed_as_2)
    assert honest is not None and honest.applied, honest


async def test_the_database_refuses_a_new_version_signed_over_the_artifact_alone(db: Any) -> None:
    doer = unique_doer("Unbound")
    key = await trusted_key(db)
    await bootstrap(db, doer, key, versions=1)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="signature format 2"):
        await db.execute(
            "INSERT INTO policies (policy_id, version, doer, artifact, artifact_canonical, "
            "content_hash, signature, signature_format, key_id, created_by, registered_by) "
            "SELECT policy_id, 7, doer, artifact, artifact_canonical, content_hash, signature, "
            "1, key_id, 'rogue', $2 FROM policies WHERE doer = $1 AND version = 1",
            doer,
            uuid.uuid4(),
        )
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
        await db.execute(
            "UPDATE policies SET signature_format = 1 WHERE doer = $1 AND version = 1", doer
        )


async def test_a_revoked_keys_live_versions_are_reported_by_verify(db: Any) -> None:
    doer = unique_doer("Revoked")
    old, new = await trusted_key(db), await trusted_key(db)
    await bootstrap(db, doer, old, versions=1)
    registered = await commands_store.apply_command(db, register(doer, new, 2))
    assert registered is not None and registered.applied
    canary = await commands_store.apply_command(
        db,
        StartCanary(
            doer=doer, actor="alice", reason="try", policy_id=doer.lower(), version=2, force=True
        ),
    )
    assert canary is not None and canary.applied, canary
    before = await verification.verify_live(db, doer=doer)
    assert [(c.ref, c.ok, c.key_status) for c in before] == [
        (f"{doer.lower()}@1", True, "active"),
        (f"{doer.lower()}@2", True, "active"),
    ]
    await keys_store.revoke_signing_key(db, old.key_id, actor="tests", note="laptop lost")
    after = await verification.verify_live(db, doer=doer)
    assert [(c.ref, c.status, c.ok, c.key_status) for c in after] == [
        (f"{doer.lower()}@1", "active", False, "revoked"),
        (f"{doer.lower()}@2", "canary", True, "active"),
    ]
    assert f"key {old.key_id} revoked" in after[0].reason
    signed_by_old = await verification.verify_live(db, key_id=old.key_id)
    assert [(c.doer, c.ref) for c in signed_by_old] == [(doer, f"{doer.lower()}@1")]


async def test_a_policy_tampered_in_the_database_never_reaches_shadow_canary_or_active(
    db: Any,
) -> None:
    doer = unique_doer("Stored")
    key = await trusted_key(db)
    await bootstrap(db, doer, key)
    # The row is immutable; someone with owner rights switches the guard off to edit it.
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE policies DISABLE TRIGGER trigger_policy_immutable")
        await conn.execute(
            "UPDATE policies SET artifact = jsonb_set(artifact, '{tools}', '[\"shell\"]') "
            "WHERE doer = $1 AND version = 2",
            doer,
        )
        await conn.execute("ALTER TABLE policies ENABLE TRIGGER trigger_policy_immutable")
    for command in (
        StartShadow(doer=doer, actor="bob", reason="try", policy_id=doer.lower(), version=2),
        StartCanary(
            doer=doer, actor="bob", reason="skip", policy_id=doer.lower(), version=2, force=True
        ),
        promote(doer, 2, force=True, reason="hotfix"),
    ):
        outcome = await commands_store.apply_command(db, command)
        assert outcome is not None and not outcome.applied, outcome
        assert outcome.refusal == "signature"
        assert "stored artifact differs from the signed bytes" in outcome.verdict
        assert (outcome.from_status, outcome.to_status) == ("draft", "draft")
    assert await status_of(db, doer) == {1: "active", 2: "draft"}
    refusals = await db.fetchval(
        "SELECT count(*) FROM policy_promotions WHERE doer = $1 AND refusal = 'signature'", doer
    )
    assert refusals == 3


async def test_the_policy_row_and_the_audit_cannot_be_rewritten(db: Any) -> None:
    doer = unique_doer("Immutable")
    key = await trusted_key(db)
    await bootstrap(db, doer, key, versions=1)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
        await db.execute("UPDATE policies SET signature = 'x' WHERE doer = $1", doer)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="nothing is deleted"):
        await db.execute("DELETE FROM policies WHERE doer = $1", doer)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
        await db.execute("UPDATE policy_promotions SET reason = 'x' WHERE doer = $1", doer)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
        await db.execute("DELETE FROM policy_promotions WHERE doer = $1", doer)


async def test_updated_at_is_kept_by_the_trigger(db: Any) -> None:
    doer = unique_doer("Updated")
    key = await trusted_key(db)
    await commands_store.apply_command(db, register(doer, key, 1))
    before = await db.fetchrow("SELECT created_at, updated_at FROM policies WHERE doer = $1", doer)
    assert before["updated_at"] == before["created_at"]
    await commands_store.apply_command(db, promote(doer, 1, force=True, reason="first"))
    after = await db.fetchval("SELECT updated_at FROM policies WHERE doer = $1", doer)
    assert after > before["updated_at"]


async def test_rotated_keys_old_signatures_still_deploy_new_ones_by_a_retired_key_do_not(
    db: Any,
) -> None:
    doer = unique_doer("Rotate")
    old_key = await trusted_key(db)
    await bootstrap(db, doer, old_key)  # v1 active, v2 draft, both signed by the old key
    new_key = await trusted_key(db)
    await keys_store.retire_signing_key(db, old_key.key_id, actor="tests")

    late = await commands_store.apply_command(db, register(doer, old_key, 3))
    assert late is not None and late.refusal == "signature" and "retired" in late.verdict
    fresh = await commands_store.apply_command(db, register(doer, new_key, 3))
    assert fresh is not None and fresh.applied

    # v2 was registered before the old key retired: it may still be deployed.
    shadow = StartShadow(doer=doer, actor="bob", reason="try", policy_id=doer.lower(), version=2)
    outcome = await commands_store.apply_command(db, shadow)
    assert outcome is not None and outcome.applied, outcome

    # Revoking the old key stops v2 in its tracks.
    await keys_store.revoke_signing_key(db, old_key.key_id, actor="tests", note="laptop stolen")
    canary = StartCanary(doer=doer, actor="bob", reason="next", policy_id=doer.lower(), version=2)
    outcome = await commands_store.apply_command(db, canary)
    assert outcome is not None and outcome.refusal == "signature"
    assert f"key {old_key.key_id} revoked" in outcome.verdict
    assert (await status_of(db, doer))[2] == "shadow"


# --------------------------------------------------------------------------- lifecycle


async def test_the_full_lifecycle_with_deployments_and_the_previous_active_archived(
    db: Any,
) -> None:
    doer = unique_doer("Lifecycle")
    key = await trusted_key(db)
    await bootstrap(db, doer, key)
    pid = doer.lower()

    skipped = await commands_store.apply_command(db, promote(doer, 2))
    assert skipped is not None and skipped.refusal == "lifecycle"
    assert "skips shadow, canary" in skipped.verdict

    shadow = await commands_store.apply_command(
        db,
        StartShadow(
            doer=doer, actor="bob", reason="mirror", policy_id=pid, version=2, mirror_fraction=0.5
        ),
    )
    assert shadow is not None and shadow.applied and shadow.deployment_id
    canary = await commands_store.apply_command(
        db,
        StartCanary(
            doer=doer, actor="bob", reason="serve", policy_id=pid, version=2, steps=[0.1, 0.5]
        ),
    )
    assert canary is not None and canary.applied and canary.deployment_id != shadow.deployment_id
    deployments = await db.fetch(
        "SELECT deployment_id, mode, allocation, outcome, ended_at, control_version "
        "FROM shadow_deployments WHERE doer = $1 ORDER BY started_at",
        doer,
    )
    assert [(d["mode"], d["allocation"], d["outcome"]) for d in deployments] == [
        ("shadow", 0.5, "advanced"),
        ("canary", 0.1, None),
    ]
    assert {d["control_version"] for d in deployments} == {1}

    change = await deployments_store.current_change(db, doer)
    assert change is not None
    assert (change.status, change.policy_id, change.version) == ("canary", pid, 1)
    assert change.deployment is not None and change.deployment.candidate_version == 2
    assert change.deployment.allocation == 0.1

    promoted = await commands_store.apply_decision(
        db, decision(doer, 2, canary.deployment_id, "promote")
    )
    assert promoted is not None and promoted.applied, promoted
    assert await status_of(db, doer) == {1: "archived", 2: "active"}
    row = await db.fetchrow(
        "SELECT source, actor, previous_version, decision_report FROM policy_promotions "
        "WHERE event_id = $1",
        promoted.event_id,
    )
    assert (row["source"], row["actor"], row["previous_version"]) == ("decision", "canary", 1)
    assert row["decision_report"]["p_value"] == 0.003

    change = await deployments_store.current_change(db, doer)
    assert change is not None and change.change == "promoted" and change.deployment is None
    assert (change.version, change.previous_version) == (2, 1)

    archived = await commands_store.apply_command(
        db, ArchivePolicy(doer=doer, actor="bob", reason="done", policy_id=pid, version=2)
    )
    assert archived is not None and archived.refusal == "lifecycle"
    assert "archived only when another version is promoted" in archived.verdict


async def test_rollback_returns_traffic_to_the_active_policy_and_stale_decisions_are_refused(
    db: Any,
) -> None:
    doer = unique_doer("Rollback")
    key = await trusted_key(db)
    await bootstrap(db, doer, key)
    pid = doer.lower()
    canary = await commands_store.apply_command(
        db,
        StartCanary(
            doer=doer, actor="bob", reason="skip shadow", policy_id=pid, version=2, force=True
        ),
    )
    assert canary is not None and canary.applied, canary
    rolled = await commands_store.apply_command(
        db, RollbackPolicy(doer=doer, actor="bob", reason="error rate up")
    )
    assert rolled is not None and rolled.applied and rolled.to_status == "rolled_back"
    assert rolled.deployment_id == canary.deployment_id
    assert await status_of(db, doer) == {1: "active", 2: "rolled_back"}
    change = await deployments_store.current_change(db, doer)
    assert change is not None and change.change == "rolled_back" and change.status == "active"

    late = await commands_store.apply_decision(
        db, decision(doer, 2, canary.deployment_id, "promote")
    )
    assert late is not None and not late.applied
    assert "rolled_back is final" in late.verdict
    nothing = await commands_store.apply_command(
        db, RollbackPolicy(doer=doer, actor="bob", reason="again")
    )
    assert nothing is not None and nothing.refusal == "unknown"
    assert "no shadow or canary policy to roll back" in nothing.verdict


async def test_commands_for_unknown_versions_or_another_doers_version_are_refused(db: Any) -> None:
    doer, other = unique_doer("Mine"), unique_doer("Theirs")
    key = await trusted_key(db)
    await bootstrap(db, doer, key, versions=1)
    await commands_store.apply_command(db, register(other, key, 1))
    unknown = await commands_store.apply_command(db, promote(doer, 9))
    assert unknown is not None and unknown.refusal == "unknown"
    assert "is not registered" in unknown.verdict
    theirs = await commands_store.apply_command(
        db,
        PromotePolicy(
            doer=doer, actor="a", reason="r", policy_id=other.lower(), version=1, force=True
        ),
    )
    assert theirs is not None and theirs.refusal == "lifecycle"
    assert f"belongs to doer {other!r}" in theirs.verdict
    line = await commands_store.apply_command(db, register(other, key, 2, policy_id=doer.lower()))
    assert line is not None and line.refusal == "conflict"
    again = await commands_store.apply_command(db, register(doer, key, 1))
    assert again is not None and again.refusal == "conflict"
    assert "already registered, with the same content" in again.verdict


# --------------------------------------------------------------------------- idempotence


async def test_a_replayed_decision_writes_one_audit_row(db: Any) -> None:
    doer = unique_doer("Replay")
    key = await trusted_key(db)
    await bootstrap(db, doer, key)
    pid = doer.lower()
    canary = await commands_store.apply_command(
        db,
        StartCanary(doer=doer, actor="bob", reason="go", policy_id=pid, version=2, force=True),
    )
    assert canary is not None and canary.deployment_id
    made = decision(doer, 2, canary.deployment_id, "promote")
    first = await commands_store.apply_decision(db, made)
    assert first is not None and first.applied and not first.replayed
    # Redelivered three times, one of them concurrently with another copy.
    again = [
        await commands_store.apply_decision(db, made),
        *await asyncio.gather(
            commands_store.apply_decision(db, made), commands_store.apply_decision(db, made)
        ),
    ]
    assert all(o is not None and o.replayed and o.applied for o in again)
    assert await audit_rows(db, made.event_id) == 1
    assert await db.fetchval("SELECT count(*) FROM policy_activations WHERE doer = $1", doer) == 2
    assert await status_of(db, doer) == {1: "archived", 2: "active"}


async def test_a_replayed_command_and_a_replayed_refusal_write_nothing_more(db: Any) -> None:
    doer = unique_doer("ReplayCmd")
    key = await trusted_key(db)
    command = register(doer, key, 1)
    first = await commands_store.apply_command(db, command)
    second = await commands_store.apply_command(db, command)
    assert first is not None and second is not None
    assert first.applied and second.replayed and second.verdict == first.verdict
    refused = promote(doer, 1)
    assert (await commands_store.apply_command(db, refused)).refusal == "lifecycle"  # type: ignore[union-attr]
    replay = await commands_store.apply_command(db, refused)
    assert replay is not None and replay.replayed and replay.refusal == "lifecycle"
    assert await audit_rows(db, command.event_id) == 1
    assert await audit_rows(db, refused.event_id) == 1


# --------------------------------------------------------------------------- concurrency


async def test_concurrent_promotions_of_two_candidates_leave_exactly_one_active(db: Any) -> None:
    doer = unique_doer("Race")
    key = await trusted_key(db)
    await bootstrap(db, doer, key, versions=3)
    for _ in range(5):  # several rounds, each a fresh pair racing
        rows = await db.fetch(
            "SELECT version FROM policies WHERE doer = $1 AND status = 'draft' ORDER BY version",
            doer,
        )
        if len(rows) < 2:
            base = await store.next_version(db, doer.lower())
            for n in (base, base + 1):
                await commands_store.apply_command(db, register(doer, key, n))
            rows = await db.fetch(
                "SELECT version FROM policies WHERE doer = $1 AND status = 'draft' "
                "ORDER BY version",
                doer,
            )
        a, b = rows[0]["version"], rows[1]["version"]
        outcomes = await asyncio.gather(
            commands_store.apply_command(db, promote(doer, a, force=True, reason="race a")),
            commands_store.apply_command(db, promote(doer, b, force=True, reason="race b")),
        )
        assert all(o is not None and o.applied for o in outcomes), outcomes
        statuses = await status_of(db, doer)
        assert list(statuses.values()).count("active") == 1
        # The doer lock applied them one after the other: the later archived the earlier,
        # in the same transaction, and its audit row says so.
        winner = next(v for v, s in statuses.items() if s == "active")
        loser = b if winner == a else a
        assert winner in (a, b) and statuses[loser] == "archived"
        last = (await audit_store.promotions(db, doer=doer))[-1]
        assert (last.version, last.previous_version) == (winner, loser)
    stretches = await store.activations(db, doer)
    assert [s.active_to is None for s in stretches].count(True) == 1
    for earlier, later in itertools.pairwise(stretches):
        assert earlier.active_to is not None and earlier.active_to <= later.active_from


#: An applied audit row moving the doer's version $2 from $3 to $4 (what the store writes).
AUDIT_ROW = """
    INSERT INTO policy_promotions (event_id, source, action, doer, policy_id, version,
        from_status, to_status, requested_status, outcome, actor, reason, verdict, occurred_at)
    VALUES (gen_random_uuid(), 'command', 'promote', $1, lower($1), $2, $3, $4, $4, 'applied',
        'tests', 'a test', 'a test', now())
"""


async def test_the_database_itself_refuses_a_second_active_policy(db: Any) -> None:
    doer = unique_doer("Guard")
    key = await trusted_key(db)
    await bootstrap(db, doer, key)
    # Even with the audit row the status trigger asks for, the unique index holds.
    with pytest.raises(asyncpg.UniqueViolationError, match="policies_one_active_per_doer"):
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(AUDIT_ROW, doer, 2, "draft", "active")
            await conn.execute(
                "UPDATE policies SET status = 'active' WHERE doer = $1 AND version = 2", doer
            )
    live = await db.fetchrow(
        "SELECT * FROM policy_activations WHERE doer = $1 AND active_to IS NULL", doer
    )
    with pytest.raises(asyncpg.ExclusionViolationError, match="policy_activations_no_overlap"):
        await db.execute(
            "INSERT INTO policy_activations (doer, policy_id, version, active_from, active_to, "
            "promoted_by, archived_by) VALUES ($1, $2, 2, $3, $4, $5, $5)",
            doer,
            doer.lower(),
            live["active_from"] - timedelta(hours=1),
            live["active_from"] + timedelta(hours=1),
            live["promoted_by"],
        )


async def test_a_status_moves_only_with_its_audit_row_written_in_the_same_transaction(
    db: Any,
) -> None:
    """Found by a red-team trial: one UPDATE of the status made a rolled-back version
    active, with no command and no audit row, and the next policy change published it."""
    doer = unique_doer("Audited")
    key = await trusted_key(db)
    await bootstrap(db, doer, key)
    flip = "UPDATE policies SET status = $2 WHERE doer = $1 AND version = $3"
    with pytest.raises(asyncpg.CheckViolationError, match="only with its applied"):
        await db.execute(flip, doer, "archived", 1)
    # An audit row of an earlier transaction does not cover a later move.
    await db.execute(AUDIT_ROW, doer, 2, "draft", "shadow")
    with pytest.raises(asyncpg.CheckViolationError, match="only with its applied"):
        await db.execute(flip, doer, "shadow", 2)
    # Nor does a row for another move of the same version, in the same transaction.
    with pytest.raises(asyncpg.CheckViolationError, match="only with its applied"):
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(AUDIT_ROW, doer, 2, "draft", "shadow")
            await conn.execute(flip, doer, "canary", 2)
    statuses = dict(await db.fetch("SELECT version, status FROM policies WHERE doer = $1", doer))
    assert statuses == {1: "active", 2: "draft"}
    # The store's own moves write the row first: they go through.
    shadow = await commands_store.apply_command(
        db, StartShadow(doer=doer, actor="bob", reason="try", policy_id=doer.lower(), version=2)
    )
    assert shadow is not None and shadow.applied, shadow


async def test_a_write_around_the_lock_is_refused_by_the_database_and_recorded(db: Any) -> None:
    doer = unique_doer("Around")
    key = await trusted_key(db)
    await bootstrap(db, doer, key, versions=1)
    await commands_store.apply_command(db, register(doer, key, 2))
    # Another writer holds version 2 as a candidate without telling the store (no lock,
    # no audit); the store's view says there is no candidate when it reads.
    command = StartShadow(doer=doer, actor="bob", reason="try", policy_id=doer.lower(), version=2)
    async with db.acquire() as rogue:
        tx = rogue.transaction()
        await tx.start()
        await rogue.execute(
            "INSERT INTO policies (policy_id, version, doer, status, artifact, "
            "artifact_canonical, content_hash, signature, key_id, created_by, registered_by) "
            "SELECT policy_id, 99, doer, 'canary', artifact, artifact_canonical, content_hash, "
            "signature, key_id, 'rogue', $2 FROM policies WHERE doer = $1 AND version = 1",
            doer,
            uuid.uuid4(),
        )
        pending = asyncio.create_task(commands_store.apply_command(db, command))
        # Commit once the store waits on the rogue row's index entry (blocked by it).
        await eventually(
            lambda: db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                rogue.get_server_pid(),
            ),
            lambda blocked: blocked >= 1,
            timeout=10,
        )
        await tx.commit()
        outcome = await pending
    assert outcome is not None and not outcome.applied
    assert outcome.refusal == "conflict" and "policies_one_candidate_per_doer" in outcome.verdict
    assert await audit_rows(db, command.event_id) == 1


# --------------------------------------------------------------------------- history and lineage


async def clock_past_last_activation(db: Any, doer: str) -> None:
    """Wait until PostgreSQL's clock is past the doer's latest activation.

    The next promotion then starts a stretch of its own: none is empty.
    """
    await eventually(
        lambda: db.fetchval(
            "SELECT clock_timestamp() > max(active_from) FROM policy_activations WHERE doer = $1",
            doer,
        ),
        bool,
        timeout=5,
    )


async def test_the_history_answers_what_was_live_when(db: Any) -> None:
    doer = unique_doer("When")
    key = await trusted_key(db)
    await bootstrap(db, doer, key, versions=3)
    await clock_past_last_activation(db, doer)
    await commands_store.apply_command(db, promote(doer, 2, force=True, reason="v2"))
    await clock_past_last_activation(db, doer)
    await commands_store.apply_command(db, promote(doer, 3, force=True, reason="v3"))
    stretches = await store.activations(db, doer)
    assert [s.version for s in stretches] == [1, 2, 3]
    v1, v2, v3 = stretches
    assert v1.active_to == v2.active_from and v2.active_to == v3.active_from
    assert v3.active_to is None

    before = await store.live_at(db, doer, v1.active_from - timedelta(seconds=1))
    assert before is None
    for stretch in (v1, v2):
        assert stretch.active_to is not None
        middle = stretch.active_from + (stretch.active_to - stretch.active_from) / 2
        found = await store.live_at(db, doer, middle)
        assert found is not None and found.version == stretch.version
    # At the instant of a promotion the new version is live (intervals are [from, to)).
    at_switch = await store.live_at(db, doer, v2.active_from)
    assert at_switch is not None and at_switch.version == 2
    now = await store.live_at(db, doer, v3.active_from + timedelta(days=365))
    assert now is not None and now.version == 3


async def test_lineage_goes_from_datasets_and_experiment_through_parents_to_promotions(
    db: Any,
) -> None:
    doer = unique_doer("Lineage")
    key = await trusted_key(db)
    dataset = f"golden-{uuid.uuid4().hex[:6]}"
    pid = doer.lower()
    await commands_store.apply_command(db, register(doer, key, 1, dataset_ids=[dataset]))
    await commands_store.apply_command(db, promote(doer, 1, force=True, reason="first"))
    await commands_store.apply_command(
        db,
        register(
            doer,
            key,
            2,
            parent_policy_id=pid,
            parent_version=1,
            dataset_ids=[dataset, "fresh-1"],
            experiment_id="exp-7",
        ),
    )
    await commands_store.apply_command(
        db, register(doer, key, 3, parent_policy_id=pid, parent_version=2)
    )
    orphan = await commands_store.apply_command(
        db, register(doer, key, 4, parent_policy_id=pid, parent_version=42)
    )
    assert orphan is not None and orphan.refusal == "unknown"

    chain = await store.lineage(db, pid, 3)
    assert [(e.depth, e.version) for e in chain] == [(0, 3), (1, 2), (2, 1)]
    assert chain[1].experiment_id == "exp-7" and chain[1].dataset_ids == [dataset, "fresh-1"]
    assert [p["action"] for p in chain[2].promotions] == ["register", "promote"]
    assert chain[2].promotions[1]["to_status"] == "active"

    descent = await store.dataset_lineage(db, dataset)
    assert [(e.depth, e.version) for e in descent] == [(0, 1), (0, 2), (1, 3)]


# --------------------------------------------------------------------- steps, approvals, pauses


async def start_canary(
    db: Any, doer: str, *, require_approval: bool = False, versions: int = 2
) -> tuple[SigningKey, str]:
    """A doer with version 1 active and version 2 in a four-step canary; its key and deployment."""
    key = await trusted_key(db)
    await bootstrap(db, doer, key, versions)
    canary = await commands_store.apply_command(
        db,
        StartCanary(
            doer=doer,
            actor="bob",
            reason="skip the shadow",
            policy_id=doer.lower(),
            version=2,
            steps=[0.1, 0.25, 0.5, 1.0],
            require_approval=require_approval,
            force=True,
        ),
    )
    assert canary is not None and canary.applied and canary.deployment_id
    return key, canary.deployment_id


def step_up(doer: str, deployment_id: str, step: int, **update: Any) -> DecisionMade:
    return decision(doer, 2, deployment_id, "step_up").model_copy(
        update={"step": step, "event_id": uuid.uuid4(), **update}
    )


async def asks_for_approval(
    db: Any, doer: str, deployment_id: str, step: int, resumes: int = 0
) -> None:
    """The canary's decision asking an operator to approve ``step``, stored as its stage does.

    ``resumes``: the operator resumes of the deployment the canary had seen.
    """
    ask = decision(doer, 2, deployment_id, "report")
    ask = ask.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "step": step,
            "resumes": resumes,
            "reason": f"awaiting approval of step {step}: candidate better",
            "report": ask.report.model_copy(update={"recommendation": "step_up"}),
        }
    )
    assert await canary_store.insert_decisions(db, [ask]) == 1


async def approve(db: Any, doer: str, deployment_id: str, step: int) -> Any:
    return await deployments_store.approve_step(
        db, doer, deployment_id, step, event_id=uuid.uuid4(), actor="ops", reason="ok"
    )


async def step_of(db: Any, deployment_id: str) -> tuple[int, float]:
    row = await db.fetchrow(
        "SELECT step, allocation FROM shadow_deployments WHERE deployment_id = $1", deployment_id
    )
    return row["step"], row["allocation"]


async def test_steps_move_up_once_approvals_only_to_the_next_step_and_a_pause_holds_them(
    db: Any,
) -> None:
    doer = unique_doer("Steps")
    _, deployment_id = await start_canary(db, doer)

    up = step_up(doer, deployment_id, 1)
    moved = await deployments_store.apply_step(db, up)
    assert moved.applied and moved.change is not None and moved.change.change == "step_changed"
    assert moved.change.deployment is not None
    assert (moved.change.deployment.step, moved.change.deployment.allocation) == (1, 0.25)
    again = await deployments_store.apply_step(db, up)  # replayed: the same outcome, once
    assert again.replayed and again.applied and again.change is not None
    stale = await deployments_store.apply_step(db, step_up(doer, deployment_id, 1))
    assert (stale.applied, stale.refusal, stale.worth_an_alert) == (False, "stale", False)
    missing = await deployments_store.apply_step(db, step_up(doer, deployment_id, 4))
    assert (missing.refusal, missing.verdict) == (
        "rule",
        f"{deployment_id} has no step 4 (its steps are 0 to 3)",
    )

    assert not (await approve(db, doer, deployment_id, 3)).applied  # only the next step (2)
    assert not (await approve(db, "SomeoneElse", deployment_id, 2)).applied  # not that doer's
    approved = await approve(db, doer, deployment_id, 2)
    assert approved.applied and approved.change is not None
    assert approved.change.deployment is not None
    assert (
        approved.change.deployment.step,
        approved.change.deployment.allocation,
        approved.change.actor,
    ) == (2, 0.5, "ops")

    pause = decision(doer, 2, deployment_id, "pause")
    paused = await deployments_store.pause_deployment(db, pause)
    assert paused.applied and paused.change is not None and paused.change.change == "paused"
    assert paused.change.deployment is not None and paused.change.deployment.paused
    replayed = await deployments_store.pause_deployment(db, pause)  # the same outcome, once
    assert replayed.replayed and replayed.applied and replayed.change is not None
    held = await deployments_store.pause_deployment(db, decision(doer, 2, deployment_id, "pause"))
    assert (held.applied, held.refusal, held.worth_an_alert) == (False, "stale", False)
    # A step-up decided just before the pause reached the store: stale, no alert.
    late = await deployments_store.apply_step(db, step_up(doer, deployment_id, 3))
    assert (late.applied, late.refusal, late.worth_an_alert) == (False, "stale", False)
    assert not (await approve(db, doer, deployment_id, 3)).applied
    row = await db.fetchrow(
        "SELECT step, allocation, paused_reason FROM shadow_deployments WHERE deployment_id = $1",
        deployment_id,
    )
    assert (row["step"], row["allocation"], row["paused_reason"]) == (2, 0.5, pause.reason)
    audit = await deployments_store.step_audit(db, deployment_id)
    assert [(a.action, a.to_step, a.applied) for a in audit] == [
        ("step_up", 1, True),
        ("step_up", 1, False),
        ("step_up", 4, False),
        ("approve", 3, False),
        ("approve", 2, False),
        ("approve", 2, True),
        ("pause", 2, True),
        ("pause", 2, False),
        ("step_up", 3, False),
        ("approve", 3, False),
    ]
    assert audit[5].actor == "ops" and audit[0].actor == "canary" and audit[6].actor == "canary"


async def operator(db: Any, doer: str, deployment_id: str, *, pause: bool, **update: Any) -> Any:
    """An operator's verified pause or resume, as the policy stage applies it."""
    fields: dict[str, Any] = {"event_id": uuid.uuid4(), "actor": "ops", "reason": "look"}
    return await deployments_store.operator_pause(
        db, doer, deployment_id, pause=pause, **{**fields, **update}
    )


async def test_an_operator_pauses_and_resumes_a_canary_once_each_with_an_audit_row(
    db: Any,
) -> None:
    doer = unique_doer("OpPause")
    _, deployment_id = await start_canary(db, doer)
    assert (await deployments_store.apply_step(db, step_up(doer, deployment_id, 1))).applied

    paused = await operator(db, doer, deployment_id, pause=True, reason="checking a spike")
    assert paused.applied and paused.change is not None
    assert (paused.change.change, paused.change.actor, paused.change.reason) == (
        "paused",
        "ops",
        "checking a spike",
    )
    assert paused.change.deployment is not None and paused.change.deployment.paused
    assert paused.change.deployment.step == 1 and paused.change.deployment.resumes == 0
    again = await deployments_store.operator_pause(
        db,
        doer,
        deployment_id,
        pause=True,
        event_id=paused.event_id,
        actor="ops",
        reason="checking a spike",
    )
    assert again.replayed and again.applied and again.change is not None  # sent again, once
    twice = await operator(db, doer, deployment_id, pause=True)
    assert (twice.applied, twice.refusal, twice.worth_an_alert) == (False, "stale", False)
    assert twice.verdict == f"{deployment_id} is paused already"
    # Held: no step moves, routing stays at step 1's share.
    assert not (await deployments_store.apply_step(db, step_up(doer, deployment_id, 2))).applied
    assert await step_of(db, deployment_id) == (1, 0.25)
    reason = await db.fetchval(
        "SELECT paused_reason FROM shadow_deployments WHERE deployment_id = $1", deployment_id
    )
    assert reason == "paused by ops: checking a spike"

    intruder = await operator(db, unique_doer("Intruder"), deployment_id, pause=False)
    assert (intruder.applied, intruder.refusal) == (False, "rule")
    resumed = await operator(db, doer, deployment_id, pause=False, reason="spike explained")
    assert resumed.applied and resumed.change is not None
    assert resumed.change.change == "resumed" and resumed.change.deployment is not None
    routing = resumed.change.deployment
    assert (routing.paused, routing.resumes, routing.step) == (False, 1, 1)
    assert routing.resumed_at is not None
    not_paused = await operator(db, doer, deployment_id, pause=False)
    assert (not_paused.refusal, not_paused.verdict) == ("stale", f"{deployment_id} is not paused")
    # Moving again.
    assert (await deployments_store.apply_step(db, step_up(doer, deployment_id, 2))).applied

    audit = await deployments_store.step_audit(db, deployment_id)
    assert [(a.action, a.to_step, a.applied, a.actor) for a in audit] == [
        ("step_up", 1, True, "canary"),
        ("pause", 1, True, "ops"),
        ("pause", 1, False, "ops"),
        ("step_up", 2, False, "canary"),
        ("resume", 1, False, "ops"),
        ("resume", 1, True, "ops"),
        ("resume", 1, False, "ops"),
        ("step_up", 2, True, "canary"),
    ]
    assert audit[5].verdict == f"{deployment_id} resumed at step 1"


async def test_a_canary_paused_for_missing_data_is_resumed_only_while_its_candidate_verifies(
    db: Any,
) -> None:
    doer = unique_doer("OpResume")
    key, deployment_id = await start_canary(db, doer)
    pause = decision(doer, 2, deployment_id, "pause")
    assert (await deployments_store.pause_deployment(db, pause)).applied  # the canary's own
    await keys_store.revoke_signing_key(db, key.key_id, actor="tests", note="laptop stolen")
    refused = await operator(db, doer, deployment_id, pause=False)
    assert (refused.applied, refused.refusal, refused.worth_an_alert) == (
        False,
        "signature",
        True,
    )
    assert f"key {key.key_id} revoked" in refused.verdict
    row = await db.fetchrow(
        "SELECT paused_at, resumes FROM shadow_deployments WHERE deployment_id = $1",
        deployment_id,
    )
    assert row["paused_at"] is not None and row["resumes"] == 0


async def test_a_canary_pause_decided_before_a_resume_never_pauses_it_again(db: Any) -> None:
    doer = unique_doer("LatePause")
    _, deployment_id = await start_canary(db, doer)
    first = decision(doer, 2, deployment_id, "pause")
    assert (await deployments_store.pause_deployment(db, first)).applied
    assert (await operator(db, doer, deployment_id, pause=False)).applied
    # The same pause read again (a restart before its offset was committed): its first
    # outcome, nothing applied again.
    again = await deployments_store.pause_deployment(db, first)
    assert again.replayed and again.applied
    # Another pause the canary decided before it saw the resume, arriving late.
    late = await deployments_store.pause_deployment(db, decision(doer, 2, deployment_id, "pause"))
    assert (late.applied, late.refusal, late.worth_an_alert) == (False, "stale", False)
    assert late.verdict == (
        f"{deployment_id} was resumed by an operator after this pause was decided"
    )
    assert (
        await db.fetchval(
            "SELECT paused_at FROM shadow_deployments WHERE deployment_id = $1", deployment_id
        )
        is None
    )
    # One decided after it (it names the resume it saw) pauses it.
    seen = decision(doer, 2, deployment_id, "pause").model_copy(update={"resumes": 1})
    assert (await deployments_store.pause_deployment(db, seen)).applied


async def test_a_canary_decision_promotes_an_operator_paused_canary_only_after_a_resume(
    db: Any,
) -> None:
    doer = unique_doer("HeldPromote")
    _, deployment_id = await start_canary(db, doer)
    assert (await operator(db, doer, deployment_id, pause=True)).applied
    promote = decision(doer, 2, deployment_id, "promote")
    held = await commands_store.apply_decision(db, promote)
    assert held is not None and not held.applied
    assert f"{deployment_id} is paused; a canary decision moves it on only after a resume" in (
        held.verdict
    )
    active = await db.fetchval(
        "SELECT version FROM policies WHERE doer = $1 AND status = 'active'", doer
    )
    assert active == 1
    assert (await operator(db, doer, deployment_id, pause=False)).applied
    promoted = await commands_store.apply_decision(db, decision(doer, 2, deployment_id, "promote"))
    assert promoted is not None and promoted.applied
    # A rollback decision is never held: stopping a candidate is always allowed.
    other = unique_doer("HeldRollback")
    _, second = await start_canary(db, other)
    assert (await operator(db, other, second, pause=True)).applied
    rolled_back = await commands_store.apply_decision(db, decision(other, 2, second, "rollback"))
    assert rolled_back is not None and rolled_back.applied


async def test_the_database_refuses_a_resume_without_its_audit_row(db: Any) -> None:
    doer = unique_doer("SqlResume")
    _, deployment_id = await start_canary(db, doer)
    assert (await operator(db, doer, deployment_id, pause=True)).applied

    async def clear(resumes: str) -> None:
        await db.execute(
            f"UPDATE shadow_deployments SET paused_at = NULL, resumes = {resumes} "
            "WHERE deployment_id = $1",
            deployment_id,
        )

    with pytest.raises(asyncpg.CheckViolationError, match="has no audited resume"):
        await clear("resumes + 1")
    with pytest.raises(asyncpg.CheckViolationError, match="clears its pause and counts one"):
        await clear("resumes")  # unpaused without counting a resume
    # A refused resume row is no resume, and a resume row of another doer neither.
    for row_doer, outcome, refusal in ((doer, "refused", "rule"), ("Other", "applied", None)):
        with pytest.raises(asyncpg.CheckViolationError, match="has no audited resume"):
            async with db.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO deployment_steps (event_id, deployment_id, doer, action, "
                    "from_step, to_step, outcome, refusal, actor, reason, verdict, occurred_at) "
                    "VALUES ($1, $2, $3, 'resume', 0, 0, $4, $5, 'ops', 'x', 'x', now())",
                    uuid.uuid4(),
                    deployment_id,
                    row_doer,
                    outcome,
                    refusal,
                )
                await clear("resumes + 1")
    with pytest.raises(asyncpg.CheckViolationError, match="deployment_steps_moves_one_step"):
        await db.execute(
            "INSERT INTO deployment_steps (event_id, deployment_id, doer, action, from_step, "
            "to_step, outcome, actor, reason, verdict, occurred_at) "
            "VALUES ($1, $2, $3, 'pause', 0, 1, 'applied', 'ops', 'x', 'x', now())",
            uuid.uuid4(),
            deployment_id,
            doer,
        )
    # No step moves while paused, audited or not.
    with pytest.raises(asyncpg.CheckViolationError, match="is paused at step 0"):
        await db.execute(
            "UPDATE shadow_deployments SET step = 1, allocation = 0.25 WHERE deployment_id = $1",
            deployment_id,
        )
    # An applied row must name the step it held.
    with pytest.raises(asyncpg.CheckViolationError, match="deployment_steps_moves_one_step"):
        await db.execute(
            "INSERT INTO deployment_steps (event_id, deployment_id, doer, action, from_step, "
            "to_step, outcome, actor, reason, verdict, occurred_at) "
            "VALUES ($1, $2, $3, 'resume', NULL, 0, 'applied', 'ops', 'x', 'x', now())",
            uuid.uuid4(),
            deployment_id,
            doer,
        )
    assert (await operator(db, doer, deployment_id, pause=False)).applied
    assert (
        await db.fetchval(
            "SELECT resumes FROM shadow_deployments WHERE deployment_id = $1", deployment_id
        )
        == 1
    )


# ------------------------------------------------------------- steps, as an attacker would try


async def test_a_step_jump_is_refused_with_its_reason_and_audited(db: Any) -> None:
    doer = unique_doer("Jump")
    _, deployment_id = await start_canary(db, doer)
    jump = await deployments_store.apply_step(db, step_up(doer, deployment_id, 3))
    assert (jump.applied, jump.refusal, jump.worth_an_alert) == (False, "rule", True)
    assert jump.verdict == f"{deployment_id} is at step 0; a step-up moves to step 1 only, not 3"
    assert await step_of(db, deployment_id) == (0, 0.1)
    assert [a.verdict for a in await deployments_store.step_audit(db, deployment_id)] == [
        jump.verdict
    ]


async def test_a_step_up_for_another_doers_deployment_changes_nothing(db: Any) -> None:
    victim = unique_doer("Victim")
    _, deployment_id = await start_canary(db, victim)
    forged = step_up(unique_doer("Intruder"), deployment_id, 1)
    outcome = await deployments_store.apply_step(db, forged)
    assert (outcome.applied, outcome.refusal) == (False, "rule")
    assert outcome.verdict == f"{deployment_id} belongs to doer {victim!r}, not {forged.doer!r}"
    assert await step_of(db, deployment_id) == (0, 0.1)
    paused = await deployments_store.pause_deployment(
        db, decision(forged.doer, 2, deployment_id, "pause")
    )
    assert (paused.applied, paused.refusal) == (False, "rule")
    assert (
        await db.fetchval(
            "SELECT paused_at FROM shadow_deployments WHERE deployment_id = $1", deployment_id
        )
    ) is None


async def test_a_step_up_without_the_required_approval_is_refused(db: Any) -> None:
    doer = unique_doer("Approval")
    _, deployment_id = await start_canary(db, doer, require_approval=True)
    outcome = await deployments_store.apply_step(db, step_up(doer, deployment_id, 1))
    assert (outcome.applied, outcome.refusal) == (False, "rule")
    assert "requires an operator's approval" in outcome.verdict
    assert await step_of(db, deployment_id) == (0, 0.1)
    # Approved before the canary asked (step 0 without its evidence): refused, audited.
    early = await approve(db, doer, deployment_id, 1)
    assert (early.applied, early.refusal) == (False, "rule")
    assert "has not asked for step 1" in early.verdict
    assert await step_of(db, deployment_id) == (0, 0.1)
    await asks_for_approval(db, doer, deployment_id, 1)
    approved = await approve(db, doer, deployment_id, 1)
    assert approved.applied and await step_of(db, deployment_id) == (1, 0.25)
    # Its ask for step 1 does not stand for step 2.
    assert "has not asked for step 2" in (await approve(db, doer, deployment_id, 2)).verdict


async def test_an_ask_made_before_a_resume_no_longer_lets_an_approval_through(db: Any) -> None:
    # On a resume the canary drops its ask, counts the step afresh and asks again on
    # new evidence: the ask of before must not move it at once.
    doer = unique_doer("AskResumed")
    _, deployment_id = await start_canary(db, doer, require_approval=True)
    await asks_for_approval(db, doer, deployment_id, 1)
    assert await deployments_store.approvals_asked(db, deployment_id) == {1}
    assert (await operator(db, doer, deployment_id, pause=True)).applied
    assert (await operator(db, doer, deployment_id, pause=False)).applied
    assert await deployments_store.approvals_asked(db, deployment_id) == set()
    stale = await approve(db, doer, deployment_id, 1)
    assert not stale.applied and "has not asked for step 1" in stale.verdict
    # An ask sent after the resume by a canary that had not seen it (behind on the
    # policy changes, or a batch delivered again): pre-resume evidence, whatever its time.
    await asks_for_approval(db, doer, deployment_id, 1, resumes=0)
    assert await deployments_store.approvals_asked(db, deployment_id) == set()
    await asks_for_approval(db, doer, deployment_id, 1, resumes=1)  # asked again after it
    assert (await approve(db, doer, deployment_id, 1)).applied


async def test_the_canary_stages_own_ask_is_what_lets_an_approval_through(db: Any) -> None:
    # The contract between the canary stage's decisions and the approval rule: the
    # decision it makes and stores when a gated step has its evidence is an ask.
    doer = unique_doer("AskedFor")
    _, deployment_id = await start_canary(db, doer, require_approval=True)
    state = DeploymentState(
        "Doer",
        deployment_routing(require_approval=True),
        "canary",
    )
    asks = [v for v in feed_canary(state, 0.2, 3000) if v.report.recommendation == "step_up"]
    assert asks and asks[0].action == "report" and asks[0].step == 1
    assert await deployments_store.approvals_asked(db, deployment_id) == set()
    # Fed with the unit tests' results (doer "Doer", policy "p", their deployment id):
    # stored as this doer's deployment's.
    named = {"doer": doer, "candidate_policy_id": doer.lower(), "deployment_id": deployment_id}
    made = [decision_of(state, v, None).model_copy(update=named) for v in asks]
    assert await canary_store.insert_decisions(db, made)
    assert await deployments_store.approvals_asked(db, deployment_id) == {1}
    assert (await approve(db, doer, deployment_id, 1)).applied
    assert await deployments_store.approvals_asked(db, deployment_id) == set()  # answered


async def test_a_revoked_keys_candidate_is_not_stepped_up(db: Any) -> None:
    doer = unique_doer("RevokedStep")
    key, deployment_id = await start_canary(db, doer)
    await keys_store.revoke_signing_key(db, key.key_id, actor="tests", note="laptop stolen")
    outcome = await deployments_store.apply_step(db, step_up(doer, deployment_id, 1))
    assert (outcome.applied, outcome.refusal, outcome.worth_an_alert) == (
        False,
        "signature",
        True,
    )
    assert f"key {key.key_id} revoked" in outcome.verdict
    assert await step_of(db, deployment_id) == (0, 0.1)
    approved = await approve(db, doer, deployment_id, 1)
    assert (approved.applied, approved.refusal) == (False, "signature")
    assert await step_of(db, deployment_id) == (0, 0.1)


async def test_the_database_refuses_a_step_change_that_skips_the_rules(db: Any) -> None:
    doer = unique_doer("SqlSteps")
    _, deployment_id = await start_canary(db, doer, require_approval=True)

    async def set_step(step: int, allocation: float) -> None:
        await db.execute(
            "UPDATE shadow_deployments SET step = $2, allocation = $3 WHERE deployment_id = $1",
            deployment_id,
            step,
            allocation,
        )

    with pytest.raises(asyncpg.CheckViolationError, match="only step 1 may follow, not 2"):
        await set_step(2, 0.5)
    with pytest.raises(asyncpg.CheckViolationError, match="has no audited approval"):
        await set_step(1, 0.25)
    # An audited step-up is no approval.
    with pytest.raises(asyncpg.CheckViolationError, match="has no audited approval"):
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO deployment_steps (event_id, deployment_id, doer, action, from_step, "
                "to_step, outcome, actor, reason, verdict, occurred_at) "
                "VALUES ($1, $2, $3, 'step_up', 0, 1, 'applied', 'canary', 'x', 'x', now())",
                uuid.uuid4(),
                deployment_id,
                doer,
            )
            await conn.execute(
                "UPDATE shadow_deployments SET step = 1, allocation = 0.25 "
                "WHERE deployment_id = $1",
                deployment_id,
            )
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="fixed at its start"):
        await db.execute(
            "UPDATE shadow_deployments SET require_approval = false WHERE deployment_id = $1",
            deployment_id,
        )
    await asks_for_approval(db, doer, deployment_id, 1)
    approved = await approve(db, doer, deployment_id, 1)
    assert approved.applied
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
        await db.execute("DELETE FROM deployment_steps WHERE deployment_id = $1", deployment_id)
    assert await step_of(db, deployment_id) == (1, 0.25)


async def test_two_doers_registering_one_new_policy_id_at_once_leave_it_one_doers(
    db: Any,
) -> None:
    """Each registration holds its own doer's lock, so both read "no such line" and a
    policy id could end up with versions of two doers; the id's own lock orders them."""
    key = await trusted_key(db)
    for _ in range(5):
        shared = f"shared-{uuid.uuid4().hex[:8]}"
        first, second = unique_doer("Twin"), unique_doer("Twin")
        outcomes = await asyncio.gather(
            commands_store.apply_command(db, register(first, key, 1, policy_id=shared)),
            commands_store.apply_command(db, register(second, key, 2, policy_id=shared)),
        )
        assert sorted(bool(o and o.applied) for o in outcomes) == [False, True], outcomes
        doers = await db.fetch("SELECT DISTINCT doer FROM policies WHERE policy_id = $1", shared)
        assert len(doers) == 1
