"""Canary decisions that stay valid however often they are looked at.

A canary compares the run loss (CRL, lower is better) of a control arm and a
candidate arm while the candidate takes a growing share of the traffic. The
obvious rule — a t-test after every run, promote when p < 0.05 — promotes an
A/A candidate far more often than 5 % of the time, because every look is another
chance to cross by luck (``bench/canary_sim.py`` prints the figures). This module
uses the **mixture sequential probability ratio test (mSPRT)** instead:

    Johari, Koomen, Pekelis, Walsh, "Always valid inference: continuous
    monitoring of A/B tests", Operations Research 70(3), 2022
    (arXiv:1512.04922) — the normal-mixture mSPRT for the difference of two
    means with a plug-in variance (as used by Optimizely and Statsig).

The formula
-----------
For a linear contrast of the two arm means, ``c = mean_t − r · mean_c``, with
its estimate ``ĉ`` and the plug-in variance of that estimate

    V = s_t² / n_t + r² · s_c² / n_c          (sample variances, ddof = 1)

and a normal mixing distribution ``θ ~ N(0, τ²)`` over the true contrast, the
mixture likelihood ratio against ``H0: c = c0`` is

    Λ(c0) = sqrt(V / (V + τ²)) · exp( τ² (ĉ − c0)² / (2 V (V + τ²)) ).

With equal arms (``n_t = n_c = n``, ``s² = σ²``, ``r = 1``) this is the
two-sample normal mSPRT of Johari et al. with ``V = 2σ²/n``. Under H0 (and
with a known variance) Λ is a non-negative martingale, so by Ville's inequality
``P(sup_n Λ_n ≥ 1/α) ≤ α``: rejecting the first time ``Λ ≥ 1/α`` is valid
however many looks are taken. Writing ``ρ = τ²/V``:

* always-valid p-value (for ``c0 = 0``):  ``p = min(1, 1/Λ(0))``, where
  ``log Λ(0) = −½ log(1+ρ) + ĉ² ρ / (2 V (1+ρ))``;
* always-valid confidence interval (the confidence *sequence*, level 1−α),
  the set of ``c0`` with ``Λ(c0) < 1/α``:

      ĉ ± sqrt( V · (1 + 1/ρ) · (log(1+ρ) + 2 log(1/α)) ).

The same closed form is the normal-mixture boundary of Howard, Ramdas,
McAuliffe, Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Ann. Statist. 2021, and of the asymptotic confidence
sequences of Waudby-Smith et al. (arXiv:2103.06476), which justify the
plug-in variance for non-normal data as n grows.

The mixing variance τ²
----------------------
τ is set on the scale of the data: ``τ = mixing_sd · s_pooled`` where
``s_pooled`` is the pooled sample standard deviation of the two arms, so
``mixing_sd`` is a prior spread of the effect in standard-deviation units
(Cohen's d) and the boundary does not depend on the units of the CRL. Then
``ρ = mixing_sd² / (1/n_t + 1/n_c)`` depends only on the counts. For α = 0.05
the half-width ``sqrt(V (1+1/ρ)(log(1+ρ) + 2 log 20))`` is smallest, 3.04
standard errors, at ρ ≈ 8.2, i.e. ``n ≈ 16 / mixing_sd²`` runs per arm with
equal arms. The default ``mixing_sd = 0.1`` makes the test sharpest around
1,600 runs per arm, where effects of 0.1–0.2 σ (a 5–10 % change of a CRL whose
σ is half its mean) become detectable; it was chosen by simulation
(``tests/unit/test_canary_simulation.py``, ``bench/canary_sim.py``). A larger τ
decides big effects sooner and small ones later; the error rate is α whatever τ.

Relative thresholds
-------------------
Thresholds are relative to the control mean ("5 % worse"), which is itself
estimated. Rather than comparing the interval for ``mean_t − mean_c`` with
``0.05 · mean_c`` at its current estimate (a moving threshold), each rule tests a
fixed linear contrast, so the control's uncertainty is inside V:

* roll back when the lower bound for ``mean_t − (1 + max_crl_increase) · mean_c``
  is above 0  (the candidate is more than ``max_crl_increase`` worse);
* superiority: promote when the upper bound for
  ``mean_t − (1 − min_improvement) · mean_c`` is below 0;
* non-inferiority: promote when the upper bound for
  ``mean_t − (1 + non_inferiority_margin) · mean_c`` is below 0.

This is exactly a test of the ratio ``mean_t / mean_c`` against ``1 ± m``
(Fieller's construction, no delta-method approximation) and assumes a
non-negative loss (CRL is ≥ 0). With ``min_improvement = 0`` the promotion rule
is "the always-valid interval for delta lies below 0". Each rule uses one side
of the two-sided level-(1−α) confidence sequence, so each one-sided error rate
is at most α (in practice about α/2). A candidate exactly on a threshold (e.g.
exactly 5 % worse) is checked by simulation to be rolled back at most α of the
time.

The p-value across looks
------------------------
:func:`evaluate` is stateless. ``1/Λ_n`` at one look is valid on its own; the
always-valid p-value of the paper is its running minimum over looks. Pass the
previous look's ``Decision.p_value`` as ``previous_p_value`` (the canary agent
keeps it in its table) and the returned p-value is that running minimum. The
interval returned is the one of the current look (a running intersection would
also be valid; it is not kept, so the interval always contains the estimate).

Assumptions
-----------
* Runs are independent within and across arms, and the arm means do not drift
  while the canary runs.
* Stepping the allocation up (5 % → 10 % → …) changes how fast each arm
  accumulates runs, not what a run of each arm looks like, so the per-arm means
  and the test stay the same across steps; nothing is reset at a step-up. With
  a fixed split, ``ĉ / V`` is a Gaussian random walk in the information
  ``1/V``, which is what makes Λ a martingale; when the split changes the
  earlier control runs are re-weighted, so the argument becomes approximate.
  The simulation with stepped allocations keeps the A/A false-promotion rate
  under α.
* Variance guard (issue 16): the plug-in variance makes validity asymptotic.
  With a right-skewed or zero-heavy loss and a small candidate arm (5 %
  traffic), a low candidate mean comes with a low sample variance, so the
  bound crossed on the promote side in 11 % of A/A canaries at a constant 5 %
  share (31 % with 98 % zeros), judged after every result. Under the null both
  arms have the same variance and the control's, from ~19 times more runs, is
  the better estimate of it; so each arm's variance term is taken as the larger
  of the two sample variances (``variance_guard``). With a correct variance
  the promote side is conservative for right-skewed losses (the mean's left
  tail is lighter than the normal's). ``bench/canary_sim.py`` and
  ``tests/unit/test_canary_flow.py`` check A/A false promotion ≤ α/2 after
  every result for heavy and zero-inflated losses, at a 5 % share and in the
  stepped flow (docs/canary.md has the table). Not covered: a candidate with
  the control's mean but a heavier tail (lognormal σ 1.5 against 1, same
  mean) is promoted in ~11 % of A/A canaries at a 5 % share; no test on an
  unbounded mean can hold for every distribution in finite samples (Bahadur
  & Savage 1956) — a confidence sequence on the loss capped at a
  pre-registered bound would (Waudby-Smith & Ramdas 2023), for the capped mean.
* ``min_sample_size`` (200 runs per arm, and per arm within each step) keeps
  the first looks, where the normal approximation is worst, out of the rules.

Harm and step-ups
-----------------
The rollback rule proves "worse by more than ``max_crl_increase``", which a
candidate 10 % worse at a 5 % share took a median 245,000 results to show;
while it waited for promotion evidence it never left the 5 % step. Two rules
change that (issue 16):

* **harm rule** — roll back once the lower bound of ``mean_t − h · mean_c`` at
  level ``harm_alpha`` (0.025) is above 0, with ``h = 1`` in superiority (the
  candidate is shown worse at all, so it can never be promoted) and
  ``h = 1 + non_inferiority_margin`` in non-inferiority. Its one-sided error
  on an A/A candidate is at most ``harm_alpha`` = α/2;
* **dwell step-ups** (``step_up="dwell"``) — a step ends after
  ``min_sample_size`` runs per arm when nothing holds it (no rollback, no
  failing guardrail), so at most 200 candidate runs are exposed at the 5 %
  step (about 4,000 results) and a harmful candidate meets the harm rule with
  more traffic. The schedule depends on run counts, not on outcomes, so the
  mixture's validity argument is the one above. Promotion still needs the
  promote bound at the last step. ``step_up="evidence"`` is the old rule
  (shadows use it: a shadow's step-up is its pass).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from learning.moments import Moments

Action = Literal["promote", "rollback", "continue"]
StepAction = Literal["step_up", "promote", "rollback", "continue", "pause"]
Mode = Literal["superiority", "non_inferiority"]
StepUpRule = Literal["dwell", "evidence"]
FloatArray = npt.NDArray[np.float64]

DEFAULT_MIXING_SD = 0.1
DEFAULT_STEPS: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50)
DEFAULT_HARM_ALPHA = 0.025


# --------------------------------------------------------------------------- arms


@dataclass
class ArmStats(Moments):
    """Running count, mean and variance of one arm's CRL (Welford, via :class:`Moments`).

    ``.add(x)``, ``.add_many(values)``, ``.merge(other)``, ``.variance``,
    ``.to_dict()`` / ``ArmStats.from_dict(d)`` for a Faust table value.
    """

    @classmethod
    def from_values(cls, values: npt.ArrayLike | Iterable[float]) -> ArmStats:
        """Statistics of the given values."""
        arm = cls()
        arm.add_many(values)
        return arm

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmStats:
        """Rebuild from :meth:`to_dict` output."""
        moments = Moments.from_dict(data)
        return cls(count=moments.count, mean=moments.mean, m2=moments.m2)


# ------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CanaryConfig:
    """Thresholds of a canary; relative thresholds are fractions of the control mean.

    * ``alpha`` — error rate of each rule under continuous monitoring.
    * ``min_sample_size`` — runs per arm before any decision, and runs per arm
      within a traffic step before stepping up or promoting (see module notes).
    * ``max_crl_increase`` — roll back once the candidate is, with confidence,
      worse than the control by more than this fraction (0.05 = 5 % worse).
    * ``min_improvement`` — superiority needs the candidate better by at least
      this fraction of the control mean (0 = any improvement).
    * ``max_duration`` — seconds (or a timedelta) after which a canary that has
      not been promoted is rolled back, in either mode; ``None`` = no limit.
    * ``srm_p_threshold`` — sample-ratio-mismatch p-value below which routing
      is considered broken.
    * ``steps`` — candidate traffic shares, strictly increasing, in (0, 1].
    * ``mode`` — ``"superiority"`` or ``"non_inferiority"``.
    * ``non_inferiority_margin`` — non-inferiority promotes once the candidate is,
      with confidence, worse by less than this fraction; must not exceed
      ``max_crl_increase``.
    * ``mixing_sd`` — τ of the mSPRT in pooled standard deviations (module notes).
    * ``harm_alpha`` — level of the harm rule: roll back once the candidate is,
      with always-valid confidence, worse than the control at all (zero margin);
      ``None`` turns it off.
    * ``step_up`` — ``"dwell"``: step up once the step has ``min_sample_size``
      runs per arm and nothing holds it (no rollback, no failing guardrail);
      ``"evidence"``: step up only with evidence to promote (the rule before
      issue 16, kept for shadows and for comparison). Promotion always needs it.
    * ``variance_guard`` — take each arm's variance as the larger of the two
      arms' sample variances (module notes); ``False`` is the plain plug-in.
    """

    alpha: float = 0.05
    min_sample_size: int = 200
    max_crl_increase: float = 0.05
    min_improvement: float = 0.0
    max_duration: float | timedelta | None = 7 * 24 * 3600.0
    srm_p_threshold: float = 0.001
    steps: tuple[float, ...] = DEFAULT_STEPS
    mode: Mode = "superiority"
    non_inferiority_margin: float = 0.02
    mixing_sd: float = DEFAULT_MIXING_SD
    harm_alpha: float | None = DEFAULT_HARM_ALPHA
    step_up: StepUpRule = "dwell"
    variance_guard: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha {self.alpha} is not between 0 and 1")
        if self.min_sample_size < 2:
            raise ValueError(f"min_sample_size {self.min_sample_size} is below 2")
        if self.max_crl_increase < 0.0:
            raise ValueError(f"max_crl_increase {self.max_crl_increase} is negative")
        if not 0.0 <= self.min_improvement < 1.0:
            raise ValueError(f"min_improvement {self.min_improvement} is not in [0, 1)")
        if not 0.0 <= self.non_inferiority_margin <= self.max_crl_increase:
            raise ValueError(
                f"non_inferiority_margin {self.non_inferiority_margin} is not in "
                f"[0, max_crl_increase = {self.max_crl_increase}]: a candidate could be "
                "both non-inferior and to be rolled back"
            )
        if self.mode not in ("superiority", "non_inferiority"):
            raise ValueError(f"mode {self.mode!r} is not 'superiority' or 'non_inferiority'")
        if not 0.0 < self.srm_p_threshold < 1.0:
            raise ValueError(f"srm_p_threshold {self.srm_p_threshold} is not between 0 and 1")
        if not self.mixing_sd > 0.0:
            raise ValueError(f"mixing_sd {self.mixing_sd} is not positive")
        if self.harm_alpha is not None and not 0.0 < self.harm_alpha < 1.0:
            raise ValueError(f"harm_alpha {self.harm_alpha} is not between 0 and 1")
        if self.step_up not in ("dwell", "evidence"):
            raise ValueError(f"step_up {self.step_up!r} is not 'dwell' or 'evidence'")
        steps = tuple(float(s) for s in self.steps)
        if not steps or any(not 0.0 < s <= 1.0 for s in steps):
            raise ValueError(f"steps {steps} must be non-empty shares in (0, 1]")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps {steps} are not strictly increasing")
        object.__setattr__(self, "steps", steps)
        limit = self.max_duration
        if isinstance(limit, timedelta):
            limit = limit.total_seconds()
            object.__setattr__(self, "max_duration", limit)
        if limit is not None and limit <= 0:
            raise ValueError(f"max_duration {limit} is not positive")

    @property
    def max_duration_s(self) -> float | None:
        """Maximum duration in seconds (``None`` = no limit)."""
        if isinstance(self.max_duration, timedelta):  # normalised in __post_init__
            return self.max_duration.total_seconds()
        return self.max_duration

    @property
    def promote_ratio(self) -> float:
        """r in the promotion contrast ``mean_t − r · mean_c`` (upper bound < 0 promotes)."""
        if self.mode == "superiority":
            return 1.0 - self.min_improvement
        return 1.0 + self.non_inferiority_margin

    @property
    def harm_ratio(self) -> float:
        """r in the harm contrast ``mean_t − r · mean_c`` (a lower bound above 0 rolls back).

        1 in superiority (worse at all); ``1 + non_inferiority_margin`` in
        non-inferiority, where a slightly worse candidate is what is being tested.
        """
        return 1.0 if self.mode == "superiority" else 1.0 + self.non_inferiority_margin

    @property
    def rollback_ratio(self) -> float:
        """r in the rollback contrast ``mean_t − r · mean_c`` (lower bound > 0 rolls back)."""
        return 1.0 + self.max_crl_increase


# ----------------------------------------------------------- the mSPRT, vectorised


def _pooled_variance(
    n_c: FloatArray, var_c: FloatArray, n_t: FloatArray, var_t: FloatArray
) -> FloatArray:
    """Pooled sample variance of two arms (ddof = 1 each)."""
    return np.asarray(((n_c - 1) * var_c + (n_t - 1) * var_t) / (n_c + n_t - 2))


def _mixture_half_width(variance: FloatArray, tau2: FloatArray, alpha: float) -> FloatArray:
    """Half-width of the normal-mixture confidence sequence; 0 where the variance is 0.

    ``sqrt(V (1 + 1/ρ) (log(1+ρ) + 2 log(1/α)))`` with ``ρ = τ²/V``
    (Johari et al. 2022; Howard et al. 2021).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = tau2 / variance
        width2 = variance * (1.0 + 1.0 / rho) * (np.log1p(rho) + 2.0 * math.log(1.0 / alpha))
        return np.where(variance > 0, np.sqrt(width2), 0.0)


