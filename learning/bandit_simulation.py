"""Bandits simulated as the bandit stage runs them: allocate, route a batch, learn, re-allocate.

An environment is a set of options whose losses are a shape from
:mod:`learning.canary_simulation` (lognormal with zeros and rare ×10 runs, or
zero-inflated) scaled by the option's factor, so an option's mean loss is
proportional to its factor. ``drift_at`` swaps in ``after`` factors at that
run (the best option changes). An option may emit guardrail events (security
criticals) with a per-run probability.

Policies at the same budget:

* ``"thompson"`` — :func:`learning.bandit.allocate` every ``batch`` runs;
* ``"uniform"`` — every option 1/K of the traffic;
* ``"explore_then_commit"`` — uniform for ``explore`` runs, then every run to
  the option with the lowest observed mean.

Regret is pseudo-regret against the oracle that always routes to the option
with the lowest expected loss at that time: the sum over runs of the chosen
option's expected loss minus the best one's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from learning.bandit import BanditConfig, BanditState, allocate
from learning.canary_simulation import LossShape, heavy, zero_inflated

FloatArray = npt.NDArray[np.float64]
Policy = Literal["thompson", "uniform", "explore_then_commit"]
POLICIES: tuple[Policy, ...] = ("thompson", "uniform", "explore_then_commit")

SHAPES: dict[str, LossShape] = {"heavy": heavy, "zero-heavy (90 % zeros)": zero_inflated(0.9)}


@dataclass(frozen=True)
class Environment:
    """Options with loss scale factors, an optional drift and per-run guardrail event rates."""

    factors: tuple[float, ...]
    shape: LossShape = heavy
    drift_at: int | None = None
    after: tuple[float, ...] | None = None
    event_rates: tuple[float, ...] | None = None
    shapes: tuple[LossShape, ...] | None = None  # per option, instead of ``shape``

    def factors_at(self, run: int) -> tuple[float, ...]:
        """The scale factors in force at ``run``."""
        if self.drift_at is not None and self.after is not None and run >= self.drift_at:
            return self.after
        return self.factors


@dataclass(frozen=True)
class SimulationResult:
    """Cumulative regret, and the shares in force at each batch (batches × options)."""

    regret: float
    shares: FloatArray
    batch: int
    excluded_at: dict[int, int]
    confident: frozenset[int] = frozenset()  # options the bandit was ever confident of
    probe_runs: int = 0  # shadow runs of options on probation (compute, not traffic)
    scored_runs: int = 0  # what-if shadow runs scored into the statistics (``score_unserved``)


def rare_catastrophes(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """Losses usually small, 1.5 % of runs catastrophic (50): a positive part far from lognormal.

    2 % exact zeros, else lognormal(log 0.4, 0.5), except 1.5 % of runs at 50:
    mean about 1.21 (the heavy shape's is about 1.72). Its logs are far smaller
    than the heavy shape's, so a lognormal fit of its positive part puts its
    mean near 0.4 of the truth and ranks it too well.
    """
    x = rng.lognormal(np.log(0.4), 0.5, shape)
    u = rng.random(shape)
    x[u < 0.02] = 0.0
    x[u > 0.985] = 50.0
    return x


def _mean_loss(shape: LossShape, rng: np.random.Generator) -> float:
    """Mean of the unit-scale shape, by a large seeded sample."""
    return float(shape(rng, (200_000, 1)).mean())


def simulate(
    env: Environment,
    policy: Policy,
    runs: int,
    seed: int,
    *,
    config: BanditConfig | None = None,
    batch: int = 100,
    explore: int = 1000,
    probe: float = 0.0,
    score_unserved: float = 0.0,
    score_below: float = 1.0,
) -> SimulationResult:
    """Route ``runs`` runs in batches of ``batch`` with ``policy`` and report its regret.

    ``probe``: the share of tasks on which each option the allocation names to
    probe (on probation, not held) is also run in shadow
    (:meth:`learning.bandit.BanditState.observe_probe`): its guardrail
    events count toward its release, and nobody is served by it, so it adds no
    regret; ``SimulationResult.probe_runs`` counts them.

    ``score_unserved`` is a what-if the stage does not do (shadow runs never
    move its estimates): on that share of tasks, every option whose share is
    below ``score_below`` and that did not serve the task is also run in
    shadow and its loss folded into its statistics like a live run's
    (:func:`fold_scored`; ``SimulationResult.scored_runs`` counts them). It
    measures how much more information per run would buy (docs/bandits.md).
    Its losses come from a generator of their own, so with 0 every other draw
    is what it was.
    """
    config = config or BanditConfig()
    rng = np.random.default_rng(seed)
    k = len(env.factors)
    names = [f"option-{i}" for i in range(k)]
    state = BanditState.for_options(names)
    shapes = env.shapes or (env.shape,) * k
    unit_means = np.array([_mean_loss(s, np.random.default_rng(0)) for s in shapes])
    sums, counts = np.zeros(k), np.zeros(k)
    regret = 0.0
    history: list[list[float]] = []
    excluded_at: dict[int, int] = {}
    confident: set[int] = set()
    probe_runs = 0
    probing: tuple[str, ...] = ()
    score_rng = np.random.default_rng([seed, 1])
    scored_runs = 0
    in_effect: tuple[float, ...] | None = None
    gaps: list[float] = []
    for start in range(0, runs, batch):
        size = min(batch, runs - start)
        if policy == "thompson":
            alloc = allocate(state, config, rng)
            probing = alloc.probes
            shares = np.array([alloc.shares[n] for n in names])
            for name in alloc.excluded:
                excluded_at.setdefault(names.index(name), start)
            if alloc.confident and alloc.best is not None:
                confident.add(names.index(alloc.best))
        elif policy == "uniform" or start < explore:
            shares = np.full(k, 1.0 / k)
        else:
            shares = np.eye(k)[int(np.argmin(sums / np.maximum(counts, 1)))]
        history.append(shares.tolist())
        scored = [j for j in range(k) if shares[j] < score_below] if score_unserved > 0 else []
        in_force = dict(zip(names, shares.tolist(), strict=True))
        chosen = rng.choice(k, size=size, p=shares / shares.sum())
        if env.shapes is None:
            losses = env.shape(rng, (size, 1))[:, 0]
        else:
            losses = np.array([env.shapes[o](rng, (1, 1))[0, 0] for o in chosen])
        for i, option in enumerate(chosen):
            run = start + i
            factors = env.factors_at(run)
            if factors is not in_effect:  # once per regime: numpy per run was a tenth of it
                in_effect = factors
                expected = unit_means * np.asarray(factors)
                gaps = [float(e - expected.min()) for e in expected]
            loss = float(losses[i] * factors[option])
            regret += gaps[option]
            sums[option] += loss
            counts[option] += 1
            if policy != "thompson":
                continue
            for j in scored:
                if j != option and score_rng.random() < score_unserved:
                    scored_runs += 1
                    unit = shapes[j](score_rng, (1, 1))[0, 0]
                    fold_scored(state, names[j], float(unit * env.factors_at(run)[j]), config)
            events = {}
            if env.event_rates is not None and rng.random() < env.event_rates[option]:
                events = {"security_criticals": 1}
            for name in probing if probe > 0 else ():
                if rng.random() < probe:
                    probe_runs += 1
                    rate = env.event_rates[names.index(name)] if env.event_rates else 0.0
                    events_of_probe = {"security_criticals": int(rng.random() < rate)}
                    state.observe_probe(name, events_of_probe, in_force, probe, config)
            state.observe(
                names[option],
                loss,
                in_force,
                events=events,
                config=config,
                probe_share=probe,
                probing=probing,
            )
    return SimulationResult(
        regret, np.array(history), batch, excluded_at, frozenset(confident), probe_runs, scored_runs
    )


def fold_scored(state: BanditState, option: str, loss: float, config: BanditConfig) -> None:
    """Fold a shadow run's loss into ``option``'s statistics as if it had been live (a what-if).

    Its change detector sees it and its estimates take it in; no discount (that
    is per run of the parameter), no guardrail counts (it served nobody) and
    not a run of the option's probation (``runs``, which only live runs with
    their guardrail events may count: a scored run would release a harmful
    option from probation without its events being seen).
    """
    stats = state.options[option]
    if stats.changed(loss, math.sqrt(state.pooled_log_var()), config):
        stats.restart()
    runs = stats.runs
    stats.add(loss)
    stats.runs = runs


def runs_to_majority(result: SimulationResult, option: int, since: int) -> int | None:
    """Runs after ``since`` until ``option`` first holds more than half the traffic, or None."""
    for b, shares in enumerate(result.shares):
        start = b * result.batch
        if start >= since and shares[option] > 0.5:
            return start - since
    return None


def max_share_after(result: SimulationResult, option: int, since: int) -> float:
    """The largest share ``option`` held in the batches that start at or after ``since``."""
    rows = [s[option] for b, s in enumerate(result.shares) if b * result.batch >= since]
    return max(rows) if rows else 0.0


def mean_regret(
    env: Environment, policy: Policy, runs: int, seeds: Sequence[int], **kwargs: object
) -> float:
    """Mean cumulative regret over ``seeds``."""
    return float(
        np.mean([simulate(env, policy, runs, s, **kwargs).regret for s in seeds])  # type: ignore[arg-type]
    )
