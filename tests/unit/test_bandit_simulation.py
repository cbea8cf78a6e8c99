"""The issue's targets for the bandit by seeded simulation (bench/bandit_sim.py: the full table)."""

from dataclasses import replace

import numpy as np
import pytest

from learning.bandit import BanditConfig
from learning.bandit_simulation import (
    Environment,
    max_share_after,
    mean_regret,
    runs_to_majority,
    simulate,
)
from learning.canary_simulation import zero_inflated

FACTORS = (1.0, 0.75, 1.25, 1.5)  # option-1 is best
SEEDS = range(5)


def test_stationary_regret_is_at_most_30_percent_of_uniform_after_5000_runs() -> None:
    env = Environment(FACTORS)
    thompson = mean_regret(env, "thompson", 5000, SEEDS)
    uniform = mean_regret(env, "uniform", 5000, SEEDS)
    assert thompson <= 0.30 * uniform, f"Thompson {thompson:.0f} against uniform {uniform:.0f}"


def test_the_best_option_ends_with_the_most_traffic() -> None:
    result = simulate(Environment(FACTORS), "thompson", 3000, seed=11)
    assert int(np.argmax(result.shares[-1])) == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_after_a_drift_the_new_best_option_has_the_majority_within_1000_runs(seed: int) -> None:
    env = Environment(FACTORS, drift_at=2500, after=(0.6, 1.25, 1.0, 1.5))
    result = simulate(env, "thompson", 3500, seed)
    assert result.shares[24, 0] < 0.5  # option-0 was not the favourite before the drift
    runs = runs_to_majority(result, option=0, since=2500)
    assert runs is not None and runs <= 1000, f"new best took {runs} runs"


HARMFUL = Environment((1.0, 0.6, 1.25, 1.5), event_rates=(0.0, 0.05, 0.0, 0.0))
# The model before issue 20's second round: discounted normal model, no detector, no probation.
BEFORE = BanditConfig(
    model="normal", discount=0.999, change_threshold=0.0, probation_runs=0, temper=1.0
)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_harmful_option_on_probation_never_gets_more_than_the_floor(seed: int) -> None:
    # option-1 has the lowest loss but a security critical on 5 % of its runs. With 60 runs
    # of probation it leaves the floor only if none of them had an event (0.95^60 ≈ 5 %).
    config = BanditConfig(probation_runs=60)
    result = simulate(HARMFUL, "thompson", 3000, seed, config=config)
    assert max_share_after(result, 1, 0) == pytest.approx(config.min_share)
    assert set(result.excluded_at) <= {1}  # no harmless option is excluded


def test_without_probation_a_harmful_option_gets_far_more_than_the_floor() -> None:
    for config in (BEFORE, BanditConfig(probation_runs=0)):
        shares = [
            max_share_after(simulate(HARMFUL, "thompson", 3000, s, config=config), 1, 0)
            for s in SEEDS
        ]
        assert min(shares) > 0.1, shares


def test_a_harmful_option_once_excluded_stays_on_the_floor() -> None:
    config = BanditConfig()
    results = [simulate(HARMFUL, "thompson", 5000, seed, config=config) for seed in SEEDS]
    excluded = [(r, r.excluded_at[1]) for r in results if 1 in r.excluded_at]
    assert len(excluded) >= 4  # two of its events at the floor share are enough
    for result, at in excluded:
        assert max_share_after(result, 1, at) == pytest.approx(config.min_share)


def test_without_change_detection_the_drift_target_is_missed() -> None:
    # The same check on a bandit that neither discounts nor detects changes.
    env = Environment(FACTORS, drift_at=2500, after=(0.6, 1.25, 1.0, 1.5))
    config = BanditConfig(discount=1.0, change_threshold=0.0)
    slow = [
        runs_to_majority(simulate(env, "thompson", 3500, s, config=config), 0, 2500) for s in SEEDS
    ]
    assert any(r is None or r > 1000 for r in slow), slow


