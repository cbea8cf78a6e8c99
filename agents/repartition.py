"""Move table state to a new partition count: ``learnops topics repartition``.

Each doer's table state lives in the changelog partition of the input partition
its name hashes to. Raising the partition count moves most doers to other
partitions, where none of their state is, so the count may only change with
the state moved along (docs/operations.md, "Changing the partition count").

:func:`plan_repartition` checks everything and reads every changelog once;
nothing changes unless all of it holds. :func:`repartition` then:

1. grows the learning topics to topics.yaml's count;
2. creates each **new app id**'s changelogs with the new count and the old ones'
   configs, and copies every record of the old changelogs there, in order, at
   the partition the key's doer now hashes to, with the record's timestamp (a
   windowed changelog's retention counts from it); values that name a source
   partition (``DoerTable.holds_partition``) are rewritten to the new one;
3. checks that nothing of the old app ids moved meanwhile, records their stage
   sets for the new app ids, and commits the old groups' offsets for the new
   groups, last: their presence says the move finished.

A new app id, not the old changelogs rewritten in place: a tombstone left on a
doer's old partition could be applied after its new value and delete it, and
the old app id stays as it was. Every app id whose table state is kept at the
old count moves in the same run: growing the topics moves its doers too. A run
interrupted after the growth is run again with the same arguments: each key's
records are copied again in their order, so its last record, the value the
table recovers, is the same; once a new group has offsets, it is refused as
used.

What must hold first: no worker of the old app ids runs, and no record of a doer
that moves waits unprocessed on an old partition of a topic its stages read (it
would be processed where that doer's state no longer is). Records of doers that
keep their partition may wait. Placement is the producers' partitioner,
``murmur2`` (Kafka's Java client, aiokafka, ``learnops.client``) or ``crc32``
(librdkafka's ``consistent``); the plan refuses state it does not explain.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from agents.placement import key_hash
from agents.tables import doer_of
from agents.topics import (
    TopicCatalog,
    _admin,
    _describe,
    _ensure,
    _partition_counts,
    _raise_topic_errors,
    _wait_visible,
    started,
)

if TYPE_CHECKING:
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from agents.settings import Settings

#: Unprocessed records read to find the waiting ones; more than this is "drain first".
MAX_SCAN = 200_000
#: A read that gets no record for this long while records remain is stuck.
IDLE_S = 60.0
#: The longest topic name Kafka accepts.
MAX_TOPIC_NAME = 249
#: Kafka's legal topic characters: an app id names the changelogs and the group.
_APP_ID = re.compile(r"^[A-Za-z0-9._-]+$")
#: How producers place a key: Kafka's default (murmur2) or librdkafka's ``consistent``.
PARTITIONERS = ("murmur2", "crc32")


class RepartitionError(ValueError):
    """Why the state cannot be moved, and what to do."""


def partition_of(key: bytes, count: int, partitioner: str = "murmur2") -> int:
    """The partition ``partitioner`` gives ``key`` among ``count``.

    murmur2: Kafka's default partitioner (``Utils.toPositive(murmur2(key)) %
    count``, as aiokafka's DefaultPartitioner). crc32: librdkafka's
    ``consistent`` partitioner (``rd_crc32(key) % count``).
    """
    if partitioner == "crc32":
        return zlib.crc32(key) % count
    return key_hash(key) % count


def doer_of_record(key: bytes | None) -> str:
    """The doer a changelog record's key belongs to (a Faust table key in JSON)."""
    if key is None:
        raise ValueError("a changelog record without a key")
    doer = doer_of(orjson.loads(key))
    if not doer:
        raise ValueError(f"no doer in table key {key[:80]!r}")
    return doer


def moved_value(value: bytes, partition: int) -> bytes:
    """A value naming a source partition (plus one; 0 is none), naming ``partition`` instead."""
    before = orjson.loads(value)
    if not isinstance(before, int) or isinstance(before, bool) or before < 0:
        raise ValueError(f"a partition value that is not a count: {value[:80]!r}")
    return value if before == 0 else orjson.dumps(partition + 1)


@dataclass(frozen=True)
class Waiting:
    """A record of a doer that moves, not yet processed on its old partition."""

    topic: str
    partition: int
    offset: int
    doer: str


