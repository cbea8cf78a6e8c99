"""agents/faust_internals/stores.py: RocksDB tables written from batch bodies and timers.

The databases are stand-ins (rocksdict is an optional extra); what is checked is
which partition's database a key is written to and read from.
`python -m tests.faults.repartition --store rocksdb` runs the real store.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust.streams
import orjson
import pytest
from faust import App
from faust.types import TP

from agents.faust_internals.stores import DoerStore, mark_clean_stop, tables_at_start
from agents.faust_internals.transport import AcknowledgedBuffer
from agents.tables import DoerPartitions


class Database:
    """A partition's database: the calls Faust's RocksDB store makes on rocksdict."""

    def __init__(self) -> None:
        self.rows: dict[bytes, bytes | None] = {}

    def put(self, key: bytes, value: bytes | None) -> None:
        self.rows[key] = value

    def get(self, key: bytes) -> bytes | None:
        return self.rows.get(key)

    def key_may_exist(self, key: bytes) -> bool:
        return key in self.rows


class Event:
    """The event in hand, as the store sees it: its message's partition."""

    message = SimpleNamespace(partition=0)


class Table:
    def __init__(self) -> None:
        self.partitions = DoerPartitions()

    def partition_for_key(self, key: Any) -> int:
        return self.partitions.of(key)


@pytest.fixture
def store() -> Any:
    made: Any = object.__new__(DoerStore)  # no RocksDB behind it
    made.table = Table()
    made._dbs = {p: Database() for p in range(4)}
    made._key_index = {}
    made.use_rocksdict = True
    return made


def test_a_batch_write_goes_to_the_doers_partition_and_reads_back_from_anywhere(
    store: Any,
) -> None:
    store.table.partitions.seen("PRDWriter", 2)
    store.table.partitions.seen("Reviewer", 1)
    day = orjson.dumps("PRDWriter/2026-12-06")
    windowed = orjson.dumps(["Reviewer/plan", [0.0, 86399.9]])
    store._set(day, b"1")  # no current event: Faust's store failed an assertion here
    store._set(windowed, b"2")
    assert store._dbs[2].rows == {day: b"1"}
    assert store._dbs[1].rows == {windowed: b"2"}
    store._key_index.clear()  # a restart: the index is empty, the databases are not
    assert store._get(day) == b"1" and store._get(windowed) == b"2"
    assert store._contains(day) and not store._contains(orjson.dumps("PRDWriter/other"))
    assert store._get(orjson.dumps("PRDWriter/other")) is None


def test_a_read_finds_the_key_while_another_doers_event_is_in_hand(store: Any) -> None:
    store.table.partitions.seen("PRDWriter", 2)
    day = orjson.dumps("PRDWriter/2026-12-06")
    store._set(day, b"1")
    # A batch body after iterating events: the last one (partition 0) is still current.
    other = Event()
    token = faust.streams._current_event.set(weakref.ref(other))  # type: ignore[arg-type]
    try:
        store.table.is_global = store.table.use_partitioner = False
        assert faust.streams.current_event() is other
        assert store._get(day) == b"1"  # Faust's store looked in partition 0's database
        assert store._contains(day)
    finally:
        faust.streams._current_event.reset(token)


def test_a_doer_no_event_placed_yet_is_an_error_not_a_write_to_a_guessed_partition(
    store: Any,
) -> None:
    with pytest.raises(RuntimeError, match="no event of doer 'Nobody' seen yet"):
        store._set(orjson.dumps("Nobody/x"), b"1")
    assert all(not db.rows for db in store._dbs.values())


def _buffer(**state: Any) -> Any:
    buffer: Any = object.__new__(AcknowledgedBuffer)  # its producer is not needed here
    buffer.unacknowledged = state.get("unacknowledged", set())
    buffer.failures = state.get("failures", [])
    buffer.pending = asyncio.Queue()
    for item in state.get("pending", ()):
        buffer.pending.put_nowait(item)
    return buffer


def test_tables_are_kept_only_after_a_stop_that_saw_every_record_acknowledged(
    tmp_path: Path,
) -> None:
    data, tables = tmp_path / "learnops", tmp_path / "learnops" / "v1" / "tables"
    tables.mkdir(parents=True)
    (tables / "crl-daily-doer-0.db").write_text("values")
    producer = SimpleNamespace(buffer=_buffer())
    assert mark_clean_stop(data, producer)
    assert tables_at_start(data, tables) == "kept"
    assert (tables / "crl-daily-doer-0.db").exists()
    # Killed this time: no marker, since the one above was taken at the start.
    assert tables_at_start(data, tables) == "deleted"
    assert not tables.exists()
    assert tables_at_start(data, tables) == "none"


