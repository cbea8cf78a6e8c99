"""The topic catalogue (topics.yaml) and applying it to a cluster through the admin API.

Reading the catalogue imports no Kafka client: aiokafka is imported by the
functions that talk to the cluster, so `learnops topics …` starts fast.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.settings import Settings, packaged
from agents.yaml12 import YAMLFileError, load_yaml
from models.base import describe_validation_error

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Any)  # an aiokafka client: producer, consumer or admin

# config_source values of a DescribeConfigs entry (KIP-226): only a topic's own
# dynamic config is "set from the file"; everything else is a default.
_DYNAMIC_TOPIC_CONFIG = 1


class TopicCatalogError(ValueError):
    """topics.yaml is missing, malformed, or cannot be applied to the cluster."""


class TopicSpec(BaseModel):
    """One topic as topics.yaml declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    partitions: int = Field(ge=1)
    replication_factor: int = Field(ge=1)
    key: str
    value: str
    description: str = ""
    configs: dict[str, str] = Field(default_factory=dict)


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)


class _TopicEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    value: str
    description: str = ""
    partitions: int | None = Field(default=None, ge=1)
    replication_factor: int | None = Field(default=None, ge=1)
    configs: dict[str, str | int] = Field(default_factory=dict)


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    defaults: _Defaults = Field(default_factory=_Defaults)
    topics: dict[str, _TopicEntry]


@dataclass(frozen=True)
class TopicCatalog:
    """Every topic of the system, by name."""

    topics: dict[str, TopicSpec]

    @property
    def partitions(self) -> int:
        """The shared partition count (topics are co-partitioned by doer)."""
        counts = {spec.partitions for spec in self.topics.values()}
        if len(counts) != 1:
            raise TopicCatalogError(
                f"topics must share one partition count to be co-partitioned, found {counts}"
            )
        return counts.pop()

    def __getitem__(self, name: str) -> TopicSpec:
        try:
            return self.topics[name]
        except KeyError:
            raise TopicCatalogError(f"topic {name!r} is not in topics.yaml") from None


def load_catalog(
    path: Path | Traversable | None = None, *, replication_factor: int | None = None
) -> TopicCatalog:
    """Read and validate a topic catalogue, optionally overriding every replication factor.

    ``path`` is the file LEARNOPS_TOPICS_FILE names; ``None`` reads the packaged topics.yaml.
    """
    path = packaged("topics.yaml") if path is None else path
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), path)
    except FileNotFoundError:
        raise TopicCatalogError(
            f"LEARNOPS_TOPICS_FILE: topic catalogue {path} does not exist"
        ) from None
    except YAMLFileError as exc:
        raise TopicCatalogError(str(exc)) from None
    try:
        parsed = _CatalogFile.model_validate(raw)
    except ValidationError as exc:
        raise TopicCatalogError(f"{path} is malformed: {describe_validation_error(exc)}") from None
    topics = {
        name: TopicSpec(
            name=name,
            partitions=entry.partitions or parsed.defaults.partitions,
            replication_factor=replication_factor
            or entry.replication_factor
            or parsed.defaults.replication_factor,
            key=entry.key,
            value=entry.value,
            description=entry.description,
            configs={k: str(v) for k, v in entry.configs.items()},
        )
        for name, entry in parsed.topics.items()
    }
    return TopicCatalog(topics=topics)


@dataclass(frozen=True)
class TopicState:
    """A topic as the cluster has it: partition count and its own (non-default) configs."""

    name: str
    partitions: int
    configs: dict[str, str]
    replication_factor: int = 0  # replicas of its least replicated partition


#: Topics whose records may hold a person's text: raw bundles (run-completed, and the
#: bad ones in the DLQ), redacted samples, and replay tasks with their input. An
#: erasure cannot edit a Kafka log; these age out by retention (docs/curation.md).
TEXT_TOPICS = (
    "learning.run-completed",
    "learning.samples",
    "learning.dlq",
    "learning.replay-tasks",
)

#: Kafka's defaults for a topic that sets neither: log.retention.hours and log.roll.hours, 168.
KAFKA_DEFAULT_RETENTION_MS = KAFKA_DEFAULT_SEGMENT_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class Expiry:
    """How long a record sent to a topic now may stay there, by the topic's configs."""

    topic: str
    exists: bool
    retention_ms: int | None  # None: never deleted by age (compacted, or retention -1)
    segment_ms: int
    assumed: bool  # a Kafka default stands in for a config the topic does not set

    @property
    def bound_ms(self) -> int | None:
        """At most this long: a segment is deleted once its newest record passes retention."""
        return None if self.retention_ms is None else self.retention_ms + self.segment_ms


