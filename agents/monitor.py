"""Faust's sensor for the worker: what an operator watches, at a price per event the worker can pay.

Faust's ``PrometheusMonitor`` did per-event work in every hook a record passes
(message in, stream event in and out, message out, every table get and set,
every send): label lookups, ``str(stream)`` normalisation, latency deques. py-spy
on a worker running every stage at 170 bundles/s put it at 8.3 % of the main
thread, which was saturated (docs/operations.md, "Where the time goes").

:class:`WorkerMonitor` keeps Faust's monitor (the aiokafka driver reads its
``stream_inbound_time`` to warn about stalled partitions) and its Prometheus
figures that describe the worker rather than each event: messages received and
sent per topic (a label child cached per topic), send errors, commit latency,
rebalances and partition assignments. Per-stream and per-table counts are not
kept: the stages report theirs (``learnops_events_in_total``,
``learnops_batch_size``, ``learnops_batch_duration_seconds`` by stage).
Everything here uses Faust's public sensor hooks (:class:`faust.Sensor`).
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from faust.sensors import Monitor
from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class WorkerMonitor(Monitor):
    """Faust's monitor with per-event hooks cut to a counter, and Prometheus figures per worker."""

    def __init__(self, registry: CollectorRegistry, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.received = Counter(
            "faust_messages_received_total",
            "Records the consumer handed to streams.",
            ["topic"],
            registry=None,
        )
        self.sent = Counter(
            "faust_messages_sent_total", "Records given to the producer.", ["topic"], registry=None
        )
        self.send_failures = Counter(
            "faust_send_errors_total", "Records the producer could not publish.", registry=None
        )
        self.commits = Histogram(
            "faust_commit_latency_seconds",
            "Time to commit the consumer's offsets.",
            buckets=_LATENCY_BUCKETS,
            registry=None,
        )
        self.rebalance_count = Counter(
            "faust_rebalances_total", "Rebalances this worker took part in.", registry=None
        )
        self.rebalance_seconds = Histogram(
            "faust_rebalance_seconds",
            "From a rebalance's start until it is done, table recovery included.",
            buckets=_LATENCY_BUCKETS,
            registry=None,
        )
        self.assignment_count = Counter(
            "faust_assignments_total",
            "Partition assignments, by outcome.",
            ["outcome"],
            registry=None,
        )
        for metric in (
            self.received,
            self.sent,
            self.send_failures,
            self.commits,
            self.rebalance_count,
            self.rebalance_seconds,
            self.assignment_count,
        ):
            registry.register(metric)
        self._received_by_topic: dict[str, Any] = {}
        self._sent_by_topic: dict[str, Any] = {}

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        """Count the record (the base also stamps it and tracks it as active: not needed)."""
        self.messages_received_total += 1
        child = self._received_by_topic.get(tp.topic)
        if child is None:
            child = self._received_by_topic[tp.topic] = self.received.labels(tp.topic)
        child.inc()

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        """Note when the partition's stream last took an event (read by Faust's stall warning)."""
        self.events_total += 1
        self.stream_inbound_time[tp] = monotonic()

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        """Nothing per event: the stages time their batches."""

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        """Nothing per record."""

    def on_table_get(self, table: Any, key: Any) -> None:
        """Nothing per table read."""

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        """Nothing per table write (each one is a changelog record, counted as sent)."""

    def on_table_del(self, table: Any, key: Any) -> None:
        """Nothing per table delete."""

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> None:
        """Count the record handed to the producer."""
        self.messages_sent += 1
        child = self._sent_by_topic.get(topic)
        if child is None:
            child = self._sent_by_topic[topic] = self.sent.labels(topic)
        child.inc()

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        """Nothing per acknowledged record."""

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        """Count the failure."""
        super().on_send_error(producer, exc, state)
        self.send_failures.inc()

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        """Time the commit."""
        super().on_commit_completed(consumer, state)
        self.commits.observe(self.time() - state)

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        """Count the rebalance."""
        self.rebalance_count.inc()
        return super().on_rebalance_start(app)

    def on_rebalance_end(self, app: Any, state: dict[str, Any]) -> None:
        """Time the rebalance, recovery included."""
        super().on_rebalance_end(app, state)
        self.rebalance_seconds.observe(state["latency_end"])

    def on_assignment_error(self, assignor: Any, state: dict[str, Any], exc: BaseException) -> None:
        """Count the failed assignment."""
        super().on_assignment_error(assignor, state, exc)
        self.assignment_count.labels("error").inc()

    def on_assignment_completed(self, assignor: Any, state: dict[str, Any]) -> None:
        """Count the assignment."""
        super().on_assignment_completed(assignor, state)
        self.assignment_count.labels("completed").inc()
