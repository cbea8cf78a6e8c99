"""The canary's silence timer judges only once the worker has read what waited on its inputs."""

from __future__ import annotations

from typing import Any

import pytest
from faust.types import TP

from agents.canary import CATCH_UP_MAX_S, CatchUp

RESULTS = TP("learning.crl-computed", 0)
ROUTINGS = TP("learning.task-routed", 0)


def test_nothing_is_judged_before_the_worker_settles() -> None:
    assert not CatchUp().ready(0.0, {})


def test_silence_waits_until_the_backlog_at_settling_is_committed() -> None:
    catch_up = CatchUp()
    catch_up.settle(100.0, {RESULTS: 500, ROUTINGS: 40})
    assert not catch_up.ready(101.0, {RESULTS: 120, ROUTINGS: 40})
    assert not catch_up.ready(101.0, {ROUTINGS: 40}), "a partition with nothing committed waits"
    assert not catch_up.ready(120.0, {RESULTS: 499, ROUTINGS: 40})
    assert catch_up.ready(120.0, {RESULTS: 500, ROUTINGS: 41})


def test_a_worker_with_nothing_waiting_judges_at_once() -> None:
    catch_up = CatchUp()
    catch_up.settle(5.0, {RESULTS: 500})
    assert catch_up.ready(5.0, {RESULTS: 500})
    nothing_owned = CatchUp()
    nothing_owned.settle(5.0, {})
    assert nothing_owned.ready(5.0, {})


def test_a_commit_that_stands_still_does_not_switch_the_guard_off_for_good() -> None:
    catch_up = CatchUp()
    catch_up.settle(0.0, {RESULTS: 500})
    assert not catch_up.ready(CATCH_UP_MAX_S - 1, {RESULTS: 10})
    assert catch_up.ready(CATCH_UP_MAX_S, {RESULTS: 10})


def test_a_rebalance_starts_the_catch_up_again() -> None:
    catch_up = CatchUp()
    catch_up.settle(0.0, {RESULTS: 5})
    assert catch_up.ready(1.0, {RESULTS: 5})
    catch_up.unsettled()
    assert not catch_up.settled and not catch_up.ready(1.0, {RESULTS: 5})


def test_a_rebalance_between_two_ticks_settles_again_on_the_partitions_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A platform engineer's walk started a second worker of one app id: a rebalance that
    came and went between two ticks left the timer settled on partitions it no longer
    owned, and asking their position failed every second (301 tracebacks in 5 minutes)."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka.errors import IllegalStateError

    import agents.canary as canary

    kept, revoked = TP("learning.crl-computed", 1), RESULTS
    owned = [kept]

    async def position(tp: TP) -> int:
        if tp not in owned:
            raise IllegalStateError(f"Partition {tp} is not assigned")
        return 7

    async def highwaters(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 7)

    judged: list[set[int]] = []

    async def pause_silent(now: object, partitions: set[int]) -> None:
        judged.append(partitions)

    consumer = SimpleNamespace(position=position, highwaters=highwaters)
    stage: Any = object.__new__(canary.CanaryStage)
    stage.app = SimpleNamespace(
        pool_open=True, in_recovery=False, rebalancing=False, consumer=consumer
    )
    stage.catch_up = CatchUp()
    stage.catch_up.settle(0.0, {revoked: 5, kept: 7})  # settled before the rebalance
    stage._owned_inputs = lambda: list(owned)
    stage.pause_silent = pause_silent
    monkeypatch.setattr(canary, "committed_offsets", lambda app: {})
    asyncio.run(stage.pause_silent_deployments())
    assert stage.catch_up.ends == {kept: 7}
    assert judged == [{1}]


async def test_a_partition_revoked_since_settling_unsettles_it_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by an operator trial with two workers: the silence timer asked the position
    of a partition no longer assigned and logged timer_failed with a traceback."""
    from aiokafka.errors import IllegalStateError

    from agents.app import create_app
    from agents.canary import CanaryStage
    from agents.settings import Settings

    settings = Settings(learnops_app_id="catch-up-test", learnops_web_enabled=False)
    stage = CanaryStage(create_app(settings, stages=[]))

    async def position(tp: Any) -> int:
        raise IllegalStateError(f"No current assignment for partition {tp}")

    monkeypatch.setattr(stage.app.consumer, "position", position)
    stage.catch_up.settle(0.0, {RESULTS: 10})
    assert stage.catch_up.settled
    assert await stage._reached() is None
    assert not stage.catch_up.settled
