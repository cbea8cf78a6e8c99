"""Faust's RocksDB table store, writable where learnops writes its tables.

Faust's RocksDB store (``faust.stores.rocksdb.Store``) keeps one database per
partition and puts a written key in the database of the partition of the
event being processed (``current_event()``); with no current event it fails an
assertion. learnops writes most of its table values at the end of a batch
(``stream.take_events``) and from timers, where there is none.

:class:`DoerStore` puts a key in the database of the partition its table gives
it (``DoerTable.partition_for_key``: the partition of the key's doer, where its
changelog record goes too), falling back to Faust's choice for a table that
gives none; and reads a key from the database that holds it (Faust's reads look
in the partition of the event in hand when there is one, and a batch's or a
timer's event may be another doer's). Deletes already search every database.
And it hands the windows a kept table holds to Faust's expiry when a partition
becomes active (:meth:`DoerStore.on_recovery_completed`).
Selected by :func:`store_url` (scheme ``learnops-rocksdb``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import orjson
from faust.stores import STORES
from faust.stores import rocksdb as faust_rocksdb

from agents.faust_internals.transport import AcknowledgedBuffer

log = logging.getLogger(__name__)

#: Kept windows registered for expiry between two yields to the event loop.
WINDOW_CHUNK = 5_000

#: The store URL scheme that selects :class:`DoerStore`.
SCHEME = "learnops-rocksdb"


def store_url(kind: str) -> str:
    """Faust's ``store`` URL for ``LEARNOPS_TABLE_STORE`` (``memory`` or ``rocksdb``)."""
    return f"{SCHEME}://" if kind == "rocksdb" else f"{kind}://"


class DoerStore(faust_rocksdb.Store):
    """Faust's RocksDB store, placing each written key in its doer's partition database."""

    _windows_registered: set[int] | None = None  # partitions whose kept windows expire

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = self._partition_of(key)
        if partition is None:
            super()._set(key, value)
            return
        db = self._db_for_partition(partition)
        self._key_index[key] = partition
        db.put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        # Faust reads from the database of the event in hand's partition when there is
        # one; a batch's last event may be another doer's. A key is in its doer's.
        found = self._get_bucket_for_key(key)
        return None if found is None else found[1]

    def _contains(self, key: bytes) -> bool:
        return self._get_bucket_for_key(key) is not None

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        """Hand the kept windows of newly active partitions to Faust's expiry.

        Faust expires a windowed key only if it was written since the process
        started (``Collection._maybe_set_key_ttl``, called on a write). Windows a
        kept RocksDB table holds from before a restart were never expired:
        about one key per doer, day and windowed table stayed on disk for good.
        Each newly active partition's keys are registered once (again after it
        left and came back), a chunk at a time so that heartbeats go on; keys
        written later register themselves.
        """
        await super().on_recovery_completed(active_tps, standby_tps)
        # The concrete faust.tables.base.Collection (CollectionT declares none of these).
        table: Any = self.table
        if not table._should_expire_keys():
            return
        if self._windows_registered is None:
            self._windows_registered = set()
        topic = table.changelog_topic_name
        # A partition that left and came back holds what its other owner wrote meanwhile.
        self._windows_registered &= {tp.partition for tp in active_tps if tp.topic == topic}
        registered = self._windows_registered
        for tp in sorted(active_tps):
            if tp.topic != topic or tp.partition in registered:
                continue
            db = self._dbs.get(tp.partition)
            if db is None:
                continue
            registered.add(tp.partition)
            unwindowed = 0
            for n, raw in enumerate(self._visible_keys(db), start=1):
                try:
                    table._maybe_set_key_ttl(table._to_key(self._decode_key(raw)), tp.partition)
                except (TypeError, ValueError):
                    unwindowed += 1  # not (key, (start, end)): left as it is, never a crash
                if n % WINDOW_CHUNK == 0:
                    await asyncio.sleep(0)
            if unwindowed:
                log.warning(
                    "rocksdb_unwindowed_keys table=%s partition=%d keys=%d hint='a windowed "
                    "table holds keys without a window: they are kept, never expired'",
                    table.name,
                    tp.partition,
                    unwindowed,
                )

    def _partition_of(self, key: bytes) -> int | None:
        # The table's keys are JSON (Faust's default key serializer for tables).
        partition = self.table.partition_for_key(orjson.loads(key))
        return None if partition is None else int(partition)


#: Written in the app's data directory by a stop that left every table write's
#: changelog record acknowledged; removed at start.
CLEAN_STOP = "clean-stop"


def tables_at_start(datadir: Path, tabledir: Path) -> str:
    """Keep the RocksDB tables after a clean stop, delete them after any other: what was done.

    A table write reaches RocksDB at once and its changelog record when the
    broker acknowledges it. A worker killed in between leaves RocksDB ahead of
    the changelog: the value and its source mark (agents/tables.py) say a run is
    folded that the changelog lacks, the redelivered run is skipped, and the
    run is lost wherever the partition is next recovered from the changelog.
    Only a stop that saw every record acknowledged (:func:`mark_clean_stop`)
    leaves tables the changelogs agree with; after any other the worker reads
    its changelogs from the start, as the memory store always does.
    Returns ``"kept"``, ``"deleted"`` or ``"none"`` (no tables yet).
    """
    marker = datadir / CLEAN_STOP
    if marker.exists():
        marker.unlink()
        return "kept"
    if tabledir.is_dir() and any(tabledir.iterdir()):
        shutil.rmtree(tabledir)
        return "deleted"
    return "none"


def mark_clean_stop(datadir: Path, producer: Any) -> bool:
    """Leave the marker that keeps the tables (:func:`tables_at_start`) if all was acknowledged."""
    buffer = getattr(producer, "buffer", None)
    if (
        not isinstance(buffer, AcknowledgedBuffer)
        or buffer.unacknowledged
        or buffer.failures
        or not buffer.pending.empty()
    ):
        return False
    datadir.mkdir(parents=True, exist_ok=True)
    (datadir / CLEAN_STOP).write_text("every changelog record was acknowledged\n")
    return True


# Faust picks the store class from the store URL's scheme through this registry.
STORES.aliases[SCHEME] = f"{__name__}:DoerStore"
