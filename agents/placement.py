"""Where a doer's records belong: the partition Kafka's default partitioner gives its key.

Every learning topic is keyed by doer and shares one partition count, and each
doer's table state lives in the changelog partition of the input partition
its key hashes to (co-partitioning). Records the orchestrator publishes
(``learning.run-completed``, ``learning.task-routed``) and those the worker
publishes (``learning.crl-computed``, …) meet in one stage (the canary reads
both), so every producer must place a key the same way: murmur2, the default
of Kafka's Java client, aiokafka and ``learnops.client``.

A record on another partition was placed by a producer that knows another
partition count (one whose metadata predates ``learnops topics repartition``)
or uses another partitioner (librdkafka's default, crc32). Processed there,
its doer's state would be read and written on two partitions, which no worker
can undo; so the stages refuse it into ``learning.dlq`` with
:func:`placement_problem`'s reason, and ``learnops dlq replay`` publishes it
again where it belongs once its producer is mended.
"""

from __future__ import annotations

import functools
import zlib

from aiokafka.partitioner import murmur2


@functools.lru_cache(maxsize=1 << 16)
def key_hash(key: bytes) -> int:
    """The non-negative murmur2 hash by which Kafka's default partitioners place ``key``.

    Cached: aiokafka's murmur2 is pure Python (about 3 µs a key) and a
    worker's keys are its few thousand doers.
    """
    return int(murmur2(key)) & 0x7FFFFFFF


def placement_problem(topic: str, partition: int, key: bytes, count: int) -> str | None:
    """Why a record with ``key`` does not belong on ``partition`` of ``count``; None if it does.

    The reason names the partition the key belongs on, and says so when
    librdkafka's crc32 partitioner would have put it where it is; never the
    key's bytes (a dead letter's reason is logged).
    """
    expected = key_hash(key) % count
    if partition == expected:
        return None
    if zlib.crc32(key) % count == partition:
        cause = (
            "crc32 puts it where it is: its producer uses librdkafka's default partitioner; "
            "set partitioner=murmur2_random in that producer's configuration"
        )
    else:
        cause = (
            "its producer places keys by another partition count (metadata older than the "
            "last `learnops topics repartition`, to be restarted) or another partitioner"
        )
    return (
        f"the record is on partition {partition} of {topic}, but its key belongs on partition "
        f"{expected} of {count} (murmur2, as every producer of the learning topics must "
        f"place it); {cause}. Processed here, its doer's table state would be split over two "
        f"partitions; `learnops dlq replay` publishes it again where it belongs"
    )