def expiry(states: dict[str, TopicState], topics: tuple[str, ...] = TEXT_TOPICS) -> list[Expiry]:
    """Each topic's bound on how long a record stays, from the configs the cluster has."""
    found = []
    for topic in topics:
        state = states.get(topic)
        configs = state.configs if state is not None else {}
        retention = configs.get("retention.ms")
        segment = configs.get("segment.ms")
        retention_ms: int | None = (
            int(retention) if retention is not None else KAFKA_DEFAULT_RETENTION_MS
        )
        if "delete" not in configs.get("cleanup.policy", "delete") or (
            retention_ms is not None and retention_ms < 0
        ):
            retention_ms = None
        found.append(
            Expiry(
                topic=topic,
                exists=state is not None,
                retention_ms=retention_ms,
                segment_ms=int(segment) if segment is not None else KAFKA_DEFAULT_SEGMENT_MS,
                assumed=retention is None or segment is None,
            )
        )
    return found


@dataclass(frozen=True)
class TopicChange:
    """What applying the catalogue did to one topic."""

    name: str
    action: str  # "created" | "updated" | "unchanged"
    detail: str = ""


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    from aiokafka.admin import AIOKafkaAdminClient

    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.learnops_app_id}-admin",
        request_timeout_ms=30_000,
        **settings.kafka_client_options(),
    )


@asynccontextmanager
async def started(client: C) -> AsyncIterator[C]:
    """An aiokafka client started for the block and stopped after it.

    Stopped too when starting fails (a broker that does not answer): a client
    left half-started is reported at exit as "Unclosed AIOKafka…", a second
    message after the CLI's one-line error.
    """
    stop = getattr(client, "stop", None) or client.close  # the admin client closes
    try:
        await client.start()
    except BaseException:
        await stop()
        raise
    try:
        yield client
    finally:
        await stop()


async def describe(settings: Settings, names: list[str]) -> dict[str, TopicState]:
    """Read the partition count and explicitly set configs of the named topics that exist."""
    async with started(_admin(settings)) as admin:
        return await _describe(admin, names)


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, TopicState]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import for_code

    existing = set(await admin.list_topics())
    present = [n for n in names if n in existing]
    if not present:
        return {}
    metadata = await admin.describe_topics(present)
    partitions = {t["topic"]: len(t["partitions"]) for t in metadata if t["error_code"] == 0}
    replicas = {
        t["topic"]: min((len(p["replicas"]) for p in t["partitions"]), default=0)
        for t in metadata
        if t["error_code"] == 0
    }
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in present]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise for_code(resource["error_code"])(resource["error_message"])
            configs[resource["resource_name"]] = {
                entry["config_names"]: entry["config_value"]
                for entry in resource["config_entries"]
                if entry.get("config_source") == _DYNAMIC_TOPIC_CONFIG
            }
    return {
        name: TopicState(
            name=name,
            partitions=partitions[name],
            configs=configs.get(name, {}),
            replication_factor=replicas[name],
        )
        for name in present
        if name in partitions
    }


async def missing(settings: Settings, catalog: TopicCatalog) -> list[str]:
    """Names of catalogue topics the cluster does not have."""
    async with started(_admin(settings)) as admin:
        existing = set(await admin.list_topics())
    return sorted(set(catalog.topics) - existing)


#: Where docs/operations.md says what a change of the partition count asks for.
REPARTITION_DOC = 'docs/operations.md, "Changing the partition count"'


def partition_problem(
    inputs: Mapping[str, int], changelogs: Mapping[str, int], expected: int | None = None
) -> str | None:
    """Why these topics cannot hold one app's state: their partition counts differ.

    ``inputs`` and ``changelogs`` map topic names to partition counts;
    ``expected`` is the count topics.yaml gives. Every input is keyed by doer and a
    doer's table values live in the changelog partition of its input partition,
    so all of them must have one count. Once tables exist, a count changed under
    them moves doers to partitions whose changelogs do not hold their state (an
    operator trial raised 4 to 8: the worker crash-looped on writes to a
    changelog partition that did not exist, and once those were grown by hand,
    doers' daily counts were lost).
    """
    if len(set(inputs.values())) > 1:
        found = ", ".join(f"{n} {c}" for n, c in sorted(inputs.items()))
        return f"the learning topics must share one partition count, found: {found}"
    if not inputs:
        return None
    count = next(iter(inputs.values()))
    if expected is not None and expected != count:
        return (
            f"topics.yaml gives {expected} partitions but the learning topics have {count}: "
            "stop every worker and run `learnops topics repartition --to-app-id <new app id>`, "
            f"which grows them and moves the tables' state (see {REPARTITION_DOC}); if the "
            "topics are already larger than topics.yaml says, the state was moved: give this "
            "worker the new topics.yaml and LEARNOPS_APP_ID"
        )
    odd = {n: c for n, c in changelogs.items() if c != count}
    if not odd:
        return None
    found = ", ".join(f"{n} {c}" for n, c in sorted(odd.items()))
    return (
        f"the learning topics have {count} partitions but this app id's table changelogs do "
        f"not ({found}): the partition count changed under existing table state, which "
        "would move doers away from their state: move it to a new app id with `learnops "
        f"topics repartition --from-app-id <this app id> --to-app-id <new>` (moved already? "
        f"start the workers with the new LEARNOPS_APP_ID). See {REPARTITION_DOC}"
    )


