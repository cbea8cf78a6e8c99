"""Count guardrails as conditional-binomial mixture tests: state, error rate, speed."""

import numpy as np

from learning.event_guardrails import EventGuardrail, first_rollback


def test_a_candidate_whose_events_are_all_its_own_rolls_back_at_the_third_event() -> None:
    guard = EventGuardrail()
    for _ in range(3):
        assert not guard.harmful()
        guard.add("candidate", 1, 0.05)
        guard.add("control", 0, 0.05)
    assert guard.harmful()
    assert guard.trials == {"control": 0, "candidate": 3}


def test_runs_without_events_and_control_events_never_roll_back() -> None:
    guard = EventGuardrail()
    for _ in range(1000):
        guard.add("candidate", 0, 0.05)
        guard.add("control", 2, 0.05)
    assert not guard.harmful()
    assert guard.p_value == 1.0


def test_state_round_trips_and_an_empty_dict_loads() -> None:
    guard = EventGuardrail()
    guard.add("candidate", 1, 0.10)
    guard.add("control", 1, 0.25)
    assert EventGuardrail.from_dict(guard.to_dict()) == guard
    assert EventGuardrail.from_dict({}) == EventGuardrail()


def test_vectorised_path_agrees_with_the_state() -> None:
    rng = np.random.default_rng(7)
    shares = np.repeat([0.05, 0.10, 0.25], 30)
    arms = rng.random(shares.size) < shares * 3
    guard = EventGuardrail()
    first = -1
    for i, (cand, share) in enumerate(zip(arms, shares, strict=True)):
        guard.add("candidate" if cand else "control", 1, float(share))
        if first < 0 and guard.harmful():
            first = i
    assert first == int(first_rollback(arms[None, :], shares)[0])


def test_aa_false_rollbacks_stay_under_half_a_percent_over_the_steps() -> None:
    # Ville bounds it by alpha = 0.005; checked at alpha 0.05 to be measurable.
    rng = np.random.default_rng(3)
    shares = np.repeat([0.05, 0.10, 0.25, 0.50], 100)
    rolled = first_rollback(rng.random((2000, shares.size)) < shares, shares, alpha=0.05)
    assert (rolled >= 0).mean() <= 0.05
    rolled = first_rollback(rng.random((2000, shares.size)) < shares, shares)
    assert (rolled >= 0).mean() <= 0.005


def test_one_percent_criticals_against_none_roll_back_within_300_candidate_runs() -> None:
    # Control 0 events, candidate 1 % of runs: the k-th event comes after a
    # negative-binomial number of candidate runs; the test needs 3 events.
    rng = np.random.default_rng(9)
    needed = int(first_rollback(np.ones((1, 50), dtype=bool), 0.05)[0]) + 1
    assert needed == 3
    runs = rng.negative_binomial(needed, 0.01, size=4000) + needed
    assert float(np.median(runs)) <= 300
