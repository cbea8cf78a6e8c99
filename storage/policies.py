"""The policy store: signed versions, trusted keys, deployments, the audit, and who was live when.

Every change arrives as a command or a canary decision and goes through
:func:`apply_command` or :func:`apply_decision`: one transaction per event that

1. takes the doer's advisory lock, so one doer's changes are applied one at a time;
2. returns the recorded outcome when the event was seen before (a replay adds
   no audit row and changes nothing);
3. reads the doer's state, asks ``learning.promotion.plan`` whether the move may
   happen, and checks the target's signature before it may see traffic;
4. appends the audit row (``policy_promotions``, applied or refused) and applies
   the move: archive the previous active version, end or start a deployment,
   move the target, and keep ``policy_activations`` (the live history).

The partial unique indexes (one active, one candidate, one live deployment,
one open activation per doer) and the no-overlap constraint on activations are
the database's own guard should anything write around the lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from learning.canary import DEFAULT_STEPS
from learning.lifecycle import PolicyStatus
from learning.promotion import (
    CHANGES,
    TARGETS,
    DoerState,
    LiveDeployment,
    MoveRequest,
    PolicyVersion,
    check_steps,
    deployment_id_for,
    plan,
    routing_salt,
    same_artifact,
    verify_artifact,
)
from learning.signing import (
    CanonicalJSONError,
    PublicKey,
    TrustedKey,
    TrustedKeys,
    VerifyResult,
    canonical_json,
)
from models.commands import (
    ArchivePolicy,
    CanarySettings,
    PolicyCommand,
    PromotePolicy,
    RegisterPolicy,
    RollbackPolicy,
    StartCanary,
    StartShadow,
)
from models.events import DecisionMade, DeploymentRouting, PolicyChange

# The advisory-lock space of per-doer policy locks ("pols"); the two-integer
# form never collides with single-bigint locks such as the migration lock.
_LOCK_SPACE = 0x706F6C73
# PolicyChange and Alert ids are derived from the event that caused them, so a
# re-publication after a crash carries the same id and consumers can drop it.
_EVENT_NAMESPACE = UUID("5b0c1f4e-8a53-4f43-9d5e-3f1c1b2a7c10")
DECISION_ACTOR = "canary"


def derived_event_id(kind: str, cause: UUID) -> UUID:
    """Return the stable id of the ``kind`` event (``policy-change``, ``alert``) of ``cause``."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{kind}:{cause}")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Outcome:
    """What the store did with one command or decision event (as its audit row records it)."""

    event_id: UUID
    doer: str
    action: str
    applied: bool
    verdict: str
    policy_id: str | None = None
    version: int | None = None
    from_status: str | None = None
    to_status: str | None = None
    requested_status: str | None = None
    refusal: str | None = None  # signature | lifecycle | unknown | conflict | artifact
    deployment_id: str | None = None
    actor: str = ""
    reason: str = ""
    replayed: bool = False  # the event had been handled before; nothing was done now

    @property
    def changes_live_policy(self) -> bool:
        """Whether what the doer serves changed, so a PolicyChange is due."""
        return self.applied and self.action in CHANGES

    @property
    def policy_ref(self) -> str:
        """``policy_id@version``, or ``-`` when the event named no version."""
        return f"{self.policy_id}@{self.version}" if self.policy_id else "-"

    @classmethod
    def from_row(cls, row: Any, *, replayed: bool = False) -> Outcome:
        """Build from a ``policy_promotions`` row."""
        return cls(
            event_id=row["event_id"],
            doer=row["doer"],
            action=row["action"],
            applied=row["outcome"] == "applied",
            verdict=row["verdict"],
            policy_id=row["policy_id"],
            version=row["version"],
            from_status=row["from_status"],
            to_status=row["to_status"],
            requested_status=row["requested_status"],
            refusal=row["refusal"],
            deployment_id=row["deployment_id"],
            actor=row["actor"],
            reason=row["reason"],
            replayed=replayed,
        )


