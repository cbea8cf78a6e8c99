"""`learnops topics repartition` on the real broker: state moves with its doers, or nothing moves.

Scratch topic names stand in for the learning topics (the functions take the
catalogue and the tables as arguments), so the shared learning topics keep
their count. tests/faults/repartition.py moves a real worker's state.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.repartition import (
    RepartitionError,
    _copy,
    _create_changelogs,
    partition_of,
    plan_repartition,
    repartition,
)
from agents.topics import (
    TopicCatalog,
    TopicSpec,
    _admin,
    describe,
    ensure,
    read_from_start,
    started,
)
from tests.services import run_learnops

OLD, NEW = 2, 4
TABLES = {"daily": False, "doers": True}  # the second's values name a partition


def _catalog(names: list[str], partitions: int) -> TopicCatalog:
    return TopicCatalog(
        {
            n: TopicSpec(name=n, partitions=partitions, replication_factor=1, key="doer", value="x")
            for n in names
        }
    )


def _key(value: Any) -> bytes:
    return orjson.dumps(value)


@dataclass
class Cluster:
    """Scratch learning topics and an old app id's state, all at ``OLD`` partitions."""

    settings: Any
    producer: Any
    inputs: list[str]
    old_app: str
    new_app: str
    doers: list[str]

    @property
    def wider(self) -> TopicCatalog:
        return _catalog(self.inputs, NEW)

    def changelog(self, app: str, table: str) -> str:
        return f"{app}-{table}-changelog"

    def moving(self) -> list[str]:
        return [
            d for d in self.doers if partition_of(d.encode(), OLD) != partition_of(d.encode(), NEW)
        ]

    def staying(self) -> list[str]:
        return [d for d in self.doers if d not in self.moving()]

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int) -> Any:
        return await (await self.producer.send(topic, key=key, value=value, partition=partition))

    async def commit_all(self) -> dict[TopicPartition, int]:
        """The old group's offsets at every input partition's end: nothing waits."""
        consumer = AIOKafkaConsumer(group_id=self.old_app, **self.settings.kafka_connection())
        async with started(consumer):
            tps = [TopicPartition(t, p) for t in self.inputs for p in range(OLD)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.commit(ends)
        return ends


@pytest.fixture
async def cluster(settings: Any) -> AsyncIterator[Cluster]:
    tag = uuid.uuid4().hex[:8]
    inputs = [f"rp{tag}.run-completed", f"rp{tag}.crl-computed"]
    old_app, new_app = f"rpold{tag}", f"rpnew{tag}"
    await ensure(settings, _catalog(inputs, OLD))
    compacted = {"cleanup.policy": "compact"}
    changelogs = TopicCatalog(
        {
            name: TopicSpec(
                name=name,
                partitions=OLD,
                replication_factor=1,
                key="k",
                value="v",
                configs=compacted,
            )
            for name in (f"{old_app}-{t}-changelog" for t in TABLES)
        }
    )
    await ensure(settings, changelogs)
    producer = AIOKafkaProducer(**settings.kafka_connection())
    async with started(producer):
        yield Cluster(
            settings, producer, inputs, old_app, new_app, [f"doer-{i}" for i in range(24)]
        )


async def _state(cluster: Cluster) -> dict[str, dict[bytes, tuple[int, bytes | None, int]]]:
    """Each old changelog written with two versions per key, a windowed key, a tombstone."""
    expected: dict[str, dict[bytes, tuple[int, bytes | None, int]]] = {t: {} for t in TABLES}
    daily = cluster.changelog(cluster.old_app, "daily")
    doers = cluster.changelog(cluster.old_app, "doers")
    for i, doer in enumerate(cluster.doers):
        was = partition_of(doer.encode(), OLD)
        day = _key(f"{doer}/2026-12-01")
        await cluster.send(daily, day, b'{"n":1}', was)
        last = await cluster.send(daily, day, orjson.dumps({"n": 2, "doer": doer}), was)
        expected["daily"][day] = (
            partition_of(doer.encode(), NEW),
            orjson.dumps({"n": 2, "doer": doer}),
            last.timestamp,
        )
        windowed = _key([f"{doer}/policy-a", [1764547200.0, 1764633599.9]])
        record = await cluster.send(daily, windowed, b'{"w":1}', was)
        expected["daily"][windowed] = (
            partition_of(doer.encode(), NEW),
            b'{"w":1}',
            record.timestamp,
        )
        gone = _key(f"{doer}/2026-11-01")
        await cluster.send(daily, gone, b'{"n":9}', was)
        await cluster.send(daily, gone, None, was)
        seen = 0 if i == 0 else was + 1  # 0 is "never seen" and stays 0
        record = await cluster.send(doers, _key(doer), orjson.dumps(seen), was)
        moved = 0 if i == 0 else partition_of(doer.encode(), NEW) + 1
        expected["doers"][_key(doer)] = (
            partition_of(doer.encode(), NEW),
            orjson.dumps(moved),
            record.timestamp,
        )
        for topic in cluster.inputs:
            await cluster.send(topic, doer.encode(), b"{}", was)
    return expected


async def test_the_state_moves_to_each_doers_new_partition_and_the_offsets_follow(
    cluster: Cluster,
) -> None:
    expected = await _state(cluster)
    committed = await cluster.commit_all()
    assert cluster.moving() and cluster.staying(), "the doers must include both kinds"

    plan = await plan_repartition(
        cluster.settings, cluster.wider, TABLES, cluster.old_app, cluster.new_app
    )
    assert (plan.old_count, plan.new_count) == (OLD, NEW)
    assert sorted(plan.grow) == sorted(cluster.inputs)
    assert dict(plan.offsets) == committed
    report = await repartition(cluster.settings, cluster.wider, plan)

    states = await describe(cluster.settings, cluster.inputs)
    assert {s.partitions for s in states.values()} == {NEW}
    for table, want in expected.items():
        new = cluster.changelog(cluster.new_app, table)
        state = (await describe(cluster.settings, [new]))[new]
        assert state.partitions == NEW and state.configs == {"cleanup.policy": "compact"}
        found = {
            r.key: (r.partition, r.value, r.timestamp)
            for r in await read_from_start(cluster.settings, new)
        }
        assert found == want, table
    copied = {c.to: c for c in report.copied}
    daily = copied[cluster.changelog(cluster.new_app, "daily")]
    assert daily.deleted == len(cluster.doers)  # each doer's tombstoned day is left out
    assert daily.moved == 2 * len(cluster.moving())

    async with started(_admin(cluster.settings)) as admin:
        offsets = await admin.list_consumer_group_offsets(cluster.new_app)
    assert {tp: meta.offset for tp, meta in offsets.items()} == committed

    with pytest.raises(RepartitionError, match="has committed offsets: it has been used"):
        await plan_repartition(
            cluster.settings, cluster.wider, TABLES, cluster.old_app, cluster.new_app
        )


async def test_an_interrupted_move_is_run_again_to_the_same_state(cluster: Cluster) -> None:
    expected = await _state(cluster)
    await cluster.commit_all()
    plan = await plan_repartition(
        cluster.settings, cluster.wider, TABLES, cluster.old_app, cluster.new_app
    )
    # Killed after creating the new changelogs and copying one table, before the offsets.
    async with started(_admin(cluster.settings)) as admin:
        await ensure(cluster.settings, cluster.wider, with_state=True)
        await _create_changelogs(admin, plan)
    old, new, holds = plan.changelogs[0]
    await _copy(cluster.settings, old, new, OLD, NEW, holds)

    again = await plan_repartition(
        cluster.settings, cluster.wider, TABLES, cluster.old_app, cluster.new_app
    )
    assert set(again.resumed) == {n for _, n, _ in plan.changelogs}
    assert again.grow == ()
    await repartition(cluster.settings, cluster.wider, again)
    for table, want in expected.items():
        records = await read_from_start(cluster.settings, cluster.changelog(cluster.new_app, table))
        latest = {r.key: (r.partition, r.value, r.timestamp) for r in records}
        assert latest == want, table


async def test_nothing_moves_while_a_worker_runs_or_a_moving_doers_record_waits(
    cluster: Cluster,
) -> None:
    await _state(cluster)
    await cluster.commit_all()
    settings, wider = cluster.settings, cluster.wider

    member = AIOKafkaConsumer(
        cluster.inputs[0], group_id=cluster.old_app, **settings.kafka_connection()
    )
    async with started(member):
        await member.getmany(timeout_ms=3000)  # joined: partitions assigned
        assert member.assignment()
        with pytest.raises(RepartitionError, match=r"has 1 member\(s\).*stop every worker"):
            await plan_repartition(settings, wider, TABLES, cluster.old_app, cluster.new_app)
    await cluster.commit_all()  # the member's leave must not have moved anything

    staying = cluster.staying()[0]
    await cluster.send(
        cluster.inputs[1], staying.encode(), b"{}", partition_of(staying.encode(), OLD)
    )
    plan = await plan_repartition(settings, wider, TABLES, cluster.old_app, cluster.new_app)
    assert plan.waiting_kept == 1  # its doer keeps its partition: processed there later

    moving = cluster.moving()[0]
    was = partition_of(moving.encode(), OLD)
    record = await cluster.send(cluster.inputs[0], moving.encode(), b"{}", was)
    with pytest.raises(RepartitionError) as refused:
        await plan_repartition(settings, wider, TABLES, cluster.old_app, cluster.new_app)
    assert f"{cluster.inputs[0]}[{was}] offset {record.offset}, doer {moving!r}" in str(
        refused.value
    )

    with pytest.raises(RepartitionError, match="must differ"):
        await plan_repartition(settings, wider, TABLES, cluster.old_app, cluster.old_app)
    with pytest.raises(RepartitionError, match="the count the state of"):
        await plan_repartition(
            settings, _catalog(cluster.inputs, OLD), TABLES, cluster.old_app, cluster.new_app
        )
    with pytest.raises(RepartitionError, match="no table changelogs"):
        await plan_repartition(settings, wider, TABLES, f"x{cluster.old_app}", cluster.new_app)
    assert {s.partitions for s in (await describe(settings, cluster.inputs)).values()} == {OLD}


async def test_the_command_shows_its_plan_changes_nothing_in_a_dry_run_and_then_moves(
    cluster: Cluster, settings_env: dict[str, str], tmp_path: Any
) -> None:
    settings = cluster.settings
    table = "crl-daily-doer"  # a table of the worker's: the command asks the app for them
    old = cluster.changelog(cluster.old_app, table)
    await ensure(settings, _catalog([old], OLD))
    doer = cluster.moving()[0]
    await cluster.send(
        old, _key([f"{doer}/all", [0.0, 86399.9]]), b'{"count":1}', partition_of(doer.encode(), OLD)
    )
    await cluster.commit_all()
    catalog = tmp_path / "topics.yaml"
    catalog.write_text(
        f"defaults:\n  partitions: {NEW}\ntopics:\n"
        + "".join(f"  {n}:\n    key: doer\n    value: x\n" for n in cluster.inputs)
    )
    env = {**settings_env, "LEARNOPS_TOPICS_FILE": str(catalog), "LEARNOPS_APP_ID": cluster.old_app}
    command = ("topics", "repartition", "--to-app-id", cluster.new_app)

    dry = await asyncio.to_thread(run_learnops, env, *command, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["partitions"] == {"from": OLD, "to": NEW} and plan["done"] is False
    assert sorted(plan["grow"]) == sorted(cluster.inputs)
    assert {c["from"] for c in plan["changelogs"]} >= {old}
    assert {s.partitions for s in (await describe(settings, cluster.inputs)).values()} == {OLD}

    same = await asyncio.to_thread(
        run_learnops, env, "topics", "repartition", "--to-app-id", cluster.old_app
    )
    assert same.returncode == 1
    assert same.stderr.strip().count("\n") == 0 and "must differ" in same.stderr, same.stderr

    moved = await asyncio.to_thread(run_learnops, env, *command)
    assert moved.returncode == 0, moved.stderr
    new = cluster.changelog(cluster.new_app, table)
    assert f"copied    {new}  (1 keys, 1 moved partition" in moved.stdout
    assert f"LEARNOPS_APP_ID={cluster.new_app}" in moved.stdout
    assert [(r.partition, r.value) for r in await read_from_start(settings, new)] == [
        (partition_of(doer.encode(), NEW), b'{"count":1}')
    ]


async def test_a_worker_that_commits_during_the_move_leaves_the_new_app_id_without_offsets(
    cluster: Cluster,
) -> None:
    await _state(cluster)
    ends = await cluster.commit_all()
    plan = await plan_repartition(
        cluster.settings, cluster.wider, TABLES, cluster.old_app, cluster.new_app
    )
    # A worker of the old app id took one more record after the plan was made.
    tp = next(iter(ends))
    await cluster.send(tp.topic, b"late", b"{}", tp.partition)
    consumer = AIOKafkaConsumer(group_id=cluster.old_app, **cluster.settings.kafka_connection())
    async with started(consumer):
        consumer.assign([tp])
        await consumer.commit({tp: ends[tp] + 1})
    with pytest.raises(RepartitionError, match="committed offsets during the move"):
        await repartition(cluster.settings, cluster.wider, plan)
    async with started(_admin(cluster.settings)) as admin:
        assert await admin.list_consumer_group_offsets(cluster.new_app) == {}
