"""The pure parts of moving table state to a new partition count (agents/repartition.py)."""

from __future__ import annotations

import logging

import orjson
import pytest
from prometheus_client import REGISTRY

from agents.repartition import doer_of_record, moved_value, partition_of
from agents.tables import DoerPartitions

#: Kafka's own murmur2 vectors (the Java client's UtilsTest), as signed 32-bit ints.
KAFKA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("count", [1, 2, 4, 8, 12, 64])
def test_a_doer_lands_where_kafkas_java_client_puts_its_key(count: int) -> None:
    for key, hashed in KAFKA_MURMUR2.items():
        # Utils.toPositive(murmur2(key)) % numPartitions
        assert partition_of(key, count) == (hashed & 0x7FFFFFFF) % count, key
        assert partition_of(key, count, "murmur2") == partition_of(key, count)


@pytest.mark.parametrize("count", [1, 3, 8])
def test_the_crc32_partitioner_is_librdkafkas_consistent_one(count: int) -> None:
    # rd_crc32 is the standard CRC-32: its check value for "123456789" is 0xCBF43926.
    assert partition_of(b"123456789", count, "crc32") == 0xCBF43926 % count


def test_the_doer_of_a_plain_and_of_a_windowed_table_key() -> None:
    assert doer_of_record(orjson.dumps("PRDWriter/tenant-a")) == "PRDWriter"
    assert doer_of_record(orjson.dumps(["PRDWriter/p1/plan", [1.0, 86399.9]])) == "PRDWriter"
    assert doer_of_record(orjson.dumps("PRDWriter")) == "PRDWriter"


@pytest.mark.parametrize("key", [None, orjson.dumps(""), orjson.dumps("/x")])
def test_a_key_without_a_doer_is_refused(key: bytes | None) -> None:
    with pytest.raises(ValueError):
        doer_of_record(key)


def test_a_partition_value_names_the_new_partition_and_never_seen_stays_never_seen() -> None:
    assert moved_value(b"3", 5) == b"6"
    assert moved_value(b"6", 5) == b"6"
    assert moved_value(b"0", 5) == b"0"


@pytest.mark.parametrize("value", [b"true", b"-1", b'"3"', b"{}", b"1.5"])
def test_a_partition_value_that_is_not_a_count_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="not a count"):
        moved_value(value, 1)


def test_a_doer_seen_on_a_second_partition_is_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def changes() -> float:
        return REGISTRY.get_sample_value("learnops_doer_partition_changes_total") or 0.0

    def ours() -> list[str]:
        # Only this logger's: the collector may log an earlier test's garbage meanwhile.
        return [r.getMessage() for r in caplog.records if r.name == "learnops.tables"]

    partitions = DoerPartitions()
    before = changes()
    with caplog.at_level(logging.WARNING, logger="learnops.tables"):
        for partition in (1, 1, 1):
            partitions.seen("PRDWriter", partition)
        partitions.seen("Reviewer", 0)
        assert changes() == before and not ours()
        partitions.seen("PRDWriter", 5)  # a producer still placing it by the old count
        partitions.seen("PRDWriter", 1)
        partitions.seen("PRDWriter", 5)
    assert changes() == before + 3
    assert partitions.of("PRDWriter/day") == 5  # the table write follows the event in hand
    logged = ours()
    assert len(logged) == 1 and "doer_partition_changed doer='PRDWriter' was=1 now=5" in logged[0]