@dataclass(frozen=True)
class PolicyRecord:
    """One stored policy version."""

    policy_id: str
    version: int
    doer: str
    status: str
    artifact: Any
    content_hash: str
    signature: str
    key_id: str
    parent_policy_id: str | None
    parent_version: int | None
    dataset_ids: list[str]
    experiment_id: str | None
    created_by: str
    registered_by: UUID
    created_at: datetime
    updated_at: datetime

    @property
    def ref(self) -> str:
        """``policy_id@version``."""
        return f"{self.policy_id}@{self.version}"


@dataclass(frozen=True)
class PromotionRecord:
    """One audit row: a command or decision, applied or refused."""

    id: int
    event_id: UUID
    source: str
    action: str
    doer: str
    policy_id: str | None
    version: int | None
    from_status: str | None
    to_status: str | None
    requested_status: str
    outcome: str
    refusal: str | None
    forced: bool
    actor: str
    reason: str
    verdict: str
    deployment_id: str | None
    previous_policy_id: str | None
    previous_version: int | None
    decision_report: Any
    occurred_at: datetime
    recorded_at: datetime


@dataclass(frozen=True)
class ActivationRecord:
    """One stretch of time during which a version was a doer's active policy."""

    doer: str
    policy_id: str
    version: int
    active_from: datetime
    active_to: datetime | None
    promoted_by: UUID
    archived_by: UUID | None

    @property
    def ref(self) -> str:
        """``policy_id@version``."""
        return f"{self.policy_id}@{self.version}"


