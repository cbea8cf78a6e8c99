"""Count guardrails (security criticals, API breakages) as sequential tests on the events.

A count that is almost always 0 has a tiny variance until the first event, so a
mean-based interval learns slowly. Conditioning on the runs that had an event
removes the unknown base rate: if both arms have the same chance ``λ`` of a run
with an event, a run with an event is a candidate run with exactly the
probability ``p`` that a run is routed to the candidate (the allocation in
force). Each such run is one Bernoulli trial of a **conditional-binomial
test** (the classical comparison of two Poisson rates, Lehmann & Romano,
Testing Statistical Hypotheses, §4.6), made sequential as a mixture of
likelihood-ratio martingales over the harm ratio ``ρ`` (the candidate's odds of a
run with an event over the control's):

    P_ρ(candidate | event) = ρ p / (ρ p + 1 − p),
    M_n = Σ_j w_j Π_i LR_{ρ_j}(trial i),   w_j = 1/J on a geometric grid ρ_j > 1.

Every component is a test martingale under ``ρ = 1`` (each factor has mean 1
given the past, whatever the allocation), so the mixture is too, and Ville's
inequality gives ``P(sup M ≥ 1/alpha) ≤ alpha`` however often it is checked and
however the allocation moves (Ramdas, Grünwald, Vovk, Shafer, "Game-theoretic
statistics and safe anytime-valid inference", Statist. Sci. 2023, §3). The
test is one-sided: it only ever concludes "the candidate has more events".
With the default grid and ``alpha = 0.005`` a candidate at the 5 % step whose
events all come from its own runs is rolled back at its third event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_RATIOS: tuple[float, ...] = tuple(2.0 ** (k / 2) for k in range(1, 21))  # √2 … 1024
DEFAULT_ALPHA = 0.005


def _log_factors(
    to_candidate: npt.NDArray[np.bool_], allocation: npt.NDArray[np.float64], ratio: float
) -> npt.NDArray[np.float64]:
    """Log likelihood-ratio factor of each event trial for one harm ratio."""
    log_norm = np.log(ratio * allocation + 1.0 - allocation)
    return np.where(to_candidate, math.log(ratio), 0.0) - log_norm


@dataclass
class EventGuardrail:
    """The mixture martingale of one count metric: log wealth per harm ratio.

    ``to_dict`` / ``from_dict`` for a table value; keep it in the deployment's
    canary value (one value per deployment, see the canary agent).
    """

    ratios: tuple[float, ...] = DEFAULT_RATIOS
    log_wealth: list[float] = field(default_factory=list)
    trials: dict[str, int] = field(default_factory=lambda: {"control": 0, "candidate": 0})
    max_log_mixture: float = 0.0
    # log_mixture of the wealth it was computed from: the bandit asks each option's
    # tests after every run, and 20 exponentials a test were a tenth of its fold.
    _mixture: tuple[tuple[float, ...], float] = field(
        default=((), 0.0), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.ratios = tuple(float(r) for r in self.ratios)
        if not self.ratios or any(r <= 1.0 for r in self.ratios):
            raise ValueError(f"harm ratios {self.ratios} must be non-empty and above 1")
        if not self.log_wealth:
            self.log_wealth = [0.0] * len(self.ratios)
        if len(self.log_wealth) != len(self.ratios):
            raise ValueError("log_wealth needs one entry per harm ratio")

    def add(self, arm: str, events: int, allocation: float) -> None:
        """Count one run of ``arm`` with ``events`` events at the candidate share ``allocation``."""
        if arm not in ("control", "candidate"):
            raise ValueError(f"arm {arm!r} is not 'control' or 'candidate'")
        if events < 0:
            raise ValueError(f"events {events} is negative")
        if events == 0 or not 0.0 < allocation < 1.0:
            return  # no event, or no comparison possible: nothing to learn
        self.trials[arm] += 1
        # _log_factors of one trial, in math: numpy on one-element arrays cost ~8 µs a
        # ratio, 160 µs a run with an event, in the canary and the bandit's probe tests.
        candidate = arm == "candidate"
        for j, ratio in enumerate(self.ratios):
            log_norm = math.log(ratio * allocation + 1.0 - allocation)
            self.log_wealth[j] += (math.log(ratio) if candidate else 0.0) - log_norm
        self.max_log_mixture = max(self.max_log_mixture, self.log_mixture)

    def set_aside_gains(self) -> None:
        """Bring every harm ratio's wealth above 1 down to 1, keeping what is below.

        For evidence another test has weighed (the bandit's probe tests of an
        option, which counted the same runs): the mixture is at most 1
        afterwards. Wealth only taken away keeps each component a
        supermartingale under no harm, so the test's level holds; the running
        maximum (:meth:`harmful`) is kept.
        """
        self.log_wealth = [min(w, 0.0) for w in self.log_wealth]

    @property
    def log_mixture(self) -> float:
        """Log of the mixture martingale (equal weights over the harm ratios)."""
        wealth = tuple(self.log_wealth)
        known, value = self._mixture
        if known == wealth:
            return value
        top = max(wealth)
        total = sum(math.exp(w - top) for w in wealth)
        value = top + math.log(total / len(self.ratios))
        self._mixture = (wealth, value)
        return value

    @property
    def p_value(self) -> float:
        """Always-valid p-value of "no more events than the control": 1 / running max of M."""
        return min(1.0, math.exp(-self.max_log_mixture))

    def harmful(self, alpha: float = DEFAULT_ALPHA) -> bool:
        """Whether the candidate has, with confidence 1 − alpha, more events than the control."""
        return self.p_value <= alpha

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for a table value."""
        return {
            "ratios": list(self.ratios),
            "log_wealth": list(self.log_wealth),
            "trials": dict(self.trials),
            "max_log_mixture": self.max_log_mixture,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventGuardrail:
        """Rebuild from :meth:`to_dict` output (missing keys take their defaults)."""
        trials = dict(data.get("trials") or {})
        return cls(
            ratios=tuple(data.get("ratios") or DEFAULT_RATIOS),
            log_wealth=[float(w) for w in data.get("log_wealth") or []],
            trials={arm: int(trials.get(arm, 0)) for arm in ("control", "candidate")},
            max_log_mixture=float(data.get("max_log_mixture", 0.0)),
        )


def first_rollback(
    to_candidate: npt.NDArray[np.bool_],
    allocation: npt.ArrayLike,
    *,
    alpha: float = DEFAULT_ALPHA,
    ratios: Sequence[float] = DEFAULT_RATIOS,
) -> npt.NDArray[np.int64]:
    """Index of the event trial at which each row first rolls back, or −1 (vectorised).

    ``to_candidate`` is (replications, trials): whether each run with an event
    was a candidate run; ``allocation`` the share in force at each trial.
    """
    arms = np.atleast_2d(np.asarray(to_candidate, dtype=bool))
    share = np.broadcast_to(np.asarray(allocation, dtype=float), arms.shape)
    stacked = np.stack([np.cumsum(_log_factors(arms, share, r), axis=1) for r in ratios])
    top = stacked.max(axis=0)
    log_mix = top + np.log(np.exp(stacked - top).mean(axis=0))
    crossed = log_mix >= math.log(1.0 / alpha)
    first = np.argmax(crossed, axis=1)
    return np.where(crossed.any(axis=1), first, -1).astype(np.int64)


__all__ = ["DEFAULT_ALPHA", "DEFAULT_RATIOS", "EventGuardrail", "first_rollback"]
