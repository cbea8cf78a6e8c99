"""Policy versions as stored: their records, who was live when, and their lineage.

A version is registered, moved and archived only through
``storage.policy_commands`` (one transaction per command or decision, under
the doer's lock taken by :func:`lock_doer`); this module reads what those
transactions wrote. ``storage.signing_keys`` holds the keyring the versions'
signatures are checked against, ``storage.deployments`` their shadow and canary
deployments, ``storage.audit`` the audit trail of every command and decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

# The advisory-lock space of per-doer policy locks ("pols"); the two-integer
# form never collides with single-bigint locks such as the migration lock.
_LOCK_SPACE = 0x706F6C73


async def lock_doer(conn: Any, doer: str) -> None:
    """Take the doer's policy lock until the transaction ends: one change to a doer at a time."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_SPACE, doer)


async def registered_doers(pool: Any) -> set[str]:
    """Every doer with a policy in the store, as the store names it."""
    return {row["doer"] for row in await pool.fetch("SELECT DISTINCT doer FROM policies")}


def record_of(kind: type[Any], row: Any) -> Any:
    """Build the dataclass ``kind`` from the row columns of its field names."""
    return kind(**{name: row[name] for name in kind.__dataclass_fields__})


# --------------------------------------------------------------------------- records


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
    signature_format: int  # 2: over doer, policy id, version and hash; 1: the artifact alone
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


# --------------------------------------------------------------------------- reading


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
    return record_of(PolicyRecord, row) if row else None


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
    return [record_of(PolicyRecord, row) for row in rows]


async def activations(pool: Any, doer: str) -> list[ActivationRecord]:
    """Every stretch of time a version was the doer's active policy, oldest first."""
    rows = await pool.fetch(
        "SELECT * FROM policy_activations WHERE doer = $1 ORDER BY active_from, id", doer
    )
    return [record_of(ActivationRecord, row) for row in rows]


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
    return record_of(ActivationRecord, row) if row else None


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
    return [record_of(LineageRecord, row) for row in rows]


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
    return [record_of(LineageRecord, row) for row in rows]