@dataclass(frozen=True)
class KeyRecord:
    """A public key in the trusted keyring."""

    key_id: str
    public_key: bytes
    note: str
    created_by: str
    created_at: datetime
    retired_at: datetime | None
    revoked_at: datetime | None

    @property
    def status(self) -> str:
        """``revoked``, ``retired`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        return "retired" if self.retired_at is not None else "active"


@dataclass(frozen=True)
class LineageRecord:
    """A version in a lineage: its provenance and its promotions, oldest first."""

    depth: int  # 0 for the version asked about, 1 for its parent, … (or generation below a dataset)
    policy_id: str
    version: int
    doer: str
    status: str
    content_hash: str
    key_id: str
    parent_policy_id: str | None
    parent_version: int | None
    dataset_ids: list[str]
    experiment_id: str | None
    created_by: str
    created_at: datetime
    promotions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """``policy_id@version``."""
        return f"{self.policy_id}@{self.version}"


def _record(kind: type[Any], row: Any) -> Any:
    return kind(**{name: row[name] for name in kind.__dataclass_fields__})


# --------------------------------------------------------------------------- keys


async def add_signing_key(
    pool: Any, public_key: PublicKey, *, created_by: str, note: str = ""
) -> KeyRecord:
    """Trust a public key; adding one already present returns it unchanged."""
    await pool.execute(
        """
        INSERT INTO signing_keys (key_id, public_key, created_by, note)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (key_id) DO NOTHING
        """,
        public_key.key_id,
        public_key.raw,
        created_by,
        note,
    )
    row = await pool.fetchrow("SELECT * FROM signing_keys WHERE key_id = $1", public_key.key_id)
    return _key(row)


async def retire_signing_key(pool: Any, key_id: str) -> KeyRecord | None:
    """Stop a key vouching for new registrations; what it signed before keeps verifying."""
    row = await pool.fetchrow(
        """
        UPDATE signing_keys SET retired_at = coalesce(retired_at, now())
        WHERE key_id = $1 RETURNING *
        """,
        key_id,
    )
    return _key(row) if row else None


async def revoke_signing_key(pool: Any, key_id: str, *, note: str = "") -> KeyRecord | None:
    """Distrust a key entirely: nothing it signed moves to shadow, canary or active again."""
    row = await pool.fetchrow(
        """
        UPDATE signing_keys
        SET revoked_at = coalesce(revoked_at, now()),
            note = CASE WHEN $2 = '' THEN note ELSE $2 END
        WHERE key_id = $1 RETURNING *
        """,
        key_id,
        note,
    )
    return _key(row) if row else None


async def signing_keys(pool: Any) -> list[KeyRecord]:
    """Every key of the keyring, oldest first."""
    rows = await pool.fetch("SELECT * FROM signing_keys ORDER BY created_at, key_id")
    return [_key(row) for row in rows]


async def load_keyring(conn: Any) -> TrustedKeys:
    """The trusted keyring as it is now in the database."""
    return TrustedKeys(
        TrustedKey(
            PublicKey(key.public_key),
            added_at=key.created_at,
            retired_at=key.retired_at,
            revoked=key.revoked_at is not None,
            revoked_at=key.revoked_at,
            note=key.note,
        )
        for key in await signing_keys(conn)
    )


def _key(row: Any) -> KeyRecord:
    return replace(_record(KeyRecord, row), public_key=bytes(row["public_key"]))


# --------------------------------------------------------------------------- applying events


@dataclass(frozen=True)
class _Ask:
    """One command or decision, in the terms the audit records."""

    event_id: UUID
    source: str  # command | decision
    action: str
    doer: str
    actor: str
    reason: str
    occurred_at: datetime
    policy_id: str | None = None
    version: int | None = None
    force: bool = False
    deployment_id: str | None = None
    decision_report: dict[str, Any] | None = None
    allocation: float | None = None  # shadow: the mirrored share
    steps: Sequence[float] | None = None  # canary: traffic steps (None: the defaults)
    require_approval: bool = False
    canary: dict[str, Any] | None = None  # models.commands.CanarySettings as JSON

    @property
    def requested_status(self) -> str:
        return "draft" if self.action == "register" else TARGETS[self.action].value


async def apply_command(pool: Any, command: PolicyCommand) -> Outcome | None:
    """Apply a policy command idempotently; None for commands that are not the store's.

    ``approve_step``, ``create_experiment`` and ``request_experiment`` belong to
    other stages and are not recorded here.
    """
    if isinstance(command, RegisterPolicy):
        ask = _ask(command, "register", command.policy_id, command.version)
        return await _in_doer_lock(pool, ask, partial(_register, ask=ask, command=command))
    if isinstance(command, StartShadow):
        ask = _ask(command, "start_shadow", command.policy_id, command.version)
        ask = replace(
            ask,
            allocation=command.mirror_fraction,
            canary=command.canary.model_dump(mode="json"),
        )
    elif isinstance(command, StartCanary):
        ask = _ask(command, "start_canary", command.policy_id, command.version)
        ask = replace(
            ask,
            force=command.force,
            steps=command.steps,
            require_approval=command.require_approval,
            canary=command.canary.model_dump(mode="json"),
        )
    elif isinstance(command, PromotePolicy):
        ask = _ask(command, "promote", command.policy_id, command.version)
        ask = replace(ask, force=command.force, deployment_id=command.deployment_id)
    elif isinstance(command, RollbackPolicy):
        ask = _ask(command, "rollback", command.policy_id, command.version)
        ask = replace(ask, deployment_id=command.deployment_id)
    elif isinstance(command, ArchivePolicy):
        ask = _ask(command, "archive", command.policy_id, command.version)
    else:
        return None
    return await _in_doer_lock(pool, ask, partial(_move, ask=ask))


async def apply_decision(pool: Any, decision: DecisionMade) -> Outcome | None:
    """Apply a canary decision to promote or roll back its candidate; None for other actions.

    A ``step_up`` of a shadow (``report.deployment_mode == "shadow"``) that passed
    moves it to canary with the default steps and the shadow's canary settings.
    """
    shadow_passed = decision.action == "step_up" and decision.report.deployment_mode == "shadow"
    if decision.action not in ("promote", "rollback") and not shadow_passed:
        return None
    canary = None
    if shadow_passed:
        canary = await pool.fetchval(
            "SELECT canary FROM shadow_deployments WHERE deployment_id = $1",
            decision.deployment_id,
        )
        canary = orjson.loads(canary) if isinstance(canary, str | bytes) else canary
    ask = _Ask(
        event_id=decision.event_id,
        source="decision",
        action="start_canary" if shadow_passed else decision.action,
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


def _ask(command: Any, action: str, policy_id: str | None, version: int | None) -> _Ask:
    return _Ask(
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


async def _in_doer_lock(pool: Any, ask: _Ask, body: Callable[[Any], Awaitable[Outcome]]) -> Outcome:
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
            return await _refused(
                conn,
                ask,
                f"the database refused the change ({constraint}): another change to "
                f"{ask.doer} won; read its state and send the command again if still wanted",
                refusal="conflict",
            )


async def _lock_and_recall(conn: Any, ask: _Ask) -> Outcome | None:
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_SPACE, ask.doer)
    row = await conn.fetchrow("SELECT * FROM policy_promotions WHERE event_id = $1", ask.event_id)
    return Outcome.from_row(row, replayed=True) if row is not None else None


async def _register(conn: Any, ask: _Ask, command: RegisterPolicy) -> Outcome:
    ref = f"{command.policy_id}@{command.version}"
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
    if line is not None and line["doer"] != command.doer:
        return await _refused(
            conn,
            ask,
            f"policy {command.policy_id} belongs to doer {line['doer']!r}, not {command.doer!r}",
            refusal="conflict",
        )
    if line is not None and line["taken"]:
        what = "the same content" if line["same"] else "different content"
        return await _refused(
            conn,
            ask,
            f"{ref} is already registered, with {what}; register a new version",
            refusal="conflict",
        )
    if command.parent_policy_id is not None:
        parent = await conn.fetchval(
            "SELECT 1 FROM policies WHERE policy_id = $1 AND version = $2",
            command.parent_policy_id,
            command.parent_version,
        )
        if parent is None:
            return await _refused(
                conn,
                ask,
                f"parent {command.parent_policy_id}@{command.parent_version} is not registered",
                refusal="unknown",
            )
    try:
        canonical = canonical_json(command.artifact)
    except CanonicalJSONError as exc:
        return await _refused(conn, ask, f"{ref}: {exc}", refusal="artifact")
    now = await conn.fetchval("SELECT clock_timestamp()")
    # Recorded now, so the signature is judged as of now: a key retired before
    # this moment vouches for nothing new.
    check = verify_artifact(
        canonical,
        content_hash=command.content_hash,
        signature=command.signature,
        key_id=command.signature_key_id,
        keyring=await load_keyring(conn),
        signed_at=now,
    )
    if not check:
        return await _refused(
            conn, ask, f"{ref}: signature check failed: {check.reason}", refusal="signature"
        )
    outcome = await _applied(conn, ask, f"{ref} registered as draft; {check.reason}", "draft")
    await conn.execute(
        """
        INSERT INTO policies (
            policy_id, version, doer, artifact, artifact_canonical, content_hash, signature,
            key_id, parent_policy_id, parent_version, dataset_ids, experiment_id, created_by,
            registered_by, created_at, updated_at
        )
        VALUES ($1, $2, $3, convert_from($4, 'UTF8')::jsonb, $4, $5, $6, $7, $8, $9, $10, $11,
                $12, $13, $14, $14)
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
    )
    return outcome


