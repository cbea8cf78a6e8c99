"""The canary's error rates and speed in the flow production has, by seeded simulation (issue 16).

Each canary is judged after every result, routed at the step's share, with the
loss shapes of :mod:`learning.canary_simulation` (heavy: lognormal, 5 % zeros,
1 % ×10; zero-inflated: 90 % and 98 % zeros). The first test checks that the
vectorised simulator takes the decisions :func:`learning.canary.evaluate` and
:func:`learning.canary.advance` take one result at a time, so the rates below
are those of the code the canary stage runs. ``bench/canary_sim.py`` prints the
full table (2,000 canaries per row); these are smaller versions sized to run in
seconds, with the assertions at the levels the issue states plus the slack the
number of replications needs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from learning.canary import ArmStats, CanaryConfig, StepState, advance, evaluate
from learning.canary_simulation import SHAPES, heavy, judge_flow, previous, simulate_flow

CONFIG = CanaryConfig()  # the defaults are what is being checked
HALF_ALPHA = CONFIG.alpha / 2  # each side of the two-sided level


def reference(
    control: np.ndarray, candidate: np.ndarray, routing: np.ndarray, config: CanaryConfig
) -> tuple[str, int, int, int]:
    """One canary judged as the canary stage does: evaluate and advance after every result."""
    arms = {"control": ArmStats(), "candidate": ArmStats()}
    taken = {"control": 0, "candidate": 0}
    in_step = {"control": 0, "candidate": 0}
    step = 0
    for r, draw in enumerate(routing):
        arm = "candidate" if draw < config.steps[step] else "control"
        losses = candidate if arm == "candidate" else control
        arms[arm].add(float(losses[taken[arm]]))
        taken[arm] += 1
        in_step[arm] += 1
        decision = evaluate(arms["control"], arms["candidate"], config)
        move = advance(StepState(step, in_step["control"], in_step["candidate"]), decision, config)
        if move.action in ("promote", "rollback"):
            return move.action, r + 1, taken["candidate"], step
        if move.action == "step_up":
            step = move.step_index
            in_step = {"control": 0, "candidate": 0}
    return "continue", len(routing), taken["candidate"], step


@pytest.mark.parametrize(
    ("effect", "config"),
    [
        (0.4, CONFIG),
        (2.5, CONFIG),
        (1.0, CONFIG),
        (0.4, previous(CONFIG)),
        (0.7, replace(CONFIG, min_sample_size=30, steps=(0.1, 0.5))),
    ],
)
def test_the_simulator_decides_as_evaluate_and_advance_do(
    effect: float, config: CanaryConfig
) -> None:
    rng = np.random.default_rng(round(effect * 100))
    shape = (3, 5_000)
    control, candidate = heavy(rng, shape), heavy(rng, shape) * effect
    routing = rng.random(shape)
    flow = judge_flow(control, candidate, routing, config, block=700)
    moved = False
    for k in range(shape[0]):
        expected = reference(control[k], candidate[k], routing[k], config)
        got = (str(flow.action[k]), int(flow.results[k]), int(flow.candidate_runs[k]))
        assert got == expected[:3], k
        assert int(flow.step[k]) == expected[3]
        moved |= expected[0] != "continue" or expected[3] > 0
    assert moved  # a decision or a step-up was taken, so the comparison means something


# ---------------------------------------------------------------- A/A validity


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("share", [0.05, None], ids=["5 % share", "stepped"])
def test_aa_false_promotion_is_at_most_half_alpha(shape: str, share: float | None) -> None:
    result = simulate_flow(
        SHAPES[shape], CONFIG, canaries=300, results=20_000, seed=16, share=share
    )
    # 300 canaries: a true rate of 2.5 % would show ≤ 1.0 % with probability < 5 %.
    assert result.rate("promote") <= 0.01
    assert result.rate("rollback") <= HALF_ALPHA


@pytest.mark.parametrize("shape", ["heavy", "zeros 98 %"])
def test_the_plug_in_variance_it_replaces_promotes_aa_candidates_at_a_5_percent_share(
    shape: str,
) -> None:
    # The rule before issue 16 on the same canaries: far above alpha / 2.
    old = simulate_flow(
        SHAPES[shape], previous(CONFIG), canaries=300, results=20_000, seed=16, share=0.05
    )
    assert old.rate("promote") >= 0.05


# -------------------------------------------------------------- harm and power


def test_a_ten_percent_worse_candidate_is_rolled_back_by_50000_results_and_never_promoted() -> None:
    result = simulate_flow(heavy, CONFIG, effect=1.10, canaries=200, results=50_000, seed=17)
    assert result.rate("promote") == 0.0
    assert result.rate("rollback") >= 0.90
    old = simulate_flow(heavy, previous(CONFIG), effect=1.10, canaries=100, results=50_000, seed=17)
    assert old.rate("rollback") <= 0.10  # it sat at the 5 % step


def test_a_candidate_at_the_margin_is_almost_never_promoted() -> None:
    result = simulate_flow(heavy, CONFIG, effect=1.05, canaries=200, results=40_000, seed=18)
    assert result.rate("promote") <= 0.01


def test_an_eight_percent_better_candidate_is_promoted_within_the_old_median() -> None:
    # Before issue 16 the median was about 45,000-50,000 results in this flow; the
    # target allowed 1.5× of it.
    result = simulate_flow(heavy, CONFIG, effect=0.92, canaries=100, results=75_000, seed=19)
    median = result.median_results("promote")
    assert result.rate("promote") >= 0.9
    assert median is not None and median <= 50_000
