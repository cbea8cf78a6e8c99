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
ON CONFLICT (doer, sequence, frozen) DO UPDATE SET last_sent_at = now()
"""


async def record_allocations(pool: Any, sent: Sequence[SentAllocations]) -> None:
    """Store records about to be sent: a new one as a row, one sent before moves its last time.

    A record is the same whenever it is sent again (a doer's sequence and
    frozen flag fix its shares), so a restart that sends it again adds nothing.
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
    """Delete rows first sent before ``older_than``, except each doer's latest; how many."""
    status = await pool.execute(
        "DELETE FROM bandit_allocations b WHERE first_sent_at < now() - $1::interval"
        " AND EXISTS (SELECT 1 FROM bandit_allocations n"
        "             WHERE n.doer = b.doer AND n.last_sent_at > b.last_sent_at)",
        older_than,
    )
    return int(status.rsplit(" ", 1)[-1])
