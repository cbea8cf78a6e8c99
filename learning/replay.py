"""Deterministic offline replay: task ids, a synthetic executor, per-seed summaries, the verdict.

A replay runs a policy over a frozen dataset manifest once per seed. The
replay id depends on the policy, the manifest and the seed *set* (not its
order); every (replay, sample, seed) gets a task id that is the same on every
machine and every retry (UUIDv5, RFC 9562 §5.5), so results are idempotent by
task id, a replay can be resumed, and replays whose seed sets overlap each
have their own tasks.

Each seed yields the mean CRL of its runs; :func:`summarize` turns the
per-seed means into the figures the design fixes (``learning.replay`` in
design.md):

- ``mean_crl`` — the mean of the per-seed means (each seed weighs the same,
  however many runs it had);
- ``std_crl`` — the sample standard deviation across seeds (ddof = 1), 0 for
  one seed;
- ``stability`` — ``1 − std/mean`` clamped to [0, 1] (one minus the
  coefficient of variation): 1 when mean and std are both 0, 0 when the mean
  is 0 and the std is not.

The per-seed summary describes a replay; it does not judge it (its stability
rises with the runs per seed). :func:`decide` judges the candidate on the
pairs both replays ran, one (sample, seed) each: it passes when the lower
confidence bound of the paired improvement (:func:`paired_improvement`) is
above 0 and the required margin, with every sample run under at least 3
seeds, and its seed
stability (one task's run-to-run spread, whatever the runs per seed) is high
enough, so an identical candidate passes at most ``alpha`` of the time.
Lower CRL is better.

:func:`deterministic_output` is the pure core of the local executor: a
synthetic learning-bundle result that depends only on the policy artifact,
the sample and the seed, with a quality knob read from the artifact so that a
better policy really scores a lower CRL in tests and in the demo.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from learning.moments import Moments
from learning.signing import canonical_json, content_hash
from models import ids
from models.bundle import QAV, Costs, Gates, Latency, RunCompleted, Security

# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class SeedResult:
    """One seed's mean CRL and how many runs it averages."""

    mean_crl: float
    runs: int

    def __post_init__(self) -> None:
        if isinstance(self.runs, bool) or not isinstance(self.runs, int) or self.runs < 1:
            raise ValueError(f"runs {self.runs!r} must be a positive integer")


@dataclass(frozen=True)
class ReplaySummary:
    """Mean, spread and stability of a replay's per-seed mean CRLs."""

    mean_crl: float
    std_crl: float
    stability: float
    seeds: tuple[int, ...]
    per_seed: Mapping[int, float] = field(default_factory=dict)
    runs: int | None = None  # total runs, when every seed reported its count

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping for a JSON column or an event."""
        return {
            "mean_crl": self.mean_crl,
            "std_crl": self.std_crl,
            "stability": self.stability,
            "seeds": list(self.seeds),
            "per_seed": {str(s): self.per_seed[s] for s in self.seeds},
            "runs": self.runs,
        }


def stability(mean: float, std: float) -> float:
    """Return ``1 − std/mean`` clamped to [0, 1]; 1 for mean = std = 0, 0 for mean = 0 < std."""
    if not (math.isfinite(mean) and math.isfinite(std)) or std < 0:
        raise ValueError(f"stability needs a finite mean and a finite std ≥ 0, got {mean}, {std}")
    if mean == 0:
        return 1.0 if std == 0 else 0.0
    return min(1.0, max(0.0, 1.0 - std / mean))


def summarize(per_seed: Mapping[int, float | SeedResult]) -> ReplaySummary:
    """Summarise per-seed mean CRLs: mean of means, sample std across seeds, stability.

    ``per_seed`` maps a seed to that seed's mean CRL, or to a :class:`SeedResult`
    that also says how many runs it averages (reported as ``runs``; the mean
    stays unweighted). Seeds are folded in sorted order, so the figures are
    bit-for-bit the same however the mapping was built.
    """
    if not per_seed:
        raise ValueError("no seeds: a replay summary needs at least one seed's mean CRL")
    moments = Moments()
    means: dict[int, float] = {}
    runs: int | None = 0
    for seed in sorted(per_seed):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed {seed!r} is not an integer")
        value = per_seed[seed]
        if isinstance(value, SeedResult):
            crl = value.mean_crl
            runs = None if runs is None else runs + value.runs
        else:
            crl = value
            runs = None
        if isinstance(crl, bool) or not isinstance(crl, int | float) or not math.isfinite(crl):
            raise ValueError(f"seed {seed}: mean CRL {crl!r} is not a finite number")
        if crl < 0:
            raise ValueError(f"seed {seed}: mean CRL {crl} is negative; CRL is a loss ≥ 0")
        means[seed] = float(crl)
        moments.add(float(crl))
    std = moments.std
    return ReplaySummary(
        mean_crl=moments.mean,
        std_crl=std,
        stability=stability(moments.mean, std),
        seeds=tuple(means),
        per_seed=means,
        runs=runs,
    )


def per_seed_results(runs: Iterable[tuple[int, float]]) -> dict[int, SeedResult]:
    """Fold (seed, CRL of one run) pairs into each seed's mean CRL and run count."""
    folded: dict[int, Moments] = {}
    for seed, crl in runs:
        folded.setdefault(seed, Moments()).add(crl)
    return {seed: SeedResult(m.mean, m.count) for seed, m in sorted(folded.items())}