def _mixture_p_value(estimate: FloatArray, variance: FloatArray, tau2: FloatArray) -> FloatArray:
    """``min(1, 1/Λ(0))`` of the normal-mixture SPRT at one look (not yet a running min)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rho = tau2 / variance
        log_lr = -0.5 * np.log1p(rho) + estimate**2 / (2.0 * variance) * rho / (1.0 + rho)
        p = np.minimum(1.0, np.exp(-log_lr))
        return np.where(variance > 0, p, np.where(estimate == 0, 1.0, 0.0))


_SCALARS = (int, float, np.integer, np.floating)


def _scalar_contrast(
    n_c: float,
    mean_c: float,
    var_c: float,
    n_t: float,
    mean_t: float,
    var_t: float,
    ratio: float,
    alpha: float,
    mixing_sd: float,
    variance_guard: bool,
) -> tuple[float, float, float, float] | None:
    """:func:`contrast_interval` of one look, in ``math`` instead of numpy arrays.

    The same operations in the same order (so the same bounds and p-value, to
    the last bit or so), at about 3 µs instead of 60: the canary stage judges
    every result of a doer under a canary on eight such contrasts, and the CRL
    stage checks its regressions on one per doer and day. ``None`` for any look
    the array code handles specially (fewer than two runs, a non-finite
    variance or term, an overflow): that code then answers.
    """
    nc, nt = float(n_c), float(n_t)
    mc, mt = float(mean_c), float(mean_t)
    vc, vt = float(var_c), float(var_t)
    if not (nc >= 2 and nt >= 2):
        return None
    try:
        tau2 = mixing_sd**2 * (((nc - 1) * vc + (nt - 1) * vt) / (nc + nt - 2))
        if variance_guard:
            vc = vt = max(vc, vt)
        variance = vt / nt + ratio * ratio * (vc / nc)
        estimate = mt - ratio * mc
        if variance == 0 and math.isfinite(estimate):  # both arms constant: a point
            # ± a half-width of 0.0, as the arrays do (so -0.0 + 0.0 is +0.0 here too)
            return estimate, estimate - 0.0, estimate + 0.0, 1.0 if estimate == 0 else 0.0
        if not (variance > 0 and tau2 > 0 and math.isfinite(variance + tau2 + estimate)):
            return None
        rho = tau2 / variance
        width2 = variance * (1.0 + 1.0 / rho) * (math.log1p(rho) + 2.0 * math.log(1.0 / alpha))
        half = math.sqrt(width2)
        log_lr = -0.5 * math.log1p(rho) + estimate**2 / (2.0 * variance) * rho / (1.0 + rho)
        p_value = min(1.0, math.exp(-log_lr))
    except (ArithmeticError, ValueError):  # an overflow: the array code gives inf or 0
        return None
    if not math.isfinite(half):
        return None
    return estimate, estimate - half, estimate + half, p_value


def contrast_interval(
    n_c: npt.ArrayLike,
    mean_c: npt.ArrayLike,
    var_c: npt.ArrayLike,
    n_t: npt.ArrayLike,
    mean_t: npt.ArrayLike,
    var_t: npt.ArrayLike,
    *,
    ratio: float,
    alpha: float,
    mixing_sd: float = DEFAULT_MIXING_SD,
    variance_guard: bool = False,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Estimate, always-valid bounds and p-value (vs 0) of ``mean_t − ratio · mean_c``.

    Elementwise on scalars or arrays. The interval is the normal-mixture
    confidence sequence at level 1−alpha with ``τ = mixing_sd · s_pooled`` (module
    notes); arms with fewer than two runs give an unbounded interval and p = 1.
    The p-value is the one of this look, not yet a running minimum. With
    ``variance_guard`` each arm's variance term uses the larger of the two
    sample variances (module notes).
    """
    arms = (n_c, mean_c, var_c, n_t, mean_t, var_t)
    if all(isinstance(x, _SCALARS) for x in arms):
        one = _scalar_contrast(*arms, ratio, alpha, mixing_sd, variance_guard)  # type: ignore[arg-type]
        if one is not None:
            return one  # type: ignore[return-value]
    looks = _Looks.of(arms, mixing_sd=mixing_sd, variance_guard=variance_guard)
    estimate, low, high, p_value = looks.contrast(ratio, alpha, p_value=True)
    assert p_value is not None
    return estimate, low, high, p_value


