"""The worker's Faust sensor: its Prometheus figures, and per-event hooks that keep nothing."""

from __future__ import annotations

from faust.types import TP, Message
from prometheus_client import CollectorRegistry

from agents.app import create_app
from agents.monitor import WorkerMonitor
from agents.settings import Settings


def _message(topic: str) -> Message:
    return Message(topic, 0, 1, 0.0, 0, None, b"k", b"{}", None)


def test_records_in_and_out_are_counted_per_topic() -> None:
    registry = CollectorRegistry()
    monitor = WorkerMonitor(registry=registry)
    tp = TP("learning.run-completed", 2)
    for offset in range(3):
        monitor.on_message_in(tp, offset, _message(tp.topic))
    monitor.on_send_initiated(None, "learning.crl-computed", None, 1, 10)  # type: ignore[arg-type]
    monitor.on_send_error(None, RuntimeError("broker gone"), None)  # type: ignore[arg-type]

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("faust_messages_received_total", topic="learning.run-completed") == 3
    assert value("faust_messages_sent_total", topic="learning.crl-computed") == 1
    assert value("faust_send_errors_total") == 1
    assert monitor.messages_received_total == 3


def test_a_stream_event_notes_its_partition_time_and_keeps_no_state() -> None:
    monitor = WorkerMonitor(registry=CollectorRegistry())
    tp = TP("learning.crl-computed", 0)
    state = monitor.on_stream_event_in(tp, 5, None, None)  # type: ignore[arg-type]
    assert state is None
    assert tp in monitor.stream_inbound_time  # read by Faust's stalled-partition warning
    monitor.on_stream_event_out(tp, 5, None, None, state)  # type: ignore[arg-type]
    monitor.on_message_out(tp, 5, _message(tp.topic))
    assert len(monitor.events_runtime) == 0


def test_commits_rebalances_and_assignments_are_timed_and_counted() -> None:
    registry = CollectorRegistry()
    monitor = WorkerMonitor(registry=registry)
    monitor.on_commit_completed(None, monitor.on_commit_initiated(None))  # type: ignore[arg-type]

    class _App:
        rebalancing_count = 1

    state = monitor.on_rebalance_start(_App())  # type: ignore[arg-type]
    monitor.on_rebalance_end(_App(), state)  # type: ignore[arg-type]
    monitor.on_assignment_completed(None, monitor.on_assignment_start(None))  # type: ignore[arg-type]
    assert registry.get_sample_value("faust_commit_latency_seconds_count") == 1
    assert registry.get_sample_value("faust_rebalances_total") == 1
    assert registry.get_sample_value("faust_rebalance_seconds_count") == 1
    assert registry.get_sample_value("faust_assignments_total", {"outcome": "completed"}) == 1


def test_a_worker_with_its_web_pages_uses_this_monitor() -> None:
    app = create_app(Settings(learnops_app_id="monitor-test"), stages=["crl"])
    assert isinstance(app.monitor, WorkerMonitor)