# --------------------------------------------------------------------------- decision

MIN_SEEDS = 3  # the fewest seeds a replay rule may ask for


@dataclass(frozen=True)
class ReplayRule:
    """When a candidate's replay beats the control's (see :func:`decide`).

    The improvement must be *shown*, not only observed: the one-sided
    level-(1 − ``alpha``) lower confidence bound of the paired improvement
    (:func:`paired_improvement`) must be above 0 and at least
    ``min_improvement`` (absolute CRL), and the bound of the improvement beyond
    ``min_improvement_pct`` of the control's mean at least 0 ("at least"
    forgives float rounding). Each is a level-alpha test, and passing needs
    both, so the pair is one (Berger, Technometrics 24, 1982, on
    intersection-union tests). Every sample must be paired under at least
    ``min_seeds`` seeds (3 or more), and the candidate's ``seed_stability``
    must be at least ``min_seed_stability``. With ``require_same_seeds`` both
    replays must have used the same seed set.
    """

    alpha: float = 0.05
    min_improvement: float = 0.0
    min_improvement_pct: float = 0.0
    min_seeds: int = MIN_SEEDS
    min_seed_stability: float = 0.5
    require_same_seeds: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, int | float) and 0.0 < self.alpha < 0.5):
            raise ValueError(f"replay.rule.alpha {self.alpha} must be between 0 and 0.5")
        if not (math.isfinite(self.min_improvement) and self.min_improvement >= 0):
            raise ValueError(
                f"replay.rule.min_improvement {self.min_improvement} must be finite and ≥ 0"
            )
        if not (math.isfinite(self.min_improvement_pct) and 0 <= self.min_improvement_pct < 1):
            raise ValueError(
                f"replay.rule.min_improvement_pct {self.min_improvement_pct} must be in [0, 1)"
            )
        if isinstance(self.min_seeds, bool) or not isinstance(self.min_seeds, int):
            raise ValueError(f"replay.rule.min_seeds {self.min_seeds!r} is not an integer")
        if self.min_seeds < MIN_SEEDS:
            raise ValueError(
                f"replay.rule.min_seeds {self.min_seeds} is below {MIN_SEEDS}: the paired bound "
                f"and the seed stability need every sample re-run under at least {MIN_SEEDS} "
                f"seeds; set min_seeds to {MIN_SEEDS} or more"
            )
        if not 0.0 <= self.min_seed_stability <= 1.0:
            raise ValueError(
                f"replay.rule.min_seed_stability {self.min_seed_stability} is outside [0, 1]"
            )


@dataclass(frozen=True)
class ReplayVerdict:
    """Whether the candidate passed its replay, why, and the figures that decided it."""

    passed: bool
    reason: str
    numbers: dict[str, float | int | None]

    def __bool__(self) -> bool:
        return self.passed


