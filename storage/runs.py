"""The runs table: one row per completed run, written idempotently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from learning.bundles import durable_bundle
from models.events import RunCompleted


@dataclass(frozen=True)
class Source:
    """Where an event was read from."""

    topic: str
    partition: int
    offset: int


_INSERT = """
INSERT INTO runs (
    run_id, event_id, doer, phase, policy_id, policy_version, tenant_id,
    deployment_id, arm, occurred_at, source_topic, source_partition, source_offset, bundle
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT DO NOTHING
"""


async def insert_run(pool: Any, bundle: RunCompleted, source: Source) -> bool:
    """Store the run; False when it was already stored (a redelivery or a duplicate run_id)."""
    status = await pool.execute(
        _INSERT,
        bundle.run_id,
        bundle.event_id,
        bundle.doer,
        bundle.phase,
        bundle.policy_id,
        bundle.policy_version,
        bundle.tenant_id,
        bundle.deployment_id,
        bundle.arm,
        bundle.occurred_at,
        source.topic,
        source.partition,
        source.offset,
        durable_bundle(bundle),
    )
    return bool(status == "INSERT 0 1")


async def count_runs(pool: Any) -> int:
    """How many runs are stored."""
    return int(await pool.fetchval("SELECT count(*) FROM runs"))
