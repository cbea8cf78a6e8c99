"""The learnops transport: fetch waits that follow the backlog, short polls under pressure."""

from __future__ import annotations

import time
from typing import Any

import faust
import pytest
from faust.transport import by_url
from faust.types import TP

from agents.faust_internals.transport import (
    BUFFER_PRESSURE_POLL_S,
    FETCH_WAIT_BUSY_MS,
    FETCH_WAIT_IDLE_MS,
    Consumer,
    ConsumerThread,
    Transport,
    broker_urls,
    fetch_wait_ms,
)


def test_fetches_wait_briefly_while_records_flow() -> None:
    assert fetch_wait_ms(records_returned=1, records_buffered=False) == FETCH_WAIT_BUSY_MS
    assert fetch_wait_ms(records_returned=0, records_buffered=True) == FETCH_WAIT_BUSY_MS
    assert fetch_wait_ms(records_returned=5000, records_buffered=True) == FETCH_WAIT_BUSY_MS


def test_fetches_long_poll_once_caught_up() -> None:
    assert fetch_wait_ms(records_returned=0, records_buffered=False) == FETCH_WAIT_IDLE_MS
    assert FETCH_WAIT_BUSY_MS < FETCH_WAIT_IDLE_MS


def test_broker_urls_select_the_learnops_transport() -> None:
    urls = broker_urls(["127.0.0.1:19092", "kafka-2:9092"])
    assert urls == ["learnops-kafka://127.0.0.1:19092", "learnops-kafka://kafka-2:9092"]
    assert by_url(urls[0]) is Transport


@pytest.fixture
async def consumer() -> Any:
    """The learnops consumer of an app with no broker behind it (nothing is started)."""
    app = faust.App(
        "test-transport",
        broker=broker_urls(["127.0.0.1:9"]),
        store="memory://",
        web_enabled=False,
        autodiscover=False,
    )
    made = app.consumer
    assert isinstance(made, Consumer)
    assert isinstance(made._thread, ConsumerThread)
    return made


class _Polls:
    """Stands in for the consumer thread's poll: records each timeout, returns nothing."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    async def __call__(self, active_partitions: Any, timeout: float) -> dict[Any, Any]:
        self.timeouts.append(timeout)
        return {}


async def test_poll_keeps_its_timeout_when_no_partition_is_held_back(consumer: Any) -> None:
    polls = _Polls()
    consumer._getmany = polls
    consumer._active_partitions = {TP("runs", 0), TP("runs", 1)}
    await consumer._wait_next_records(1.0)
    assert polls.timeouts == [1.0]


async def test_poll_is_short_while_a_partition_is_held_back_for_buffer_pressure(
    consumer: Any,
) -> None:
    polls = _Polls()
    consumer._getmany = polls
    consumer._active_partitions = {TP("runs", 0)}
    consumer._buffered_partitions = {TP("runs", 1)}
    await consumer._wait_next_records(1.0)
    assert polls.timeouts == [BUFFER_PRESSURE_POLL_S]


async def test_poll_returns_in_ms_not_a_second_when_every_partition_is_held_back(
    consumer: Any,
) -> None:
    polls = _Polls()
    consumer._getmany = polls
    consumer._active_partitions = set()
    consumer._buffered_partitions = {TP("runs", 0), TP("runs", 1)}
    started = time.monotonic()
    records, active = await consumer._wait_next_records(1.0)
    assert records == {}
    assert active == set()
    assert polls.timeouts == [], "nothing to poll: every partition is held back"
    assert time.monotonic() - started < 0.5, "Faust's own path sleeps a whole second here"


def test_no_commit_passes_one_unacked_message(consumer: Any) -> None:
    tp = TP("learning.task-routed", 1)
    consumer._committed_offset[tp] = 10729  # the next to read: 10729 is not done
    consumer._acked[tp] = list(range(10730, 10761))
    assert consumer._new_offset(tp) is None, "Faust's own check commits 10761 here"
    consumer._acked[tp].append(10729)  # done now: everything up to 10760 may go
    assert consumer._new_offset(tp) == 10761


def test_a_gap_at_the_head_still_commits(consumer: Any) -> None:
    tp = TP("learning.policy-changes", 0)
    consumer._committed_offset[tp] = 10  # 10 and 11 hold no record (compacted away)
    consumer._gap[tp].addi(10, 12)
    consumer._acked[tp] = [12, 13]
    assert consumer._new_offset(tp) == 14
