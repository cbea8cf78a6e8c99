"""`learnops dlq list|show|replay`: what the stages refused, the input itself, and its replay.

The dead-letter stage keeps each letter's metadata and reason in PostgreSQL
(``dead_letters``: no payload, no key, since they may hold personal data). `list`
reads that table. `show` reads the refused record itself from the topic and
offset the letter names, while the topic's retention keeps it: the whole
original, where the letter on learning.dlq may hold a prefix of a large one.
`replay` publishes refused records of the orchestrator's topics again, once
each, where their key belongs, once what refused them is mended.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from dataclasses import asdict
from typing import Any

import click
import orjson

from learnops.cli.main import (
    GroupedCommand,
    actor_option,
    command,
    database,
    event_id_start,
    fail,
    group,
    json_option,
    limit_option,
    listed_note,
    nothing_listed,
    require_writes,
    table,
    usage_error,
)
from storage.dead_letters import (
    REPLAY_LOCK,
    DeadLetterRecord,
    Origin,
    Replay,
    counted_already,
    find_dead_letters,
    letter_names,
    letters_of,
    letters_to_replay,
    list_dead_letters,
    record_replays,
    replayed_among,
    replays_of,
)

#: Bytes of a payload printed as text before `--raw` is needed for the rest.
SHOWN_BYTES = 20_000


@group("Dead letters: what the stages refused and why; the refused input itself.")
def dlq() -> None:
    pass


def _row(letter: DeadLetterRecord) -> dict[str, Any]:
    """The letter's record as JSON-ready values."""
    return {
        **asdict(letter),
        "event_id": str(letter.event_id),
        "occurred_at": letter.occurred_at.isoformat(),
    }


