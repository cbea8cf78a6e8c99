"""deployment_routings and deployment_decisions: the canary stage's durable records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from models.events import DecisionMade, DeploymentRouting, TaskRouted
from storage.deployments import deployment_routing

# One statement per batch; unnest turns the column arrays back into rows.
_INSERT_ROUTINGS = """
INSERT INTO deployment_routings (
    event_id, deployment_id, doer, task_id, arm, policy_id, policy_version, step, allocation,
    routed_at
)
SELECT * FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
    $8::int[], $9::float8[], $10::timestamptz[]
)
ON CONFLICT (event_id) DO NOTHING
"""

_INSERT_DECISIONS = """
INSERT INTO deployment_decisions (
    event_id, deployment_id, doer, candidate_policy_id, candidate_version, action, reason,
    step, report, decided_at, resumes
)
SELECT d.event_id, d.deployment_id, d.doer, d.candidate_policy_id, d.candidate_version,
       d.action, d.reason, d.step, d.report::jsonb, d.decided_at, d.resumes
FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[],
    $8::int[], $9::text[], $10::timestamptz[], $11::int[]
) AS d(event_id, deployment_id, doer, candidate_policy_id, candidate_version, action, reason,
       step, report, decided_at, resumes)
ON CONFLICT (event_id) DO NOTHING
"""


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def insert_routings(pool: Any, routings: Sequence[TaskRouted]) -> int:
    """Store a batch of routed tasks with one statement; returns how many were new."""
    unique = list({r.event_id: r for r in routings}.values())
    if not unique:
        return 0
    status = await pool.execute(
        _INSERT_ROUTINGS,
        [r.event_id for r in unique],
        [r.deployment_id for r in unique],
        [r.doer for r in unique],
        [r.task_id for r in unique],
        [r.arm for r in unique],
        [r.policy_id for r in unique],
        [r.policy_version for r in unique],
        [r.step for r in unique],
        [r.allocation for r in unique],
        [r.occurred_at for r in unique],
    )
    return _count(status)


async def insert_decisions(pool: Any, decisions: Sequence[DecisionMade]) -> int:
    """Store a batch of decisions with one statement; returns how many were new."""
    unique = list({d.event_id: d for d in decisions}.values())
    if not unique:
        return 0
    status = await pool.execute(
        _INSERT_DECISIONS,
        [d.event_id for d in unique],
        [d.deployment_id for d in unique],
        [d.doer for d in unique],
        [d.candidate_policy_id for d in unique],
        [d.candidate_version for d in unique],
        [d.action for d in unique],
        [d.reason for d in unique],
        [d.step for d in unique],
        # JSON travels as text: asyncpg would read a list inside jsonb[] as a sub-array.
        [orjson.dumps(d.report.model_dump(mode="json")).decode() for d in unique],
        [d.occurred_at for d in unique],
        [d.resumes for d in unique],
    )
    return _count(status)


@dataclass(frozen=True)
class DecisionRecord:
    """One stored canary decision."""

    event_id: UUID
    deployment_id: str
    doer: str
    candidate_policy_id: str
    candidate_version: int
    action: str
    reason: str
    step: int
    report: dict[str, Any]
    decided_at: datetime


def _decision(row: Any) -> DecisionRecord:
    fields = {k: row[k] for k in DecisionRecord.__dataclass_fields__}
    report = fields["report"]
    fields["report"] = orjson.loads(report) if isinstance(report, str | bytes) else report
    return DecisionRecord(**fields)


async def decisions(pool: Any, deployment_id: str) -> list[DecisionRecord]:
    """Every recorded decision of a deployment, oldest first."""
    rows = await pool.fetch(
        "SELECT * FROM deployment_decisions WHERE deployment_id = $1 ORDER BY decided_at, id",
        deployment_id,
    )
    return [_decision(row) for row in rows]


async def routed_counts(pool: Any, deployment_id: str) -> dict[tuple[int, str], int]:
    """Stored routings of a deployment per (step, arm)."""
    rows = await pool.fetch(
        "SELECT step, arm, count(*) AS n FROM deployment_routings "
        "WHERE deployment_id = $1 GROUP BY step, arm",
        deployment_id,
    )
    return {(row["step"], row["arm"]): int(row["n"]) for row in rows}


@dataclass(frozen=True)
class DeploymentRecord:
    """A stored shadow or canary deployment as the canary stage follows it."""

    doer: str
    mode: str  # shadow | canary
    routing: DeploymentRouting
    ended: bool


async def deployment(pool: Any, deployment_id: str) -> DeploymentRecord | None:
    """The deployment with this id, ended or not; None if there is none."""
    row = await pool.fetchrow(
        "SELECT * FROM shadow_deployments WHERE deployment_id = $1", deployment_id
    )
    if row is None:
        return None
    return DeploymentRecord(
        doer=row["doer"],
        mode=row["mode"],
        routing=deployment_routing(row),
        ended=row["ended_at"] is not None,
    )
