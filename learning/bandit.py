"""Thompson-sampling allocations among a policy's declared options, from the run loss.

A policy may leave a choice open per doer, phase and parameter (which model
the router uses, a retrieval ``top_k``). Every run's CRL scores the option that
was used; this module turns those losses into the share of tasks each option
should get next (lower CRL is better).

The model of the loss
---------------------
The objective is the **mean** CRL, the quantity the canary tests when the
winning option is proposed as a policy. A variance-stabilising transform
(Gaussian Thompson sampling on ``log1p(loss)``) would change that objective:
an option that is 0 on 90 % of runs and 5 on the rest has a mean loss of 0.5
but a mean ``log1p`` of 0.18, so it would beat an option that is always 0.4
(mean 0.4, mean ``log1p`` 0.34), and the canary would then reject it. So each
option's posterior is a normal approximation to the posterior of its mean loss
(the central limit theorem, which holds for the skewed and zero-heavy CRL once
a few dozen runs are in) with two guards for the runs before that:

* **Variance guard** — an option's variance is the larger of its own sample
  variance and the pooled within-option variance. An option on the floor that
  has seen ten zeros of a zero-heavy loss has a sample variance of 0 and would
  otherwise look certain; the same guard keeps the canary's small arm honest
  (``learning.canary``, ``variance_guard``).
* **Prior and tails** — ``prior_weight`` pseudo-runs at the pooled mean, and a
  Student-t draw with the option's effective runs − 1 degrees of freedom (the
  marginal of the normal-inverse-gamma posterior of the mean; Murphy,
  "Conjugate Bayesian analysis of the Gaussian distribution", 2007, §3.5).

A draw of option k's mean is
``μ_k + t_ν · sqrt(v_k / (n_k + n_0))``, with ``μ_k = (n_k m_k + n_0 m̄) / (n_k + n_0)``.
``bench/bandit_sim.py`` checks the choice on lognormal and zero-heavy losses
(docs/bandits.md).

Drift
-----
Statistics are discounted (Raj & Kalyani, "Taming non-stationary bandits: a
Bayesian approach", 2017, discounted Thompson sampling): every run of the
(doer, phase, parameter) multiplies every option's effective count and sum of
squares by ``discount`` before the run is added, so an option's estimate
forgets with a memory of about ``1 / (1 − discount)`` runs of the parameter
and an option left on the floor regains uncertainty, and traffic, when the
others change. The weighted update is West's ("Updating mean and variance
estimates: an improved method", CACM 1979). The undiscounted run count is kept
for the "enough runs" rule.

Allocation
----------
The share of each option is its posterior probability of being best (Monte
Carlo with a seeded ``numpy.random.Generator``, so the same statistics and seed
give the same allocation), floored at ``min_share`` and renormalised:
``share_k = min_share + (1 − K·min_share) · P(best_k)``. This is the
randomised probability matching of Thompson sampling applied to a batch, as
GrowthBook's bandits re-weight periodically.

Guardrails
----------
Security criticals and API breakages are compared with the canary's count
test (``learning.event_guardrails``): for option k, a run with an event is one
of k's runs with exactly k's share in force if k is no worse than the others,
so every option has a conditional-binomial mixture martingale against the rest.
That stays valid however the allocation moves. An option whose martingale
crosses ``1 / guardrail_alpha`` (the canary's ``DEFAULT_ALPHA``) gets only the
floor, can never be declared best, and stays excluded (the running maximum
never falls).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learning.event_guardrails import DEFAULT_ALPHA, EventGuardrail

GUARDRAIL_METRICS: tuple[str, ...] = ("security_criticals", "api_breakages")


@dataclass(frozen=True)
class BanditConfig:
    """Settings of one parameter's bandit.

    ``discount`` — per-run forgetting factor (memory ≈ 1/(1 − discount) runs);
    ``min_share`` — exploration floor per option; ``draws`` — Monte Carlo draws
    for P(best); ``level`` and ``min_runs`` — the "one option is best" rule:
    P(best) ≥ ``level``, the best option with at least ``min_runs`` runs and every
    other eligible option with at least ``min_runs_other``; ``prior_weight`` —
    pseudo-runs at the pooled mean; ``guardrail_alpha`` — level of the count test.
    """

    discount: float = 0.999
    min_share: float = 0.02
    draws: int = 4000
    level: float = 0.95
    min_runs: int = 200
    min_runs_other: int = 30
    prior_weight: float = 1.0
    variance_prior_weight: float = 20.0
    guardrail_alpha: float = DEFAULT_ALPHA
    guardrail_metrics: tuple[str, ...] = GUARDRAIL_METRICS

    def __post_init__(self) -> None:
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount {self.discount} is not in (0, 1]")
        if not 0.0 <= self.min_share < 1.0:
            raise ValueError(f"min_share {self.min_share} is not in [0, 1)")
        if self.draws < 1:
            raise ValueError(f"draws {self.draws} is below 1")
        if not 0.5 < self.level < 1.0:
            raise ValueError(f"level {self.level} is not in (0.5, 1)")
        if self.prior_weight <= 0:
            raise ValueError(f"prior_weight {self.prior_weight} is not positive")
        if not 0.0 < self.guardrail_alpha < 1.0:
            raise ValueError(f"guardrail_alpha {self.guardrail_alpha} is not in (0, 1)")


@dataclass
class OptionStats:
    """Discounted count, mean and sum of squares of one option's loss, and its guardrails."""

    weight: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    runs: int = 0
    guardrails: dict[str, EventGuardrail] = field(default_factory=dict)

    def decay(self, factor: float) -> None:
        """Forget: scale the effective count and the sum of squares by ``factor``."""
        self.weight *= factor
        self.m2 *= factor

    def add(self, loss: float) -> None:
        """Fold one run's loss in with weight 1 (West's weighted update)."""
        if not math.isfinite(loss) or loss < 0:
            raise ValueError(f"loss {loss!r} is not a finite non-negative number")
        self.runs += 1
        self.weight += 1.0
        delta = loss - self.mean
        self.mean += delta / self.weight
        self.m2 += delta * (loss - self.mean)

    @property
    def variance(self) -> float:
        """Weighted variance (reliability weights); 0 with one effective run or fewer."""
        return self.m2 / (self.weight - 1.0) if self.weight > 1.0 else 0.0

    def harmful(self, alpha: float) -> str | None:
        """The first guardrail metric on which this option has more events than the rest."""
        for metric, test in sorted(self.guardrails.items()):
            if test.harmful(alpha):
                return metric
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for a table value."""
        return {
            "weight": self.weight,
            "mean": self.mean,
            "m2": self.m2,
            "runs": self.runs,
            "guardrails": {m: g.to_dict() for m, g in self.guardrails.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptionStats:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            weight=float(data["weight"]),
            mean=float(data["mean"]),
            m2=float(data["m2"]),
            runs=int(data["runs"]),
            guardrails={
                m: EventGuardrail.from_dict(g) for m, g in (data.get("guardrails") or {}).items()
            },
        )


@dataclass
class BanditState:
    """The statistics of every declared option of one (doer, phase, parameter)."""

    options: dict[str, OptionStats]

    @classmethod
    def for_options(cls, options: Sequence[str]) -> BanditState:
        """Empty statistics for the given options (at least two, no repeats)."""
        if len(options) < 2 or len(set(options)) != len(options):
            raise ValueError(f"options {list(options)} must be at least two distinct names")
        return cls(options={o: OptionStats() for o in options})

    def observe(
        self,
        option: str,
        loss: float,
        shares: Mapping[str, float],
        *,
        events: Mapping[str, int] | None = None,
        discount: float = BanditConfig.discount,
    ) -> None:
        """Fold one run of ``option`` in: discount every option, add the loss, test the counts.

        ``shares`` is the allocation in force when the run was routed; ``events``
        maps a guardrail metric to the run's count of it.
        """
        if option not in self.options:
            raise ValueError(f"option {option!r} is not one of {sorted(self.options)}")
        for stats in self.options.values():
            stats.decay(discount)
        self.options[option].add(loss)
        for metric, count in (events or {}).items():
            if count <= 0:
                continue
            for name, stats in self.options.items():
                test = stats.guardrails.setdefault(metric, EventGuardrail())
                arm = "candidate" if name == option else "control"
                test.add(arm, int(count), float(shares.get(name, 0.0)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for a table value."""
        return {"options": {o: s.to_dict() for o, s in self.options.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BanditState:
        """Rebuild from :meth:`to_dict` output."""
        return cls(options={o: OptionStats.from_dict(s) for o, s in data["options"].items()})


@dataclass(frozen=True)
class Allocation:
    """Shares to route by, each option's P(best), the excluded options and the verdict.

    ``best`` is the eligible option with the highest P(best); ``confident`` is
    the "one option is best" rule of :class:`BanditConfig`.
    """

    shares: dict[str, float]
    p_best: dict[str, float]
    excluded: dict[str, str]
    best: str | None
    confident: bool


def posterior_draws(
    state: BanditState, names: Sequence[str], config: BanditConfig, rng: np.random.Generator
) -> np.ndarray:
    """Draws of each named option's mean loss, shape (draws, len(names))."""
    stats = [state.options[n] for n in names]
    total_weight = sum(s.weight for s in stats)
    pooled_mean = sum(s.weight * s.mean for s in stats) / total_weight if total_weight else 0.0
    dof = sum(max(s.weight - 1.0, 0.0) for s in stats)
    pooled_var = sum(s.m2 for s in stats) / dof if dof > 0 else 0.0
    if pooled_var <= 0.0:
        # No spread seen yet: let the prior be as wide as the losses' scale.
        pooled_var = max(pooled_mean, 1.0) ** 2
    draws = np.empty((config.draws, len(stats)))
    for j, s in enumerate(stats):
        n = s.weight + config.prior_weight
        centre = (s.weight * s.mean + config.prior_weight * pooled_mean) / n
        var = (s.m2 + config.variance_prior_weight * pooled_var) / (
            max(s.weight - 1.0, 0.0) + config.variance_prior_weight
        )
        scale = math.sqrt(var / n)
        nu = max(s.weight - 1.0, 1.0)
        draws[:, j] = centre + scale * rng.standard_t(nu, size=config.draws)
    return draws


def allocate(state: BanditState, config: BanditConfig, rng: np.random.Generator) -> Allocation:
    """Shares = P(best) among the options no guardrail excludes, floored at ``min_share``."""
    names = list(state.options)
    k = len(names)
    if k * config.min_share > 1.0:
        raise ValueError(f"{k} options at min_share {config.min_share} exceed the traffic")
    excluded = {}
    for name, stats in state.options.items():
        metric = stats.harmful(config.guardrail_alpha)
        if metric is not None:
            excluded[name] = f"{metric} worse than the other options"
    # Exclusion is "worse than the others": if every option is, none is preferred.
    eligible = [n for n in names if n not in excluded] or names
    p_best = dict.fromkeys(names, 0.0)
    if len(eligible) == 1:
        p_best[eligible[0]] = 1.0
    else:
        wins = np.bincount(
            posterior_draws(state, eligible, config, rng).argmin(axis=1), minlength=len(eligible)
        )
        for name, w in zip(eligible, wins, strict=True):
            p_best[name] = float(w) / config.draws
    free = 1.0 - k * config.min_share
    shares = {n: config.min_share + free * p_best[n] for n in names}
    best = max(eligible, key=lambda n: p_best[n])
    others = [n for n in eligible if n != best]
    confident = (
        p_best[best] >= config.level
        and state.options[best].runs >= config.min_runs
        and all(state.options[n].runs >= config.min_runs_other for n in others)
    )
    return Allocation(shares, p_best, excluded, best, confident)
