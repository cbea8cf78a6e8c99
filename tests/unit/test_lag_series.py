"""learnops_consumer_lag keeps a series only for the partitions the worker has."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP
from prometheus_client import REGISTRY

from agents.health import observe_lag


def _lag(partition: int) -> float | None:
    labels = {"topic": "lag-series-test", "partition": str(partition)}
    return REGISTRY.get_sample_value("learnops_consumer_lag", labels)


def _app(committed: dict[int, int], end: int) -> Any:
    tps = {TP("lag-series-test", p): offset for p, offset in committed.items()}
    consumer = SimpleNamespace(_committed_offset=tps, highwater=lambda tp: end)
    return SimpleNamespace(consumer=consumer)


def test_a_partition_given_away_loses_its_lag_series() -> None:
    observe_lag(_app({0: 5, 1: 7}, end=10))
    assert (_lag(0), _lag(1)) == (5.0, 3.0)
    # A rebalance moved partition 1 to another worker: its frozen lag would mislead.
    observe_lag(_app({0: 9}, end=10))
    assert (_lag(0), _lag(1)) == (1.0, None)
    observe_lag(_app({0: 9, 1: 10}, end=12))
    assert (_lag(0), _lag(1)) == (3.0, 2.0)
