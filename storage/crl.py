"""crl_results and learning_progress: the durable record of every run's loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from models.events import CRLComputed

# One statement per batch: unnest turns the column arrays back into rows, so the
# statement-level trigger folds the whole batch into learning_progress at once.
_INSERT_OWNERS = """
WITH inserted AS (
INSERT INTO crl_results (
    run_id, event_id, source_event_id, doer, phase, policy_id, policy_version, tenant_id,
    deployment_id, arm, shadow, replay_id, model, occurred_at, loss, terms, contributions,
    weights_version, gate_failures, security_criticals, source_partition, source_offset
)
SELECT r.run_id, r.event_id, r.source_event_id, r.doer, r.phase, r.policy_id, r.policy_version,
       r.tenant_id, r.deployment_id, r.arm, r.shadow, r.replay_id, r.model, r.occurred_at, r.loss,
       r.terms::jsonb, r.contributions::jsonb, r.weights_version,
       ARRAY(SELECT jsonb_array_elements_text(r.gate_failures::jsonb)), r.security_criticals,
       r.source_partition, r.source_offset
FROM unnest(
    $1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::int[], $8::text[],
    $9::text[], $10::text[], $11::bool[], $12::text[], $13::text[], $14::timestamptz[],
    $15::float8[], $16::text[], $17::text[], $18::text[], $19::text[], $20::int[], $21::int[],
    $22::bigint[]
) AS r(run_id, event_id, source_event_id, doer, phase, policy_id, policy_version, tenant_id,
       deployment_id, arm, shadow, replay_id, model, occurred_at, loss, terms, contributions,
       weights_version, gate_failures, security_criticals, source_partition, source_offset)
ON CONFLICT DO NOTHING
RETURNING run_id, source_partition, source_offset, doer, tenant_id
)
-- The owner (source partition and offset, doer and tenant) of every run of the
-- batch: the rows inserted now, and the rows that were there before the statement.
SELECT run_id, source_partition, source_offset, doer, tenant_id FROM inserted
UNION ALL
SELECT run_id, source_partition, source_offset, doer, tenant_id
FROM crl_results WHERE run_id = ANY($1::text[])
"""

#: Where a result came from: its source partition and offset, or None (not from Kafka).
Source = tuple[int, int] | None


class Owner(NamedTuple):
    """The stored row of a run: the record that first stored it, and whose run it is."""

    source: Source
    doer: str
    tenant: str

    def owns(self, result: CRLComputed) -> bool:
        """Whether ``result`` is this run (same doer and tenant), not another under its id."""
        return (self.doer, self.tenant) == (result.doer, result.tenant_id)


async def store_crl_results(
    pool: Any, results: Sequence[CRLComputed], sources: Sequence[Source]
) -> dict[str, Owner]:
    """Store a batch of results; the owner of each run: the source that first stored it.

    A run is folded into the streaming aggregates only by the record that owns
    it (storage/migrations/010_fold_claims.sql), so a duplicate never is. The
    owner also names the doer and tenant of the stored run: a result of another
    doer or tenant under the same run id is not that run (``Owner.owns``).
    """
    if not results:
        return {}
    rows = await pool.fetch(_INSERT_OWNERS, *_columns(results, sources))
    return {
        r["run_id"]: Owner(
            None if r["source_partition"] is None else (r["source_partition"], r["source_offset"]),
            r["doer"],
            r["tenant_id"],
        )
        for r in rows
    }


def _columns(results: Sequence[CRLComputed], sources: Sequence[Source]) -> tuple[Any, ...]:
    # Within one batch the same run may appear twice (a redelivery in the same
    # fetch); ON CONFLICT cannot see rows of its own statement, so keep the first.
    unique = list(
        {r.run_id: (r, s) for r, s in reversed(list(zip(results, sources, strict=True)))}.values()
    )
    origins = [s for _, s in unique]
    unique_results = [r for r, _ in unique]
    return (
        *_result_columns(unique_results),
        [o[0] if o else None for o in origins],
        [o[1] if o else None for o in origins],
    )


def _result_columns(unique: Sequence[CRLComputed]) -> tuple[Any, ...]:
    return (
        [r.run_id for r in unique],
        [r.event_id for r in unique],
        [r.source_event_id for r in unique],
        [r.doer for r in unique],
        [r.phase for r in unique],
        [r.policy_id for r in unique],
        [r.policy_version for r in unique],
        [r.tenant_id for r in unique],
        [r.deployment_id for r in unique],
        [r.arm for r in unique],
        [r.shadow for r in unique],
        [r.replay_id for r in unique],
        [r.model for r in unique],
        [r.run_occurred_at for r in unique],
        [r.loss for r in unique],
        # JSON travels as text: asyncpg would read a list inside jsonb[] as a sub-array.
        [r.terms.to_json().decode() for r in unique],
        [orjson.dumps(r.contributions).decode() for r in unique],
        [r.weights_version for r in unique],
        [orjson.dumps(r.gate_failures).decode() for r in unique],
        [r.security_criticals for r in unique],
    )


async def count_results(pool: Any, doers: Sequence[str] | None = None) -> int:
    """How many runs have a stored result (optionally only for some doers)."""
    if doers is None:
        return int(await pool.fetchval("SELECT count(*) FROM crl_results"))
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM crl_results WHERE doer = ANY($1::text[])", list(doers)
        )
    )
