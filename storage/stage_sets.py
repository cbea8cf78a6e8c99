"""The stages each app id runs (migration 034): workers of one consumer group run the same ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class StageSet:
    """What an app id was last started with: its stages, where and when."""

    app_id: str
    stages: tuple[str, ...]
    host: str
    recorded_at: datetime


async def claim_stage_set(
    conn: Any, app_id: str, stages: Sequence[str], host: str, *, restage: bool = False
) -> StageSet | None:
    """Record ``stages`` as ``app_id``'s; the other set it holds, or None when recorded.

    The first worker of an app id records its stages; a later one with the same
    stages refreshes the record; one with other stages gets the recorded set back
    and records nothing, unless ``restage`` (the operator changes the layout).
    """
    wanted = sorted(set(stages))
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT app_id, stages, host, recorded_at FROM worker_stage_sets "
            "WHERE app_id = $1 FOR UPDATE",
            app_id,
        )
        if row is not None and list(row["stages"]) != wanted and not restage:
            return StageSet(row["app_id"], tuple(row["stages"]), row["host"], row["recorded_at"])
        await conn.execute(
            """
            INSERT INTO worker_stage_sets (app_id, stages, host) VALUES ($1, $2, $3)
            ON CONFLICT (app_id) DO UPDATE
                SET stages = EXCLUDED.stages, host = EXCLUDED.host, recorded_at = now()
            """,
            app_id,
            wanted,
            host,
        )
    return None


async def stage_set_of(conn: Any, app_id: str) -> StageSet | None:
    """The stage set recorded for ``app_id``, or None if no worker recorded one."""
    row = await conn.fetchrow(
        "SELECT app_id, stages, host, recorded_at FROM worker_stage_sets WHERE app_id = $1",
        app_id,
    )
    if row is None:
        return None
    return StageSet(row["app_id"], tuple(row["stages"]), row["host"], row["recorded_at"])
