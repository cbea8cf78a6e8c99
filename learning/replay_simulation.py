"""Replays simulated at the demo's size: how often the verdict passes (issue 16).

A sample's loss is its difficulty (lognormal around 2.4, σ_log 0.15) times a
run-to-run noise (lognormal with coefficient of variation ``run_cv``, 0.31 as
the local executor's, checked in ``tests/unit/test_replay.py``); a candidate's
losses are the control's scaled by ``scale`` (0.9 = 10 % better). With
``zero_share`` that share of samples is solved by both policies under every
seed (loss 0), so the per-sample variances differ wildly.
``bench/canary_sim.py`` prints the pass rates; the unit tests assert them.
"""

from __future__ import annotations

import numpy as np

from learning.replay import ReplayRule, decide_from_losses

GOLDEN = 12  # samples in the demo's golden dataset (learnops.demo.experiments_scenario)
RUN_CV = 0.31

Losses = list[tuple[int, str, float]]


def simulated_losses(
    rng: np.random.Generator,
    scale: float,
    *,
    samples: int = GOLDEN,
    seeds: int,
    run_cv: float = RUN_CV,
    zero_share: float = 0.0,
) -> tuple[Losses, Losses]:
    """Candidate and control task losses, (seed, sample id, loss) each."""
    difficulty = 2.4 * rng.lognormal(0.0, 0.15, samples) * (rng.random(samples) >= zero_share)
    noise = rng.lognormal(-(run_cv**2) / 2, run_cv, (2, seeds, samples))
    control, candidate = [], []
    for seed in range(seeds):
        for i in range(samples):
            control.append((seed, f"s{i}", float(difficulty[i] * noise[0, seed, i])))
            candidate.append((seed, f"s{i}", float(scale * difficulty[i] * noise[1, seed, i])))
    return candidate, control


def pass_rate(
    scale: float,
    replications: int,
    *,
    seed: int,
    seeds: int,
    samples: int = GOLDEN,
    zero_share: float = 0.0,
    rule: ReplayRule | None = None,
) -> float:
    """Share of simulated replays whose verdict passes."""
    rng = np.random.default_rng(seed)
    passed = 0
    for _ in range(replications):
        candidate, control = simulated_losses(
            rng, scale, samples=samples, seeds=seeds, zero_share=zero_share
        )
        passed += decide_from_losses(candidate, control, rule).passed
    return passed / replications


__all__ = ["GOLDEN", "RUN_CV", "pass_rate", "simulated_losses"]