@dataclass(frozen=True)
class Move:
    """One app id's state and offsets, to a new app id."""

    from_app: str
    to_app: str
    #: (old changelog, new changelog, whether its values name a partition), by table.
    changelogs: tuple[tuple[str, str, bool], ...]
    consumed: tuple[str, ...]  # the learning topics its stages read
    stages: tuple[str, ...] | None  # its recorded stage set, for the new app id
    #: Its committed offsets on the learning topics (old partitions), for the new group.
    offsets: Mapping[TopicPartition, int]
    #: Its changelogs' end offsets when checked: what is copied.
    ends: Mapping[TopicPartition, int]
    resumed: tuple[str, ...] = ()  # new changelogs an interrupted run created
    waiting_kept: int = 0  # unprocessed records of doers that keep their partition
    records: int = 0  # changelog records checked
    finished: bool = False  # done by an earlier run of the same moves: nothing to do


@dataclass(frozen=True)
class Plan:
    """What :func:`repartition` will do, checked against the cluster."""

    old_count: int
    new_count: int
    partitioner: str
    grow: tuple[str, ...]  # learning topics still below the new count
    moves: tuple[Move, ...]


@dataclass
class Copied:
    """One changelog's copy: records written, and how many changed partition."""

    changelog: str
    to: str
    records: int = 0
    moved: int = 0