async def _partition_counts(admin: AIOKafkaAdminClient, names: Iterable[str]) -> dict[str, int]:
    """Partition counts of the named topics that exist and may be described.

    Only ``DescribeTopics`` (the ``Describe`` ACL a worker has), not the topics'
    configs (``DescribeConfigs``, which the documented ACLs give the admin alone).
    Raises for a topic the principal may not describe: state it cannot see is not
    state it may assume absent.
    """
    from aiokafka.errors import TopicAuthorizationFailedError

    wanted = sorted(set(names))
    if not wanted:
        return {}
    counts: dict[str, int] = {}
    for topic in await admin.describe_topics(wanted):
        code = topic["error_code"]
        if code == 0:
            counts[topic["topic"]] = len(topic["partitions"])
        elif code == TopicAuthorizationFailedError.errno:
            raise TopicAuthorizationFailedError(
                f"may not describe {topic['topic']}: give this principal Describe on it "
                "(docs/security.md, Kafka: authentication and ACLs)"
            )
    return counts


async def state_partition_problem(
    settings: Settings, catalog: TopicCatalog, changelogs: Iterable[str]
) -> tuple[str | None, int | None]:
    """:func:`partition_problem` of the cluster's learning topics and ``changelogs``
    (the app's own, by name); and the learning topics' partition count."""
    async with started(_admin(settings)) as admin:
        existing = set(await admin.list_topics())
        inputs = await _partition_counts(admin, set(catalog.topics) & existing)
        kept = await _partition_counts(admin, set(changelogs) & existing)
    problem = partition_problem(inputs, kept, catalog.partitions)
    return problem, (min(inputs.values()) if inputs else None)


async def ensure(
    settings: Settings,
    catalog: TopicCatalog,
    *,
    with_state: bool = False,
    tables: Iterable[str] = (),
) -> list[TopicChange]:
    """Create missing topics and bring existing ones to the catalogue's partitions and configs.

    Growing a topic's partitions is refused while changelogs of learnops ``tables``
    (any app id's ``<app id>-<table>-changelog``) of its partition count exist: table
    state kept by partition (:func:`partition_problem`), unless ``with_state``.
    """
    async with started(_admin(settings)) as admin:
        return await _ensure(admin, catalog, with_state=with_state, tables=tuple(tables))


async def _state_kept_at(
    admin: AIOKafkaAdminClient, tables: tuple[str, ...], partitions: int
) -> list[str]:
    """The changelogs of learnops ``tables`` (``<any app id>-<table>-changelog``) the
    cluster lists with ``partitions`` partitions.

    Only listed topics are described: asking for one by name may create it where
    the broker auto-creates topics. So the principal needs Describe on the
    changelogs (docs/security.md's ACL table gives the admin the ``learnops-``
    prefix) for this to see them.
    """
    if not tables:
        return []
    suffixes = tuple(f"-{table}-changelog" for table in tables)
    listed = [n for n in await admin.list_topics() if n.endswith(suffixes)]
    counts = await _partition_counts(admin, listed)
    return sorted(n for n, count in counts.items() if count == partitions)


