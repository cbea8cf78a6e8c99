"""alerts: every alert of learning.alerts, as the alerts stage records it, and its readers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from models.events import Alert
from storage.pool import rows_by_event_id_start

# One statement per batch; unnest turns the column arrays back into rows.
_INSERT = """
INSERT INTO alerts (
    event_id, doer, kind, severity, message, value, baseline, threshold, phase, policy_id,
    policy_version, deployment_id, evidence, occurred_at
)
SELECT a.event_id, a.doer, a.kind, a.severity, a.message, a.value, a.baseline, a.threshold,
       a.phase, a.policy_id, a.policy_version, a.deployment_id, a.evidence::jsonb, a.occurred_at
FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::float8[],
    $8::float8[], $9::text[], $10::text[], $11::int[], $12::text[], $13::text[],
    $14::timestamptz[]
) AS a(event_id, doer, kind, severity, message, value, baseline, threshold, phase, policy_id,
       policy_version, deployment_id, evidence, occurred_at)
ON CONFLICT (event_id) DO NOTHING
"""


async def insert_alerts(pool: Any, alerts: Sequence[Alert]) -> int:
    """Store a batch of alerts with one statement; returns how many were new."""
    unique = list({a.event_id: a for a in alerts}.values())
    if not unique:
        return 0
    status = await pool.execute(
        _INSERT,
        [a.event_id for a in unique],
        [a.doer for a in unique],
        [a.kind for a in unique],
        [a.severity for a in unique],
        [a.message for a in unique],
        [a.value for a in unique],
        [a.baseline for a in unique],
        [a.threshold for a in unique],
        [a.phase for a in unique],
        [a.policy_id for a in unique],
        [a.policy_version for a in unique],
        [a.deployment_id for a in unique],
        # JSON travels as text: asyncpg would read a list inside jsonb[] as a sub-array.
        [orjson.dumps(a.evidence).decode() for a in unique],
        [a.occurred_at for a in unique],
    )
    return int(status.rsplit(" ", 1)[-1])


@dataclass(frozen=True)
class AlertRecord:
    """An alert as the table keeps it."""

    event_id: UUID
    doer: str
    kind: str
    severity: str
    message: str
    value: float | None
    baseline: float | None
    threshold: float | None
    phase: str | None
    policy_id: str | None
    policy_version: int | None
    deployment_id: str | None
    evidence: dict[str, Any]
    occurred_at: datetime
    recorded_at: datetime


_COLUMNS = (
    "event_id, doer, kind, severity, message, value, baseline, threshold, phase, policy_id,"
    " policy_version, deployment_id, evidence, occurred_at, recorded_at"
)


async def list_alerts(
    pool: Any,
    *,
    doer: str | None = None,
    kind: str | None = None,
    severity: str | None = None,
    since: datetime | None = None,
    limit: int = 20,
) -> list[AlertRecord]:
    """The latest alerts first, of ``doer`` and ``kind`` (any case), at ``severity``, since then."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM alerts"
        " WHERE ($1::text IS NULL OR lower(doer) = lower($1))"
        " AND ($2::text IS NULL OR lower(kind) = lower($2))"
        " AND ($3::text IS NULL OR severity = $3)"
        " AND ($4::timestamptz IS NULL OR occurred_at >= $4)"
        " ORDER BY occurred_at DESC, id DESC LIMIT $5",
        doer,
        kind,
        severity,
        since,
        limit,
    )
    return [AlertRecord(**dict(row)) for row in rows]


async def find_alerts(pool: Any, prefix: str) -> list[AlertRecord]:
    """The alerts whose event id starts with ``prefix`` (dashes ignored), at most two."""
    rows = await rows_by_event_id_start(pool, "alerts", _COLUMNS, prefix)
    return [AlertRecord(**dict(row)) for row in rows]


async def alert_names(pool: Any) -> tuple[set[str], set[str]]:
    """The doers and kinds that have alerts, for "did you mean"."""
    rows = await pool.fetch("SELECT DISTINCT doer, kind FROM alerts")
    return {r["doer"] for r in rows}, {r["kind"] for r in rows}
