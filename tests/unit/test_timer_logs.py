"""A timer that fails every tick (PostgreSQL away) logs a line now and then, not every tick."""

from __future__ import annotations

from agents.logs import OnceAWhile


def test_a_run_of_failures_logs_its_first_then_one_a_while_with_the_count() -> None:
    quiet = OnceAWhile(30.0)
    assert quiet.due(0.0) == 0  # the first failure: logged
    assert [quiet.due(float(t)) for t in range(1, 30)] == [None] * 29
    assert quiet.due(30.0) == 29  # due again, with what was left out
    assert quiet.due(31.0) is None
    quiet.reset()  # a tick that worked ends the run
    assert quiet.due(32.0) == 0