@command(
    dlq,
    "list",
    click.option("--stage", help="Only letters of this stage (crl, curator, canary, …)."),
    click.option("--doer", help="Only letters of this doer ('unknown': no usable doer)."),
    click.option("--reason", help="Only letters whose reason contains this text (any case)."),
    limit_option(20),
    json_option,
)
async def dlq_list(
    self: GroupedCommand,
    stage: str | None,
    doer: str | None,
    reason: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List dead letters, latest first: which stage refused what, why, and where it was read."""
    async with database(self) as pool:
        letters = await list_dead_letters(pool, stage=stage, doer=doer, reason=reason, limit=limit)
        replayed = await replays_of(pool, [(x.topic, x.partition, x.offset) for x in letters])
        empty: tuple[set[str], set[str]] = (set(), set())
        stages, doers = await letter_names(pool) if not letters and (stage or doer) else empty

    def copy_of(x: DeadLetterRecord) -> str | None:
        found = replayed.get((x.topic, x.partition, x.offset))
        return None if found is None else _at((x.topic, *found))

    if as_json:
        rows = [_row(x) | {"replayed_to": copy_of(x)} for x in letters]
        self.say(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    if not letters:
        filters = (("stage", stage, stages), ("doer", doer, doers))
        self.say(nothing_listed("letters", filters, bool(reason), "dead letters"))
        return
    columns = ["event id", "when", "stage", "doer", "error", "reason", "read at", "bytes"]
    shown = table(*columns, *(["replayed to"] if replayed else []))
    for x in letters:
        shown.add_row(
            str(x.event_id),
            x.occurred_at.isoformat(timespec="seconds"),
            x.stage,
            x.doer,
            x.error_type,
            x.reason if len(x.reason) <= 160 else x.reason[:159] + "…",
            f"{x.topic}[{x.partition}]@{x.offset}",
            "–" if x.payload_size is None else str(x.payload_size),
            *([copy_of(x) or "–"] if replayed else []),
        )
    self.console().print(shown)
    hint = "`learnops dlq show ID` shows a letter's whole reason and the refused input."
    self.say(listed_note(len(letters), limit, hint))


def _text(data: bytes) -> tuple[str, bool]:
    """Bytes as printable text: indented JSON when they parse, else UTF-8 with replacements."""
    try:
        return orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2).decode(), True
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace"), False


@command(
    dlq,
    "show",
    click.argument("event_id"),
    click.option(
        "--raw",
        is_flag=True,
        help="Write the refused value's bytes to stdout as they were, and nothing else.",
    ),
    json_option,
)
async def dlq_show(self: GroupedCommand, event_id: str, raw: bool, as_json: bool) -> None:
    """Show a dead letter (its event id, or the start of it) and the input it refused.

    The input is read from the topic, partition and offset the letter names,
    as long as the topic's retention keeps it. It may hold personal data.
    """
    from agents.topics import TopicCatalogError, read_record

    event_id = event_id_start(event_id, "letter")
    async with database(self) as pool:
        found = await find_dead_letters(pool, event_id)
    if not found:
        fail(
            f"no dead letter with event id {event_id!r} (`learnops dlq list` shows the latest: "
            "the letter's own id, not the refused event's; a letter is in the table once "
            "the dead-letter stage of a worker has read it)"
        )
    if len(found) > 1:
        fail(f"{event_id!r} starts more than one letter's event id: give more of it")
    letter = found[0]
    try:
        record = await read_record(self.settings, letter.topic, letter.partition, letter.offset)
    except TopicCatalogError as exc:
        fail(f"cannot read the refused input: {exc}")
    gone = (
        f"the input is no longer on {letter.topic}[{letter.partition}] at offset "
        f"{letter.offset} (deleted by the topic's retention or compaction)"
    )
    if raw:
        if record is None or record.value is None:
            fail(gone if record is None else "the refused record has no value (a tombstone)")
        sys.stdout.buffer.write(record.value)
        sys.stdout.buffer.flush()
        return
    key = None if record is None else record.key
    value = None if record is None else record.value
    if as_json:
        document: dict[str, Any] = {**_row(letter), "input": None}
        if record is not None:
            document["input"] = {
                "key": None if key is None else key.decode("utf-8", "replace"),
                "value_b64": None if value is None else base64.b64encode(value).decode(),
                "timestamp_ms": record.timestamp,
            }
        self.say(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    shown = table("", "", ids=1)
    shown.show_header = False
    for name, text in (
        ("event id", str(letter.event_id)),
        ("when", letter.occurred_at.isoformat()),
        ("stage", f"{letter.stage} (consumer group {letter.consumer or 'unknown'})"),
        ("doer", letter.doer),
        ("error", letter.error_type),
        ("reason", letter.reason),
        ("read at", f"{letter.topic}[{letter.partition}] offset {letter.offset}"),
        ("bytes", "unknown" if letter.payload_size is None else str(letter.payload_size)),
    ):
        shown.add_row(name, text)
    console = self.console()
    console.print(shown)
    if record is None:
        self.say(gone)
        return
    self.say(f"key: {'none' if key is None else key.decode('utf-8', 'replace')!s}")
    if value is None:
        self.say("value: none (a tombstone)")
        return
    if len(value) > SHOWN_BYTES:  # a prefix of JSON does not parse: shown as text
        text, parsed = value[:SHOWN_BYTES].decode("utf-8", "replace"), False
    else:
        text, parsed = _text(value)
    what = "JSON" if parsed else "not JSON, as UTF-8"
    self.say(f"value ({len(value)} bytes, {what}; it may hold personal data):")
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    if len(value) > SHOWN_BYTES:
        self.say(f"… {len(value) - SHOWN_BYTES} more bytes: `learnops dlq show {event_id} --raw`")


#: The topics whose refused records `replay` publishes again: the orchestrator's, which
#: hold the runs and routings every stage counts once by their ids. What the worker
#: publishes (CRL results, samples, decisions) is made again from these; a command is
#: issued again with its own CLI command, signed, never replayed out of its order.
REPLAYABLE = ("learning.run-completed", "learning.task-routed")

#: The error types whose records `replay` publishes again: refused before any stage
#: stored, claimed or folded anything of them, so a copy is a first delivery. A record
#: refused later (``internal``: a batch that failed part-way; ``run_id``) is owned by
#: the original where it was stored, and a copy would never be counted; one refused for
#: its bytes (``json``, ``key``) would be refused again.
REPLAYED_ERRORS = ("partition", "schema")

#: Records published and recorded per transaction. One at a time, a replay went at about
#: 170 records/s, the rate a large orchestrator sends bundles at.
REPLAY_BATCH = 500

#: The header a replayed copy carries: where the refused original was.
REPLAYED_FROM = "learnops-replayed-from"


def _at(origin: Origin) -> str:
    """``topic[partition]@offset``."""
    topic, partition, offset = origin
    return f"{topic}[{partition}]@{offset}"


#: What `replay` leaves alone, each said as "left alone, WHAT: N record(s), e.g. X (WHY)".
LEFT_ALONE = (
    (
        "refused_late",
        f"refused for another error than {' or '.join(REPLAYED_ERRORS)}",
        "a stage may have stored it before it failed, and then owns it: a copy would not be "
        "counted",
    ),
    (
        "counted_already",
        "already in PostgreSQL",
        "a worker took the original before it was refused here, e.g. under the app id before "
        "a partition change; a copy would not be counted",
    ),
    (
        "still_refused",
        "still refused by this version's contract",
        "`learnops dlq show` gives the reason",
    ),
    ("gone", "gone from their topic", "retention deleted it"),
    ("no_key", "no key", "every stage would refuse it again"),
)


def _accepted(topic: str, value: bytes | None) -> bool:
    """Whether this version's contract accepts ``value`` on ``topic`` (a replayable one)."""
    from pydantic import ValidationError

    from models.base import duplicate_key_problem
    from models.registry import adapter

    if value is None or duplicate_key_problem(value) is not None:
        return False
    try:
        adapter(topic).validate_json(value)
    except ValidationError:
        return False
    return True


def _origins(letters: list[DeadLetterRecord]) -> dict[Origin, list[DeadLetterRecord]]:
    """The letters by the record they refused (the crl and curator stages both refuse one)."""
    grouped: dict[Origin, list[DeadLetterRecord]] = {}
    for letter in letters:
        grouped.setdefault((letter.topic, letter.partition, letter.offset), []).append(letter)
    return grouped


@command(
    dlq,
    "replay",
    click.argument("event_ids", nargs=-1),
    click.option(
        "--error-type",
        type=click.Choice(REPLAYED_ERRORS),
        help="Replay the letters of this error type (partition: placed on the wrong partition; "
        "schema: refused by an earlier version of the contract).",
    ),
    click.option("--stage", help="Only letters of this stage."),
    click.option("--doer", help="Only letters of this doer."),
    click.option("--dry-run", is_flag=True, help="Say what would be published; publish nothing."),
    actor_option("Who replays, for the audit (dead_letter_replays)."),
    json_option,
)
async def dlq_replay(
    self: GroupedCommand,
    event_ids: tuple[str, ...],
    error_type: str | None,
    stage: str | None,
    doer: str | None,
    dry_run: bool,
    actor: str,
    as_json: bool,
) -> None:
    """Publish refused records again, once each, where their key belongs.

    For after the cause is mended: a producer restarted after `learnops topics
    repartition` (error type `partition`), a contract that now accepts what an
    earlier one refused (`schema`). Give letters by EVENT_IDS (starts of their
    event ids) or --error-type. Each refused record of learning.run-completed
    or learning.task-routed is read from the offset its letters name (while
    the topic's retention keeps it) and published to the same topic with its
    key and value, placed by the key, with a header naming the original; a
    run or routing PostgreSQL already holds (counted by a worker that took
    the original) is left alone. Each is recorded in dead_letter_replays
    after the broker acknowledged it, so replaying the same letters again
    publishes nothing.
    """
    from aiokafka.errors import KafkaError

    from agents.topics import TopicCatalogError, read_records

    if not event_ids and error_type is None:
        usage_error(
            "name the letters: EVENT_ID … or --error-type (partition, schema); "
            "`learnops dlq list` shows them. Replaying every letter at once is refused"
        )
    event_ids = tuple(event_id_start(e, "letter") for e in event_ids)
    async with database(self) as pool:
        if not dry_run:
            await require_writes(
                pool,
                "dead_letter_replays",
                "INSERT",
                "where each replay is recorded so that it is never published twice",
            )
        letters = await letters_to_replay(
            pool, error_type=error_type, stage=stage, doer=doer, event_ids=event_ids
        )
        # Every letter of the selected records, not only those the filters matched: a
        # record some stage refused late (after storing it) is owned by its original.
        grouped = _origins(await letters_of(pool, list(_origins(letters))))
        others = sorted({o[0] for o in grouped} - set(REPLAYABLE))
        refused_late = sorted(
            o
            for o, ls in grouped.items()
            if o[0] in REPLAYABLE and any(x.error_type not in REPLAYED_ERRORS for x in ls)
        )
        todo = {o: ls for o, ls in grouped.items() if o[0] in REPLAYABLE and o not in refused_late}
        try:
            records = await read_records(self.settings, todo)
        except TopicCatalogError as exc:
            fail(f"cannot read the refused records: {exc}")
        found = {o: r for o, r in records.items() if r is not None}
        gone = sorted(o for o in todo if o not in found)
        keyless = sorted(o for o, r in found.items() if r.key is None)
        candidates = [o for o in todo if o in found and o not in keyless]
        async with pool.acquire() as conn:
            counted = sorted(await counted_already(conn, {o: found[o].value for o in candidates}))
        # A copy the contract still refuses would be a new letter at a new offset, which
        # the next replay would publish again: what this version refuses stays.
        invalid = sorted(
            o for o in candidates if o not in counted and not _accepted(o[0], found[o].value)
        )
        ready = [o for o in candidates if o not in counted and o not in invalid]
        replays: list[Replay] = []
        if ready and not dry_run:
            producer = self.settings.kafka_producer(enable_idempotence=True)
            await producer.start()
            try:
                for start in range(0, len(ready), REPLAY_BATCH):
                    batch = ready[start : start + REPLAY_BATCH]
                    replays += await _replay(pool, producer, batch, found, todo, actor)
            except KafkaError as exc:
                fail(
                    f"the broker refused a copy ({type(exc).__name__}: {exc}); "
                    f"{len(replays)} published and recorded before it; run the command again "
                    "for the rest (copies the broker took from the unrecorded batch are "
                    "published again then, and counted once by their run or task id)"
                )
            finally:
                await producer.stop()
    skipped = {
        "not_replayable": [f"{t} ({sum(o[0] == t for o in grouped)})" for t in others],
        "refused_late": [_at(o) for o in refused_late],
        "gone": [_at(o) for o in gone],
        "no_key": [_at(o) for o in keyless],
        "counted_already": [_at(o) for o in counted],
        "still_refused": [_at(o) for o in invalid],
    }
    if as_json:
        document: dict[str, Any] = {"dry_run": dry_run, "letters": len(letters)}
        if dry_run:
            document["would_publish"] = [_at(o) for o in ready]
        else:
            document["published"] = [asdict(r) for r in replays]
        document.update(skipped)
        self.say(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    if not letters:
        self.say("no letters to replay match (a replayed record's letters are left out)")
        return
    self.say(f"{len(letters)} letter(s) of {len(grouped)} refused record(s)")
    if dry_run:
        self.say(f"would publish {len(ready)} record(s) again (--dry-run: nothing published)")
    else:
        shown = table("doer", "refused at", "why", "published at", ids=1)
        for r in replays:
            shown.add_row(
                r.doer,
                _at((r.topic, r.partition, r.offset)),
                ", ".join(r.error_types),
                _at((r.topic, r.new_partition, r.new_offset)),
            )
        if replays:
            self.console().print(shown)
        self.say(f"published {len(replays)} record(s) again; each is recorded, never sent twice")
    if others:
        self.say(
            f"left alone, not replayable: letters of {', '.join(skipped['not_replayable'])}; "
            f"only the orchestrator's topics ({', '.join(REPLAYABLE)}) are replayed"
        )
    for key, what, why in LEFT_ALONE:
        if skipped[key]:
            self.say(
                f"left alone, {what}: {len(skipped[key])} record(s), e.g. {skipped[key][0]} ({why})"
            )


async def _replay(
    pool: Any,
    producer: Any,
    origins: list[Origin],
    found: dict[Origin, Any],
    todo: dict[Origin, list[DeadLetterRecord]],
    actor: str,
) -> list[Replay]:
    """Publish the records at ``origins`` again and record them, but those another replay did.

    One transaction per batch: the lock, one look at what was replayed, every
    copy sent and acknowledged, then one pipelined INSERT of their rows.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(REPLAY_LOCK)
        done = await replayed_among(conn, origins)
        origins = [o for o in origins if o not in done]
        # Recorded only once the broker has every copy: a crash in between sends them
        # again at the next run, duplicates the stages count once by their run or task id.
        pending = [
            await producer.send(
                origin[0],
                key=found[origin].key,
                value=found[origin].value,
                headers=[(REPLAYED_FROM, "/".join(map(str, origin)).encode())],
            )
            for origin in origins
        ]
        results = await asyncio.gather(*pending, return_exceptions=True)  # every one read
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        acks: list[Any] = list(results)
        replays = [
            Replay(
                *origin,
                doer=todo[origin][0].doer,
                error_types=tuple(sorted({x.error_type for x in todo[origin]})),
                new_partition=ack.partition,
                new_offset=ack.offset,
                actor=actor,
            )
            for origin, ack in zip(origins, acks, strict=True)
        ]
        await record_replays(conn, replays)
    return replays