@dataclass(frozen=True)
class PairedImprovement:
    """The paired improvement (control − candidate loss per sample and seed) and its bounds.

    ``mean`` is the mean over samples of each sample's improvement averaged
    over its seeds; ``lower`` its one-sided level-(1 − alpha) lower confidence
    bound, and ``excess_lower`` the same bound for the improvement beyond
    ``min_improvement_pct`` of the control's mean (equal to ``lower`` when that
    share is 0). The golden set is frozen, so the claim is about these samples
    and the randomness is the seeds'. ``seeds`` is the fewest seeds any sample
    was paired under. ``seed_stability`` is ``1 − sqrt(mean within-sample
    variance across seeds) / mean loss`` of the candidate, clamped to [0, 1]:
    one minus the coefficient of variation of one task's loss under
    re-seeding, which does not move with the number of runs per seed (one
    minus the CV of the per-seed means does, as 1/√runs).
    """

    mean: float
    lower: float
    excess_lower: float
    alpha: float
    min_improvement_pct: float
    samples: int
    seeds: int
    seed_stability: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain mapping for a JSON column or an event."""
        return {
            "mean": self.mean,
            "lower": self.lower,
            "excess_lower": self.excess_lower,
            "alpha": self.alpha,
            "min_improvement_pct": self.min_improvement_pct,
            "samples": self.samples,
            "seeds": self.seeds,
            "seed_stability": self.seed_stability,
        }


def paired_improvement(
    candidate: Iterable[tuple[int, str, float]],
    control: Iterable[tuple[int, str, float]],
    *,
    alpha: float = 0.05,
    min_improvement_pct: float = 0.0,
) -> PairedImprovement:
    """Paired improvement of the candidate over the control on the (seed, sample) pairs both ran.

    Takes the same (seed, sample id, loss) triples as :func:`fold_task_losses`.
    With ``d_is`` the improvement of sample i under seed s, ``d̄_i`` its mean
    over the sample's ``S_i`` seeds, ``v_i`` their sample variance and n
    samples, the mean ``d̄ = Σ d̄_i / n`` has variance ``V = Σ_i v_i / S_i / n²``
    and the bound is Welch's one-sided t with Satterthwaite's degrees of
    freedom ``ν = V² / Σ_i (v_i / S_i / n²)² / (S_i − 1)`` (Satterthwaite,
    Biometrics Bulletin 2, 1946):

        lower = d̄ − t_{1−α, ν} · √V

    Per-sample variances, not a pooled one, because zero-heavy losses make
    them very unequal (a sample every policy solves has none): a pooled
    variance then over-states the degrees of freedom, and an identical
    candidate passes up to twice as often as alpha. ``excess_lower`` bounds
    the contrast ``(1 − min_improvement_pct)·control − candidate`` the same
    way, so a relative margin carries the control's noise too. The runs of a
    task under different seeds are taken as independent; a seed that shifts
    every sample of one policy alike is not modelled. Every sample needs two
    paired seeds; otherwise the bounds are −inf. With no spread at all (every
    pair repeats its improvement) the bounds are the means.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha {alpha} is not between 0 and 1")
    # Negative: a non-inferiority margin (:func:`decide_non_inferiority`), the contrast
    # ``(1 + margin)·control − candidate``.
    if not (math.isfinite(min_improvement_pct) and min_improvement_pct < 1.0):
        raise ValueError(f"min_improvement_pct {min_improvement_pct} is not finite and below 1")
    cand = {(int(seed), str(sample)): float(loss) for seed, sample, loss in candidate}
    ctrl = {(int(seed), str(sample)): float(loss) for seed, sample, loss in control}
    pairs = sorted(set(cand) & set(ctrl))
    if not pairs:
        raise ValueError("no (seed, sample) ran in both replays: nothing to pair")
    samples = sorted({sample for _, sample in pairs})
    index = {sample: i for i, sample in enumerate(samples)}
    which = np.fromiter((index[sample] for _, sample in pairs), dtype=np.intp, count=len(pairs))
    loss = np.fromiter((cand[key] for key in pairs), dtype=float, count=len(pairs))
    base = np.fromiter((ctrl[key] for key in pairs), dtype=float, count=len(pairs))
    n = len(samples)
    count = np.bincount(which, minlength=n).astype(float)
    fewest = int(count.min())

    def sample_means(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.bincount(which, weights=x, minlength=n) / count

    def bound(diff: npt.NDArray[np.float64]) -> tuple[float, float]:
        per_sample = sample_means(diff)
        mean = float(per_sample.mean())
        if fewest < 2:
            return mean, -math.inf
        squares = np.bincount(which, weights=(diff - per_sample[which]) ** 2, minlength=n)
        part = squares / (count - 1) / count / n**2  # v_i / S_i / n²
        variance = float(part.sum())
        if variance == 0:
            return mean, mean
        dof = variance**2 / float(np.sum(part**2 / (count - 1)))
        # scipy on first use only: the replay executor (learnops.client) imports this
        # module and must not pull in scipy.
        from scipy import stats

        return mean, mean - float(stats.t.ppf(1.0 - alpha, dof)) * math.sqrt(variance)

    mean, lower = bound(base - loss)
    excess_lower = lower
    if min_improvement_pct != 0:
        excess_lower = bound((1.0 - min_improvement_pct) * base - loss)[1]
    # The candidate's within-sample variance, over samples run under two seeds or more.
    several = count >= 2
    if several.any():
        spread = np.bincount(which, weights=(loss - sample_means(loss)[which]) ** 2, minlength=n)
        noise = math.sqrt(float(np.mean(spread[several] / (count[several] - 1))))
        seed_stability = stability(float(loss.mean()), noise)
    else:
        seed_stability = 1.0
    return PairedImprovement(
        mean=mean,
        lower=lower,
        excess_lower=excess_lower,
        alpha=alpha,
        min_improvement_pct=min_improvement_pct,
        samples=n,
        seeds=fewest,
        seed_stability=seed_stability,
    )


def decide(
    candidate: ReplaySummary,
    control: ReplaySummary,
    rule: ReplayRule | None = None,
    *,
    paired: PairedImprovement,
) -> ReplayVerdict:
    """Apply the replay rule to a candidate and its control; every failed condition is named.

    ``paired`` is :func:`paired_improvement` of the two replays' task losses at
    the rule's ``alpha`` and ``min_improvement_pct`` (:func:`decide_from_losses`
    computes it). The summaries give the mean CRLs and seed sets reported
    beside it; the verdict rests on the paired bounds, the paired seeds and the
    seed stability. The summaries' ``stability`` (per-seed means) is reported,
    not judged: it moves with the number of runs per seed.
    """
    rule = rule or ReplayRule()
    if paired.alpha > rule.alpha or paired.min_improvement_pct != rule.min_improvement_pct:
        raise ValueError(
            f"the paired bound was computed at alpha {paired.alpha:g} and min_improvement_pct "
            f"{paired.min_improvement_pct:g}, the rule asks {rule.alpha:g} and "
            f"{rule.min_improvement_pct:g}: compute it with the rule's (decide_from_losses does)"
        )
    improvement = control.mean_crl - candidate.mean_crl
    improvement_pct = improvement / control.mean_crl if control.mean_crl > 0 else None
    required = max(rule.min_improvement, rule.min_improvement_pct * control.mean_crl)
    numbers: dict[str, float | int | None] = {
        "candidate_mean_crl": candidate.mean_crl,
        "control_mean_crl": control.mean_crl,
        "improvement": improvement,
        "improvement_pct": improvement_pct,
        "required_improvement": required,
        "candidate_std_crl": candidate.std_crl,
        "control_std_crl": control.std_crl,
        "candidate_stability": candidate.stability,
        "paired_improvement_mean": paired.mean,
        "paired_improvement_lower": _finite_or_none(paired.lower),
        "paired_excess_lower": _finite_or_none(paired.excess_lower),
        "paired_alpha": paired.alpha,
        "paired_samples": paired.samples,
        "paired_seeds": paired.seeds,
        "candidate_seed_stability": paired.seed_stability,
        "min_seed_stability": rule.min_seed_stability,
        "seeds": len(candidate.seeds),
        "min_seeds": rule.min_seeds,
    }
    pct = f" ({improvement_pct:.1%})" if improvement_pct is not None else ""
    share = (
        f", beyond {rule.min_improvement_pct:.1%} of the control's mean {paired.excess_lower:.4f}"
        if rule.min_improvement_pct > 0
        else ""
    )
    bound_text = (
        f"candidate mean CRL {candidate.mean_crl:.4f} vs control {control.mean_crl:.4f}: "
        f"improvement {improvement:.4f}{pct}; paired over {paired.samples} samples, each "
        f"under ≥ {paired.seeds} seeds, {1 - paired.alpha:.0%} lower bound "
        f"{paired.lower:.4f}{share}; required > 0 and ≥ {required:.4f}"
    )
    shown = (
        paired.lower > 0
        and _at_least(paired.lower, rule.min_improvement)
        and _at_least(paired.excess_lower, 0.0)
    )
    return _judged(rule, candidate, control, paired, shown, bound_text, numbers)


def _judged(
    rule: ReplayRule,
    candidate: ReplaySummary,
    control: ReplaySummary,
    paired: PairedImprovement,
    shown: bool,
    bound_text: str,
    numbers: dict[str, float | int | None],
) -> ReplayVerdict:
    """The verdict: the bound ``shown`` (said by ``bound_text``) and the rule's seed checks."""
    stability_text = (
        f"candidate seed stability {paired.seed_stability:.3f} vs minimum "
        f"{rule.min_seed_stability:.3f}"
    )
    failures = []
    if rule.require_same_seeds and set(candidate.seeds) != set(control.seeds):
        failures.append(
            f"seed sets differ (candidate {sorted(candidate.seeds)}, "
            f"control {sorted(control.seeds)}); replays must be paired"
        )
    if paired.seeds < rule.min_seeds:
        failures.append(
            f"a sample paired under {paired.seeds} seed(s), fewer than the {rule.min_seeds} "
            "required"
        )
    if not shown:
        failures.append(bound_text)
    if not _at_least(paired.seed_stability, rule.min_seed_stability):
        failures.append(stability_text)
    if failures:
        return ReplayVerdict(False, "failed: " + "; ".join(failures), numbers)
    return ReplayVerdict(True, f"passed: {bound_text}; {stability_text}", numbers)


def decide_from_losses(
    candidate: Iterable[tuple[int, str, float]],
    control: Iterable[tuple[int, str, float]],
    rule: ReplayRule | None = None,
) -> ReplayVerdict:
    """The verdict of two replays from their task losses, (seed, sample id, loss) each."""
    rule = rule or ReplayRule()
    candidate, control = list(candidate), list(control)
    unpaired = _unpaired(candidate, control)
    if unpaired is not None:
        return unpaired
    paired = paired_improvement(
        candidate, control, alpha=rule.alpha, min_improvement_pct=rule.min_improvement_pct
    )
    return decide(
        summarize(fold_task_losses(candidate)),
        summarize(fold_task_losses(control)),
        rule,
        paired=paired,
    )


def decide_non_inferiority(
    candidate: Iterable[tuple[int, str, float]],
    control: Iterable[tuple[int, str, float]],
    rule: ReplayRule,
    margin: float,
) -> ReplayVerdict:
    """Whether the candidate's replay is *no worse* than the control's by more than ``margin``.

    For a candidate meant to match the control (a bandit's proposal fixes the
    option the control's bandit already routes most tasks to; the local
    executor scores them alike): the one-sided level-(1 − alpha) lower bound of
    the paired contrast ``(1 + margin)·control − candidate`` (:func:`paired_improvement`
    at ``min_improvement_pct = −margin``) must be at least 0, rejecting "worse by
    more than the margin" at level alpha. The rule's seed requirements apply as
    in :func:`decide`; its improvement thresholds do not.
    """
    if not (math.isfinite(margin) and margin >= 0.0):
        raise ValueError(f"non-inferiority margin {margin} is not finite and ≥ 0")
    candidate, control = list(candidate), list(control)
    unpaired = _unpaired(candidate, control)
    if unpaired is not None:
        return unpaired
    paired = paired_improvement(candidate, control, alpha=rule.alpha, min_improvement_pct=-margin)
    cand = summarize(fold_task_losses(candidate))
    ctrl = summarize(fold_task_losses(control))
    numbers: dict[str, float | int | None] = {
        "candidate_mean_crl": cand.mean_crl,
        "control_mean_crl": ctrl.mean_crl,
        "improvement": ctrl.mean_crl - cand.mean_crl,
        "non_inferiority_margin": margin,
        "paired_improvement_mean": paired.mean,
        "paired_improvement_lower": _finite_or_none(paired.lower),
        "paired_margin_lower": _finite_or_none(paired.excess_lower),
        "paired_alpha": paired.alpha,
        "paired_samples": paired.samples,
        "paired_seeds": paired.seeds,
        "candidate_seed_stability": paired.seed_stability,
        "min_seed_stability": rule.min_seed_stability,
        "seeds": len(cand.seeds),
        "min_seeds": rule.min_seeds,
    }
    bound_text = (
        f"no worse than the control by {margin:.1%}: candidate mean CRL {cand.mean_crl:.4f} vs "
        f"control {ctrl.mean_crl:.4f}; paired over {paired.samples} samples, each under ≥ "
        f"{paired.seeds} seeds, {1 - paired.alpha:.0%} lower bound of control × "
        f"{1 + margin:g} − candidate {paired.excess_lower:.4f}; required ≥ 0"
    )
    shown = _at_least(paired.excess_lower, 0.0)
    return _judged(rule, cand, ctrl, paired, shown, bound_text, numbers)


def _unpaired(
    candidate: list[tuple[int, str, float]], control: list[tuple[int, str, float]]
) -> ReplayVerdict | None:
    """The failed verdict of two replays that share no (seed, sample), or None."""
    if {(s, x) for s, x, _ in candidate} & {(s, x) for s, x, _ in control}:
        return None
    return ReplayVerdict(
        False,
        "failed: no (seed, sample) ran in both replays, so there is nothing to pair",
        {"candidate_tasks": len(candidate), "control_tasks": len(control)},
    )


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _at_least(value: float, threshold: float) -> bool:
    """``value ≥ threshold``, counting a shortfall of float rounding (0.5 − 0.45 vs 0.05) as met."""
    return value >= threshold or math.isclose(value, threshold, rel_tol=1e-9, abs_tol=1e-12)


# --------------------------------------------------------------------------- ids and tasks


def task_id(rid: str, sample_id: str, seed: int) -> str:
    """Return the stable UUIDv5 of one task of the replay ``rid`` (its sample and seed).

    Of the replay, not of (policy, manifest, sample, seed) alone: replays whose
    seed sets overlap each have their own task for a shared seed.
    """
    _require_text(rid, "replay_id")
    _require_text(sample_id, "sample_id")
    _require_seed(seed)
    return ids.replay_task_id(rid, sample_id, seed)


def replay_id(policy_hash: str, manifest_hash: str, seeds: Iterable[int]) -> str:
    """Return the stable UUIDv5 of a replay; the seeds count as a set (order, repeats ignored)."""
    _require_text(policy_hash, "policy_hash")
    _require_text(manifest_hash, "manifest_hash")
    seed_set = sorted({_require_seed(s) for s in seeds})
    if not seed_set:
        raise ValueError("a replay needs at least one seed")
    return ids.replay_id(policy_hash, manifest_hash, seed_set)


def manifest_hash(samples: Mapping[str, object]) -> str:
    """Return the content hash of a dataset manifest: sample id → hash of the sample content."""
    return content_hash({"samples": {sid: content_hash(body) for sid, body in samples.items()}})


@dataclass(frozen=True)
class ReplayTask:
    """One unit of replay work: run this policy on this sample with this seed."""

    task_id: str
    replay_id: str
    policy_hash: str
    manifest_hash: str
    sample_id: str
    seed: int
    policy: Mapping[str, Any]
    sample: Any


def plan_tasks(
    policy: Mapping[str, Any],
    samples: Mapping[str, object],
    seeds: Iterable[int],
) -> list[ReplayTask]:
    """Return every task of a replay, ordered by seed then sample id."""
    p_hash = content_hash(policy)
    m_hash = manifest_hash(samples)
    seed_set = sorted({_require_seed(s) for s in seeds})
    r_id = replay_id(p_hash, m_hash, seed_set)
    return [
        ReplayTask(
            task_id=task_id(r_id, sid, seed),
            replay_id=r_id,
            policy_hash=p_hash,
            manifest_hash=m_hash,
            sample_id=sid,
            seed=seed,
            policy=policy,
            sample=samples[sid],
        )
        for seed in seed_set
        for sid in sorted(samples)
    ]


@runtime_checkable
class Executor(Protocol):
    """Runs one replay task and returns its learning-bundle-like result.

    The local executor returns :func:`deterministic_output`; a remote one
    would call the orchestrator. Either way, the same task must give the same
    result, so a retried task is harmless.
    """

    async def execute(self, task: ReplayTask) -> dict[str, Any]:
        """Run the task and return its result (see :func:`deterministic_output`)."""
        ...


def _require_text(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _require_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed {seed!r} is not an integer")
    return seed


# --------------------------------------------------------------------------- synthetic executor

DEFAULT_QUALITY = 0.5
BUDGET_USD = 0.50
LATENCY_OBJECTIVE_MS = 8000.0
_DRAWS = 32  # uniforms drawn per task, always all of them, so each has a fixed meaning


def deterministic_output(
    policy: Mapping[str, Any], sample_content: object, seed: int
) -> dict[str, Any]:
    """Return a synthetic run result that is a pure function of policy, sample and seed.

    The policy's ``quality`` (a number in [0, 1], default 0.5) moves every
    term the right way in expectation: more gates pass, fewer claims are
    contradicted, grounding and RAG coverage rise, cost and latency fall, and
    incidents get rarer. Each sample has a fixed difficulty in [0, 1) derived
    from its content alone, so every policy meets the same hard samples.

    The randomness is numpy's PCG64 seeded with SHA-256 of (policy hash,
    sample hash, seed), and only ``Generator.random`` is used (a fixed
    transform of the PCG64 stream), so the output is byte-for-byte the same
    from run to run. ``terms`` holds :class:`models.crl.CRLTerms` fields
    (``cost_over_budget_pct`` and ``latency_p95_norm`` as fractions over
    budget and objective, 0 when under); ``measurements`` the raw figures.
    """
    quality = _quality(policy)
    _require_seed(seed)
    p_hash = content_hash(policy)
    s_hash = content_hash(sample_content)
    digest = hashlib.sha256(canonical_json(["replay-output", p_hash, s_hash, seed])).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:16], "big"))
    u = [float(x) for x in rng.random(_DRAWS)]
    difficulty = _unit(canonical_json(["difficulty", s_hash]))
    weak = 1.0 - quality

    # Every loss has a floor set by the sample's difficulty (the same for every
    # policy and seed) plus a shortfall that shrinks with quality, noise included:
    # a better policy is both better and steadier, as a good policy should be.
    gates_total = 4 + int(difficulty * 4)  # 4..7, a property of the sample
    p_gate_fail = _clip(weak * (0.15 + 0.35 * difficulty), 0.0, 0.95)
    gates_failed = sum(1 for x in u[:gates_total] if x < p_gate_fail)
    gates_passed = gates_total - gates_failed

    claims = 4 + int(u[8] * 8)  # 4..11
    p_contradiction = _clip(weak * (0.1 + 0.3 * difficulty), 0.0, 1.0)
    contradictions = sum(1 for x in u[9 : 9 + claims] if x < p_contradiction)

    grounding = _clip(0.9 - 0.1 * difficulty - weak * 0.5 * (0.6 + 0.8 * u[21]), 0.0, 1.0)
    cost = BUDGET_USD * (0.7 + 0.2 * difficulty + 0.5 * weak * (0.5 + u[22]))
    latency = LATENCY_OBJECTIVE_MS * (0.6 + 0.2 * difficulty + 0.7 * weak * (0.4 + 1.2 * u[23]))
    rag_coverage = _clip(0.9 - 0.15 * difficulty - weak * 0.4 * (0.5 + u[27]), 0.0, 1.0)

    terms = {
        "gate_pass_rate": _r(gates_passed / gates_total),
        "contradiction_rate": _r(contradictions / claims),
        "grounding_score": _r(grounding),
        "cost_over_budget_pct": _r(max(0.0, cost / BUDGET_USD - 1.0)),
        "latency_p95_norm": _r(max(0.0, latency / LATENCY_OBJECTIVE_MS - 1.0)),
        "security_criticals": int(u[24] < 0.01 * weak),
        "api_breakages": int(u[25] < 0.015 * weak),
        "db_migration_fail": int(u[26] < 0.005 * weak),
        "rag_coverage": _r(rag_coverage),
    }
    return {
        "policy_hash": p_hash,
        "sample_hash": s_hash,
        "seed": seed,
        "quality": quality,
        "difficulty": _r(difficulty),
        "terms": terms,
        "measurements": {
            "gates_total": gates_total,
            "gates_passed": gates_passed,
            "gates_failed": gates_failed,
            "claims": claims,
            "contradictions": contradictions,
            "cost_usd": _r(cost),
            "budget_usd": BUDGET_USD,
            "latency_ms": _r(latency),
            "latency_objective_ms": LATENCY_OBJECTIVE_MS,
            "timed_out": latency > 1.5 * LATENCY_OBJECTIVE_MS,
        },
    }


