"""The bandit's allocations as sent, kept for the console (migration 036)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

#: (doer, sequence, frozen, the record's allocations as JSON-ready dicts) of one record sent.
SentAllocations = tuple[str, int, bool, list[dict[str, Any]]]

_RECORD = """
INSERT INTO bandit_allocations (doer, sequence, frozen, allocations)
SELECT r.doer, r.sequence, r.frozen, r.allocations
FROM jsonb_to_recordset($1::jsonb) AS r(doer text, sequence int, frozen bool, allocations jsonb)
ON CONFLICT (doer, sequence, frozen) DO UPDATE SET
    last_sent_at = now(),
    -- What was sent last is what the Routers have: a record sent again after a crash may
    -- have been recomputed, and a parameter's first allocation keeps the doer's sequence.
    allocations = EXCLUDED.allocations,
    first_sent_at = CASE WHEN bandit_allocations.allocations = EXCLUDED.allocations
                         THEN bandit_allocations.first_sent_at ELSE now() END
"""


async def record_allocations(pool: Any, sent: Sequence[SentAllocations]) -> None:
    """Store records about to be sent: one row per doer, sequence and freeze, as sent last.

    A record sent again (a restart, the re-assert, an unfreeze at the same
    sequence) is the same row with a later ``last_sent_at``; its allocations
    are replaced by what was sent, which differs when a restart recomputed
    them or a new parameter's first allocation kept the doer's sequence.
    """
    if not sent:
        return
    # One JSON document (the pool's codec encodes it): a list of lists would be taken
    # for a two-dimensional array by a jsonb[] parameter.
    records = [
        {"doer": doer, "sequence": sequence, "frozen": frozen, "allocations": allocations}
        for doer, sequence, frozen, allocations in sent
    ]
    await pool.execute(_RECORD, records)


async def expire_allocations(pool: Any, older_than: timedelta) -> int:
    """Delete rows first sent before ``older_than``, except each doer's latest; how many.

    Latest as the in-force view has it: the highest sequence, then sent last.
    """
    status = await pool.execute(
        "DELETE FROM bandit_allocations b WHERE first_sent_at < now() - $1::interval"
        " AND EXISTS (SELECT 1 FROM bandit_allocations n WHERE n.doer = b.doer"
        "             AND (n.sequence, n.last_sent_at) > (b.sequence, b.last_sent_at))",
        older_than,
    )
    return int(status.rsplit(" ", 1)[-1])
