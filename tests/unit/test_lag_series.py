"""learnops_consumer_lag: a series for each input partition the worker has, and only those."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka.errors import KafkaTimeoutError
from faust.types import TP
from prometheus_client import REGISTRY

from agents.health import observe_lag

TOPIC = "lag-series-test"


def _lag(partition: int) -> float | None:
    labels = {"topic": TOPIC, "partition": str(partition)}
    return REGISTRY.get_sample_value("learnops_consumer_lag", labels)


def _worker(
    committed: dict[int, int],
    end: int,
    *,
    owned: tuple[int, ...] = (),
    log_start: int = 0,
    app: Any = None,
) -> Any:
    """An app as observe_lag reads it: committed offsets, partition ends, owned partitions."""
    app = app or SimpleNamespace(consumer=SimpleNamespace(), rebalancing=False, in_recovery=False)
    app.consumer._committed_offset = {TP(TOPIC, p): o for p, o in committed.items()}
    app.consumer.highwater = lambda tp: end
    asked: list[TP] = []

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        asked.extend(tps)
        return dict.fromkeys(tps, log_start)

    app.consumer.earliest_offsets = earliest_offsets
    app.consumer.asked = asked
    actives = {TP(TOPIC, p) for p in owned} | {TP(f"{TOPIC}-changelog", p) for p in owned}
    app.assignor = SimpleNamespace(assigned_actives=lambda: actives)
    app.tables = SimpleNamespace(changelog_topics={f"{TOPIC}-changelog"})
    return app


async def test_a_partition_given_away_loses_its_lag_series() -> None:
    app = await _observed(_worker({0: 5, 1: 7}, end=10))
    assert (_lag(0), _lag(1)) == (5.0, 3.0)
    # A rebalance moved partition 1 to another worker: its frozen lag would mislead.
    await _observed(_worker({0: 9}, end=10, app=app))
    assert (_lag(0), _lag(1)) == (1.0, None)
    await _observed(_worker({0: 9, 1: 10}, end=12, app=app))
    assert (_lag(0), _lag(1)) == (3.0, 2.0)
    # Another app in the same process (the tests run several) leaves this one's alone.
    await _observed(_worker({}, end=0))
    assert (_lag(0), _lag(1)) == (3.0, 2.0)


async def test_a_partition_without_a_commit_lags_by_everything_from_its_log_start() -> None:
    # Partition 2 is owned but has no commit yet (a new group, or one stuck before its
    # first commit): the group reads it from its log start.
    app = await _observed(_worker({0: 9, 1: 10}, end=12, owned=(0, 1, 2), log_start=4))
    assert (_lag(0), _lag(1), _lag(2)) == (3.0, 2.0, 8.0)
    assert app.consumer.asked == [TP(TOPIC, 2)]  # only it, and no changelog partition
    # A scrape soon after takes the log start it knows: one question per minute at most.
    await _observed(_worker({0: 9, 1: 10}, end=13, owned=(0, 1, 2), log_start=4, app=app))
    assert _lag(2) == 9.0 and app.consumer.asked == []
    # Its first commit: measured from there.
    await _observed(_worker({0: 9, 1: 10, 2: 11}, end=12, owned=(0, 1, 2), app=app))
    assert _lag(2) == 1.0


async def test_while_rebalancing_no_log_start_stands_in_for_an_offset() -> None:
    # Faust drops the committed offsets it knew at a revocation and reads them again
    # once the tables are recovered: meanwhile a log start would show the whole log.
    app = _worker({0: 9}, end=12, owned=(0, 4), log_start=0)
    app.rebalancing = True
    await observe_lag(app)
    assert (_lag(0), _lag(4)) == (3.0, None) and app.consumer.asked == []


async def test_a_partition_moved_away_under_the_scrape_is_left_out() -> None:
    app = _worker({0: 9, 5: 1}, end=12)

    def highwater(tp: TP) -> int:
        assert tp.partition == 0, "Partition is not assigned"  # aiokafka's own check
        return 12

    app.consumer.highwater = highwater
    await observe_lag(app)
    assert (_lag(0), _lag(5)) == (3.0, None)


async def test_a_log_start_the_broker_does_not_answer_leaves_the_other_series() -> None:
    app = _worker({0: 9}, end=12, owned=(0, 3))

    async def unanswered(*tps: TP) -> dict[TP, int]:
        raise KafkaTimeoutError()

    app.consumer.earliest_offsets = unanswered
    await observe_lag(app)
    assert (_lag(0), _lag(3)) == (3.0, None)


async def _observed(app: Any) -> Any:
    await observe_lag(app)
    return app