def _quality(policy: Mapping[str, Any]) -> float:
    if not isinstance(policy, Mapping):
        raise ValueError(f"policy must be a JSON object, got {type(policy).__name__}")
    quality = policy.get("quality", DEFAULT_QUALITY)
    if isinstance(quality, bool) or not isinstance(quality, int | float):
        raise ValueError(f"policy quality {quality!r} is not a number")
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"policy quality {quality} is outside [0, 1]")
    return float(quality)


def _unit(data: bytes) -> float:
    """A number in [0, 1) from the first 8 bytes of SHA-256 of ``data``."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2.0**64


def _clip(x: float, low: float, high: float) -> float:
    return min(high, max(low, x))


def _r(x: float) -> float:
    return round(x, 6)


class LocalExecutor:
    """The local, deterministic executor: a task's result is :func:`deterministic_output`.

    It stands in for the orchestrator's sandbox in tests and the demo; the same
    task always gives the same bytes, so a retried or repeated task is harmless.
    """

    async def execute(self, task: ReplayTask) -> dict[str, Any]:
        """Return the synthetic result of running the task's policy on its sample with its seed."""
        return deterministic_output(task.policy, task.sample, task.seed)


#: The tenant of a replay task published before tasks named theirs (migration 023's backfill).
PRE_TENANT_REPLAY = "default"