def _changelog(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


def _check_ids(moves: Mapping[str, str]) -> None:
    if not moves:
        raise RepartitionError("no app id to move")
    for new in moves.values():
        if not _APP_ID.match(new):
            raise RepartitionError(
                f"the new app id {new!r} may hold only letters, digits, '.', '_' and '-' "
                "(it names Kafka topics and a consumer group)"
            )
    if set(moves) & set(moves.values()):
        raise RepartitionError(
            "a new app id must differ from every old one: the state is copied to the new "
            "app id's changelogs, and the old app id stays as it was"
        )
    if len(set(moves.values())) != len(moves):
        raise RepartitionError("two old app ids cannot move to one new app id")


async def plan_repartition(
    settings: Settings,
    catalog: TopicCatalog,
    tables: Mapping[str, bool],
    moves: Mapping[str, str],
    consumed: Mapping[str, Collection[str]],
    *,
    stages: Mapping[str, tuple[str, ...] | None] | None = None,
    partitioner: str = "murmur2",
) -> Plan:
    """Check that each old app id's state in ``moves`` (old → new) can move to topics.yaml's count.

    ``tables`` maps every table name to whether its values name a partition
    (``agents.app.state_tables``); ``consumed`` gives the learning topics each old
    app id's stages read; ``stages`` their recorded stage sets. Raises
    :class:`RepartitionError` naming what is in the way; changes nothing.
    """
    _check_ids(moves)
    if partitioner not in PARTITIONERS:
        raise RepartitionError(f"unknown partitioner {partitioner!r}; known: murmur2, crc32")
    new_count = catalog.partitions
    suffixes = tuple(f"-{t}-changelog" for t in tables)
    async with started(_admin(settings)) as admin:
        listed = set(await admin.list_topics())
        old = {
            app: {t: _changelog(app, t) for t in tables if _changelog(app, t) in listed}
            for app in moves
        }
        for app, tables_found in old.items():
            if not tables_found:
                raise RepartitionError(
                    f"app id {app!r} has no table changelogs on this cluster: there is no "
                    "state to move (the old app id is --from-app-id, or LEARNOPS_APP_ID)"
                )
        old_counts = await _partition_counts(admin, [n for t in old.values() for n in t.values()])
        if len(set(old_counts.values())) != 1:
            found = ", ".join(f"{n} {c}" for n, c in sorted(old_counts.items()))
            raise RepartitionError(f"the old changelogs differ in partition count: {found}")
        old_count = next(iter(old_counts.values()))
        _check_counts(old_count, new_count)
        inputs = await _partition_counts(admin, set(catalog.topics) & listed)
        odd = {n: c for n, c in inputs.items() if c not in (old_count, new_count)}
        if odd:
            found = ", ".join(f"{n} {c}" for n, c in sorted(odd.items()))
            raise RepartitionError(
                f"learning topics with neither the state's {old_count} partitions nor "
                f"topics.yaml's {new_count}: {found}"
            )
        await _no_other_state(admin, listed, suffixes, set(moves) | set(moves.values()), old_count)
        new_names = [_changelog(moves[app], t) for app, kept in old.items() for t in kept]
        longest = max(new_names, key=len)
        if len(longest) > MAX_TOPIC_NAME:
            raise RepartitionError(
                f"the new app id makes changelog names longer than Kafka's {MAX_TOPIC_NAME} "
                f"characters ({longest!r} has {len(longest)}): choose a shorter one"
            )
        existing = await _partition_counts(admin, set(new_names) & listed)
        wrong = {n: c for n, c in existing.items() if c != new_count}
        if wrong:
            found = ", ".join(f"{n} {c}" for n, c in sorted(wrong.items()))
            raise RepartitionError(
                f"a new app id already has changelogs of another count ({found}): "
                "choose another new app id"
            )
        # Per move, the new changelogs an interrupted run of it created.
        resumed = {
            app: tuple(
                sorted(
                    _changelog(moves[app], t)
                    for t in old[app]
                    if _changelog(moves[app], t) in existing
                )
            )
            for app in moves
        }
        committed: dict[str, dict[TopicPartition, int]] = {}
        finished: set[str] = set()
        for app, new in moves.items():
            await _no_members(admin, app, "stop every worker of it first")
            await _no_members(admin, new, "it is in use: choose another new app id")
            committed[app] = await _committed(admin, app, catalog, old_count)
            given = {
                tp: meta.offset
                for tp, meta in (await admin.list_consumer_group_offsets(new)).items()
            }
            if not given:
                continue
            if given == committed[app] and len(resumed[app]) == len(old[app]):
                # An earlier run of these moves finished this one and stopped before the
                # next: its offsets are the old group's, and nothing ran under it since.
                finished.add(app)
                continue
            raise RepartitionError(
                f"app id {new!r} has committed offsets: it has been used (a finished "
                "move, or workers ran under it); choose another new app id"
            )
    planned = []
    for app, new in moves.items():
        changelogs = tuple((old[app][t], _changelog(new, t), tables[t]) for t in sorted(old[app]))
        if app in finished:
            planned.append(Move(app, new, changelogs, (), None, committed[app], {}, finished=True))
            continue
        topics = tuple(sorted(set(consumed[app]) & set(catalog.topics)))
        kept = await _check_waiting(
            settings, topics, committed[app], old_count, new_count, partitioner
        )
        ends, records = await _check_changelogs(settings, old[app], tables, old_count, partitioner)
        planned.append(
            Move(
                from_app=app,
                to_app=new,
                changelogs=changelogs,
                consumed=topics,
                stages=(stages or {}).get(app),
                offsets=committed[app],
                ends=ends,
                resumed=resumed[app],
                waiting_kept=kept,
                records=records,
            )
        )
    return Plan(
        old_count=old_count,
        new_count=new_count,
        partitioner=partitioner,
        grow=tuple(sorted(n for n, c in inputs.items() if c < new_count)),
        moves=tuple(planned),
    )


def _check_counts(old_count: int, new_count: int) -> None:
    if new_count == old_count:
        raise RepartitionError(
            f"topics.yaml gives {new_count} partitions, the count the state has: set the "
            "new count in topics.yaml (LEARNOPS_TOPICS_FILE) first"
        )
    if new_count < old_count:
        raise RepartitionError(
            f"topics.yaml gives {new_count} partitions, fewer than the {old_count} the state "
            "has: Kafka cannot remove partitions"
        )


async def _no_other_state(
    admin: AIOKafkaAdminClient,
    listed: set[str],
    suffixes: tuple[str, ...],
    named: set[str],
    old_count: int,
) -> None:
    """Refuse when an app id not named keeps table state at the old count: growth moves it."""
    others: dict[str, str] = {}
    for name in sorted(listed):
        for suffix in suffixes:
            app = name.removesuffix(suffix)
            if app != name and app not in named:
                others.setdefault(app, name)
    if not others:
        return
    counts = await _partition_counts(admin, others.values())
    stranded = sorted(app for app, name in others.items() if counts.get(name) == old_count)
    if stranded:
        shown = ", ".join(f"{app} ({others[app]})" for app in stranded[:5])
        raise RepartitionError(
            f"app id(s) {shown} also keep table state at {old_count} partitions: growing the "
            "topics would move their doers too. Move them in the same run (--move "
            "<old app id>=<new app id>), or, if nothing runs under them any more, delete "
            "their changelogs first"
        )


async def _no_members(admin: AIOKafkaAdminClient, group: str, then: str) -> None:
    from aiokafka.errors import for_code

    for response in await admin.describe_consumer_groups([group]):
        for described in response.to_object()["groups"]:
            code = described.get("error_code", 0)
            if code:
                raise RepartitionError(
                    f"consumer group {group!r} could not be described: "
                    f"{for_code(code).__name__} (the admin needs Describe on the group)"
                )
            members = described.get("members") or []
            if members:
                hosts = sorted({str(m.get("client_host", "?")) for m in members})
                raise RepartitionError(
                    f"consumer group {group!r} has {len(members)} member(s) "
                    f"({', '.join(hosts)}): {then}. A static member "
                    "(LEARNOPS_GROUP_INSTANCE_ID) stays one for its session timeout after "
                    "it stops (LEARNOPS_SESSION_TIMEOUT_S)"
                )


async def _committed(
    admin: AIOKafkaAdminClient, group: str, catalog: TopicCatalog, old_count: int
) -> dict[TopicPartition, int]:
    committed = {
        tp: meta.offset
        for tp, meta in (await admin.list_consumer_group_offsets(group)).items()
        if tp.topic in catalog.topics and tp.partition < old_count and meta.offset >= 0
    }
    if not committed:
        raise RepartitionError(
            f"app id {group!r} has no committed offsets on the learning topics: its workers "
            "never committed, or the offsets expired (offsets.retention.minutes); the new "
            "app id would read every topic from its start. Run its workers until they catch "
            "up, stop them, and run this again"
        )
    return committed


async def _records(
    consumer: Any, tp: TopicPartition, start: int, end: int
) -> AsyncIterator[list[Any]]:
    """Batches of ``tp``'s records from ``start`` up to ``end`` (exclusive), as they arrive."""
    consumer.seek(tp, start)
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while await consumer.position(tp) < end:
        batch = [
            r
            for r in (await consumer.getmany(tp, timeout_ms=500, max_records=10_000)).get(tp, [])
            if r.offset < end
        ]
        if batch:
            quiet_since = loop.time()
            yield batch
        elif loop.time() - quiet_since > IDLE_S:
            raise RepartitionError(
                f"{tp.topic}[{tp.partition}] gave no record for {IDLE_S:.0f} s before "
                f"offset {end}; is the broker up?"
            )


def _consumer(settings: Settings) -> Any:
    from aiokafka import AIOKafkaConsumer

    # "earliest": an offset deleted by retention under the read resumes at the log's
    # start, never silently at its end.
    return AIOKafkaConsumer(
        enable_auto_commit=False, auto_offset_reset="earliest", **settings.kafka_connection()
    )


async def _check_waiting(
    settings: Settings,
    topics: tuple[str, ...],
    committed: Mapping[TopicPartition, int],
    old_count: int,
    new_count: int,
    partitioner: str,
) -> int:
    """Raise if a moving doer's record waits unprocessed; the number of others that wait."""
    from aiokafka import TopicPartition

    if not topics:
        return 0
    tps = [TopicPartition(t, p) for t in topics for p in range(old_count)]
    async with started(_consumer(settings)) as consumer:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.beginning_offsets(tps)
        # A partition never committed is read from its start by the new group too.
        starts = {tp: max(committed.get(tp, firsts[tp]), firsts[tp]) for tp in tps}
        behind = {tp: ends[tp] - starts[tp] for tp in tps if ends[tp] > starts[tp]}
        total = sum(behind.values())
        if total > MAX_SCAN:
            shown = ", ".join(f"{tp.topic}[{tp.partition}] {n}" for tp, n in sorted(behind.items()))
            raise RepartitionError(
                f"{total} records wait unprocessed ({shown}): let the workers of the old app "
                "id catch up (lag 0, the orchestrator paused), stop them, and run this again"
            )
        waiting: list[Waiting] = []
        kept = 0
        for tp in sorted(behind):
            async for batch in _records(consumer, tp, starts[tp], ends[tp]):
                for record in batch:
                    key = record.key
                    if (
                        key is not None
                        and partition_of(key, new_count, partitioner) != tp.partition
                    ):
                        doer = key.decode("utf-8", "replace")
                        waiting.append(Waiting(tp.topic, tp.partition, record.offset, doer))
                    else:
                        kept += 1
    if waiting:
        first = waiting[0]
        raise RepartitionError(
            f"{len(waiting)} record(s) of doers that move wait unprocessed on their old "
            f"partitions (first: {first.topic}[{first.partition}] offset {first.offset}, doer "
            f"{first.doer!r}): they would be processed where those doers' state no longer is. "
            "If the topics are not grown yet: start the workers of the old app id, let them "
            "catch up with the orchestrator paused, stop them, and run this again. If they "
            "are (a producer kept publishing with the old count), those records cannot be "
            "placed: docs/operations.md, 'Changing the partition count'"
        )
    return kept


async def _check_changelogs(
    settings: Settings,
    changelogs: Mapping[str, str],
    tables: Mapping[str, bool],
    old_count: int,
    partitioner: str,
) -> tuple[dict[TopicPartition, int], int]:
    """Read every record of the changelogs: each must name a doer placed where it is.

    Returns the changelogs' end offsets (what will be copied) and the records read.
    """
    from aiokafka import TopicPartition

    tps = [TopicPartition(name, p) for name in changelogs.values() for p in range(old_count)]
    holds = {changelogs[t] for t in changelogs if tables[t]}
    read = 0
    async with started(_consumer(settings)) as consumer:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.beginning_offsets(tps)
        for tp in tps:
            async for batch in _records(consumer, tp, firsts[tp], ends[tp]):
                for record in batch:
                    _check_record(record, tp, tp.topic in holds, old_count, partitioner)
                read += len(batch)
    return dict(ends), read


def _check_record(
    record: Any, tp: TopicPartition, holds_partition: bool, count: int, partitioner: str
) -> None:
    where = f"{tp.topic}[{tp.partition}] offset {record.offset}"
    try:
        doer = doer_of_record(record.key)
        if holds_partition and record.value is not None:
            moved_value(record.value, 0)
    except ValueError as exc:
        raise RepartitionError(f"{where}: {exc}") from None
    placed = partition_of(doer.encode(), count, partitioner)
    if placed != tp.partition:
        other = next(p for p in PARTITIONERS if p != partitioner)
        hint = (
            f"; the {other} partitioner explains it: --partitioner {other}"
            if partition_of(doer.encode(), count, other) == tp.partition
            else ""
        )
        raise RepartitionError(
            f"{where}: doer {doer!r}'s state is on partition {tp.partition}, where the "
            f"{partitioner} partitioner puts it on {placed}: its producers place it "
            f"another way, and the move would put it where they do not{hint}"
        )


async def repartition(
    settings: Settings,
    catalog: TopicCatalog,
    plan: Plan,
    *,
    record_stages: Callable[[Move], Awaitable[None]] | None = None,
    record_started: Callable[[Move], Awaitable[None]] | None = None,
    record_finished: Callable[[Move], Awaitable[None]] | None = None,
) -> list[Copied]:
    """Grow the topics, copy the state to the new app ids, commit their offsets (module doc);
    what each changelog's copy wrote.

    ``record_started`` records each move before anything changes (a worker refuses
    to start under a new app id whose move has not finished), ``record_stages`` its
    stage set for its new app id (PostgreSQL's ``worker_stage_sets``) before the
    offsets, and ``record_finished`` each move once every new group has them.
    """
    todo = [move for move in plan.moves if not move.finished]
    for move in todo:
        if record_started is not None:
            await record_started(move)
    async with started(_admin(settings)) as admin:
        if plan.grow:
            await _ensure(admin, catalog, with_state=True)
        for move in todo:
            await _create_changelogs(admin, move, plan.new_count)
    copied = [
        await _copy(settings, plan, move, old, new, holds_partition)
        for move in todo
        for old, new, holds_partition in move.changelogs
    ]
    for move in todo:
        await _unmoved(settings, plan, move)
    for move in todo:
        if record_stages is not None and move.stages is not None:
            await record_stages(move)
    for move in todo:
        await _commit_offsets(settings, move)
    for move in plan.moves:
        if record_finished is not None:
            await record_finished(move)
    return copied


async def _create_changelogs(admin: AIOKafkaAdminClient, move: Move, count: int) -> None:
    from aiokafka.admin import NewTopic

    missing = [(old, new) for old, new, _ in move.changelogs if new not in move.resumed]
    if not missing:
        return
    states = await _describe(admin, [old for old, _ in missing])
    response = await admin.create_topics(
        [
            NewTopic(
                name=new,
                num_partitions=count,
                replication_factor=states[old].replication_factor,
                topic_configs=dict(states[old].configs),
            )
            for old, new in missing
        ]
    )
    _raise_topic_errors(response.to_object())
    await _wait_visible(admin, [new for _, new in missing])


async def _copy(
    settings: Settings, plan: Plan, move: Move, old: str, new: str, holds_partition: bool
) -> Copied:
    """Every record of ``old`` up to the planned end, in order, to ``new`` at its doer's
    partition."""
    from aiokafka import TopicPartition

    copied = Copied(old, new)
    producer = settings.kafka_producer(enable_idempotence=True, linger_ms=20)
    async with started(_consumer(settings)) as consumer, started(producer):
        tps = [TopicPartition(old, p) for p in range(plan.old_count)]
        consumer.assign(tps)
        firsts = await consumer.beginning_offsets(tps)
        for tp in tps:
            sends = []
            async for batch in _records(consumer, tp, firsts[tp], move.ends[tp]):
                for record in batch:
                    doer = doer_of_record(record.key).encode()
                    partition = partition_of(doer, plan.new_count, plan.partitioner)
                    value = record.value
                    if holds_partition and value is not None:
                        value = moved_value(value, partition)
                    sends.append(
                        await producer.send(
                            new,
                            value=value,
                            key=record.key,
                            partition=partition,
                            timestamp_ms=record.timestamp,
                            headers=list(record.headers or ()),
                        )
                    )
                    copied.moved += partition != tp.partition
                copied.records += len(batch)
                # Acknowledged batch by batch: a large changelog is never held whole.
                await asyncio.gather(*sends)
                sends.clear()
    return copied


async def _unmoved(settings: Settings, plan: Plan, move: Move) -> None:
    """Raise if a worker of the old app id ran, or input came, while the state was copied."""
    from aiokafka import TopicPartition

    after = "The topics are grown and the new app id has no offsets: stop it, run this again"
    async with started(_admin(settings)) as admin:
        await _no_members(admin, move.from_app, f"a worker started during the move. {after}")
        topics = {tp.topic for tp in move.offsets}
        now = {
            tp: meta.offset
            for tp, meta in (await admin.list_consumer_group_offsets(move.from_app)).items()
            if tp.topic in topics and tp.partition < plan.old_count
        }
    if now != dict(move.offsets):
        raise RepartitionError(
            f"the old app id {move.from_app!r} committed offsets during the move (a worker "
            f"ran): the copy may lack its last changes. {after}"
        )
    async with started(_consumer(settings)) as consumer:
        tps = [
            TopicPartition(old, p) for old, _, _ in move.changelogs for p in range(plan.old_count)
        ]
        ends = await consumer.end_offsets(tps)
    if ends != dict(move.ends):
        raise RepartitionError(
            f"the changelogs of {move.from_app!r} grew during the move (a worker ran): {after}"
        )
    await _check_waiting(
        settings, move.consumed, move.offsets, plan.old_count, plan.new_count, plan.partitioner
    )


async def _commit_offsets(settings: Settings, move: Move) -> None:
    """Commit the old group's offsets for the new group; partitions it never read start at 0."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        group_id=move.to_app, enable_auto_commit=False, **settings.kafka_connection()
    )
    async with started(consumer):
        consumer.assign(list(move.offsets))
        await consumer.commit(dict(move.offsets))
