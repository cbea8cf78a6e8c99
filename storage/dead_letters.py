"""dead_letters: what the dead-letter stage records of each letter, without its payload."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from models.events import DeadLetter
from storage.pool import rows_by_event_id_start

# One statement per batch; unnest turns the column arrays back into rows.
_INSERT = """
INSERT INTO dead_letters (
    event_id, doer, stage, error_type, reason, topic, partition, "offset", consumer,
    payload_size, occurred_at
)
SELECT * FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
    $8::bigint[], $9::text[], $10::bigint[], $11::timestamptz[]
)
ON CONFLICT (event_id) DO NOTHING
"""


@dataclass(frozen=True)
class DeadLetterRecord:
    """A dead letter's metadata and reason: what the table keeps (no payload, no key)."""

    event_id: UUID
    doer: str
    stage: str
    error_type: str
    reason: str
    topic: str
    partition: int
    offset: int
    consumer: str | None
    payload_size: int | None
    occurred_at: datetime

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterRecord:
        """The record of ``letter``: everything but its value and key bytes."""
        return cls(
            event_id=letter.event_id,
            doer=letter.doer,
            stage=letter.stage,
            error_type=letter.error_type,
            reason=letter.reason,
            topic=letter.topic,
            partition=letter.partition,
            offset=letter.offset,
            consumer=letter.consumer,
            payload_size=letter.payload_size,
            occurred_at=letter.occurred_at,
        )


async def insert_dead_letters(pool: Any, records: Sequence[DeadLetterRecord]) -> int:
    """Store a batch of records with one statement; returns how many were new."""
    unique = list({r.event_id: r for r in records}.values())
    if not unique:
        return 0
    status = await pool.execute(
        _INSERT,
        [r.event_id for r in unique],
        [r.doer for r in unique],
        [r.stage for r in unique],
        [r.error_type for r in unique],
        [r.reason for r in unique],
        [r.topic for r in unique],
        [r.partition for r in unique],
        [r.offset for r in unique],
        [r.consumer for r in unique],
        [r.payload_size for r in unique],
        [r.occurred_at for r in unique],
    )
    return int(status.rsplit(" ", 1)[-1])


_COLUMNS = (
    'event_id, doer, stage, error_type, reason, topic, partition, "offset", consumer,'
    " payload_size, occurred_at"
)
#: The same, of a table aliased ``l``.
_L_COLUMNS = ", ".join("l." + c.strip() for c in _COLUMNS.split(","))

#: A record's place in its topic: (topic, partition, offset).
Origin = tuple[str, int, int]

#: The rows of ``origins`` passed as $1–$3, for a join: ``JOIN {_ORIGINS} ON …o.t, o.p, o.f``.
_ORIGINS = "unnest($1::text[], $2::int[], $3::bigint[]) AS o(t, p, f)"


def _origin_arrays(origins: Sequence[Origin]) -> tuple[list[str], list[int], list[int]]:
    """The topics, partitions and offsets of ``origins``, as $1–$3 of :data:`_ORIGINS`."""
    return [o[0] for o in origins], [o[1] for o in origins], [o[2] for o in origins]


async def list_dead_letters(
    pool: Any,
    *,
    stage: str | None = None,
    doer: str | None = None,
    reason: str | None = None,
    limit: int = 20,
) -> list[DeadLetterRecord]:
    """The latest letters first, of ``stage`` and ``doer``, whose reason contains ``reason``.

    Stage and doer are matched regardless of case; ``reason`` (any case) also
    matches a reason as the console groups it, positions written "line … column …"
    (migration 028), so text copied from the dead-letter page finds its letters.
    """
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM dead_letters"
        " WHERE ($1::text IS NULL OR lower(stage) = lower($1))"
        " AND ($2::text IS NULL OR lower(doer) = lower($2))"
        " AND ($3::text IS NULL OR strpos(lower(reason), lower($3)) > 0"
        "      OR strpos(lower(regexp_replace(reason, 'line [0-9]+ column [0-9]+',"
        "                 'line … column …', 'g')), lower($3)) > 0)"
        " ORDER BY occurred_at DESC, id DESC LIMIT $4",
        stage,
        doer,
        reason,
        limit,
    )
    return [DeadLetterRecord(**dict(row)) for row in rows]


async def find_dead_letters(pool: Any, prefix: str) -> list[DeadLetterRecord]:
    """The letters whose event id starts with ``prefix`` (dashes ignored), at most two."""
    rows = await rows_by_event_id_start(pool, "dead_letters", _COLUMNS, prefix)
    return [DeadLetterRecord(**dict(row)) for row in rows]


async def letter_names(pool: Any) -> tuple[set[str], set[str]]:
    """The stages and doers that have letters, for "did you mean"."""
    rows = await pool.fetch("SELECT DISTINCT stage, doer FROM dead_letters")
    return {r["stage"] for r in rows}, {r["doer"] for r in rows}