async def _move(conn: Any, ask: _Ask) -> Outcome:
    state = await _doer_state(conn, ask.doer)
    target = await _target(conn, ask, state)
    if isinstance(target, str):
        return await _refused(conn, ask, target, refusal="unknown")
    move = plan(
        state,
        MoveRequest(ask.action, target, ask.force, ask.reason, ask.deployment_id),
    )
    if not move:
        return await _refused(conn, ask, move.verdict, refusal="lifecycle", target=target)
    steps: tuple[float, ...] = ()
    if move.start_mode == "canary":
        steps = tuple(DEFAULT_STEPS if ask.steps is None else ask.steps)
        problem = check_steps(steps)
        if problem:
            return await _refused(conn, ask, f"{target}: {problem}", "lifecycle", target=target)
    if move.needs_signature:
        check = await _verify_stored(conn, target)
        if not check:
            return await _refused(
                conn,
                ask,
                f"{target}: signature check failed: {check.reason}; not moved to {move.to_status}",
                refusal="signature",
                target=target,
            )
    now = await conn.fetchval("SELECT clock_timestamp()")
    deployment_id = (
        deployment_id_for(ask.event_id, move.start_mode)
        if move.start_mode
        else move.end_deployment or ask.deployment_id
    )
    outcome = await _applied(
        conn,
        ask,
        move.verdict,
        move.to_status,
        target=target,
        forced=move.forced,
        deployment_id=deployment_id,
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
    if move.start_mode is not None and state.active is not None:
        allocation = steps[0] if move.start_mode == "canary" else ask.allocation or 1.0
        await conn.execute(
            """
            INSERT INTO shadow_deployments (
                deployment_id, doer, policy_id, version, control_policy_id, control_version,
                mode, salt, allocation, step, steps, require_approval, started_by, started_at,
                canary
            )
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $12, $13, $14::jsonb)
            """,
            deployment_id,
            ask.doer,
            target.policy_id,
            target.version,
            state.active.policy_id,
            state.active.version,
            move.start_mode,
            routing_salt(ask.event_id),
            allocation,
            list(steps),
            ask.require_approval,
            ask.event_id,
            now,
            orjson.dumps(ask.canary or {}).decode(),
        )
    return outcome


async def _doer_state(conn: Any, doer: str) -> DoerState:
    rows = await conn.fetch(
        "SELECT policy_id, version, doer, status FROM policies "
        "WHERE doer = $1 AND status IN ('active', 'shadow', 'canary')",
        doer,
    )
    versions = [_version(row) for row in rows]
    live = await conn.fetchrow(
        "SELECT deployment_id, policy_id, version, mode FROM shadow_deployments "
        "WHERE doer = $1 AND ended_at IS NULL",
        doer,
    )
    return DoerState(
        doer=doer,
        active=next((v for v in versions if v.status == "active"), None),
        candidate=next((v for v in versions if v.status in ("shadow", "canary")), None),
        deployment=LiveDeployment(**dict(live)) if live else None,
    )


async def _target(conn: Any, ask: _Ask, state: DoerState) -> PolicyVersion | str:
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
    if state.candidate is None:
        return f"{ask.doer} has no shadow or canary policy to roll back"
    return state.candidate


def _version(row: Any) -> PolicyVersion:
    return PolicyVersion(row["policy_id"], row["version"], row["doer"], row["status"])


async def _verify_stored(conn: Any, target: PolicyVersion) -> VerifyResult:
    row = await conn.fetchrow(
        "SELECT artifact, artifact_canonical, content_hash, signature, key_id, created_at "
        "FROM policies WHERE policy_id = $1 AND version = $2",
        target.policy_id,
        target.version,
    )
    canonical = bytes(row["artifact_canonical"])
    check = verify_artifact(
        canonical,
        content_hash=row["content_hash"],
        signature=row["signature"],
        key_id=row["key_id"],
        keyring=await load_keyring(conn),
        signed_at=row["created_at"],
    )
    if check and not same_artifact(row["artifact"], canonical):
        return VerifyResult(
            False, "the stored artifact differs from the signed bytes", check.key_id
        )
    return check


async def _applied(
    conn: Any,
    ask: _Ask,
    verdict: str,
    to_status: str,
    *,
    target: PolicyVersion | None = None,
    forced: bool = False,
    deployment_id: str | None = None,
    previous: PolicyVersion | None = None,
) -> Outcome:
    return await _audit(
        conn,
        ask,
        outcome="applied",
        verdict=verdict,
        from_status=target.status if target else None,
        to_status=to_status,
        target=target,
        forced=forced,
        deployment_id=deployment_id,
        previous=previous,
    )


async def _refused(
    conn: Any, ask: _Ask, verdict: str, refusal: str, *, target: PolicyVersion | None = None
) -> Outcome:
    status = target.status if target else None
    return await _audit(
        conn,
        ask,
        outcome="refused",
        verdict=verdict,
        refusal=refusal,
        from_status=status,
        to_status=status,
        target=target,
        deployment_id=ask.deployment_id,
    )


async def _audit(
    conn: Any,
    ask: _Ask,
    *,
    outcome: str,
    verdict: str,
    from_status: str | None,
    to_status: str | None,
    target: PolicyVersion | None = None,
    refusal: str | None = None,
    forced: bool = False,
    deployment_id: str | None = None,
    previous: PolicyVersion | None = None,
) -> Outcome:
    row = await conn.fetchrow(
        """
        INSERT INTO policy_promotions (
            event_id, source, action, doer, policy_id, version, from_status, to_status,
            requested_status, outcome, refusal, forced, actor, reason, verdict, deployment_id,
            previous_policy_id, previous_version, decision_report, occurred_at
        )
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                $18, $19, $20)
        RETURNING *
        """,
        ask.event_id,
        ask.source,
        ask.action,
        ask.doer,
        target.policy_id if target else ask.policy_id,
        target.version if target else ask.version,
        from_status,
        to_status,
        ask.requested_status,
        outcome,
        refusal,
        forced,
        ask.actor,
        ask.reason,
        verdict,
        deployment_id,
        previous.policy_id if previous else None,
        previous.version if previous else None,
        ask.decision_report,
        ask.occurred_at,
    )
    return Outcome.from_row(row)


# --------------------------------------------------------------------------- the live policy


async def current_change(pool: Any, doer: str) -> PolicyChange | None:
    """The doer's live state as a PolicyChange, or None while it has no active policy.

    Built from the database, not from the event being handled, so publishing it
    again (after a crash, or for a replay) never puts an older state last on
    the compacted topic. Its event id derives from the audit row of the change
    that produced the state.
    """
    active = await pool.fetchrow(
        "SELECT policy_id, version, content_hash, key_id, updated_at FROM policies "
        "WHERE doer = $1 AND status = 'active'",
        doer,
    )
    if active is None:
        return None
    last = await pool.fetchrow(
        """
        SELECT * FROM policy_promotions
        WHERE doer = $1 AND outcome = 'applied' AND action = ANY($2::text[])
        ORDER BY id DESC LIMIT 1
        """,
        doer,
        list(CHANGES),
    )
    live = await pool.fetchrow(
        "SELECT * FROM shadow_deployments WHERE doer = $1 AND ended_at IS NULL", doer
    )
    deployment = deployment_routing(live) if live else None
    promoted = last is not None and last["action"] == "promote"
    return PolicyChange(
        event_id=derived_event_id("policy-change", last["event_id"]) if last else uuid.uuid4(),
        occurred_at=last["recorded_at"] if last else active["updated_at"],
        doer=doer,
        change=CHANGES[last["action"]] if last else "promoted",
        status=live["mode"] if live else "active",
        policy_id=active["policy_id"],
        version=active["version"],
        content_hash=active["content_hash"],
        signature_key_id=active["key_id"],
        previous_policy_id=last["previous_policy_id"] if promoted else None,
        previous_version=last["previous_version"] if promoted else None,
        deployment=deployment,
        actor=last["actor"] if last else None,
        reason=last["reason"] if last else None,
    )


def deployment_routing(live: Any) -> DeploymentRouting:
    """What a router and the canary stage need of a ``shadow_deployments`` row."""
    canary = live["canary"]
    if isinstance(canary, str | bytes):
        canary = orjson.loads(canary)
    return DeploymentRouting(
        deployment_id=live["deployment_id"],
        salt=live["salt"],
        candidate_policy_id=live["policy_id"],
        candidate_version=live["version"],
        allocation=live["allocation"],
        step=live["step"],
        control_policy_id=live["control_policy_id"],
        control_version=live["control_version"],
        steps=list(live["steps"]),
        require_approval=live["require_approval"],
        started_at=live["started_at"],
        canary=CanarySettings.model_validate(canary) if canary else None,
        paused=live["paused_at"] is not None,
    )


# --------------------------------------------------------------------------- canary steps


async def apply_step(pool: Any, decision: DecisionMade) -> PolicyChange | None:
    """Move a live canary to the decision's step; the doer's new live state, None if stale.

    A step-up names the step it moves to. It applies while the deployment is
    live, not paused, and below that step, so a replayed or stale decision
    changes nothing (and returns None). With ``require_approval`` the canary
    stage asks for approval instead of deciding a step-up (:func:`approve_step`).
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_SPACE, decision.doer
        )
        moved = await conn.execute(
            """
            UPDATE shadow_deployments SET step = $2, allocation = steps[$2 + 1]
            WHERE deployment_id = $1 AND ended_at IS NULL AND paused_at IS NULL
              AND mode = 'canary' AND step < $2 AND $2 < cardinality(steps)
            """,
            decision.deployment_id,
            decision.step,
        )
    if moved != "UPDATE 1":
        return None
    return await _step_change(pool, decision.doer, decision.event_id, decision.reason, "canary")


async def approve_step(
    pool: Any, doer: str, deployment_id: str, step: int, *, event_id: UUID, actor: str, reason: str
) -> PolicyChange | None:
    """Let a deployment waiting for approval move to ``step``; its new live state, None if not."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_SPACE, doer)
        moved = await conn.execute(
            """
            UPDATE shadow_deployments SET step = $2, allocation = steps[$2 + 1]
            WHERE deployment_id = $1 AND doer = $3 AND ended_at IS NULL AND paused_at IS NULL
              AND mode = 'canary' AND step + 1 = $2 AND $2 < cardinality(steps)
            """,
            deployment_id,
            step,
            doer,
        )
    if moved != "UPDATE 1":
        return None
    return await _step_change(pool, doer, event_id, reason, actor)


async def pause_deployment(pool: Any, decision: DecisionMade) -> PolicyChange | None:
    """Mark a live deployment paused (routing stays as it is); the doer's new state, None if not.

    None when the deployment had ended or was paused already (a replayed pause).
    """
    paused = await pool.execute(
        """
        UPDATE shadow_deployments SET paused_at = $2, paused_reason = $3
        WHERE deployment_id = $1 AND ended_at IS NULL AND paused_at IS NULL
        """,
        decision.deployment_id,
        decision.occurred_at,
        decision.reason,
    )
    if paused != "UPDATE 1":
        return None
    return await _step_change(
        pool, decision.doer, decision.event_id, decision.reason, DECISION_ACTOR, "paused"
    )


async def _step_change(
    pool: Any, doer: str, cause: UUID, reason: str, actor: str, kind: str = "step_changed"
) -> PolicyChange | None:
    change = await current_change(pool, doer)
    if change is None or change.deployment is None:
        return None
    return change.model_copy(
        update={
            "event_id": derived_event_id("policy-change", cause),
            "change": kind,
            "actor": actor,
            "reason": reason,
        }
    )


# --------------------------------------------------------------------------- reading


async def outcome_of(pool: Any, event_id: UUID) -> Outcome | None:
    """What the store did with an event, once it has handled it."""
    row = await pool.fetchrow("SELECT * FROM policy_promotions WHERE event_id = $1", event_id)
    return Outcome.from_row(row) if row else None


async def find_policy(pool: Any, policy_id: str, version: int | None = None) -> PolicyRecord | None:
    """A stored version; its latest when ``version`` is None."""
    row = await pool.fetchrow(
        """
        SELECT * FROM policies
        WHERE policy_id = $1 AND ($2::integer IS NULL OR version = $2)
        ORDER BY version DESC LIMIT 1
        """,
        policy_id,
        version,
    )
    return _record(PolicyRecord, row) if row else None


async def next_version(pool: Any, policy_id: str) -> int:
    """The version number a new registration of ``policy_id`` would take."""
    latest = await pool.fetchval(
        "SELECT max(version) FROM policies WHERE policy_id = $1", policy_id
    )
    return int(latest or 0) + 1


async def list_policies(
    pool: Any, *, doer: str | None = None, status: str | None = None, limit: int = 200
) -> list[PolicyRecord]:
    """Stored versions, newest first, optionally of one doer or in one status."""
    rows = await pool.fetch(
        """
        SELECT * FROM policies
        WHERE ($1::text IS NULL OR doer = $1) AND ($2::text IS NULL OR status = $2)
        ORDER BY created_at DESC, policy_id, version DESC
        LIMIT $3
        """,
        doer,
        status,
        limit,
    )
    return [_record(PolicyRecord, row) for row in rows]


async def promotions(
    pool: Any,
    *,
    doer: str | None = None,
    policy_id: str | None = None,
    version: int | None = None,
) -> list[PromotionRecord]:
    """Audit rows, oldest first, of a doer or of a policy (and version)."""
    rows = await pool.fetch(
        """
        SELECT * FROM policy_promotions
        WHERE ($1::text IS NULL OR doer = $1)
          AND ($2::text IS NULL OR policy_id = $2)
          AND ($3::integer IS NULL OR version = $3)
        ORDER BY id
        """,
        doer,
        policy_id,
        version,
    )
    return [_record(PromotionRecord, row) for row in rows]


async def activations(pool: Any, doer: str) -> list[ActivationRecord]:
    """Every stretch of time a version was the doer's active policy, oldest first."""
    rows = await pool.fetch(
        "SELECT * FROM policy_activations WHERE doer = $1 ORDER BY active_from, id", doer
    )
    return [_record(ActivationRecord, row) for row in rows]


async def live_at(pool: Any, doer: str, at: datetime) -> ActivationRecord | None:
    """The version that was the doer's active policy at ``at``, if any."""
    row = await pool.fetchrow(
        """
        SELECT * FROM policy_activations
        WHERE doer = $1 AND active_from <= $2 AND (active_to IS NULL OR active_to > $2)
        """,
        doer,
        at,
    )
    return _record(ActivationRecord, row) if row else None


_LINEAGE_COLUMNS = """
    c.depth, c.policy_id, c.version, c.doer, c.status, c.content_hash, c.key_id,
    c.parent_policy_id, c.parent_version, c.dataset_ids, c.experiment_id, c.created_by,
    c.created_at,
    coalesce((
        SELECT jsonb_agg(jsonb_build_object(
            'action', pr.action, 'outcome', pr.outcome, 'from_status', pr.from_status,
            'to_status', pr.to_status, 'actor', pr.actor, 'reason', pr.reason,
            'verdict', pr.verdict, 'deployment_id', pr.deployment_id,
            'event_id', pr.event_id, 'recorded_at', pr.recorded_at
        ) ORDER BY pr.id)
        FROM policy_promotions pr
        WHERE pr.policy_id = c.policy_id AND pr.version = c.version
    ), '[]'::jsonb) AS promotions
"""


async def lineage(pool: Any, policy_id: str, version: int) -> list[LineageRecord]:
    """The version and its ancestors (parent, grandparent, …), each with datasets and promotions.

    One query: datasets and experiment → policy → parent chain → every audit row.
    """
    rows = await pool.fetch(
        f"""
        WITH RECURSIVE chain AS (
            SELECT p.*, 0 AS depth FROM policies p WHERE policy_id = $1 AND version = $2
            UNION ALL
            SELECT p.*, chain.depth + 1 FROM policies p
            JOIN chain ON p.policy_id = chain.parent_policy_id
                      AND p.version = chain.parent_version
        )
        SELECT {_LINEAGE_COLUMNS} FROM chain c ORDER BY c.depth
        """,
        policy_id,
        version,
    )
    return [_record(LineageRecord, row) for row in rows]


async def dataset_lineage(pool: Any, dataset_id: str) -> list[LineageRecord]:
    """Every version trained on a dataset and every version derived from those, with promotions.

    ``depth`` is 0 for versions that name the dataset, 1 for their children, and so on.
    """
    rows = await pool.fetch(
        f"""
        WITH RECURSIVE descent AS (
            SELECT p.*, 0 AS depth FROM policies p WHERE $1 = ANY(p.dataset_ids)
            UNION
            SELECT p.*, descent.depth + 1 FROM policies p
            JOIN descent ON p.parent_policy_id = descent.policy_id
                        AND p.parent_version = descent.version
        ),
        c AS (
            SELECT DISTINCT ON (policy_id, version) * FROM descent
            ORDER BY policy_id, version, depth
        )
        SELECT {_LINEAGE_COLUMNS} FROM c ORDER BY c.depth, c.created_at
        """,
        dataset_id,
    )
    return [_record(LineageRecord, row) for row in rows]
