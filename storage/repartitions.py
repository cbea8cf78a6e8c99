"""Moves of table state to a new app id (migration 038): started, finished, or neither."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Repartition:
    """A move of ``from_app_id``'s table state to ``to_app_id``, and when it finished."""

    to_app_id: str
    from_app_id: str
    old_partitions: int
    new_partitions: int
    started_at: datetime
    finished_at: datetime | None


async def record_started(
    conn: Any, to_app_id: str, from_app_id: str, old_partitions: int, new_partitions: int
) -> None:
    """Record that the move to ``to_app_id`` is under way (a run that resumes it finds it so)."""
    await conn.execute(
        """
        INSERT INTO repartitions (to_app_id, from_app_id, old_partitions, new_partitions)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (to_app_id) DO NOTHING
        """,
        to_app_id,
        from_app_id,
        old_partitions,
        new_partitions,
    )


async def record_finished(conn: Any, to_app_id: str) -> None:
    """Mark the move to ``to_app_id`` finished: its workers may start."""
    await conn.execute(
        "UPDATE repartitions SET finished_at = now() WHERE to_app_id = $1 AND finished_at IS NULL",
        to_app_id,
    )


async def repartition_of(conn: Any, to_app_id: str) -> Repartition | None:
    """The move to ``to_app_id``, or None if no move made that app id."""
    row = await conn.fetchrow(
        "SELECT to_app_id, from_app_id, old_partitions, new_partitions, started_at, "
        "finished_at FROM repartitions WHERE to_app_id = $1",
        to_app_id,
    )
    return None if row is None else Repartition(**dict(row))
