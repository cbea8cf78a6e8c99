"""Fold claims: which source record owns each run (or routing) a stage folds into a table.

A stage folds a run into its streaming state only when the record in hand is
the run's owner: the first record, by source partition and offset, that
delivered it. Duplicates from a publisher or from a restarted upstream stage
come at other offsets and are never owners. A claim is written once and never
changes, so asking again after a crash gives the same owner.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

#: (item id, source partition, source offset) of one record.
Claim = tuple[str, int, int]

_CLAIM = """
WITH input AS (
    SELECT DISTINCT ON (t.item_id) t.item_id, t.source_partition, t.source_offset
    FROM unnest($2::text[], $3::int[], $4::bigint[]) AS t(item_id, source_partition, source_offset)
    ORDER BY t.item_id, t.source_partition, t.source_offset
), inserted AS (
    INSERT INTO fold_claims (consumer, item_id, source_partition, source_offset)
    SELECT $1, item_id, source_partition, source_offset FROM input
    ON CONFLICT DO NOTHING
    RETURNING item_id, source_partition, source_offset
)
SELECT item_id, source_partition, source_offset FROM inserted
UNION ALL
SELECT c.item_id, c.source_partition, c.source_offset
FROM fold_claims c JOIN input USING (item_id)
WHERE c.consumer = $1
"""


async def owned_claims(pool: Any, consumer: str, claims: Sequence[Claim]) -> set[Claim]:
    """The claims that own their item: each item's first claim, now or in an earlier call."""
    if not claims:
        return set()
    rows = await pool.fetch(
        _CLAIM,
        consumer,
        [c[0] for c in claims],
        [c[1] for c in claims],
        [c[2] for c in claims],
    )
    owners = {(r["item_id"], r["source_partition"], r["source_offset"]) for r in rows}
    return {claim for claim in claims if claim in owners}


async def expire_claims(pool: Any, consumer: str, older_than: timedelta) -> int:
    """Delete a stage's claims older than ``older_than`` (their aggregates expired); how many."""
    status = await pool.execute(
        "DELETE FROM fold_claims WHERE consumer = $1 AND claimed_at < now() - $2::interval",
        consumer,
        older_than,
    )
    return int(status.rsplit(" ", 1)[-1])