async def letters_to_replay(
    pool: Any,
    *,
    error_type: str | None = None,
    stage: str | None = None,
    doer: str | None = None,
    event_ids: Sequence[str] = (),
) -> list[DeadLetterRecord]:
    """The letters that match, oldest origin first, whose refused record was never replayed.

    Every given filter must match; ``event_ids`` are starts of letters' event ids
    (dashes ignored), any of which matches.
    """
    prefixes = [e.replace("-", "").lower() for e in event_ids]
    rows = await pool.fetch(
        f"SELECT {_L_COLUMNS} FROM dead_letters l"
        " WHERE ($1::text IS NULL OR lower(l.error_type) = lower($1))"
        " AND ($2::text IS NULL OR lower(l.stage) = lower($2))"
        " AND ($3::text IS NULL OR lower(l.doer) = lower($3))"
        " AND (cardinality($4::text[]) = 0"
        "      OR EXISTS (SELECT 1 FROM unnest($4::text[]) p"
        "                 WHERE starts_with(replace(l.event_id::text, '-', ''), p)))"
        " AND NOT EXISTS (SELECT 1 FROM dead_letter_replays r WHERE r.topic = l.topic"
        '                 AND r.partition = l.partition AND r."offset" = l."offset")'
        ' ORDER BY l.topic, l.partition, l."offset", l.id',
        error_type,
        stage,
        doer,
        prefixes,
    )
    return [DeadLetterRecord(**dict(row)) for row in rows]


@dataclass(frozen=True)
class Replay:
    """A refused record published again: where it was, where its copy landed, and who did it."""

    topic: str
    partition: int
    offset: int
    doer: str
    error_types: tuple[str, ...]
    new_partition: int
    new_offset: int
    actor: str


#: One replay at a time, across processes: the check that a record was never replayed
#: and the row that records its replay hold the lock between them.
REPLAY_LOCK = "SELECT pg_advisory_xact_lock(hashtext('learnops dlq replay'))"


async def replayed_among(conn: Any, origins: Sequence[Origin]) -> set[Origin]:
    """Those of ``origins`` (topic, partition, offset) published again already; one query."""
    if not origins:
        return set()
    topics, partitions, offsets = zip(*origins, strict=True)
    rows = await conn.fetch(
        'SELECT r.topic, r.partition, r."offset" FROM dead_letter_replays r'
        " JOIN unnest($1::text[], $2::int[], $3::bigint[]) AS o(topic, partition, at)"
        ' ON r.topic = o.topic AND r.partition = o.partition AND r."offset" = o.at',
        list(topics),
        list(partitions),
        list(offsets),
    )
    return {(row["topic"], row["partition"], row["offset"]) for row in rows}


async def record_replays(conn: Any, replays: Sequence[Replay]) -> None:
    """Record ``replays`` (append-only; each origin once), in one pipelined round trip."""
    await conn.executemany(
        'INSERT INTO dead_letter_replays (topic, partition, "offset", doer, error_types,'
        " new_partition, new_offset, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (
                r.topic,
                r.partition,
                r.offset,
                r.doer,
                list(r.error_types),
                r.new_partition,
                r.new_offset,
                r.actor,
            )
            for r in replays
        ],
    )


async def counted_already(conn: Any, values: Mapping[Origin, bytes | None]) -> set[Origin]:
    """The refused records whose run or routing PostgreSQL holds (a copy would not count).

    A bundle's run id in ``crl_results`` (the crl stage folds a run from the
    record that first stored it), or a routing's claim by the canary
    (``fold_claims``): a worker took the original, which then owns it. Bytes
    that do not parse hold neither. One query per kind, however many records.
    """
    runs: dict[str, list[Origin]] = {}
    routings: dict[str, list[Origin]] = {}
    for origin, value in values.items():
        try:
            document = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            continue
        if not isinstance(document, dict):
            continue
        if origin[0] == "learning.run-completed" and isinstance(document.get("run_id"), str):
            runs.setdefault(document["run_id"], []).append(origin)
        elif origin[0] == "learning.task-routed" and isinstance(document.get("event_id"), str):
            # The canary claims a routing (fold_claims) before it stores it, and stores
            # only those of a deployment it knows: the claim is what a copy would meet.
            routings.setdefault(f"task/{document['event_id']}", []).append(origin)
    held = {
        row["run_id"]
        for row in await conn.fetch(
            "SELECT run_id FROM crl_results WHERE run_id = ANY($1::text[])", list(runs)
        )
    }
    claimed = {
        row["item_id"]
        for row in await conn.fetch(
            "SELECT item_id FROM fold_claims WHERE consumer = 'canary'"
            " AND item_id = ANY($1::text[])",
            list(routings),
        )
    }
    return {o for i in held for o in runs[i]} | {o for i in claimed for o in routings[i]}


async def letters_of(pool: Any, origins: Sequence[Origin]) -> list[DeadLetterRecord]:
    """Every letter of the records at these (topic, partition, offset)s, whatever refused them."""
    if not origins:
        return []
    rows = await pool.fetch(
        f"SELECT {_L_COLUMNS} FROM dead_letters l JOIN {_ORIGINS}"
        ' ON l.topic = o.t AND l.partition = o.p AND l."offset" = o.f',
        *_origin_arrays(origins),
    )
    return [DeadLetterRecord(**dict(row)) for row in rows]


async def replays_of(pool: Any, origins: Sequence[Origin]) -> dict[Origin, tuple[int, int]]:
    """Where the replayed ones of these records' copies landed: (partition, offset) by origin."""
    if not origins:
        return {}
    rows = await pool.fetch(
        'SELECT r.topic, r.partition, r."offset", r.new_partition, r.new_offset'
        f" FROM dead_letter_replays r JOIN {_ORIGINS}"
        ' ON r.topic = o.t AND r.partition = o.p AND r."offset" = o.f',
        *_origin_arrays(origins),
    )
    return {
        (r["topic"], r["partition"], r["offset"]): (r["new_partition"], r["new_offset"])
        for r in rows
    }
