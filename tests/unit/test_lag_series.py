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


def _committed(app: Any, committed: dict[int, int], end: int) -> Any:
    app.consumer._committed_offset = {TP("lag-series-test", p): o for p, o in committed.items()}
    app.consumer.highwater = lambda tp: end
    return app


def test_a_partition_given_away_loses_its_lag_series() -> None:
    app = SimpleNamespace(consumer=SimpleNamespace())
    observe_lag(_committed(app, {0: 5, 1: 7}, end=10))
    assert (_lag(0), _lag(1)) == (5.0, 3.0)
    # A rebalance moved partition 1 to another worker: its frozen lag would mislead.
    observe_lag(_committed(app, {0: 9}, end=10))
    assert (_lag(0), _lag(1)) == (1.0, None)
    observe_lag(_committed(app, {0: 9, 1: 10}, end=12))
    assert (_lag(0), _lag(1)) == (3.0, 2.0)
    # Another app in the same process (the tests run several) leaves this one's alone.
    other = SimpleNamespace(consumer=SimpleNamespace())
    observe_lag(_committed(other, {}, end=0))
    assert (_lag(0), _lag(1)) == (3.0, 2.0)
