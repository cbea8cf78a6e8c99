"""Applying policy commands and canary decisions: one transaction per event, under the doer's lock.

Every change arrives as a command or a canary decision and goes through
:func:`apply_command` or :func:`apply_decision`: one transaction per event that

1. takes the doer's advisory lock, so one doer's changes are applied one at a time;
2. returns the recorded outcome when the event was seen before (a replay adds
   no audit row and changes nothing);
3. reads the doer's state and asks ``learning.promotion`` whether the move may
   happen (:func:`~learning.promotion.plan`, :func:`~learning.promotion.check_registration`,
   :func:`~learning.promotion.start_deployment`), and checks the target's
   signature before it may see traffic;
4. appends the audit row (``storage.audit``, applied or refused) and applies
   the move: archive the previous active version, end or start a deployment,
   move the target, and keep ``policy_activations`` (the live history).

The partial unique indexes (one active, one candidate, one live deployment,
one open activation per doer) and the no-overlap constraint on activations are
the database's own guard should anything write around the lock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import asyncpg
import orjson

from learning.lifecycle import PolicyStatus
from learning.promotion import (
    SIGNATURE_FORMAT,
    CanaryLimits,
    DeploymentStart,
    DoerState,
    LiveDeployment,
    MoveRequest,
    PolicyVersion,
    Refused,
    SignedIdentity,
    StoredLine,
    audited_deployment,
    check_registration,
    decision_action,
    default_target,
    plan,
    start_deployment,
    unsigned,
    verify_artifact,
)
from learning.signing import CanonicalJSONError, VerifyResult, canonical_json
from models.commands import (
    ArchivePolicy,
    PolicyCommand,
    PromotePolicy,
    RegisterPolicy,
    RollbackPolicy,
    StartCanary,
    StartShadow,
)
from models.events import DecisionMade
from models.policy_change import CanarySettings
from models.tunables import tunables_of
from storage.audit import DECISION_ACTOR, Ask, Outcome, recall, record_applied, record_refused
from storage.policies import lock_doer
from storage.signing_keys import load_keyring
from storage.verification import STORED_SIGNATURE_COLUMNS, verify_stored

# --------------------------------------------------------------------------- applying events


async def apply_command(
    pool: Any, command: PolicyCommand, limits: CanaryLimits | None = None
) -> Outcome | None:
    """Apply a policy command idempotently; None for commands that are not the store's.

    ``approve_step``, ``create_experiment`` and ``request_experiment`` belong to
    other stages and are not recorded here. With ``limits`` (the policy stage's,
    from its configuration), a shadow or canary asking for looser statistics or
    a larger first step is refused (``limits``) and audited like any refusal.
    """
    if isinstance(command, RegisterPolicy):
        ask = _ask(command, "register", command.policy_id, command.version)
        return await _in_doer_lock(pool, ask, partial(_register, ask=ask, command=command))
    moving = _move_ask(command)
    if moving is None:
        return None
    return await _in_doer_lock(pool, moving, partial(_move, ask=moving, limits=limits))


async def refusal_of(
    pool: Any, command: PolicyCommand, limits: CanaryLimits | None = None
) -> Refused | None:
    """Why the store would refuse a move command now, by the rules :func:`apply_command` applies.

    Read-only, and asked by the CLI before it sends: a move the store would
    refuse as things stand (unknown version, lifecycle, one candidate at a time,
    limits) is said at once with nothing sent, instead of as an audited refusal
    and a ``policy_refused`` alert. None: it may apply (the policy stage still
    decides, signatures included, when it arrives). Registrations are not asked.
    """
    ask = _move_ask(command)
    if ask is None:
        return None
    async with pool.acquire() as conn:
        return (await _planned(conn, ask, limits)).refused


def _move_ask(command: PolicyCommand) -> Ask | None:
    """The audit's terms of a move command (shadow, canary, promote, rollback, archive)."""
    if isinstance(command, StartShadow):
        ask = _ask(command, "start_shadow", command.policy_id, command.version)
        return replace(
            ask,
            allocation=command.mirror_fraction,
            canary=command.canary.model_dump(mode="json"),
        )
    if isinstance(command, StartCanary):
        ask = _ask(command, "start_canary", command.policy_id, command.version)
        return replace(
            ask,
            force=command.force,
            steps=command.steps,
            require_approval=command.require_approval,
            canary=command.canary.model_dump(mode="json"),
        )
    if isinstance(command, PromotePolicy):
        ask = _ask(command, "promote", command.policy_id, command.version)
        return replace(ask, force=command.force, deployment_id=command.deployment_id)
    if isinstance(command, RollbackPolicy):
        ask = _ask(command, "rollback", command.policy_id, command.version)
        return replace(ask, deployment_id=command.deployment_id)
    if isinstance(command, ArchivePolicy):
        return _ask(command, "archive", command.policy_id, command.version)
    return None