async def _ensure(
    admin: AIOKafkaAdminClient,
    catalog: TopicCatalog,
    *,
    with_state: bool = False,
    tables: tuple[str, ...] = (),
) -> list[TopicChange]:
    from aiokafka.admin import NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.admin.new_partitions import NewPartitions
    from aiokafka.errors import for_code

    names = sorted(catalog.topics)
    current = await _describe(admin, names)
    changes: list[TopicChange] = []

    to_create = [catalog[n] for n in names if n not in current]
    if to_create:
        response = await admin.create_topics(
            [
                NewTopic(
                    name=spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=spec.replication_factor,
                    topic_configs=dict(spec.configs),
                )
                for spec in to_create
            ]
        )
        _raise_topic_errors(response.to_object())
        await _wait_visible(admin, [s.name for s in to_create])
        changes += [TopicChange(s.name, "created", f"{s.partitions} partitions") for s in to_create]

    grow: dict[str, NewPartitions] = {}
    alter: list[ConfigResource] = []
    for name, state in current.items():
        spec = catalog[name]
        details = []
        if state.partitions > spec.partitions:
            raise TopicCatalogError(
                f"{name} has {state.partitions} partitions on the cluster but topics.yaml "
                f"asks for {spec.partitions}; Kafka cannot remove partitions"
            )
        if state.partitions < spec.partitions:
            grow[name] = NewPartitions(total_count=spec.partitions)
            details.append(f"partitions {state.partitions}→{spec.partitions}")
        if state.configs != spec.configs:
            # AlterConfigs replaces the topic's whole dynamic config: the file is the truth.
            alter.append(ConfigResource(ConfigResourceType.TOPIC, name, dict(spec.configs)))
            details.append(f"configs {state.configs}→{spec.configs}")
        action = "updated" if details else "unchanged"
        if state.replication_factor != spec.replication_factor:
            # Kafka changes a topic's replicas only by a partition reassignment.
            action = "differs" if not details else action
            details.append(
                f"replication factor {state.replication_factor} on the cluster, "
                f"{spec.replication_factor} asked: not changed (Kafka moves replicas with "
                "kafka-reassign-partitions.sh)"
            )
        changes.append(TopicChange(name, action, "; ".join(details)))
    if grow and not with_state:
        for name in sorted(grow):
            stateful = await _state_kept_at(admin, tables, current[name].partitions)
            if stateful:
                shown = ", ".join(stateful[:3]) + (" …" if len(stateful) > 3 else "")
                raise TopicCatalogError(
                    f"{name} would grow from {current[name].partitions} to "
                    f"{catalog[name].partitions} partitions, but table state is kept by "
                    f"partition in {len(stateful)} changelog(s) of that count ({shown}): "
                    "doers would move away from their state. Nothing was changed. Stop the "
                    "workers and run `learnops topics repartition --to-app-id <new app id>`, "
                    f"which moves the state with them (see {REPARTITION_DOC})"
                )
    if grow:
        await admin.create_partitions(grow)
    if alter:
        for response in await admin.alter_configs(alter):
            for resource in response.to_object()["resources"]:
                if resource["error_code"]:
                    raise for_code(resource["error_code"])(resource["error_message"])
    return sorted(changes, key=lambda c: c.name)


