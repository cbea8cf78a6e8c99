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
Selected by :func:`store_url` (scheme ``learnops-rocksdb``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
from faust.stores import STORES
from faust.stores import rocksdb as faust_rocksdb

from agents.faust_internals.transport import AcknowledgedBuffer

#: The store URL scheme that selects :class:`DoerStore`.
SCHEME = "learnops-rocksdb"


def store_url(kind: str) -> str:
    """Faust's ``store`` URL for ``LEARNOPS_TABLE_STORE`` (``memory`` or ``rocksdb``)."""
    return f"{SCHEME}://" if kind == "rocksdb" else f"{kind}://"


class DoerStore(faust_rocksdb.Store):
    """Faust's RocksDB store, placing each written key in its doer's partition database."""

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
