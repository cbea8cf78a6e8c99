"""The canary's silence timer judges only once the worker has read what waited on its inputs."""

from __future__ import annotations

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