@dataclass(frozen=True)
class _Looks:
    """Arrays of looks as float arrays, with what every contrast of them shares.

    :func:`look_statistics` takes four contrasts of the same looks; converting
    the counts, pooling the variances and the p-values of the three contrasts
    it reads only a bound of were done four times over in the simulations.
    """

    nc: FloatArray
    nt: FloatArray
    mc: FloatArray
    mt: FloatArray
    vc: FloatArray  # with the variance guard, the larger of the two arms' variances
    vt: FloatArray
    enough: npt.NDArray[np.bool_]
    tau2: FloatArray

    @classmethod
    def of(
        cls, arms: tuple[npt.ArrayLike, ...], *, mixing_sd: float, variance_guard: bool
    ) -> _Looks:
        """From (n_c, mean_c, var_c, n_t, mean_t, var_t), as contrast_interval takes them."""
        n_c, mean_c, var_c, n_t, mean_t, var_t = arms
        nc = np.asarray(n_c, dtype=np.float64)
        nt = np.asarray(n_t, dtype=np.float64)
        vc = np.asarray(var_c, dtype=np.float64)
        vt = np.asarray(var_t, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            tau2 = mixing_sd**2 * _pooled_variance(nc, vc, nt, vt)
        if variance_guard:
            vc = vt = np.maximum(vc, vt)
        mc = np.asarray(mean_c, dtype=np.float64)
        mt = np.asarray(mean_t, dtype=np.float64)
        return cls(nc, nt, mc, mt, vc, vt, (nc >= 2) & (nt >= 2), tau2)

    def contrast(
        self, ratio: float, alpha: float, *, p_value: bool
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray | None]:
        """Estimate, bounds and (if asked) p-value of ``mean_t − ratio · mean_c``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            variance = self.vt / self.nt + ratio * ratio * (self.vc / self.nc)
        estimate = self.mt - ratio * self.mc
        half = np.where(self.enough, _mixture_half_width(variance, self.tau2, alpha), np.inf)
        p = (
            np.where(self.enough, _mixture_p_value(estimate, variance, self.tau2), 1.0)
            if p_value
            else None
        )
        return estimate, estimate - half, estimate + half, p


@dataclass(frozen=True)
class LookStatistics:
    """The statistics :func:`evaluate` decides on, for one look or arrays of looks."""

    delta: FloatArray
    ci_low: FloatArray
    ci_high: FloatArray
    p_value: FloatArray
    rollback_low: FloatArray  # lower bound of mean_t − rollback_ratio · mean_c
    promote_high: FloatArray  # upper bound of mean_t − promote_ratio · mean_c
    harm_low: FloatArray  # lower bound of mean_t − mean_c at harm_alpha (−inf: no harm rule)
    ready: npt.NDArray[np.bool_]
    rollback: npt.NDArray[np.bool_]
    promote: npt.NDArray[np.bool_]


def look_statistics(
    n_c: npt.ArrayLike,
    mean_c: npt.ArrayLike,
    var_c: npt.ArrayLike,
    n_t: npt.ArrayLike,
    mean_t: npt.ArrayLike,
    var_t: npt.ArrayLike,
    config: CanaryConfig,
) -> LookStatistics:
    """Always-valid interval, p-value and rule outcomes from per-arm count, mean and variance.

    Works elementwise on scalars or arrays of any shape: :func:`evaluate` calls
    it for one look, :func:`simulate` for every canary and look at once.
    """
    arms = (n_c, mean_c, var_c, n_t, mean_t, var_t)
    guard, tau = config.variance_guard, config.mixing_sd
    # One look of scalars: contrast_interval in math; arrays share their conversions.
    one = all(isinstance(x, _SCALARS) for x in arms)
    looks = None if one else _Looks.of(arms, mixing_sd=tau, variance_guard=guard)

    def bounds(ratio: float, alpha: float, p_value: bool = False) -> tuple[Any, Any, Any, Any]:
        if looks is None:
            return contrast_interval(
                *arms, ratio=ratio, alpha=alpha, mixing_sd=tau, variance_guard=guard
            )
        return looks.contrast(ratio, alpha, p_value=p_value)

    delta, ci_low, ci_high, p_value = bounds(1.0, config.alpha, p_value=True)
    _, rollback_low, _, _ = bounds(config.rollback_ratio, config.alpha)
    _, _, promote_high, _ = bounds(config.promote_ratio, config.alpha)
    if config.harm_alpha is None:
        harm_low = np.full_like(rollback_low, -np.inf)
    else:
        _, harm_low, _, _ = bounds(config.harm_ratio, config.harm_alpha)
    ready = (np.asarray(n_c) >= config.min_sample_size) & (
        np.asarray(n_t) >= config.min_sample_size
    )
    rollback = ready & ((rollback_low > 0) | (harm_low > 0))
    promote = ready & (promote_high < 0) & ~rollback
    return LookStatistics(
        delta=delta,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        rollback_low=rollback_low,
        promote_high=promote_high,
        harm_low=harm_low,
        ready=ready,
        rollback=rollback,
        promote=promote,
    )


# ----------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class Decision:
    """What the CRL comparison says now; ``delta_pct`` is a fraction (0.08 = 8 %).

    ``delta`` = candidate mean − control mean (lower CRL is better);
    ``delta_pct`` = delta / control mean (``None`` when the control mean is 0);
    ``p_value`` — always-valid p-value for "no difference" (a running minimum
    when the previous one is passed to :func:`evaluate`); ``ci_low``/``ci_high``
    — always-valid level 1−alpha interval for delta (infinite before both arms
    have two runs).
    """

    action: Action
    reason: str
    delta: float
    delta_pct: float | None
    p_value: float
    ci_low: float
    ci_high: float
    control_mean: float
    candidate_mean: float
    control_count: int
    candidate_count: int


def _pct(x: float) -> str:
    return f"{x * 100:+.1f} %"


def _share(x: float) -> str:
    """A share of the traffic, as a percentage without a sign (0.25 → "25 %")."""
    return f"{x * 100:.4g} %"


def evaluate(
    control: Moments,
    candidate: Moments,
    config: CanaryConfig,
    *,
    elapsed: float | timedelta | None = None,
    previous_p_value: float | None = None,
) -> Decision:
    """Promote, roll back or continue, from the two arms' statistics at this look.

    Rules, in order: before both arms have ``min_sample_size`` runs → continue
    (or roll back if ``max_duration`` has passed); roll back when the lower
    bound for ``mean_t − (1 + max_crl_increase) · mean_c`` is above 0; promote
    when the upper bound for ``mean_t − r · mean_c`` is below 0, with
    ``r = 1 − min_improvement`` (superiority) or ``1 + non_inferiority_margin``
    (non-inferiority); roll back when ``elapsed`` (seconds since the canary
    started) has reached ``max_duration`` without a promotion (both modes — a
    candidate is never promoted without evidence); otherwise continue.
    """
    look = look_statistics(
        control.count,
        control.mean,
        control.variance,
        candidate.count,
        candidate.mean,
        candidate.variance,
        config,
    )
    delta = float(look.delta)
    p_value = float(look.p_value)
    if previous_p_value is not None:
        p_value = min(p_value, previous_p_value)
    mean_c = control.mean
    delta_pct = delta / mean_c if mean_c != 0 else None
    level = f"{(1 - config.alpha) * 100:g} %"
    ci_low, ci_high = float(look.ci_low), float(look.ci_high)
    summary = (
        f"control {mean_c:.4g} (n={control.count}), candidate {candidate.mean:.4g} "
        f"(n={candidate.count}), delta {delta:+.4g}"
        + (f" ({_pct(delta_pct)})" if delta_pct is not None else "")
        + f", {level} always-valid CI [{ci_low:+.4g}, {ci_high:+.4g}], p {p_value:.3g}"
    )
    elapsed_s = elapsed.total_seconds() if isinstance(elapsed, timedelta) else elapsed
    limit = config.max_duration_s
    expired = elapsed_s is not None and limit is not None and elapsed_s >= limit

    def decision(action: Action, reason: str) -> Decision:
        return Decision(
            action=action,
            reason=f"{reason}; {summary}",
            delta=delta,
            delta_pct=delta_pct,
            p_value=p_value,
            ci_low=ci_low,
            ci_high=ci_high,
            control_mean=mean_c,
            candidate_mean=candidate.mean,
            control_count=control.count,
            candidate_count=candidate.count,
        )

    r_back, r_prom = config.rollback_ratio, config.promote_ratio
    if not bool(look.ready):
        waiting = (
            f"fewer than min_sample_size={config.min_sample_size} runs in an arm "
            f"(control {control.count}, candidate {candidate.count})"
        )
        if expired:
            return decision("rollback", f"max_duration {limit:g} s passed with {waiting}")
        return decision("continue", f"waiting: {waiting}")
    if bool(look.rollback) and float(look.rollback_low) > 0:
        return decision(
            "rollback",
            f"candidate worse by more than max_crl_increase={_pct(config.max_crl_increase)}: "
            f"lower bound {float(look.rollback_low):+.4g} of candidate − {r_back:g}·control "
            "is above 0",
        )
    if bool(look.rollback):
        margin = (
            ""
            if config.mode == "superiority"
            else f" by more than the margin {_pct(config.non_inferiority_margin)}"
        )
        return decision(
            "rollback",
            f"candidate worse than control{margin} (harm rule at harm_alpha="
            f"{config.harm_alpha:g}): lower bound {float(look.harm_low):+.4g} of candidate − "
            f"{config.harm_ratio:g}·control is above 0",
        )
    if bool(look.promote):
        if config.mode == "superiority":
            what = f"better by at least min_improvement={config.min_improvement * 100:.1f} %"
        else:
            what = f"non-inferior within margin {_pct(config.non_inferiority_margin)}"
        return decision(
            "promote",
            f"candidate {what}: upper bound {float(look.promote_high):+.4g} of "
            f"candidate − {r_prom:g}·control is below 0",
        )
    if expired:
        goal = "superiority" if config.mode == "superiority" else "non-inferiority"
        return decision("rollback", f"max_duration {limit:g} s passed without showing {goal}")
    return decision(
        "continue",
        f"no bound crossed: lower bound {float(look.rollback_low):+.4g} of candidate − "
        f"{r_back:g}·control is not above 0 and upper bound {float(look.promote_high):+.4g} "
        f"of candidate − {r_prom:g}·control is not below 0",
    )


# --------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class SimulationResult:
    """Per canary: the first decision (``"continue"`` = undecided) and runs per arm by then."""

    action: npt.NDArray[np.str_]
    runs_per_arm: npt.NDArray[np.int64]

    def rate(self, action: Action) -> float:
        """Share of canaries whose first decision was ``action``."""
        return float(np.mean(self.action == action))

    def median_runs(self) -> float | None:
        """Median runs per arm at the decision, over decided canaries."""
        decided = self.action != "continue"
        return float(np.median(self.runs_per_arm[decided])) if decided.any() else None


def cumulative_statistics(
    runs: npt.ArrayLike, counts: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Mean and variance of the first ``counts[j]`` runs of each row of ``runs`` (canaries × runs).

    ``counts`` are the cumulative run counts at each look (increasing, ≥ 1).
    Sums are taken around each canary's first run, against cancellation.
    """
    x = np.asarray(runs, dtype=np.float64)
    n = np.asarray(counts, dtype=np.int64)
    if n.ndim != 1 or n.size == 0 or n[0] < 1 or np.any(np.diff(n) <= 0) or n[-1] > x.shape[1]:
        raise ValueError(f"look counts must increase within 1..{x.shape[1]}")
    origin = x[:, :1]
    shifted = x[:, : n[-1]] - origin
    s1 = np.cumsum(shifted, axis=1)[:, n - 1]
    s2 = np.cumsum(shifted * shifted, axis=1)[:, n - 1]
    mean = s1 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(n > 1, np.maximum(s2 - s1 * mean, 0.0) / (n - 1), 0.0)
    return mean + origin, var


def simulate(
    control_runs: npt.ArrayLike,
    candidate_runs: npt.ArrayLike,
    config: CanaryConfig,
    *,
    batch: int = 10,
    control_counts: npt.ArrayLike | None = None,
    candidate_counts: npt.ArrayLike | None = None,
) -> SimulationResult:
    """First decision of many canaries looked at after every ``batch`` runs per arm.

    ``control_runs`` and ``candidate_runs`` are (canaries × runs) arrays of CRL.
    Looks come after every ``batch`` runs of each arm, or at the cumulative run
    counts given per arm (equal lengths; unequal arms model a traffic split).
    The statistic is :func:`look_statistics`, the code :func:`evaluate` uses;
    ``max_duration`` is not simulated (undecided canaries stay ``"continue"``).
    ``runs_per_arm`` is the candidate's count at the decision (or at the end).
    """
    ctrl = np.asarray(control_runs, dtype=np.float64)
    cand = np.asarray(candidate_runs, dtype=np.float64)
    n_c = np.asarray(
        np.arange(batch, ctrl.shape[1] + 1, batch) if control_counts is None else control_counts
    )
    n_t = np.asarray(
        np.arange(batch, cand.shape[1] + 1, batch) if candidate_counts is None else candidate_counts
    )
    if n_c.shape != n_t.shape:
        raise ValueError(f"{n_c.size} control looks but {n_t.size} candidate looks")
    mean_c, var_c = cumulative_statistics(ctrl, n_c)
    mean_t, var_t = cumulative_statistics(cand, n_t)
    look = look_statistics(n_c, mean_c, var_c, n_t, mean_t, var_t, config)
    decided = look.rollback | look.promote
    first = decided.argmax(axis=1)
    rows = np.arange(decided.shape[0])
    any_decided = decided[rows, first]
    action = np.where(
        any_decided, np.where(look.rollback[rows, first], "rollback", "promote"), "continue"
    )
    runs = np.where(any_decided, n_t[first], n_t[-1])
    return SimulationResult(action=action, runs_per_arm=runs.astype(np.int64))


# --------------------------------------------------------------------- guardrails


@dataclass(frozen=True)
class Guardrail:
    """A secondary metric the candidate must not make worse.

    ``kind``:

    * ``"relative"`` — fails when, with always-valid confidence 1−alpha, the
      candidate is worse than the control by more than ``threshold`` as a
      fraction of the control mean (same contrast test as the CRL rollback);
    * ``"absolute"`` — the same with ``threshold`` in the metric's units
      (``threshold=0``: fails once the candidate is worse at all, with confidence);
    * ``"ceiling"`` — a hard limit, no statistics: fails as soon as the
      candidate's observed mean is worse than ``threshold`` (above it when lower
      is better). ``threshold=0`` on a count is zero tolerance: one event fails.

    A failing ``critical`` guardrail rolls the canary back (:func:`advance`); a
    failing non-critical one holds step-ups and promotion.
    """

    name: str
    metric: str
    direction: Literal["lower_is_better", "higher_is_better"] = "lower_is_better"
    kind: Literal["relative", "absolute", "ceiling"] = "absolute"
    threshold: float = 0.0
    critical: bool = False

    def __post_init__(self) -> None:
        if self.direction not in ("lower_is_better", "higher_is_better"):
            raise ValueError(f"guardrail {self.name}: direction {self.direction!r} is unknown")
        if self.kind not in ("relative", "absolute", "ceiling"):
            raise ValueError(f"guardrail {self.name}: kind {self.kind!r} is unknown")
        if self.kind != "ceiling" and self.threshold < 0:
            raise ValueError(f"guardrail {self.name}: threshold {self.threshold} is negative")
        if self.kind == "relative" and self.direction == "higher_is_better" and self.threshold >= 1:
            raise ValueError(f"guardrail {self.name}: relative threshold {self.threshold} ≥ 1")


# A starting point on CRL terms (models.crl.CRLTerms field names).
DEFAULT_GUARDRAILS: tuple[Guardrail, ...] = (
    Guardrail("security", "security_criticals", kind="absolute", threshold=0.0, critical=True),
    Guardrail("api_breakages", "api_breakages", kind="absolute", threshold=0.0, critical=True),
    Guardrail("cost", "cost_over_budget_pct", kind="relative", threshold=0.10),
    Guardrail("latency", "latency_p95_norm", kind="relative", threshold=0.10),
)


@dataclass(frozen=True)
class GuardrailResult:
    """Outcome of one guardrail.

    ``measured`` — candidate − control mean (``"ceiling"``: the candidate mean);
    ``statistic`` — the always-valid lower confidence bound of the harm
    (``(candidate − r·control)`` turned so that positive is worse, minus the
    absolute threshold); the guardrail fails when it is above 0. For
    ``"ceiling"`` it is the observed excess over the ceiling.
    """

    name: str
    metric: str
    passed: bool
    critical: bool
    measured: float
    threshold: float
    statistic: float
    control_mean: float
    candidate_mean: float
    reason: str


def evaluate_guardrails(
    control_stats_by_metric: Mapping[str, Moments],
    candidate_stats_by_metric: Mapping[str, Moments],
    guardrails: Sequence[Guardrail],
    alpha: float = 0.05,
    *,
    min_sample_size: int = CanaryConfig.min_sample_size,
    mixing_sd: float = DEFAULT_MIXING_SD,
) -> list[GuardrailResult]:
    """Check each guardrail with the same always-valid machinery as the CRL.

    Statistical guardrails pass until both arms have ``min_sample_size`` runs of
    the metric (a missing metric counts as no runs). Each is tested at level
    ``alpha`` on its own; pass ``alpha / len(guardrails)`` to bound the chance
    that any guardrail fails by luck.
    """
    results = []
    for g in guardrails:
        ctrl = control_stats_by_metric.get(g.metric) or Moments()
        cand = candidate_stats_by_metric.get(g.metric) or Moments()
        sign = 1.0 if g.direction == "lower_is_better" else -1.0
        worse = "above" if sign > 0 else "below"
        if g.kind == "ceiling":
            excess = sign * (cand.mean - g.threshold) if cand.count else -math.inf
            failed = excess > 0
            reason = (
                f"candidate mean {cand.mean:.4g} is {worse} the ceiling {g.threshold:g}"
                if failed
                else f"candidate mean {cand.mean:.4g} (n={cand.count}) within ceiling "
                f"{g.threshold:g}"
            )
            results.append(
                GuardrailResult(
                    g.name, g.metric, not failed, g.critical, cand.mean, g.threshold,
                    excess, ctrl.mean, cand.mean, reason,
                )
            )  # fmt: skip
            continue
        ratio = 1.0 + sign * g.threshold if g.kind == "relative" else 1.0
        offset = g.threshold if g.kind == "absolute" else 0.0
        _, c_low, c_high, _ = contrast_interval(
            ctrl.count, ctrl.mean, ctrl.variance, cand.count, cand.mean, cand.variance,
            ratio=ratio, alpha=alpha, mixing_sd=mixing_sd,
        )  # fmt: skip
        # Harm = sign·(mean_t − ratio·mean_c) − offset, positive when the candidate is worse.
        low = float(c_low if sign > 0 else -c_high) - offset
        ready = min(ctrl.count, cand.count) >= min_sample_size
        failed = ready and low > 0
        limit = f"{_pct(g.threshold)} of control" if g.kind == "relative" else f"{g.threshold:g}"
        if not ready:
            reason = (
                f"waiting for {min_sample_size} runs per arm "
                f"(control {ctrl.count}, candidate {cand.count})"
            )
        elif failed:
            reason = (
                f"candidate worse than control by more than {limit}: lower confidence "
                f"bound of the excess harm {low:+.4g} is above 0"
            )
        else:
            reason = f"no evidence of harm beyond {limit} (bound {low:+.4g} ≤ 0)"
        results.append(
            GuardrailResult(
                g.name, g.metric, not failed, g.critical, cand.mean - ctrl.mean, g.threshold,
                low, ctrl.mean, cand.mean, reason,
            )
        )  # fmt: skip
    return results


# ---------------------------------------------------------------------------- SRM


@dataclass(frozen=True)
class SRMResult:
    """A sample-ratio-mismatch check: its p-value, statistic and verdict, and the counts.

    The canary's (``DeploymentState.srm``) is the sequential test of
    ``learning.srm`` (statistic: the running maximum of the log Bayes factor);
    :func:`srm_check`'s is the fixed-level chi-square (statistic: chi-square).
    """

    p_value: float
    statistic: float
    mismatch: bool
    expected: dict[str, float]
    observed: dict[str, int]


def srm_check(
    routed_counts: Mapping[str, int], allocation: float, *, p_threshold: float = 0.001
) -> SRMResult:
    """Sample-ratio-mismatch test of ``{"control": n, "candidate": m}`` against ``allocation``.

    The naive test, kept as the baseline the simulations compare against: at
    every routing it pauses healthy canaries far more often than its level
    (issue 16; tests/unit/test_srm.py). The canary uses ``learning.srm``.

    Pearson's chi-square with one degree of freedom (``scipy.stats.chisquare``).
    The counts must be those routed under this allocation only (reset them at a
    step-up). ``mismatch`` is ``p_value < p_threshold``; the low default
    threshold (0.001) allows for checking after every routing.
    """
    if not 0.0 < allocation < 1.0:
        raise ValueError(f"allocation {allocation} is not strictly between 0 and 1")
    observed = {
        "control": int(routed_counts.get("control", 0)),
        "candidate": int(routed_counts.get("candidate", 0)),
    }
    total = observed["control"] + observed["candidate"]
    expected = {"control": total * (1.0 - allocation), "candidate": total * allocation}
    if total == 0:
        return SRMResult(1.0, 0.0, False, expected, observed)
    from scipy import stats  # on first use: the CLI and storage import this module for constants

    chi2, p = stats.chisquare(
        [observed["control"], observed["candidate"]],
        [expected["control"], expected["candidate"]],
    )
    p_value = float(p)
    return SRMResult(p_value, float(chi2), p_value < p_threshold, expected, observed)


# -------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class StepState:
    """Where a deployment is: its step and the runs per arm since that step began."""

    step_index: int = 0
    control_runs_in_step: int = 0
    candidate_runs_in_step: int = 0


@dataclass(frozen=True)
class StepDecision:
    """What the deployment does next, the step it is then at and the candidate's traffic share.

    ``allocation`` is 1.0 after ``"promote"``, 0.0 after ``"rollback"``, and the
    step's share otherwise (a ``"pause"`` leaves routing as it is; whether to
    stop exposing the candidate meanwhile is the operator's call).
    """

    action: StepAction
    reason: str
    step_index: int
    allocation: float


def next_step(step_index: int, steps: Sequence[float]) -> int | None:
    """Index of the step after ``step_index``, or ``None`` at the last step."""
    if not 0 <= step_index < len(steps):
        raise ValueError(f"step index {step_index} is outside 0..{len(steps) - 1}")
    return step_index + 1 if step_index + 1 < len(steps) else None


def advance(
    state: StepState,
    decision: Decision,
    config: CanaryConfig,
    *,
    guardrails: Sequence[GuardrailResult] = (),
    srm: SRMResult | None = None,
) -> StepDecision:
    """Turn a CRL decision, guardrails and the SRM check into the deployment's next move.

    The canary agent calls :func:`evaluate` after every result, then this. In order:

    * ``"rollback"`` — a critical guardrail failed, or the decision is rollback;
    * ``"pause"`` — sample ratio mismatch: routing is broken, so the statistics
      cannot be trusted either way; an operator must look (nothing is promoted);
    * ``"step_up"`` to the next allocation once the step has ``min_sample_size``
      runs per arm and no non-critical guardrail fails — with ``step_up="dwell"``
      (the default) whatever the decision, with ``"evidence"`` only when it is
      promote. A harmful candidate then meets the harm rule with more traffic
      instead of sitting at the first step (issue 16); the schedule depends on
      run counts, not on outcomes;
    * ``"promote"`` at the last step, when the decision is promote under the same
      two conditions (the candidate takes all traffic);
    * ``"continue"`` otherwise.

    A step-up resets only the caller's per-step run and routing counts; the arm
    statistics carry over (see the module notes on allocation changes).
    """
    steps = config.steps
    here = next_step(state.step_index, steps)  # validates the index

    def move(action: StepAction, reason: str, index: int = state.step_index) -> StepDecision:
        share = {"promote": 1.0, "rollback": 0.0}.get(action, steps[index])
        return StepDecision(action, reason, index, share)

    critical = [g for g in guardrails if g.critical and not g.passed]
    if critical:
        names = ", ".join(f"{g.name} ({g.reason})" for g in critical)
        return move("rollback", f"critical guardrail failed: {names}")
    if decision.action == "rollback":
        return move("rollback", decision.reason)
    if srm is not None and srm.mismatch:
        return move(
            "pause",
            f"sample ratio mismatch: observed {srm.observed}, expected "
            f"{ {k: round(v, 1) for k, v in srm.expected.items()} }, p {srm.p_value:.3g}",
        )
    dwell = config.step_up == "dwell" and here is not None
    if decision.action != "promote" and not dwell:
        return move("continue", decision.reason)
    failing = [g.name for g in guardrails if not g.passed]
    if failing:
        held = "promotion" if decision.action == "promote" else "step-up"
        return move("continue", f"{held} held: guardrail {', '.join(failing)} failing")
    in_step = min(state.control_runs_in_step, state.candidate_runs_in_step)
    if in_step < config.min_sample_size:
        why = "evidence to promote" if decision.action == "promote" else decision.reason
        return move(
            "continue",
            f"{why}; waiting for {config.min_sample_size} runs per arm at step "
            f"{state.step_index} ({_share(steps[state.step_index])} of the traffic; "
            f"have {in_step})",
        )
    if here is None:
        return move("promote", decision.reason)
    because = (
        decision.reason
        if decision.action == "promote"
        else f"{in_step} runs per arm at this step and no rollback ({decision.reason})"
    )
    return move(
        "step_up",
        f"step {state.step_index} → {here} ({_share(steps[here])} of the traffic): {because}",
        here,
    )


# ------------------------------------------------------------------------- report


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def report(
    control: Moments,
    candidate: Moments,
    config: CanaryConfig,
    *,
    decision: Decision | None = None,
    state: StepState | None = None,
    step: StepDecision | None = None,
    guardrails: Sequence[GuardrailResult] = (),
    srm: SRMResult | None = None,
) -> dict[str, Any]:
    """The figures an operator needs, as a JSON-ready dict (non-finite numbers become None).

    ``recommendation`` is the step decision's action when given, else the CRL
    decision's.
    """
    decision = decision or evaluate(control, candidate, config)
    state = state or StepState()
    guardrail_rows: list[dict[str, Any]] = [
        {
            "name": g.name,
            "metric": g.metric,
            "passed": g.passed,
            "critical": g.critical,
            "measured": _finite(g.measured),
            "threshold": g.threshold,
            "statistic": _finite(g.statistic),
            "control_mean": _finite(g.control_mean),
            "candidate_mean": _finite(g.candidate_mean),
            "reason": g.reason,
        }
        for g in guardrails
    ]
    out: dict[str, Any] = {
        "control_mean": control.mean,
        "candidate_mean": candidate.mean,
        "control_count": control.count,
        "candidate_count": candidate.count,
        "delta": decision.delta,
        "delta_pct": _finite(decision.delta_pct),
        "p_value": decision.p_value,
        "ci_low": _finite(decision.ci_low),
        "ci_high": _finite(decision.ci_high),
        "confidence": 1.0 - config.alpha,
        "mode": config.mode,
        "step_index": state.step_index,
        "allocation": config.steps[state.step_index],
        "decision": decision.action,
        "recommendation": step.action if step else decision.action,
        "reason": step.reason if step else decision.reason,
        "decision_reason": decision.reason,
        "guardrails": guardrail_rows,
        "srm": None
        if srm is None
        else {
            "p_value": srm.p_value,
            "mismatch": srm.mismatch,
            "observed": dict(srm.observed),
            "expected": dict(srm.expected),
        },
    }
    return out


__all__ = [
    "DEFAULT_GUARDRAILS",
    "DEFAULT_MIXING_SD",
    "DEFAULT_STEPS",
    "ArmStats",
    "CanaryConfig",
    "Decision",
    "Guardrail",
    "GuardrailResult",
    "LookStatistics",
    "SRMResult",
    "SimulationResult",
    "StepDecision",
    "StepState",
    "advance",
    "contrast_interval",
    "cumulative_statistics",
    "evaluate",
    "evaluate_guardrails",
    "look_statistics",
    "next_step",
    "report",
    "simulate",
    "srm_check",
]