def replay_bundle(
    output: Mapping[str, Any],
    *,
    doer: str,
    phase: str,
    policy_id: str,
    policy_version: int,
    replay_id: str,
    run_id: str,
    occurred_at: Any,
    tenant_id: str,
) -> RunCompleted:
    """Return the learning bundle that reports one replay task's output, tagged with the replay.

    The bundle carries what the CRL stage scores (gates, QAV, costs, latency,
    security, breakages, migration), so the loss is the same pure function of
    policy, sample and seed as the output. Its event id derives from the run
    id, so a re-executed task publishes the same event. ``tenant_id`` is the
    tenant whose golden dataset the sample came from: no synthetic tenant that
    a real one could be called, and the bundle (replay_id set) gives no sample.
    """
    m = output["measurements"]
    terms = output["terms"]
    gates = [f"gate-{i + 1}" for i in range(m["gates_total"])]
    return RunCompleted(
        event_id=ids.replay_bundle_event_id(run_id),
        occurred_at=occurred_at,
        doer=doer,
        run_id=run_id,
        phase=phase,
        policy_id=policy_id,
        policy_version=policy_version,
        tenant_id=tenant_id,
        replay_id=replay_id,
        model="local-deterministic",
        gates=Gates(passed=gates[: m["gates_passed"]], failed=gates[m["gates_passed"] :]),
        qav=QAV(
            grounding_score=terms["grounding_score"],
            contradictions=m["contradictions"],
            claims=m["claims"],
            rag_coverage=terms["rag_coverage"],
        ),
        costs=Costs(spent=m["cost_usd"], budget=m["budget_usd"]),
        latency=Latency(p95_ms=m["latency_ms"], timeouts=int(m["timed_out"])),
        security=Security(criticals=terms["security_criticals"]),
        api_breakages=terms["api_breakages"],
        db_migration="failed" if terms["db_migration_fail"] else "ok",
    )


