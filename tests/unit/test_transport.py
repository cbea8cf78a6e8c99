"""The learnops transport: fetch waits that follow the backlog, short polls under pressure."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from faust.transport import by_url
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from agents.faust_internals import transport
from agents.faust_internals.transport import (
    BUFFER_PRESSURE_POLL_S,
    FETCH_MIN_BYTES_BUSY,
    FETCH_MIN_BYTES_IDLE,
    FETCH_WAIT_BUSY_MS,
    FETCH_WAIT_IDLE_MS,
    Consumer,
    ConsumerThread,
    Transport,
    broker_urls,
    fetch_limits,
)
from agents.streams import Bodies


def test_fetches_wait_briefly_for_a_batch_while_records_flow() -> None:
    busy = (FETCH_WAIT_BUSY_MS, FETCH_MIN_BYTES_BUSY)
    assert fetch_limits(records_returned=1, records_buffered=False) == busy
    assert fetch_limits(records_returned=0, records_buffered=True) == busy
    assert fetch_limits(records_returned=5000, records_buffered=True) == busy
    assert FETCH_MIN_BYTES_BUSY > 1


def test_a_process_may_ask_for_the_first_record_while_records_flow() -> None:
    # LEARNOPS_FETCH_MIN_BYTES=1: the busy wait stays, the broker answers at once.
    assert fetch_limits(1, False, busy_min_bytes=1) == (FETCH_WAIT_BUSY_MS, 1)
    assert fetch_limits(0, True, busy_min_bytes=4096) == (FETCH_WAIT_BUSY_MS, 4096)
    assert fetch_limits(0, False, busy_min_bytes=4096) == (
        FETCH_WAIT_IDLE_MS,
        FETCH_MIN_BYTES_IDLE,
    )


def test_fetches_long_poll_for_the_first_record_once_caught_up() -> None:
    assert fetch_limits(records_returned=0, records_buffered=False) == (
        FETCH_WAIT_IDLE_MS,
        FETCH_MIN_BYTES_IDLE,
    )
    assert FETCH_MIN_BYTES_IDLE == 1  # Faust's own: the broker answers at the first record
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


def _aiokafka_consumer(**fetcher: Any) -> Any:
    """An aiokafka consumer as _fetch_records sees it: a fetcher and no subscription yet."""
    state = {"_fetch_max_wait_ms": 1500, "_fetch_min_bytes": 1, "_records": {}, **fetcher}
    return SimpleNamespace(
        _fetcher=SimpleNamespace(**state), _subscription=SimpleNamespace(subscription=None)
    )


@pytest.fixture
def polled(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What Faust's own _fetch_records hands over next (set ``polled["records"]``)."""
    polled: dict[str, Any] = {"records": {}}

    async def handed_over(self: Any, *args: Any, **kwargs: Any) -> Any:
        return polled["records"]

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records", handed_over)
    return polled


async def test_each_poll_sets_the_fetchers_wait_and_minimum_bytes(
    consumer: Any, polled: dict[str, Any]
) -> None:
    thread, aiokafka_consumer = consumer._thread, _aiokafka_consumer()
    fetcher = aiokafka_consumer._fetcher
    polled["records"] = {TopicPartition("learning.run-completed", 0): ["a record"]}
    await thread._fetch_records(aiokafka_consumer, set())
    assert fetcher._fetch_max_wait_ms == FETCH_WAIT_BUSY_MS <= 50
    assert fetcher._fetch_min_bytes == FETCH_MIN_BYTES_BUSY
    polled["records"] = {}
    await thread._fetch_records(aiokafka_consumer, set())
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (FETCH_WAIT_IDLE_MS, 1)
    fetcher._records = {TopicPartition("learning.run-completed", 1): object()}
    await thread._fetch_records(aiokafka_consumer, set())
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (
        FETCH_WAIT_BUSY_MS,
        FETCH_MIN_BYTES_BUSY,
    )


async def test_the_consumer_thread_asks_for_the_apps_fetch_size(
    consumer: Any, polled: dict[str, Any]
) -> None:
    thread, aiokafka_consumer = consumer._thread, _aiokafka_consumer()
    assert thread.busy_min_bytes == FETCH_MIN_BYTES_BUSY  # a plain Faust app: the default
    consumer.app.fetch_min_bytes = 1
    thread = consumer._new_consumer_thread()
    polled["records"] = {TopicPartition("learning.crl-computed", 0): ["a record"]}
    await thread._fetch_records(aiokafka_consumer, set())
    fetcher = aiokafka_consumer._fetcher
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (FETCH_WAIT_BUSY_MS, 1)


