"""The experiment lifecycle and the command-line parsing of seeds and versioned names."""

from __future__ import annotations

import itertools

import pytest

from learning.experiments import (
    OPEN,
    STATUSES,
    TERMINAL,
    follow_policy,
    may_move,
    parse_seeds,
    split_versioned,
)


def test_the_happy_path_is_allowed_step_by_step() -> None:
    path = ["created", "replaying", "shadow", "canary", "promoted"]
    assert all(may_move(a, b) for a, b in itertools.pairwise(path))


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_nothing_leaves_a_terminal_status(terminal: str) -> None:
    assert not any(may_move(terminal, target) for target in STATUSES)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("created", "shadow"),  # no deployment without a replay
        ("created", "promoted"),
        ("canary", "shadow"),  # never backwards
        ("shadow", "replaying"),
        ("canary", "incomplete"),  # only a replay can be incomplete
    ],
)
def test_skipping_the_replay_or_moving_backwards_is_refused(current: str, target: str) -> None:
    assert not may_move(current, target)


def test_an_incomplete_experiment_may_replay_again_or_fail() -> None:
    assert may_move("incomplete", "replaying") and may_move("incomplete", "failed")
    assert "incomplete" not in TERMINAL and "incomplete" not in OPEN


@pytest.mark.parametrize(
    ("current", "policy_status", "expected"),
    [
        ("replaying", "shadow", "shadow"),
        ("replaying", "canary", "canary"),  # a canary-first plan skips shadow
        ("shadow", "canary", "canary"),
        ("shadow", "active", "promoted"),
        ("canary", "active", "promoted"),
        ("canary", "rolled_back", "rolled_back"),
        ("shadow", "rolled_back", "rolled_back"),
        ("replaying", "archived", "failed"),
        ("shadow", "shadow", None),  # no change
        ("replaying", "draft", None),  # not deployed yet
        ("promoted", "archived", None),  # a later archive of the promoted version changes nothing
        ("canary", "shadow", None),
    ],
)
def test_an_experiment_follows_its_candidate_in_the_policy_store(
    current: str, policy_status: str, expected: str | None
) -> None:
    assert follow_policy(current, policy_status) == expected


def test_versioned_names_split_at_the_last_at_sign() -> None:
    assert split_versioned("golden") == ("golden", None)
    assert split_versioned("golden@3") == ("golden", 3)
    assert split_versioned("team@golden@2") == ("team@golden", 2)
    for bad in ("golden@", "golden@x", "@2", "golden@0"):
        with pytest.raises(ValueError, match="NAME@VERSION"):
            split_versioned(bad)


def test_seeds_parse_from_a_comma_separated_list() -> None:
    assert parse_seeds("42,43,44") == [42, 43, 44]
    assert parse_seeds(" 7 , 8 ,") == [7, 8]
    with pytest.raises(ValueError, match="no seeds"):
        parse_seeds(" , ")
    with pytest.raises(ValueError, match="seed 'x' is not an integer"):
        parse_seeds("1,x")


def test_failure_rate_alerts_only_above_the_threshold_with_enough_ended() -> None:
    from learning.experiments import FailureRate, FailureRateRule

    rule = FailureRateRule(window_days=7, threshold=0.5, min_ended=4)
    assert not FailureRate(ended=3, failed=3, rule=rule).too_high  # too few to say
    assert not FailureRate(ended=4, failed=2, rule=rule).too_high  # at the threshold
    high = FailureRate(ended=4, failed=3, rule=rule)
    assert high.too_high and high.rate == 0.75
    assert high.message() == (
        "3 of 4 experiments ended failed, rolled back or incomplete over 7 days "
        "(75%, threshold 50%)"
    )
    assert FailureRate(ended=0, failed=0, rule=rule).rate == 0.0