async def _wait_visible(
    admin: AIOKafkaAdminClient, names: list[str], timeout: float = 30.0
) -> None:
    """Wait until the new topics have leaders for every partition, so the next reader sees them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        metadata = await admin.describe_topics(names)
        ready = {
            t["topic"]
            for t in metadata
            if t["error_code"] == 0
            and t["partitions"]
            and all(p["error_code"] == 0 for p in t["partitions"])
        }
        if ready >= set(names):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TopicCatalogError(
                f"topics {sorted(set(names) - ready)} not ready after {timeout}s"
            )
        await asyncio.sleep(0.1)


def _raise_topic_errors(response: dict[str, Any]) -> None:
    from aiokafka.errors import for_code

    for error in response.get("topic_errors", []):
        code = error.get("error_code", 0)
        # 36 = TOPIC_ALREADY_EXISTS: a concurrent `topics create` got there first.
        if code and code != 36:
            message = error.get("error_message") or ""
            raise for_code(code)(f"creating {error.get('topic')}: {message}")


async def read_from_start(settings: Settings, topic: str, *, timeout: float = 10.0) -> list[Any]:
    """Every record now in ``topic``, read from the beginning without a consumer group."""
    from aiokafka import AIOKafkaConsumer

    client = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **settings.kafka_client_options(),
    )
    async with started(client) as consumer:
        deadline = asyncio.get_running_loop().time() + timeout
        # Looked up first: a consumer of a missing topic retries its metadata for 40 s
        # and then raises UnknownTopicOrPartitionError with no word of what to do.
        if topic not in await consumer.topics():
            raise TopicCatalogError(
                f"no topic {topic} on the cluster at {settings.kafka_bootstrap_servers}: "
                "`learnops topics create` creates the catalogue's topics"
            )
        # Without a group the consumer assigns itself every partition once metadata arrives.
        consumer.subscribe([topic])
        while not consumer.assignment():
            if asyncio.get_running_loop().time() > deadline:
                raise TopicCatalogError(f"no partitions of {topic} after {timeout}s")
            await asyncio.sleep(0.05)
        partitions = sorted(consumer.assignment())
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        while asyncio.get_running_loop().time() < deadline:
            positions = [await consumer.position(tp) for tp in partitions]
            if all(pos >= ends[tp] for pos, tp in zip(positions, partitions, strict=True)):
                break
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records


async def read_record(
    settings: Settings, topic: str, partition: int, offset: int, *, timeout: float = 10.0
) -> Any | None:
    """The record at ``offset`` of ``topic``'s ``partition``, or None once it is gone.

    Gone: deleted by the topic's retention or compaction (the offset is below the
    partition's first, or compaction left a later record in its place), or not
    written (at or past the end).
    """
    origin = (topic, partition, offset)
    return (await read_records(settings, [origin], timeout=timeout))[origin]


#: Offsets further apart than this are reached by a seek rather than read through.
SEEK_GAP = 2_000


async def read_records(
    settings: Settings, origins: Iterable[tuple[str, int, int]], *, timeout: float = 10.0
) -> dict[tuple[str, int, int], Any | None]:
    """The record at each (topic, partition, offset) of ``origins``, or None where it is gone.

    One consumer for all of them, each partition read forward from its first
    wanted offset (seeking across gaps over ``SEEK_GAP``); gone as in
    :func:`read_record`. An error when a topic is missing, or when a partition
    yields nothing for ``timeout`` seconds before its wanted offsets are read.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    wanted: dict[Any, list[int]] = {}
    for topic, partition, offset in origins:
        wanted.setdefault(TopicPartition(topic, partition), []).append(offset)
    found: dict[tuple[str, int, int], Any | None] = {}
    if not wanted:
        return found
    client = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        # An offset retention deleted between the look at the log start and the read is
        # an error here (gone, below), not a silent jump to the end.
        auto_offset_reset="none",
        **settings.kafka_client_options(),
    )
    async with started(client) as consumer:
        absent = sorted({tp.topic for tp in wanted} - await consumer.topics())
        if absent:  # (a metadata request for every topic)
            raise TopicCatalogError(f"no topic {', '.join(absent)} on the cluster")
        firsts = await consumer.beginning_offsets(list(wanted))
        ends = await consumer.end_offsets(list(wanted))
        for tp, offsets in wanted.items():
            readable = sorted({o for o in offsets if firsts[tp] <= o < ends[tp]})
            found.update({(tp.topic, tp.partition, o): None for o in offsets})
            if readable:
                consumer.assign([tp])  # one at a time: no other partition's fetch in the way
                await _read_forward(consumer, tp, readable, ends[tp], timeout, found)
    return found


async def _read_forward(
    consumer: Any,
    tp: Any,
    offsets: list[int],
    end: int,
    timeout: float,
    found: dict[tuple[str, int, int], Any | None],
) -> None:
    """Fill ``found`` with the records at ``offsets`` (sorted, each below ``end``) of ``tp``."""
    from aiokafka.errors import OffsetOutOfRangeError

    loop = asyncio.get_running_loop()
    i = 0
    while i < len(offsets):
        consumer.seek(tp, offsets[i])
        deadline = loop.time() + timeout
        while i < len(offsets):
            try:
                batch = (await consumer.getmany(tp, timeout_ms=200, max_records=500)).get(tp, [])
            except OffsetOutOfRangeError:
                # Retention deleted the start meanwhile: what lies below the new start is gone.
                first = (await consumer.beginning_offsets([tp]))[tp]
                if offsets[i] >= first:  # not retention: the log was cut or made anew
                    raise TopicCatalogError(
                        f"{tp.topic}[{tp.partition}] has no offset {offsets[i]} any more (its "
                        f"log now starts at {first}); was the topic deleted and made again?"
                    ) from None
                while i < len(offsets) and offsets[i] < first:
                    i += 1
                break  # seek to the next wanted offset
            if not batch:
                if await consumer.position(tp) >= end:
                    return  # read to the end: the rest were control records (transactions)
                if loop.time() > deadline:
                    raise TopicCatalogError(
                        f"no record of {tp.topic}[{tp.partition}] at {offsets[i]} after {timeout}s"
                    )
                continue
            deadline = loop.time() + timeout
            for record in batch:
                while i < len(offsets) and offsets[i] < record.offset:
                    i += 1  # compaction left a later record in its place: gone
                if i < len(offsets) and offsets[i] == record.offset:
                    found[(tp.topic, tp.partition, record.offset)] = record
                    i += 1
            if batch[-1].offset + 1 >= end:
                return  # the rest were not there (transaction markers, compaction)
            if i < len(offsets) and offsets[i] - batch[-1].offset > SEEK_GAP:
                break  # seek ahead
