"""The private Faust and aiokafka names the overrides use exist, and a change is named clearly."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import tomllib
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher
from faust.tables import recovery as faust_recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from agents.faust_internals import compat, recovery, transport
from tests.services import REPO


def test_the_installed_versions_have_every_private_name_the_overrides_use() -> None:
    assert compat.problems() == []
    compat.check()


def test_the_installed_versions_are_the_pinned_ones() -> None:
    assert compat.installed_versions() == compat.PINNED


def test_pyproject_pins_exactly_the_versions_compat_was_written_for() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9.]+)", requirement)
        if found:
            pins[found[1]] = found[2]
    assert pins == compat.PINNED


def test_every_method_the_transport_overrides_is_listed() -> None:
    listed = {(n.owner, n.name) for n in compat.NAMES if isinstance(n, compat.Method)}
    for ours, theirs in (
        (transport.Consumer, faust_aiokafka.Consumer),
        (transport.ConsumerThread, faust_aiokafka.AIOKafkaConsumerThread),
        (transport.AcknowledgedBuffer, ProducerBuffer),
    ):
        owner = f"{theirs.__module__}:{theirs.__qualname__}"
        overridden = {
            name
            for name, value in vars(ours).items()
            if inspect.isfunction(value) and hasattr(theirs, name) and name != "__post_init__"
        }
        assert overridden, ours
        missing = {name for name in overridden if (owner, name) not in listed}
        assert not missing, f"{ours.__qualname__} overrides {missing}: add them to compat.NAMES"


def _raised() -> str:
    with pytest.raises(compat.IncompatibleInternals) as info:
        compat.check()
    return str(info.value)


def test_a_changed_signature_names_the_method_the_versions_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def changed(self: Any, timeout: float, max_records: int) -> Any:  # a new parameter
        raise NotImplementedError

    monkeypatch.setattr(faust_aiokafka.Consumer, "_wait_next_records", changed)
    message = _raised()
    assert (
        "faust-streaming 0.15.3: faust.transport.drivers.aiokafka.Consumer._wait_next_records "
        "changed signature: expected (self, timeout), found (self, timeout, max_records)"
    ) in message
    assert "faust-streaming==0.15.3 (installed: 0.15.3)" in message
    assert "aiokafka==0.14.0 (installed: 0.14.0)" in message
    assert "pin them" in message
    assert message.count("\n  ") == 1  # only the changed name is reported


def test_a_removed_method_is_reported_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records")
    assert "AIOKafkaConsumerThread._fetch_records is missing" in _raised()


def test_private_state_no_longer_assigned_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def renamed(self: Any, *args: Any, **kwargs: Any) -> None:
        self._max_wait_ms = 500  # was _fetch_max_wait_ms

    monkeypatch.setattr(Fetcher, "__init__", renamed)
    message = _raised()
    assert (
        "aiokafka 0.14.0: aiokafka.consumer.fetcher.Fetcher._fetch_max_wait_ms "
        "is no longer assigned in __init__"
    ) in message


def test_state_set_between_calls_and_no_longer_read_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def actions(self: Any, assignment: Any) -> Any:  # reads the wait, no longer the minimum
        return self._fetch_max_wait_ms

    monkeypatch.setattr(Fetcher, "_get_actions_per_node", actions)
    message = _raised()
    assert (
        "aiokafka 0.14.0: aiokafka.consumer.fetcher.Fetcher._fetch_min_bytes "
        "is no longer read in _get_actions_per_node"
    ) in message
    assert "_fetch_max_wait_ms" not in message


def _buffer() -> transport.AcknowledgedBuffer:
    import faust

    buffer = transport.AcknowledgedBuffer()
    buffer.app = faust.App("buffer-test", broker="memory://")
    return buffer


async def test_a_flush_waits_until_every_buffered_record_is_acknowledged() -> None:
    # Faust's own flush returned 0.1 s after the last record left the buffer,
    # so the offsets behind records still in it were committed (kill -9 lost them).
    buffer = _buffer()
    first: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    second: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    buffer.put(first)
    buffer.put(second)
    flush = asyncio.ensure_future(buffer.flush())
    await asyncio.sleep(0.3)
    assert not flush.done()
    first.set_result("acked")
    await asyncio.sleep(0.05)
    assert not flush.done()
    second.set_result("acked")
    await asyncio.wait_for(flush, 1.0)
    assert buffer.unacknowledged == set()


async def test_a_flush_after_a_failed_record_raises_so_nothing_is_committed() -> None:
    buffer = _buffer()
    record: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    buffer.put(record)
    record.set_exception(OSError("broker went away"))
    with pytest.raises(transport.ChangelogFlushError, match="1 buffered records failed"):
        await buffer.flush()


async def test_a_flush_that_waits_too_long_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "FLUSH_TIMEOUT_S", 0.1)
    buffer = _buffer()
    buffer.put(asyncio.get_running_loop().create_future())
    with pytest.raises(transport.ChangelogFlushError, match=r"not acknowledged after 0\.1 s"):
        await buffer.flush()


async def test_a_record_sent_past_the_buffer_holds_the_commit_until_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stage outputs go straight to aiokafka (agents/event_topics.py); Faust's own
    # Topic.send only logged a failed delivery, and the commit went ahead.
    import faust

    app = faust.App("direct-send-test", broker=f"{transport.SCHEME}://127.0.0.1:9")
    producer = app.producer
    assert isinstance(producer, transport.Producer)
    sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
    records: list[asyncio.Future[Any]] = []

    async def send(
        topic: str, key: bytes | None, value: bytes | None, partition: int | None, *_: Any
    ) -> asyncio.Future[Any]:
        sent.append((topic, key, value, partition))
        records.append(asyncio.get_running_loop().create_future())
        return records[-1]

    monkeypatch.setattr(producer, "send", send)
    future = await producer.send_acknowledged("learning.alerts", b"DoerA", b"{}")
    assert sent == [("learning.alerts", b"DoerA", b"{}", None)]  # aiokafka partitions by key
    assert future is records[0]
    flush = asyncio.ensure_future(producer.buffer.flush())
    await asyncio.sleep(0.2)
    assert not flush.done()
    future.set_exception(OSError("broker went away"))
    with pytest.raises(transport.ChangelogFlushError, match="1 buffered records failed"):
        await asyncio.wait_for(flush, 1.0)


def test_a_replaced_background_task_that_is_no_longer_one_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def slurp(self: Any) -> None:  # a plain method: mode would not start it as a task
        return None

    monkeypatch.setattr(faust_recovery.Recovery, "_slurp_changelogs", slurp)
    assert (
        "faust.tables.recovery.Recovery._slurp_changelogs is no longer a "
        "mode.services.ServiceTask: function"
    ) in _raised()


async def test_a_record_in_hand_when_an_error_is_thrown_into_the_queue_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The loop's first record is taken; Faust then throws an undecodable record's error."""
    queue: ThrowableQueue[str] = ThrowableQueue(flow_control=FlowControlEvent())
    for record in ("a", "b", "c"):
        queue.put_nowait(record)
    first = await queue.get()
    await queue.throw(ValueError("undecodable changelog record"))
    with caplog.at_level(logging.WARNING):
        assert [first, *recovery._drain(queue.get_nowait)] == ["a"]
    assert "undecodable changelog record" in caplog.text
    assert recovery._drain(queue.get_nowait) == ["b", "c"]