@pytest.mark.parametrize(
    "state",
    [
        {"unacknowledged": {object()}},
        {"failures": [RuntimeError("broker gone")]},
        {"pending": [object()]},
    ],
)
def test_a_stop_with_a_record_not_acknowledged_is_not_clean(
    tmp_path: Path, state: dict[str, Any]
) -> None:
    tables = tmp_path / "v1" / "tables"
    tables.mkdir(parents=True)
    (tables / "x.db").write_text("ahead of its changelog")
    assert not mark_clean_stop(tmp_path, SimpleNamespace(buffer=_buffer(**state)))
    assert tables_at_start(tmp_path, tables) == "deleted"


class Kept(Database):
    """A partition's database a clean stop kept: iterable and deletable, as rocksdict is."""

    def keys(self) -> list[bytes]:
        return list(self.rows)

    def iter(self) -> Any:
        return SimpleNamespace(seek_to_first=lambda: None)

    def delete(self, key: bytes) -> None:
        self.rows.pop(key, None)


async def test_windows_kept_from_before_a_restart_expire_like_those_written_since(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Faust expires only windows written since start; a kept table's older ones stayed for good.

    A real Faust windowed table (daily windows kept 30 days) over the store, whose
    partition databases hold what a clean stop left: a window 40 days old and one
    from yesterday in partition 1, another stale one in partition 3, which this
    worker does not have active. Once partition 1 is recovered, Faust's own
    expiry (``_del_old_keys``) deletes its stale window and keeps the fresh one.
    """
    app = App(f"learnops-test-{uuid.uuid4().hex[:8]}", store="memory://")
    table = (
        app.Table("daily", default=int)
        .tumbling(timedelta(days=1), expires=timedelta(days=30))
        .table
    )
    made: Any = object.__new__(DoerStore)
    made.app, made.table, made.use_rocksdict = app, table, True
    made.key_type, made.key_serializer = table.key_type, table.key_serializer  # as Faust's
    made.value_type, made.value_serializer = table.value_type, table.value_serializer
    made.offset_key = b"__faust\0offset__"
    made._key_index = {}
    made._dbs = {1: Kept(), 3: Kept()}
    day = 86_400.0
    today = (time.time() // day) * day

    def window(doer: str, start: float) -> bytes:
        return orjson.dumps([doer, [start, start + day - 0.1]])

    stale, fresh, elsewhere = (
        window("PRDWriter/draft", today - 40 * day),
        window("PRDWriter/draft", today - day),
        window("Reviewer/plan", today - 40 * day),
    )
    odd = orjson.dumps("PRDWriter/no-window")  # not (key, window): kept, not a crash
    made._dbs[1].rows.update({stale: b"7", fresh: b"3", odd: b"1", made.offset_key: b"12"})
    made._dbs[3].rows[elsewhere] = b"5"
    table._data = made  # the table reads and deletes through this store

    await made.on_recovery_completed(
        {TP(table.changelog_topic_name, 1), TP("learnops-other-changelog", 3)}, set()
    )
    await made.on_recovery_completed({TP(table.changelog_topic_name, 1)}, set())  # once only
    assert sum(len(keys) for keys in table._partition_timestamp_keys.values()) == 2
    assert "rocksdb_unwindowed_keys table=daily partition=1 keys=1" in caplog.text
    await table._del_old_keys()
    assert set(made._dbs[1].rows) == {fresh, odd, made.offset_key}  # the stale window is gone
    assert made._dbs[3].rows == {elsewhere: b"5"}  # not active here: left to its owner
    assert len(table._partition_timestamps[1]) == 1  # registered once, not per recovery
    # Partition 1 leaves and comes back: what its other owner wrote is registered too.
    later = window("PRDWriter/draft", today - 35 * day)
    made._dbs[1].rows[later] = b"1"
    await made.on_recovery_completed(set(), set())
    await made.on_recovery_completed({TP(table.changelog_topic_name, 1)}, set())
    await table._del_old_keys()
    assert set(made._dbs[1].rows) == {fresh, odd, made.offset_key}