async def apply_decision(pool: Any, decision: DecisionMade) -> Outcome | None:
    """Apply a canary decision to promote or roll back its candidate; None for other actions.

    A ``step_up`` of a shadow (``report.deployment_mode == "shadow"``) that passed
    moves it to canary with the default steps and the shadow's canary settings
    (``learning.promotion.decision_action``).
    """
    action = decision_action(decision.action, decision.report.deployment_mode)
    if action is None:
        return None
    canary = None
    if action == "start_canary":
        canary = await pool.fetchval(
            "SELECT canary FROM shadow_deployments WHERE deployment_id = $1",
            decision.deployment_id,
        )
        canary = orjson.loads(canary) if isinstance(canary, str | bytes) else canary
    ask = Ask(
        event_id=decision.event_id,
        source="decision",
        action=action,
        canary=canary,
        doer=decision.doer,
        actor=DECISION_ACTOR,
        reason=decision.reason,
        occurred_at=decision.occurred_at,
        policy_id=decision.candidate_policy_id,
        version=decision.candidate_version,
        deployment_id=decision.deployment_id,
        decision_report=decision.report.model_dump(mode="json"),
    )
    return await _in_doer_lock(pool, ask, partial(_move, ask=ask))


def _ask(command: Any, action: str, policy_id: str | None, version: int | None) -> Ask:
    return Ask(
        event_id=command.event_id,
        source="command",
        action=action,
        doer=command.doer,
        actor=command.actor,
        reason=command.reason,
        occurred_at=command.occurred_at,
        policy_id=policy_id,
        version=version,
    )


