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

from typing import Any

import orjson
from faust.stores import STORES
from faust.stores import rocksdb as faust_rocksdb

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
        place: Any = getattr(self.table, "partition_for_key", None)
        if place is None:
            return None
        # The table's keys are JSON (Faust's default key serializer for tables).
        partition = place(orjson.loads(key))
        return None if partition is None else int(partition)


# Faust picks the store class from the store URL's scheme through this registry.
STORES.aliases[SCHEME] = f"{__name__}:DoerStore"