async def test_records_kept_for_a_paused_partition_do_not_keep_the_fetches_busy(
    consumer: Any, polled: dict[str, Any]
) -> None:
    # Faust pauses an active table's changelog after recovery in its own bookkeeping
    # only: aiokafka fetches it and keeps the records, which Faust never takes.
    changelog = TP("learnops-crl-daily-doer-changelog", 0)
    consumer._paused_partitions.add(changelog)
    thread = consumer._thread
    aiokafka_consumer = _aiokafka_consumer(_records={TopicPartition(*changelog): object()})
    fetcher = aiokafka_consumer._fetcher
    await thread._fetch_records(aiokafka_consumer, set())
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (FETCH_WAIT_IDLE_MS, 1)
    # A partition held back for buffer pressure is not paused: its records still count.
    pressed = TP("learning.run-completed", 2)
    consumer._buffered_partitions.add(pressed)
    fetcher._records[TopicPartition(*pressed)] = object()
    await thread._fetch_records(aiokafka_consumer, set())
    assert fetcher._fetch_max_wait_ms == FETCH_WAIT_BUSY_MS


async def test_a_fetcher_without_the_minimum_bytes_field_stops_the_start(
    consumer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def started(self: Any) -> None:
        return None

    aiokafka_consumer = _aiokafka_consumer()
    del aiokafka_consumer._fetcher._fetch_min_bytes
    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_start", started)
    monkeypatch.setattr(ConsumerThread, "_ensure_consumer", lambda self: aiokafka_consumer)
    with pytest.raises(RuntimeError, match=r"Fetcher lacks _fetch_min_bytes;"):
        await consumer._thread.on_start()


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
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    consumer.sleep = sleep
    records, active = await consumer._wait_next_records(1.0)
    assert records == {}
    assert active == set()
    assert polls.timeouts == [], "nothing to poll: every partition is held back"
    # Faust's own path sleeps a whole second here.
    assert slept == [BUFFER_PRESSURE_POLL_S] and BUFFER_PRESSURE_POLL_S < 0.1


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


class _Commits:
    """Stands in for the consumer's commit (no broker here): counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> bool:
        self.calls += 1
        return False


def _taken(consumer: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Message, _Commits]:
    """A stopped flow with one message taken and not acked; commits recorded; no time bound."""
    monkeypatch.setattr(transport, "WAIT_EMPTY_S", 3600.0)
    commits = _Commits()
    consumer.commit = commits
    consumer.stop_flow()
    message = Message("learning.run-completed", 0, 7, 0.0, 0, None, b"k", b"v", None)
    consumer._unacked_messages.add(message)
    consumer.app.bodies = Bodies()
    return message, commits


async def test_a_stop_waits_no_longer_once_no_stage_body_can_ack(
    consumer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    message, commits = _taken(consumer, monkeypatch)
    # The old loop waited for an ack here until its bound (an hour, patched above).
    await asyncio.wait_for(consumer.wait_empty(), timeout=30)
    assert consumer._waiting_for_ack is None, "it never waited for an ack"
    assert message in consumer._unacked_messages, "left unacked for the next owner"
    assert commits.calls >= 2  # what was acked is committed, before and at the end


async def test_a_stop_waits_for_a_stage_body_that_still_holds_events(
    consumer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    message, _ = _taken(consumer, monkeypatch)
    consumer.app.bodies.by_stage["crl"] = 1
    waiting = asyncio.create_task(consumer.wait_empty())
    for _ in range(1000):
        await asyncio.sleep(0)
        if consumer._waiting_for_ack is not None:
            break
    assert consumer._waiting_for_ack is not None and not waiting.done(), "it waits for the body"
    # The body finishes: it acks its events (Faust's ack resolves the future) and stops counting.
    message.acked = True
    consumer.app.bodies.by_stage["crl"] = 0
    consumer._waiting_for_ack.set_result(None)
    await asyncio.wait_for(waiting, timeout=30)
    assert not consumer._unacked_messages


async def test_a_partition_never_committed_goes_back_to_its_first_fetch_at_the_seek(
    consumer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an upgrade trial: records of a never-committed partition delivered before
    Faust's seek after recovery, and dropped with the streams' queues, were never fetched
    again (aiokafka seeks nothing without a commit), and the commit stood behind them."""
    committed, fresh, unseen = (TP("allocations", n) for n in range(3))
    found: dict[Any, int | None] = {committed: 5, fresh: None, unseen: None}

    async def seek_to_committed(self: Any) -> dict[Any, int | None]:
        return found

    sought: list[tuple[Any, int]] = []

    async def seek(partition: Any, offset: int) -> None:
        sought.append((partition, offset))

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek_to_committed", seek_to_committed)
    monkeypatch.setattr(consumer, "seek", seek)
    guard = consumer._guard
    fetched = guard.epochs()
    guard.fetched(fresh, [0, 1, 2], fetched, 0)  # its first fetch, from the reset position
    assert [guard.judge(fresh, n, fetched).verdict.value for n in (0, 1, 2)] == ["deliver"] * 3
    assert await consumer.seek_to_committed() is found
    assert sought == [(fresh, 0)], "only the partition that was read and has no commit"
    assert guard.expected(committed) == 5