async def _in_doer_lock(pool: Any, ask: Ask, body: Callable[[Any], Awaitable[Outcome]]) -> Outcome:
    """Run ``body(conn)`` in one transaction under the doer's lock, unless the event was seen."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            seen = await _lock_and_recall(conn, ask)
            if seen is not None:
                return seen
            return await body(conn)
    except (asyncpg.UniqueViolationError, asyncpg.ExclusionViolationError) as exc:
        # Only reachable if something wrote around the doer lock: the database's
        # own constraints refused the second active (or candidate) version.
        async with pool.acquire() as conn, conn.transaction():
            seen = await _lock_and_recall(conn, ask)
            if seen is not None:
                return seen
            constraint = getattr(exc, "constraint_name", None) or type(exc).__name__
            verdict = (
                f"the database refused the change ({constraint}): another change to "
                f"{ask.doer} won; read its state and send the command again if still wanted"
            )
            return await _refused(conn, ask, Refused(verdict, "conflict"))


async def _lock_and_recall(conn: Any, ask: Ask) -> Outcome | None:
    await lock_doer(conn, ask.doer)
    return await recall(conn, ask.event_id)


async def _refused(
    conn: Any, ask: Ask, refused: Refused, target: PolicyVersion | None = None
) -> Outcome:
    return await record_refused(conn, ask, refused.verdict, refused.refusal, target=target)


async def _register(conn: Any, ask: Ask, command: RegisterPolicy) -> Outcome:
    ref = f"{command.policy_id}@{command.version}"
    # The doer's lock is held; a policy id's line belongs to one doer, and two doers'
    # registrations of one new id hold different doer locks: this one orders them.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('policy-id:' || $1))", command.policy_id
    )
    line = await conn.fetchrow(
        """
        SELECT doer, bool_or(version = $2) AS taken,
               bool_or(version = $2 AND content_hash = $3) AS same
        FROM policies WHERE policy_id = $1 GROUP BY doer
        """,
        command.policy_id,
        command.version,
        command.content_hash,
    )
    parent = None
    parent_registered = False
    if command.parent_policy_id is not None:
        parent = f"{command.parent_policy_id}@{command.parent_version}"
        parent_registered = (
            await conn.fetchval(
                "SELECT 1 FROM policies WHERE policy_id = $1 AND version = $2",
                command.parent_policy_id,
                command.parent_version,
            )
            is not None
        )
    refused = check_registration(
        command.policy_id,
        command.version,
        command.doer,
        line=StoredLine(line["doer"], bool(line["taken"]), bool(line["same"])) if line else None,
        parent=parent,
        parent_registered=parent_registered,
    )
    if refused is not None:
        return await _refused(conn, ask, refused)
    try:
        canonical = canonical_json(command.artifact)
    except CanonicalJSONError as exc:
        return await _refused(conn, ask, Refused(f"{ref}: {exc}", "artifact"))
    try:
        # A malformed declaration of options would fail each run of the version in the
        # bandit stage, one dead letter at a time, in a version nobody can change.
        tunables_of(command.artifact)
    except ValueError as exc:
        return await _refused(conn, ask, Refused(f"{ref}: {exc}", "artifact"))
    now = await conn.fetchval("SELECT clock_timestamp()")
    # Recorded now, so the signature is judged as of now: a key retired before
    # this moment vouches for nothing new.
    identity = SignedIdentity(command.doer, command.policy_id, command.version)
    check = verify_artifact(
        canonical,
        identity=identity,
        content_hash=command.content_hash,
        signature=command.signature,
        key_id=command.signature_key_id,
        keyring=await load_keyring(conn),
        signed_at=now,
    )
    if not check:
        reason = check.reason + await _signed_for(conn, command.signature, identity)
        return await _refused(conn, ask, unsigned(ref, reason))
    outcome = await record_applied(conn, ask, f"{ref} registered as draft; {check.reason}", "draft")
    await conn.execute(
        """
        INSERT INTO policies (
            policy_id, version, doer, artifact, artifact_canonical, content_hash, signature,
            key_id, parent_policy_id, parent_version, dataset_ids, experiment_id, created_by,
            registered_by, created_at, updated_at, signature_format
        )
        VALUES ($1, $2, $3, convert_from($4, 'UTF8')::jsonb, $4, $5, $6, $7, $8, $9, $10, $11,
                $12, $13, $14, $14, $15)
        """,
        command.policy_id,
        command.version,
        command.doer,
        canonical,
        command.content_hash,
        command.signature,
        command.signature_key_id,
        command.parent_policy_id,
        command.parent_version,
        list(command.dataset_ids),
        command.experiment_id,
        command.actor,
        command.event_id,
        now,
        SIGNATURE_FORMAT,
    )
    return outcome


async def _signed_for(conn: Any, signature: str, identity: SignedIdentity) -> str:
    """Name the stored version a reused signature was made for, as a clause ("" if none)."""
    row = await conn.fetchrow(
        "SELECT doer, policy_id, version FROM policies WHERE signature = $1 LIMIT 1", signature
    )
    if row is None:
        return ""
    signed = SignedIdentity(row["doer"], row["policy_id"], row["version"])
    if signed == identity:
        return ""
    return f" (this signature was made for {signed})"


@dataclass(frozen=True)
class _Plan:
    """A move as things stand, by the rules alone: refused (with the target, if known) or not."""

    refused: Refused | None
    state: DoerState
    target: PolicyVersion | None = None
    move: Any = None
    start: DeploymentStart | None = None


async def _planned(conn: Any, ask: Ask, limits: CanaryLimits | None) -> _Plan:
    state = await _doer_state(conn, ask.doer)
    target = await _target(conn, ask, state)
    if isinstance(target, str):
        return _Plan(Refused(target, "unknown"), state)
    if limits is not None and ask.canary is not None and ask.source == "command":
        looser = limits.refusal(CanarySettings.model_validate(ask.canary), ask.steps)
        if looser is not None:
            return _Plan(Refused(f"{target}: {looser}", "limits"), state, target)
    move = plan(
        state,
        MoveRequest(
            ask.action,
            target,
            ask.force,
            ask.reason,
            ask.deployment_id,
            decided=ask.source == "decision",
        ),
    )
    if not move:
        return _Plan(Refused(move.verdict, "lifecycle"), state, target)
    start = start_deployment(
        move, target, ask.event_id, steps=ask.steps, mirror_fraction=ask.allocation
    )
    if isinstance(start, Refused):
        return _Plan(start, state, target)
    return _Plan(None, state, target, move, start)


async def _move(conn: Any, ask: Ask, limits: CanaryLimits | None = None) -> Outcome:
    planned = await _planned(conn, ask, limits)
    if planned.refused is not None:
        return await _refused(conn, ask, planned.refused, planned.target)
    state, target, move, start = planned.state, planned.target, planned.move, planned.start
    assert target is not None
    if move.needs_signature:
        check = await _verify_stored(conn, target)
        if not check:
            return await _refused(conn, ask, unsigned(target, check.reason, move.to_status), target)
    now = await conn.fetchval("SELECT clock_timestamp()")
    outcome = await record_applied(
        conn,
        ask,
        move.verdict,
        move.to_status,
        target=target,
        forced=move.forced,
        deployment_id=audited_deployment(move, start, ask.deployment_id),
        previous=move.archive,
    )
    if move.archive is not None:
        await conn.execute(
            "UPDATE policies SET status = 'archived' "
            "WHERE policy_id = $1 AND version = $2 AND status = 'active'",
            move.archive.policy_id,
            move.archive.version,
        )
    if move.to_status == PolicyStatus.ACTIVE:
        # GREATEST keeps intervals ordered even if the clock stepped back.
        await conn.execute(
            """
            UPDATE policy_activations
            SET active_to = GREATEST($2, active_from), archived_by = $3
            WHERE doer = $1 AND active_to IS NULL
            """,
            ask.doer,
            now,
            ask.event_id,
        )
    if move.end_deployment is not None:
        await conn.execute(
            """
            UPDATE shadow_deployments SET ended_at = $2, ended_by = $3, outcome = $4
            WHERE deployment_id = $1 AND ended_at IS NULL
            """,
            move.end_deployment,
            now,
            ask.event_id,
            move.end_outcome,
        )
    moved = await conn.execute(
        "UPDATE policies SET status = $3 WHERE policy_id = $1 AND version = $2 AND status = $4",
        target.policy_id,
        target.version,
        move.to_status,
        move.from_status,
    )
    if moved != "UPDATE 1":  # the lock makes this unreachable; fail loudly if it is not
        raise RuntimeError(f"{target} was not {move.from_status} when moved under the doer lock")
    if move.to_status == PolicyStatus.ACTIVE:
        await conn.execute(
            """
            INSERT INTO policy_activations (
                doer, policy_id, version, active_from, promoted_by
            )
            SELECT $1, $2, $3, GREATEST($4, coalesce(max(active_to), $4)), $5
            FROM policy_activations WHERE doer = $1
            """,
            ask.doer,
            target.policy_id,
            target.version,
            now,
            ask.event_id,
        )
    if start is not None and state.active is not None:
        await _start(conn, ask, start, target, state.active, now)
    return outcome


async def _start(
    conn: Any,
    ask: Ask,
    start: DeploymentStart,
    target: PolicyVersion,
    control: PolicyVersion,
    now: Any,
) -> None:
    await conn.execute(
        """
        INSERT INTO shadow_deployments (
            deployment_id, doer, policy_id, version, control_policy_id, control_version,
            mode, salt, allocation, step, steps, require_approval, started_by, started_at,
            canary
        )
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $12, $13, $14::jsonb)
        """,
        start.deployment_id,
        ask.doer,
        target.policy_id,
        target.version,
        control.policy_id,
        control.version,
        start.mode,
        start.salt,
        start.allocation,
        list(start.steps),
        ask.require_approval,
        ask.event_id,
        now,
        ask.canary or {},  # the pool's jsonb codec encodes it (once)
    )


async def _doer_state(conn: Any, doer: str) -> DoerState:
    rows = await conn.fetch(
        "SELECT policy_id, version, doer, status FROM policies "
        "WHERE doer = $1 AND status IN ('active', 'shadow', 'canary')",
        doer,
    )
    versions = [_version(row) for row in rows]
    live = await conn.fetchrow(
        "SELECT deployment_id, policy_id, version, mode, paused_at IS NOT NULL AS paused "
        "FROM shadow_deployments WHERE doer = $1 AND ended_at IS NULL",
        doer,
    )
    return DoerState(
        doer=doer,
        active=next((v for v in versions if v.status == "active"), None),
        candidate=next((v for v in versions if v.status in ("shadow", "canary")), None),
        deployment=LiveDeployment(**dict(live)) if live else None,
    )


async def _target(conn: Any, ask: Ask, state: DoerState) -> PolicyVersion | str:
    """The version the event is about, or why there is none."""
    if ask.policy_id is not None and ask.version is not None:
        row = await conn.fetchrow(
            "SELECT policy_id, version, doer, status FROM policies "
            "WHERE policy_id = $1 AND version = $2",
            ask.policy_id,
            ask.version,
        )
        if row is None:
            return f"{ask.policy_id}@{ask.version} is not registered"
        return _version(row)
    if ask.deployment_id is not None:  # a rollback naming only its deployment
        row = await conn.fetchrow(
            "SELECT p.policy_id, p.version, p.doer, p.status FROM shadow_deployments d "
            "JOIN policies p USING (policy_id, version) WHERE d.deployment_id = $1",
            ask.deployment_id,
        )
        if row is None:
            return f"deployment {ask.deployment_id} does not exist"
        return _version(row)
    return default_target(state)


def _version(row: Any) -> PolicyVersion:
    return PolicyVersion(row["policy_id"], row["version"], row["doer"], row["status"])


async def _verify_stored(conn: Any, target: PolicyVersion) -> VerifyResult:
    row = await conn.fetchrow(
        f"SELECT {STORED_SIGNATURE_COLUMNS} FROM policies WHERE policy_id = $1 AND version = $2",
        target.policy_id,
        target.version,
    )
    return verify_stored(row, await load_keyring(conn))
