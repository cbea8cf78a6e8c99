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

import agents.repartition as repartition_module
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
    _partition_counts,
    describe,
    ensure,
    read_from_start,
    started,
)
from storage.repartitions import record_started, repartition_of
from storage.stage_sets import stage_set_of
from tests.services import run_learnops

OLD, NEW = 2, 4
#: Table names, each with the test's tag (a plan looks for every app id's state by the
#: tables' names: another test's leftovers must not be in it); "doers" names a partition.
TABLES = {"daily": False, "doers": True}


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
    tag: str

    @property
    def wider(self) -> TopicCatalog:
        return _catalog(self.inputs, NEW)

    @property
    def tables(self) -> dict[str, bool]:
        return {f"{name}{self.tag}": holds for name, holds in TABLES.items()}

    def changelog(self, app: str, table: str) -> str:
        return f"{app}-{table}{self.tag}-changelog"

    def moving(self) -> list[str]:
        return [
            d for d in self.doers if partition_of(d.encode(), OLD) != partition_of(d.encode(), NEW)
        ]

    def staying(self) -> list[str]:
        return [d for d in self.doers if d not in self.moving()]

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int) -> Any:
        return await (await self.producer.send(topic, key=key, value=value, partition=partition))

    async def plan(self, catalog: TopicCatalog | None = None, **moves: str) -> Any:
        """The plan of moving the old app id (or ``moves``, old=new) to ``catalog``'s count."""
        moves = moves or {self.old_app: self.new_app}
        return await plan_repartition(
            self.settings,
            catalog or self.wider,
            self.tables,
            moves,
            {app: self.inputs for app in moves},
        )

    async def commit_at(self, group: str, tp: TopicPartition, offset: int) -> None:
        """Commit ``offset`` on ``tp`` for ``group``: as a worker of it would."""
        consumer = AIOKafkaConsumer(
            group_id=group, enable_auto_commit=False, **self.settings.kafka_connection()
        )
        async with started(consumer):
            consumer.assign([tp])
            await consumer.commit({tp: offset})

    async def commit_all(self, group: str | None = None) -> dict[TopicPartition, int]:
        """The old group's (or ``group``'s) offsets at every input partition's end."""
        consumer = AIOKafkaConsumer(
            group_id=group or self.old_app,
            enable_auto_commit=False,  # its own commit at stop would race the one here
            **self.settings.kafka_connection(),
        )
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
            for name in (f"{old_app}-{t}{tag}-changelog" for t in TABLES)
        }
    )
    await ensure(settings, changelogs)
    producer = AIOKafkaProducer(**settings.kafka_connection())
    async with started(producer):
        yield Cluster(
            settings, producer, inputs, old_app, new_app, [f"doer-{i}" for i in range(24)], tag
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


def _latest(records: list[Any]) -> dict[bytes, tuple[int, bytes | None, int]]:
    """Each key's last record (what a table recovers), tombstoned keys left out."""
    latest: dict[bytes, tuple[int, bytes | None, int]] = {}
    for r in records:
        if r.value is None:
            latest.pop(r.key, None)
        else:
            latest[r.key] = (r.partition, r.value, r.timestamp)
    return latest


async def test_the_state_moves_to_each_doers_new_partition_and_the_offsets_follow(
    cluster: Cluster,
) -> None:
    expected = await _state(cluster)
    committed = await cluster.commit_all()
    assert cluster.moving() and cluster.staying(), "the doers must include both kinds"

    plan = await cluster.plan()
    assert (plan.old_count, plan.new_count) == (OLD, NEW)
    assert sorted(plan.grow) == sorted(cluster.inputs)
    (move,) = plan.moves
    assert dict(move.offsets) == committed
    assert move.records == 6 * len(cluster.doers)  # every changelog record checked
    copies = await repartition(cluster.settings, cluster.wider, plan)

    states = await describe(cluster.settings, cluster.inputs)
    assert {s.partitions for s in states.values()} == {NEW}
    for table, want in expected.items():
        new = cluster.changelog(cluster.new_app, table)
        state = (await describe(cluster.settings, [new]))[new]
        assert state.partitions == NEW and state.configs == {"cleanup.policy": "compact"}
        records = await read_from_start(cluster.settings, new)
        assert _latest(records) == want, table
        for r in records:  # every record, tombstones too, at its doer's new partition
            doer = orjson.loads(r.key)
            doer = (doer[0] if isinstance(doer, list) else doer).split("/")[0]
            assert r.partition == partition_of(doer.encode(), NEW)
    copied = {c.to: c for c in copies}
    daily = copied[cluster.changelog(cluster.new_app, "daily")]
    assert daily.records == 5 * len(cluster.doers)
    assert daily.moved == 5 * len(cluster.moving())

    async with started(_admin(cluster.settings)) as admin:
        offsets = await admin.list_consumer_group_offsets(cluster.new_app)
    assert {tp: meta.offset for tp, meta in offsets.items()} == committed

    # Run again: nothing to do. Once a worker of the new app id committed, it is "used".
    again = await cluster.plan()
    assert (
        again.moves[0].finished and await repartition(cluster.settings, cluster.wider, again) == []
    )
    tp = next(iter(committed))
    await cluster.commit_all(cluster.new_app)  # a worker of it read to the end
    await cluster.send(tp.topic, b"doer-0", b"{}", tp.partition)
    await cluster.commit_at(cluster.new_app, tp, committed[tp] + 1)
    with pytest.raises(RepartitionError, match="has committed offsets: it has been used"):
        await cluster.plan()


async def test_an_interrupted_move_is_run_again_to_the_same_state(cluster: Cluster) -> None:
    expected = await _state(cluster)
    await cluster.commit_all()
    plan = await cluster.plan()
    (move,) = plan.moves
    # Killed after growing, creating the new changelogs and copying one table.
    async with started(_admin(cluster.settings)) as admin:
        await ensure(cluster.settings, cluster.wider, with_state=True)
        await _create_changelogs(admin, move, NEW)
    old, new, holds = move.changelogs[0]
    await _copy(cluster.settings, plan, move, old, new, holds)

    again = await cluster.plan()
    assert set(again.moves[0].resumed) == {n for _, n, _ in move.changelogs}
    assert again.grow == ()
    await repartition(cluster.settings, cluster.wider, again)
    for table, want in expected.items():
        records = await read_from_start(cluster.settings, cluster.changelog(cluster.new_app, table))
        assert _latest(records) == want, table


async def test_nothing_moves_while_a_worker_runs_or_a_moving_doers_record_waits(
    cluster: Cluster,
) -> None:
    await _state(cluster)
    await cluster.commit_all()
    settings = cluster.settings

    member = AIOKafkaConsumer(
        cluster.inputs[0],
        group_id=cluster.old_app,
        enable_auto_commit=False,
        **settings.kafka_connection(),
    )
    async with started(member):
        await member.getmany(timeout_ms=3000)  # joined: partitions assigned
        assert member.assignment()
        with pytest.raises(RepartitionError, match=r"has 1 member\(s\).*stop every worker"):
            await cluster.plan()
    await cluster.commit_all()  # the member's leave must not have moved anything

    staying = cluster.staying()[0]
    await cluster.send(
        cluster.inputs[1], staying.encode(), b"{}", partition_of(staying.encode(), OLD)
    )
    plan = await cluster.plan()
    assert plan.moves[0].waiting_kept == 1  # its doer keeps its partition: processed there later

    moving = cluster.moving()[0]
    was = partition_of(moving.encode(), OLD)
    record = await cluster.send(cluster.inputs[0], moving.encode(), b"{}", was)
    with pytest.raises(RepartitionError) as refused:
        await cluster.plan()
    assert f"{cluster.inputs[0]}[{was}] offset {record.offset}, doer {moving!r}" in str(
        refused.value
    )

    with pytest.raises(RepartitionError, match="must differ"):
        await cluster.plan(**{cluster.old_app: cluster.old_app})
    with pytest.raises(RepartitionError, match="the count the state has"):
        await cluster.plan(_catalog(cluster.inputs, OLD))
    with pytest.raises(RepartitionError, match="no table changelogs"):
        await cluster.plan(**{f"x{cluster.old_app}": cluster.new_app})
    assert {s.partitions for s in (await describe(settings, cluster.inputs)).values()} == {OLD}


async def test_a_topic_its_stages_read_but_never_committed_is_read_from_its_start(
    cluster: Cluster,
) -> None:
    await _state(cluster)
    await cluster.commit_all()
    unread = f"{cluster.inputs[0]}-unread"
    await ensure(cluster.settings, _catalog([unread], OLD))
    moving = cluster.moving()[0]
    await cluster.send(unread, moving.encode(), b"{}", partition_of(moving.encode(), OLD))
    catalog = _catalog([*cluster.inputs, unread], NEW)
    with pytest.raises(RepartitionError, match=f"first: {unread}"):
        await plan_repartition(
            cluster.settings,
            catalog,
            cluster.tables,
            {cluster.old_app: cluster.new_app},
            {cluster.old_app: [*cluster.inputs, unread]},
        )
    # A topic its stages do not read is not its backlog.
    plan = await plan_repartition(
        cluster.settings,
        catalog,
        cluster.tables,
        {cluster.old_app: cluster.new_app},
        {cluster.old_app: cluster.inputs},
    )
    assert plan.moves[0].consumed == tuple(sorted(cluster.inputs))


async def test_state_the_partitioner_does_not_explain_and_other_app_ids_state_stop_the_plan(
    cluster: Cluster,
) -> None:
    await _state(cluster)
    await cluster.commit_all()
    daily = cluster.changelog(cluster.old_app, "daily")
    doer = cluster.doers[0]
    elsewhere = 1 - partition_of(doer.encode(), OLD)
    record = await cluster.send(daily, _key(f"{doer}/2026-12-02"), b'{"n":1}', elsewhere)
    with pytest.raises(RepartitionError) as refused:
        await cluster.plan()
    assert f"{daily}[{elsewhere}] offset {record.offset}: doer {doer!r}" in str(refused.value)
    assert "murmur2 partitioner puts it on" in str(refused.value)
    await cluster.send(daily, _key(f"{doer}/2026-12-02"), None, elsewhere)  # not enough:
    with pytest.raises(RepartitionError, match="murmur2 partitioner puts it on"):
        await cluster.plan()  # every record is placed, the tombstone too

    other = f"rpother{uuid.uuid4().hex[:8]}"
    await ensure(cluster.settings, _catalog([cluster.changelog(other, "doers")], OLD))
    with pytest.raises(RepartitionError, match=f"app id.s. {other} .* also keep table state"):
        await cluster.plan(**{cluster.old_app: cluster.new_app})
    assert {s.partitions for s in (await describe(cluster.settings, cluster.inputs)).values()} == {
        OLD
    }


async def test_two_app_ids_move_in_one_run_even_when_it_dies_between_their_offsets(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = await _state(cluster)
    await cluster.commit_all()
    second, second_new = f"rpsecond{uuid.uuid4().hex[:8]}", f"rpsecondnew{uuid.uuid4().hex[:8]}"
    changelog = cluster.changelog(second, "doers")
    await ensure(cluster.settings, _catalog([changelog], OLD))
    doer = cluster.moving()[0]
    await cluster.send(changelog, _key(doer), b"1", partition_of(doer.encode(), OLD))
    second_offsets = await cluster.commit_all(second)
    moves = {cluster.old_app: cluster.new_app, second: second_new}

    # Killed after the first new group got its offsets, before the second did.
    committed = []
    commit = repartition_module._commit_offsets

    async def killed_after_one(settings: Any, move: Any) -> int:
        if committed:
            raise KeyboardInterrupt
        committed.append(move.to_app)
        return await commit(settings, move)

    monkeypatch.setattr(repartition_module, "_commit_offsets", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        await repartition(cluster.settings, cluster.wider, await cluster.plan(**moves))
    monkeypatch.undo()

    again = await cluster.plan(**moves)
    assert [(m.to_app, m.finished) for m in again.moves] == [
        (cluster.new_app, True),
        (second_new, False),
    ]
    await repartition(cluster.settings, cluster.wider, again)
    moved = await read_from_start(cluster.settings, cluster.changelog(second_new, "doers"))
    new_partition = partition_of(doer.encode(), NEW)
    assert _latest(moved) == {
        _key(doer): (new_partition, orjson.dumps(new_partition + 1), moved[-1].timestamp)
    }
    records = await read_from_start(cluster.settings, cluster.changelog(cluster.new_app, "doers"))
    assert _latest(records) == expected["doers"]
    async with started(_admin(cluster.settings)) as admin:
        given = await admin.list_consumer_group_offsets(second_new)
    assert {tp: meta.offset for tp, meta in given.items()} == second_offsets


async def test_the_command_shows_its_plan_changes_nothing_in_a_dry_run_and_then_moves(
    settings: Any,
    settings_env: dict[str, str],
    tmp_path: Any,
    db: Any,
    role_urls: dict[str, str],
) -> None:
    # A count no worker-table changelog on the broker has: the command looks for every app
    # id's state by the worker's table names, and other tests leave such changelogs.
    async with started(_admin(settings)) as admin:
        listed = [n for n in await admin.list_topics() if n.endswith("-crl-daily-doer-changelog")]
        taken = set((await _partition_counts(admin, listed)).values())
    old_count = min(set(range(3, 64)) - taken)
    new_count = 2 * old_count
    tag = uuid.uuid4().hex[:8]
    inputs, old_app, new_app = [f"rpcli{tag}.run-completed"], f"rpcliold{tag}", f"rpclinew{tag}"
    await ensure(settings, _catalog(inputs, old_count))
    table = "crl-daily-doer"  # a table of the worker's: the command asks the app for them
    old = f"{old_app}-{table}-changelog"
    await ensure(settings, _catalog([old], old_count))
    doer = next(
        f"doer-{i}"
        for i in range(100)
        if partition_of(f"doer-{i}".encode(), old_count)
        != partition_of(f"doer-{i}".encode(), new_count)
    )
    producer = AIOKafkaProducer(**settings.kafka_connection())
    consumer = AIOKafkaConsumer(
        group_id=old_app, enable_auto_commit=False, **settings.kafka_connection()
    )
    async with started(producer), started(consumer):
        await producer.send_and_wait(
            old,
            key=_key([f"{doer}/all", [0.0, 86399.9]]),
            value=b'{"count":1}',
            partition=partition_of(doer.encode(), old_count),
        )
        tp = TopicPartition(inputs[0], 0)
        consumer.assign([tp])
        await consumer.commit({tp: 0})
    catalog = tmp_path / "topics.yaml"
    catalog.write_text(
        f"defaults:\n  partitions: {new_count}\ntopics:\n"
        + "".join(f"  {n}:\n    key: doer\n    value: x\n" for n in inputs)
    )
    env = {**settings_env, "LEARNOPS_TOPICS_FILE": str(catalog), "LEARNOPS_APP_ID": old_app}
    command = ("topics", "repartition", "--to-app-id", new_app)

    dry = await asyncio.to_thread(run_learnops, env, *command, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["partitions"] == {"from": old_count, "to": new_count} and plan["done"] is False
    assert plan["grow"] == inputs
    (move,) = plan["moves"]
    assert [c["from"] for c in move["changelogs"]] == [old] and move["records"] == 1
    assert (await describe(settings, inputs))[inputs[0]].partitions == old_count

    same = await asyncio.to_thread(
        run_learnops, env, "topics", "repartition", "--to-app-id", old_app
    )
    assert same.returncode == 1
    assert same.stderr.strip().count("\n") == 0 and "must differ" in same.stderr, same.stderr

    moved = await asyncio.to_thread(run_learnops, env, *command)
    assert moved.returncode == 0, moved.stderr
    new = f"{new_app}-{table}-changelog"
    assert f"copied    {new}  (1 records, 1 moved partition)" in moved.stdout
    assert f"LEARNOPS_APP_ID={new_app}" in moved.stdout
    assert [(r.partition, r.value) for r in await read_from_start(settings, new)] == [
        (partition_of(doer.encode(), new_count), b'{"count":1}')
    ]
    assert (await describe(settings, inputs))[inputs[0]].partitions == new_count
    async with db.acquire() as conn:
        move = await repartition_of(conn, new_app)
        assert move is not None and move.from_app_id == old_app
        assert move.finished_at is not None  # its workers may start

        # A move that died midway: a worker under its new app id is refused, not let read
        # every topic from its start with part of the state.
        unfinished = f"rpcliunfinished{tag}"
        await record_started(conn, unfinished, old_app, old_count, new_count)
    worker = await asyncio.to_thread(
        run_learnops,
        {**env, "LEARNOPS_APP_ID": unfinished, "LEARNOPS_DATA_DIR": str(tmp_path / "data")},
        "worker",
    )
    assert worker.returncode == 1
    assert f"app id {unfinished} is the target of a move of {old_app}'s" in worker.stderr
    assert f"--from-app-id {old_app} --to-app-id {unfinished}` again" in worker.stderr
    async with db.acquire() as conn:
        assert await stage_set_of(conn, unfinished) is None  # refused before it recorded
    elsewhere = await asyncio.to_thread(
        run_learnops, {**env, "LEARNOPS_APP_ID": f"x{old_app}"}, *command
    )
    assert elsewhere.returncode == 1
    assert f"app id {new_app!r} is the target of a move from {old_app!r}" in elsewhere.stderr
    # The reader, and the worker since migration 039: a worker login must not mark moves.
    for role in ("reader", "worker"):
        refused = await asyncio.to_thread(
            run_learnops,
            {**env, "DATABASE_URL": role_urls[role]},  # scripts/postgres.sh makes the roles
            "topics",
            "repartition",
            "--to-app-id",
            f"rpcli{role}{tag}",
        )
        assert refused.returncode == 1, (role, refused.stdout)
        assert "may not write the table repartitions" in refused.stderr, (role, refused.stderr)
        assert "Traceback" not in refused.stderr, refused.stderr


async def test_a_worker_that_commits_during_the_move_leaves_the_new_app_id_without_offsets(
    cluster: Cluster,
) -> None:
    await _state(cluster)
    ends = await cluster.commit_all()
    plan = await cluster.plan()
    # A worker of the old app id took one more record after the plan was made.
    tp = next(iter(ends))
    await cluster.send(tp.topic, b"late", b"{}", tp.partition)
    await cluster.commit_at(cluster.old_app, tp, ends[tp] + 1)
    with pytest.raises(RepartitionError, match="committed offsets during the move"):
        await repartition(cluster.settings, cluster.wider, plan)
    async with started(_admin(cluster.settings)) as admin:
        assert await admin.list_consumer_group_offsets(cluster.new_app) == {}
