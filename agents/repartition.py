"""Move an app id's table state to a new partition count: ``learnops topics repartition``.

Each doer's table state lives in the changelog partition of the input partition
its name hashes to. Raising the partition count moves most doers to other
partitions, where none of their state is, so the count may only change with
the state moved along (docs/operations.md, "Changing the partition count").

What :func:`repartition` does, once :func:`plan_repartition` found nothing in
the way (every check runs before anything changes):

1. grows the learning topics to topics.yaml's count;
2. creates the changelogs of a **new app id** with the new count and the old
   changelogs' configs, and copies each table's latest value per key into them, at
   the partition the key's doer now hashes to, with the record's timestamp (a
   windowed changelog's retention counts from it); values that name a source
   partition (``DoerTable.holds_partition``) are rewritten to the new one;
3. commits the old group's offsets for the new group (the new app id), last:
   their presence says the move finished.

A new app id, not the old one's changelogs rewritten in place: a tombstone left
on a doer's old partition could be applied after its new value and delete it,
and the old app id stays as it was, to go back to. Copying is idempotent (the
latest value per key, written again, is the same value), so an interrupted run
is run again and finishes; once the new group has offsets, the new app id is
refused as used.

What must hold first: no worker of the old app id is running, and no record of
a doer that moves waits unprocessed on an old partition (it would be processed
where that doer's state no longer is). Records of doers that stay may wait.
Placement is Kafka's default partitioner (murmur2 of the key, the doer's name),
which every Kafka client and ``learnops.client`` use.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

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
#: Kafka's legal topic characters: an app id names the changelogs and the group.
_APP_ID = re.compile(r"^[A-Za-z0-9._-]+$")


class RepartitionError(ValueError):
    """Why the state cannot be moved now, and what to do; nothing was changed."""


def partition_of(key: bytes, count: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``count``."""
    from aiokafka.partitioner import murmur2

    return (int(murmur2(key)) & 0x7FFFFFFF) % count


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
class Plan:
    """What :func:`repartition` will do, checked against the cluster."""

    from_app: str
    to_app: str
    old_count: int
    new_count: int
    #: (old changelog, new changelog, whether its values name a partition), by table.
    changelogs: tuple[tuple[str, str, bool], ...]
    grow: tuple[str, ...]  # learning topics still below the new count
    #: The old group's committed offsets on the learning topics, for the new group.
    offsets: Mapping[TopicPartition, int]
    resumed: tuple[str, ...] = ()  # new changelogs an interrupted run created
    waiting_kept: int = 0  # unprocessed records of doers that keep their partition


@dataclass
class Copied:
    """One table's move: keys copied, and how many of them changed partition."""

    changelog: str
    to: str
    keys: int = 0
    moved: int = 0
    deleted: int = 0  # keys whose last record was a tombstone: not copied


@dataclass
class Report:
    """What :func:`repartition` changed."""

    plan: Plan
    grown: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    copied: list[Copied] = field(default_factory=list)
    offsets: int = 0