def test_on_a_zero_heavy_loss_the_regret_is_lower_than_before() -> None:
    env = Environment(FACTORS, zero_inflated(0.9))
    now = mean_regret(env, "thompson", 5000, SEEDS, config=BanditConfig())
    before = mean_regret(env, "thompson", 5000, SEEDS, config=BEFORE)
    uniform = mean_regret(env, "uniform", 5000, SEEDS)
    assert now < 0.8 * before, (now / uniform, before / uniform)


def test_pooled_rates_and_tempered_shares_each_lower_the_zero_heavy_regret() -> None:
    # The options differ in the size of their losses, not in how often there is one
    # (90 % zeros each): pooling the rates leaves the positive part to rank them.
    env = Environment(FACTORS, zero_inflated(0.9))
    defaults = BanditConfig()
    now = mean_regret(env, "thompson", 5000, SEEDS, config=defaults)
    unpooled = mean_regret(
        env, "thompson", 5000, SEEDS, config=replace(defaults, rate_pooling=False)
    )
    untempered = mean_regret(env, "thompson", 5000, SEEDS, config=replace(defaults, temper=1.0))
    assert now < 0.85 * unpooled, (now, unpooled)
    assert now < 0.85 * untempered, (now, untempered)


def test_with_probe_runs_on_probation_a_harmful_option_never_leaves_the_floor() -> None:
    # Each option on probation is also run in shadow on half the tasks: its guardrail
    # events show there without serving anyone, and the better options are released
    # sooner, so the regret target holds too.
    for seed in SEEDS:
        result = simulate(HARMFUL, "thompson", 3000, seed, probe=0.5)
        assert max_share_after(result, 1, 0) == pytest.approx(BanditConfig().min_share)
        assert set(result.excluded_at) <= {1}
    stationary = Environment(FACTORS)
    shadowed = mean_regret(stationary, "thompson", 5000, SEEDS, probe=0.5)
    uniform = mean_regret(stationary, "uniform", 5000, SEEDS)
    assert shadowed <= 0.30 * uniform, (shadowed, uniform)
    runs = simulate(stationary, "thompson", 5000, 0, probe=0.5).probe_runs
    assert 0 < runs < 1000  # about 500: half the tasks, while options are on probation


def test_scoring_every_option_on_every_task_finds_the_zero_heavy_drift_within_1000_runs() -> None:
    """The what-if of docs/bandits.md: more information per run is what the zero-heavy drift needs.

    The stage never scores unserved options (shadow runs do not move its
    estimates); the simulation does, to measure what that would buy.
    """
    env = Environment(FACTORS, zero_inflated(0.9), drift_at=2500, after=(0.6, 1.25, 1.0, 1.5))
    served: list[int] = []
    scored: list[int] = []
    for seed in range(1000, 1010):
        # The same faster detector without the scored runs: what the information adds.
        plain = simulate(
            env, "thompson", 3500, seed, probe=0.5, config=BanditConfig(change_threshold=10.0)
        )
        every = simulate(
            env,
            "thompson",
            3500,
            seed,
            probe=0.5,
            config=BanditConfig(change_threshold=10.0),
            score_unserved=1.0,
            score_below=1.01,
        )
        assert plain.scored_runs == 0
        assert every.scored_runs > 2.9 * 3500  # three unserved options, each scored on every task
        for runs, result in ((served, plain), (scored, every)):
            majority = runs_to_majority(result, 0, 2500)
            runs.append(10_000 if majority is None else majority)
    assert max(scored) <= 1000, f"runs to the new best's majority, every option scored: {scored}"
    assert np.mean(scored) < 0.5 * np.mean(served), f"{scored} against {served}"


@pytest.mark.parametrize("seed", [1, 3])
def test_scored_shadow_runs_do_not_release_a_harmful_option_from_probation(seed: int) -> None:
    """A scored run has no guardrail events seen, so it must not count as a probation run."""
    result = simulate(HARMFUL, "thompson", 3000, seed, probe=0.5, score_unserved=1.0)
    assert result.scored_runs > 0
    assert max_share_after(result, option=1, since=0) <= 0.02 + 1e-9
