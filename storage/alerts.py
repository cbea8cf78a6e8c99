"""alerts: every alert of learning.alerts, as the alerts stage records it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from models.events import Alert

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