def fold_task_losses(losses: Iterable[tuple[int, str, float]]) -> dict[int, SeedResult]:
    """Each seed's mean CRL and run count from (seed, sample id, loss), in a fixed order.

    Sorting by seed and sample id before folding makes the floats bit-for-bit
    the same whatever order the results arrived in.
    """
    return per_seed_results((seed, loss) for seed, _, loss in sorted(losses))


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ReplayConfig:
    """How replays run and are judged (config/learning.yaml, ``replay``)."""

    rule: ReplayRule = field(default_factory=ReplayRule)
    seeds: tuple[int, ...] = (42, 43, 44)
    timeout_s: float = 600.0
    check_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("replay.seeds: at least one seed")
        for seed in self.seeds:
            _require_seed(seed)
        if len(set(self.seeds)) < self.rule.min_seeds:
            raise ValueError(
                f"replay.seeds: {len(set(self.seeds))} distinct seed(s), fewer than "
                f"replay.rule.min_seeds {self.rule.min_seeds}, so no replay could pass; "
                f"list at least {self.rule.min_seeds}"
            )
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"replay.timeout_s {self.timeout_s} must be a positive number")
        if not (math.isfinite(self.check_interval_s) and self.check_interval_s > 0):
            raise ValueError(
                f"replay.check_interval_s {self.check_interval_s} must be a positive number"
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ReplayConfig:
        """From config/learning.yaml's ``replay`` section; unknown keys are errors."""
        values = dict(raw)
        rule = dict(values.pop("rule", None) or {})
        unknown = sorted(set(values) - {"seeds", "timeout_s", "check_interval_s"})
        if unknown:
            raise ValueError(f"replay: unknown settings {', '.join(unknown)}")
        if "min_stability" in rule:
            raise ValueError(
                "replay.rule.min_stability is no longer judged: 1 − CV of the per-seed mean "
                "CRLs rises with the runs per seed, not with the policy; remove it and set "
                "min_seed_stability (1 − CV of one task's loss across seeds, default 0.5)"
            )
        unknown = sorted(set(rule) - set(ReplayRule.__dataclass_fields__))
        if unknown:
            raise ValueError(f"replay.rule: unknown settings {', '.join(unknown)}")
        if "seeds" in values:
            values["seeds"] = tuple(values["seeds"])
        return cls(rule=ReplayRule(**rule), **values)