def _changelog(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


async def plan_repartition(
    settings: Settings,
    catalog: TopicCatalog,
    tables: Mapping[str, bool],
    from_app: str,
    to_app: str,
) -> Plan:
    """Check that ``from_app``'s state can move to ``to_app`` at topics.yaml's count.

    ``tables`` maps every table name to whether its values name a partition
    (``agents.app.state_tables``). Raises :class:`RepartitionError` naming what
    is in the way.
    """
    if not _APP_ID.match(to_app):
        raise RepartitionError(
            f"the new app id {to_app!r} may hold only letters, digits, '.', '_' and '-' "
            "(it names Kafka topics and a consumer group)"
        )
    if to_app == from_app:
        raise RepartitionError(
            "the new app id must differ from the old one: the state is copied to the "
            "new app id's changelogs, and the old app id stays to go back to"
        )
    new_count = catalog.partitions
    async with started(_admin(settings)) as admin:
        listed = set(await admin.list_topics())
        old = {t: _changelog(from_app, t) for t in tables if _changelog(from_app, t) in listed}
        if not old:
            raise RepartitionError(
                f"app id {from_app!r} has no table changelogs on this cluster: there is no "
                "state to move (check --from-app-id)"
            )
        old_counts = await _partition_counts(admin, old.values())
        counts = set(old_counts.values())
        if len(counts) != 1:
            found = ", ".join(f"{n} {c}" for n, c in sorted(old_counts.items()))
            raise RepartitionError(f"the changelogs of {from_app!r} differ in count: {found}")
        old_count = counts.pop()
        if new_count == old_count:
            raise RepartitionError(
                f"topics.yaml gives {new_count} partitions, the count the state of "
                f"{from_app!r} has: set the new count in topics.yaml (LEARNOPS_TOPICS_FILE) first"
            )
        if new_count < old_count:
            raise RepartitionError(
                f"topics.yaml gives {new_count} partitions, fewer than the {old_count} the "
                "state has: Kafka cannot remove partitions"
            )
        inputs = await _partition_counts(admin, set(catalog.topics) & listed)
        odd = {n: c for n, c in inputs.items() if c not in (old_count, new_count)}
        if odd:
            found = ", ".join(f"{n} {c}" for n, c in sorted(odd.items()))
            raise RepartitionError(
                f"learning topics with neither the state's {old_count} partitions nor "
                f"topics.yaml's {new_count}: {found}"
            )
        grow = tuple(sorted(n for n, c in inputs.items() if c < new_count))
        new = {t: _changelog(to_app, t) for t in old}
        existing = await _partition_counts(admin, set(new.values()) & listed)
        wrong = {n: c for n, c in existing.items() if c != new_count}
        if wrong:
            found = ", ".join(f"{n} {c}" for n, c in sorted(wrong.items()))
            raise RepartitionError(
                f"app id {to_app!r} already has changelogs of another count ({found}): "
                "choose another new app id"
            )
        await _no_members(admin, from_app, "stop every worker of it first")
        await _no_members(admin, to_app, "it is in use: choose another new app id")
        if await admin.list_consumer_group_offsets(to_app):
            raise RepartitionError(
                f"app id {to_app!r} has committed offsets: it has been used (a finished "
                "move, or workers ran under it); choose another new app id"
            )
        committed = {
            tp: meta.offset
            for tp, meta in (await admin.list_consumer_group_offsets(from_app)).items()
            if tp.topic in catalog.topics and tp.partition < old_count and meta.offset >= 0
        }
    kept = await _check_waiting(settings, committed, old_count, new_count)
    return Plan(
        from_app=from_app,
        to_app=to_app,
        old_count=old_count,
        new_count=new_count,
        changelogs=tuple((old[t], new[t], tables[t]) for t in sorted(old)),
        grow=grow,
        offsets=committed,
        resumed=tuple(sorted(existing)),
        waiting_kept=kept,
    )


async def _no_members(admin: AIOKafkaAdminClient, group: str, then: str) -> None:
    for response in await admin.describe_consumer_groups([group]):
        for described in response.to_object()["groups"]:
            members = described.get("members") or []
            if members:
                hosts = sorted({str(m.get("client_host", "?")) for m in members})
                raise RepartitionError(
                    f"consumer group {group!r} has {len(members)} member(s) "
                    f"({', '.join(hosts)}): {then}"
                )


async def _check_waiting(
    settings: Settings, committed: Mapping[TopicPartition, int], old_count: int, new_count: int
) -> int:
    """Raise if a moving doer's record waits unprocessed; the number of others that wait."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topics = sorted({tp.topic for tp in committed})
    if not topics:
        return 0
    tps = [TopicPartition(t, p) for t in topics for p in range(old_count)]
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **settings.kafka_connection())
    async with started(consumer):
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.beginning_offsets(tps)
        starts = {tp: committed.get(tp, firsts[tp]) for tp in tps}
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
            consumer.seek(tp, starts[tp])
            for record in await _read_to(consumer, tp, ends[tp]):
                if record.key is not None and partition_of(record.key, new_count) != tp.partition:
                    doer = record.key.decode("utf-8", "replace")
                    waiting.append(Waiting(tp.topic, tp.partition, record.offset, doer))
                else:
                    kept += 1
    if waiting:
        first = waiting[0]
        raise RepartitionError(
            f"{len(waiting)} record(s) of doers that move wait unprocessed on their old "
            f"partitions (first: {first.topic}[{first.partition}] offset {first.offset}, doer "
            f"{first.doer!r}): they would be processed where those doers' state no longer is. "
            "Start the workers of the old app id with topics.yaml at the old count, let them "
            "catch up with the orchestrator paused, stop them, and run this again"
        )
    return kept


async def _read_to(
    consumer: Any, tp: TopicPartition, end: int, timeout_s: float = 60.0
) -> list[Any]:
    """Every record of ``tp`` from the consumer's position up to ``end`` (exclusive)."""
    records: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await consumer.position(tp) < end:
        if loop.time() > deadline:
            raise RepartitionError(
                f"{tp.topic}[{tp.partition}] not read up to offset {end} in {timeout_s:.0f} s"
            )
        batch = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
        records.extend(r for r in batch.get(tp, []) if r.offset < end)
    return records


async def repartition(settings: Settings, catalog: TopicCatalog, plan: Plan) -> Report:
    """Grow the topics, copy the state to the new app id, commit its offsets (module doc)."""
    report = Report(plan)
    async with started(_admin(settings)) as admin:
        if plan.grow:
            await _ensure(admin, catalog, with_state=True)
            report.grown = list(plan.grow)
        report.created = await _create_changelogs(admin, plan)
    for old, new, holds_partition in plan.changelogs:
        report.copied.append(
            await _copy(settings, old, new, plan.old_count, plan.new_count, holds_partition)
        )
    await _unmoved(settings, plan)
    report.offsets = await _commit_offsets(settings, plan)
    return report


async def _unmoved(settings: Settings, plan: Plan) -> None:
    """Raise if a worker of the old app id ran while the state was copied (offsets not given)."""
    async with started(_admin(settings)) as admin:
        await _no_members(admin, plan.from_app, "a worker started during the move")
        topics = {tp.topic for tp in plan.offsets}
        now = {
            tp: meta.offset
            for tp, meta in (await admin.list_consumer_group_offsets(plan.from_app)).items()
            if tp.topic in topics and tp.partition < plan.old_count
        }
    if now != dict(plan.offsets):
        raise RepartitionError(
            f"the old app id {plan.from_app!r} committed offsets during the move (a worker "
            "ran): the copy may lack its last changes. Stop it and run this again (the "
            "new app id was given no offsets)"
        )


async def _create_changelogs(admin: AIOKafkaAdminClient, plan: Plan) -> list[str]:
    from aiokafka.admin import NewTopic

    missing = [(old, new) for old, new, _ in plan.changelogs if new not in plan.resumed]
    if not missing:
        return []
    states = await _describe(admin, [old for old, _ in missing])
    response = await admin.create_topics(
        [
            NewTopic(
                name=new,
                num_partitions=plan.new_count,
                replication_factor=states[old].replication_factor,
                topic_configs=dict(states[old].configs),
            )
            for old, new in missing
        ]
    )
    _raise_topic_errors(response.to_object())
    created = [new for _, new in missing]
    await _wait_visible(admin, created)
    return created


async def _copy(
    settings: Settings,
    old: str,
    new: str,
    old_count: int,
    new_count: int,
    holds_partition: bool,
) -> Copied:
    """Each key's latest record of ``old``, written to ``new`` at its doer's new partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tps = [TopicPartition(old, p) for p in range(old_count)]
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **settings.kafka_connection())
    latest: dict[bytes, tuple[int, Any]] = {}  # key -> (old partition, record)
    async with started(consumer):
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, firsts[tp])
            for record in await _read_to(consumer, tp, ends[tp]):
                seen = latest.get(record.key)
                if seen is not None and seen[0] != tp.partition:
                    raise RepartitionError(
                        f"{old}: key {record.key[:80]!r} is on partitions {seen[0]} and "
                        f"{tp.partition}; a doer's state must be on one (was a doer's input "
                        "placed by another partitioner?)"
                    )
                latest[record.key] = (tp.partition, record)
    copied = Copied(old, new)
    # Everything is decoded before anything is written: a key with no doer stops the
    # copy of this table with nothing of it written.
    placed: list[tuple[int, Any, bytes]] = []
    for key, (was, record) in latest.items():
        if record.value is None:
            copied.deleted += 1
            continue
        try:
            partition = partition_of(doer_of_record(key).encode(), new_count)
            value = moved_value(record.value, partition) if holds_partition else record.value
        except ValueError as exc:
            raise RepartitionError(f"{old}[{was}] offset {record.offset}: {exc}") from None
        placed.append((partition, record, value))
        copied.moved += partition != was
    producer = settings.kafka_producer(enable_idempotence=True, linger_ms=20)
    async with started(producer):
        sends = [
            await producer.send(
                new,
                value=value,
                key=record.key,
                partition=partition,
                timestamp_ms=record.timestamp,
                headers=list(record.headers or ()),
            )
            for partition, record, value in placed
        ]
        for sent in sends:
            await sent  # every record acknowledged before the offsets say "done"
    copied.keys = len(placed)
    return copied


async def _commit_offsets(settings: Settings, plan: Plan) -> int:
    """Commit the old group's offsets for the new group; partitions it never read start at 0."""
    from aiokafka import AIOKafkaConsumer

    if not plan.offsets:
        return 0
    consumer = AIOKafkaConsumer(
        group_id=plan.to_app, enable_auto_commit=False, **settings.kafka_connection()
    )
    async with started(consumer):
        consumer.assign(list(plan.offsets))
        await consumer.commit(dict(plan.offsets))
    return len(plan.offsets)
