"""Skill cards: what a doer is good at, where it fails, and which models serve it best.

A skill card is computed from statistics the stream already keeps (counts,
rates and :class:`~learning.moments.Moments` of CRL), never from raw runs, by
the rules in :class:`SkillRules`. Every finding carries the figure measured
and the threshold it was compared with, so a reader can see why it is there.
The rules and their defaults are documented in docs/skill-cards.md.

Best models are ranked by mean CRL (lower is better) among the K models with
at least ``best_models_min_runs`` runs. What the card claims about the order
holds jointly at level ``confidence`` = 1 − α: every pair's difference of
means gets a Welch interval (Welch–Satterthwaite degrees of freedom) at
α/(K(K−1)/2) (Bonferroni), and from those come each model's rank confidence
set and ``distinct_from_next`` (Mogstad, Romano, Shaikh and Wilhelm,
"Inference for ranks with applications to mobility across neighbourhoods and
academic achievement across countries", Review of Economic Studies 91, 2024,
with Bonferroni in place of their bootstrap max-t). The card shows no
interval for one model's mean: CRL is not bounded (cost, latency and counts
have no upper limit), so no upper confidence bound for a mean can hold its
level for every loss distribution (Bahadur and Savage, Ann. Math. Statist. 27,
1956), and at 30 runs of skewed, zero-heavy losses the t-interval does not
come close. Differences of identically shaped losses are another matter
(symmetric under no difference); docs/skill-cards.md gives the measured levels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from hashlib import sha256
from typing import Any
from uuid import uuid4

import numpy as np
import numpy.typing as npt

from learning.moments import Moments
from learning.signing import canonical_json
from learning.sketch import QuantileSketch
from learning.trends import DailyCRL, days_back, window
from models.datasets import DEFAULT_TENANT
from models.events import CRLComputed, SkillCard


def _rate(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} {value!r} is not a finite number")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} {value} is outside [0, 1]")


def _count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} {value!r} must be a non-negative integer")


@dataclass(frozen=True)
class DoerStats:
    """What the stream knows about one doer over the card's window (normally one day).

    ``runs``, the rates, ``gate_failures`` (gate name → runs in which that gate
    failed), latency and ``timeouts`` describe the window; ``crl_today`` is the
    CRL of the window's runs and ``crl_7d`` / ``crl_30d`` the trailing baselines
    it is compared with; ``crl_by_model`` splits CRL by the model that served
    the run.
    """

    doer: str
    runs: int
    gate_pass_rate: float
    gate_failures: Mapping[str, int] = field(default_factory=dict)
    crl_today: Moments = field(default_factory=Moments)
    crl_7d: Moments = field(default_factory=Moments)
    crl_30d: Moments = field(default_factory=Moments)
    contradiction_rate: float = 0.0
    latency_p95_ms: float | None = None
    latency_objective_ms: float | None = None
    timeouts: int = 0
    crl_by_model: Mapping[str, Moments] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _count(self.runs, "runs")
        _rate(self.gate_pass_rate, "gate_pass_rate")
        _rate(self.contradiction_rate, "contradiction_rate")
        _count(self.timeouts, "timeouts")
        for gate, failed in self.gate_failures.items():
            _count(failed, f"gate_failures[{gate!r}]")
            if failed > self.runs:
                raise ValueError(
                    f"gate {gate!r} failed in {failed} runs, more than the {self.runs} runs"
                )
        for name in ("latency_p95_ms", "latency_objective_ms"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} {value} must be a positive number")


@dataclass(frozen=True)
class SkillRules:
    """Thresholds of the skill-card rules (see docs/skill-cards.md)."""

    strength_gate_pass_rate: float = 0.9  # strength: gate pass rate ≥ this
    weakness_contradiction_rate: float = 0.1  # weakness: contradiction rate > this
    failure_mode_gate_fail_share: float = 0.2  # failure mode: a gate fails in > this share
    latency_over_objective: float = 1.0  # resource issue: p95 > objective × this
    max_timeouts: int = 0  # resource issue: timeouts > this
    min_runs: int = 10  # strengths, weaknesses, failure modes need this many runs
    best_models_min_runs: int = 30  # a model is ranked only with this many runs
    best_models_limit: int = 3  # how many ranked models the card lists
    confidence: float = 0.95  # joint level of the best models' rank sets and gaps

    def __post_init__(self) -> None:
        for name in (
            "strength_gate_pass_rate",
            "weakness_contradiction_rate",
            "failure_mode_gate_fail_share",
        ):
            _rate(getattr(self, name), name)
        if not (math.isfinite(self.latency_over_objective) and self.latency_over_objective > 0):
            raise ValueError(f"latency_over_objective {self.latency_over_objective} must be > 0")
        for name in ("max_timeouts", "min_runs", "best_models_limit"):
            _count(getattr(self, name), name)
        if self.best_models_min_runs < 2:
            raise ValueError("best_models_min_runs must be at least 2 to estimate a spread")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence {self.confidence} must be strictly between 0 and 1")


DEFAULT_SKILL_RULES = SkillRules()


@dataclass(frozen=True)
class Finding:
    """One entry on a skill card: the rule, what it is about, the figure and the threshold."""

    rule: str
    subject: str
    measured: float
    threshold: float
    comparison: str  # how measured relates to threshold for the finding to hold: "≥" or ">"
    text: str

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping for a JSON column."""
        return {
            "rule": self.rule,
            "subject": self.subject,
            "measured": self.measured,
            "threshold": self.threshold,
            "comparison": self.comparison,
            "text": self.text,
        }


@dataclass(frozen=True)
class ModelRanking:
    """A model's place among the doer's best: mean CRL, the ranks it could hold, sample size.

    ``rank`` is the place by mean CRL (1 = lowest); ``rank_low``..``rank_high``
    is the model's rank confidence set among all K ranked models, and
    ``distinct_from_next`` says the next listed model's mean CRL is shown
    higher (None for the last listed model). Both hold jointly for every ranked
    model at the rules' ``confidence`` (see :func:`best_models`), as does
    ``next_gap_low``..``next_gap_high``, the interval of the next listed
    model's mean CRL minus this one's. ``std_error`` (s/√n) describes the mean's
    spread; it is not a confidence statement.
    """

    rank: int
    model: str
    mean_crl: float
    std_error: float
    n: int
    rank_low: int
    rank_high: int
    distinct_from_next: bool | None
    next_gap_low: float | None = None
    next_gap_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping for a JSON column."""
        return {
            "rank": self.rank,
            "model": self.model,
            "mean_crl": self.mean_crl,
            "std_error": self.std_error,
            "n": self.n,
            "rank_low": self.rank_low,
            "rank_high": self.rank_high,
            "distinct_from_next": self.distinct_from_next,
            "next_gap_low": self.next_gap_low,
            "next_gap_high": self.next_gap_high,
        }


@dataclass(frozen=True)
class SkillCardContent:
    """A doer's skill card. Deltas are today's mean CRL minus the baseline (negative = better)."""

    doer: str
    runs: int
    gate_pass_rate: float
    mean_crl: float | None
    delta_7d: float | None
    delta_30d: float | None
    strengths: tuple[Finding, ...]
    weaknesses: tuple[Finding, ...]
    failure_modes: tuple[Finding, ...]
    resource_issues: tuple[Finding, ...]
    best_models: tuple[ModelRanking, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping for a JSON column or an event."""
        return {
            "doer": self.doer,
            "runs": self.runs,
            "gate_pass_rate": self.gate_pass_rate,
            "mean_crl": self.mean_crl,
            "delta_7d": self.delta_7d,
            "delta_30d": self.delta_30d,
            "strengths": [f.to_dict() for f in self.strengths],
            "weaknesses": [f.to_dict() for f in self.weaknesses],
            "failure_modes": [f.to_dict() for f in self.failure_modes],
            "resource_issues": [f.to_dict() for f in self.resource_issues],
            "best_models": [m.to_dict() for m in self.best_models],
            "notes": list(self.notes),
        }


def skill_card(stats: DoerStats, rules: SkillRules = DEFAULT_SKILL_RULES) -> SkillCardContent:
    """Apply the skill-card rules to a doer's statistics and return the card."""
    notes: list[str] = []
    enough_runs = stats.runs >= rules.min_runs
    if not enough_runs:
        notes.append(
            f"{stats.runs} runs, fewer than {rules.min_runs}: strengths, weaknesses and "
            "failure modes are not assessed"
        )
    strengths = _strengths(stats, rules) if enough_runs else ()
    weaknesses = _weaknesses(stats, rules) if enough_runs else ()
    failure_modes = _failure_modes(stats, rules) if enough_runs else ()
    best, unranked = best_models(stats.crl_by_model, rules)
    if unranked:
        notes.append(
            f"{unranked} model(s) with fewer than {rules.best_models_min_runs} runs not ranked"
        )
    today = stats.crl_today
    return SkillCardContent(
        doer=stats.doer,
        runs=stats.runs,
        gate_pass_rate=stats.gate_pass_rate,
        mean_crl=today.mean if today.count else None,
        delta_7d=_delta(today, stats.crl_7d),
        delta_30d=_delta(today, stats.crl_30d),
        strengths=strengths,
        weaknesses=weaknesses,
        failure_modes=failure_modes,
        resource_issues=_resource_issues(stats, rules),
        best_models=best,
        notes=tuple(notes),
    )


def best_models(
    crl_by_model: Mapping[str, Moments], rules: SkillRules = DEFAULT_SKILL_RULES
) -> tuple[tuple[ModelRanking, ...], int]:
    """Rank models with enough runs by mean CRL; return the top ones and how many were too few.

    With K ranked models, m = K(K−1)/2 pairs and α = 1 − ``confidence``, the
    difference of two means ``d = x̄_k − x̄_j`` gets the Welch interval
    ``d ± t_{1−α/(2m), ν}·√(s_j²/n_j + s_k²/n_k)`` with Welch–Satterthwaite
    ν (Welch, Biometrika 34, 1947), so the m intervals hold jointly at 1 − α
    (Bonferroni). Model k is *shown lower* than j when the interval of
    x̄_j − x̄_k is above 0. Model j's rank set runs from 1 + (models shown lower)
    to K − (models shown higher): the joint rank confidence set of Mogstad et
    al. (2024), which covers every model's true rank (1 + the models with a
    strictly lower true mean) at 1 − α. Ties in mean are broken by the smaller
    standard error, then by name, so the order is deterministic.
    """
    eligible = sorted(
        (m.mean, m.std / math.sqrt(m.count), model, m.count)
        for model, m in crl_by_model.items()
        if m.count >= rules.best_models_min_runs
    )
    unranked = len(crl_by_model) - len(eligible)
    k = len(eligible)
    if not k:
        return (), unranked
    low, high = _gaps(eligible, (1.0 - rules.confidence) / max(1, k * (k - 1) // 2))
    shown_lower = low > 0  # [j, i]: model j's mean CRL is shown lower than model i's
    listed = eligible[: rules.best_models_limit]
    ranking = []
    for j, (mean, se, model, n) in enumerate(listed):
        last = j + 1 == len(listed)
        ranking.append(
            ModelRanking(
                rank=j + 1,
                model=model,
                mean_crl=mean,
                std_error=se,
                n=n,
                rank_low=1 + int(shown_lower[:, j].sum()),
                rank_high=k - int(shown_lower[j, :].sum()),
                distinct_from_next=None if last else bool(shown_lower[j, j + 1]),
                next_gap_low=None if last else float(low[j, j + 1]),
                next_gap_high=None if last else float(high[j, j + 1]),
            )
        )
    return tuple(ranking), unranked


def _gaps(
    eligible: list[tuple[float, float, str, int]], alpha: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Welch intervals of every model's mean CRL minus every other's, each at level 1 − alpha.

    ``[j, i]`` bounds model i's mean minus model j's; the diagonal is 0. Two
    models that each always scored one loss (no spread) have a known gap.
    """
    mean = np.array([e[0] for e in eligible])
    se2 = np.array([e[1] for e in eligible]) ** 2
    n = np.array([e[3] for e in eligible], dtype=float)
    d = mean[None, :] - mean[:, None]
    v = se2[:, None] + se2[None, :]
    spread = v > 0
    part = se2**2 / (n - 1)
    dof = np.divide(v**2, part[:, None] + part[None, :], out=np.ones_like(v), where=spread)
    half = np.where(spread, _t_quantile(1.0 - alpha / 2.0, dof) * np.sqrt(v), 0.0)
    return d - half, d + half


def _t_quantile(p: float, dof: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Student's t quantiles at ``p`` for each of ``dof`` degrees of freedom.

    ``scipy.special.stdtrit`` is the function ``scipy.stats.t.ppf`` evaluates,
    without the distribution's argument handling (70 µs a call, 2 µs here; the
    same values, tests/unit/test_skills.py): every card's refresh calls it.
    """
    from scipy import special  # on first use, so importing the skill rules stays light

    return np.asarray(special.stdtrit(dof, p), dtype=float)


def _strengths(stats: DoerStats, rules: SkillRules) -> tuple[Finding, ...]:
    found = []
    if stats.gate_pass_rate >= rules.strength_gate_pass_rate:
        found.append(
            Finding(
                rule="gate_pass_rate",
                subject="quality gates",
                measured=stats.gate_pass_rate,
                threshold=rules.strength_gate_pass_rate,
                comparison="≥",
                text=(
                    f"passes its quality gates: gate pass rate {stats.gate_pass_rate:.1%} "
                    f"≥ {rules.strength_gate_pass_rate:.1%}"
                ),
            )
        )
    return tuple(found)


def _weaknesses(stats: DoerStats, rules: SkillRules) -> tuple[Finding, ...]:
    found = []
    if stats.contradiction_rate > rules.weakness_contradiction_rate:
        found.append(
            Finding(
                rule="contradiction_rate",
                subject="claims",
                measured=stats.contradiction_rate,
                threshold=rules.weakness_contradiction_rate,
                comparison=">",
                text=(
                    f"contradicts its sources: contradiction rate "
                    f"{stats.contradiction_rate:.1%} > {rules.weakness_contradiction_rate:.1%}"
                ),
            )
        )
    return tuple(found)


def _failure_modes(stats: DoerStats, rules: SkillRules) -> tuple[Finding, ...]:
    if stats.runs == 0:
        return ()
    shares = [(failed / stats.runs, gate) for gate, failed in stats.gate_failures.items()]
    found = [
        Finding(
            rule="gate_fail_share",
            subject=gate,
            measured=share,
            threshold=rules.failure_mode_gate_fail_share,
            comparison=">",
            text=(
                f"gate {gate!r} fails in {share:.1%} of runs "
                f"(> {rules.failure_mode_gate_fail_share:.1%})"
            ),
        )
        for share, gate in shares
        if share > rules.failure_mode_gate_fail_share
    ]
    found.sort(key=lambda f: (-f.measured, f.subject))
    return tuple(found)


def _resource_issues(stats: DoerStats, rules: SkillRules) -> tuple[Finding, ...]:
    found = []
    p95, objective = stats.latency_p95_ms, stats.latency_objective_ms
    if p95 is not None and objective is not None:
        limit = objective * rules.latency_over_objective
        if p95 > limit:
            found.append(
                Finding(
                    rule="latency_p95",
                    subject="latency",
                    measured=p95,
                    threshold=limit,
                    comparison=">",
                    text=(
                        f"slow: latency p95 {p95:,.0f} ms > {limit:,.0f} ms "
                        f"(objective {objective:,.0f} ms × {rules.latency_over_objective:g})"
                    ),
                )
            )
    if stats.timeouts > rules.max_timeouts:
        found.append(
            Finding(
                rule="timeouts",
                subject="timeouts",
                measured=float(stats.timeouts),
                threshold=float(rules.max_timeouts),
                comparison=">",
                text=f"times out: {stats.timeouts} timeout(s) > {rules.max_timeouts} allowed",
            )
        )
    return tuple(found)


def _delta(today: Moments, baseline: Moments) -> float | None:
    if today.count == 0 or baseline.count == 0:
        return None
    return today.mean - baseline.mean


# --------------------------------------------------------------------------- statistics


@dataclass
class DailySkillStats:
    """One doer's live runs on one UTC day as sufficient statistics: a table value.

    Rates are kept as sums of the runs' own rates (a card shows their mean),
    latency as a sketch of the runs' p95 latencies, CRL as a DailyCRL overall
    and as Moments per model. Days merge exactly, so any window is a merge.
    """

    runs: int = 0
    gate_pass_rate_sum: float = 0.0
    contradiction_rate_sum: float = 0.0
    gate_failures: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    security_criticals: int = 0
    crl: DailyCRL = field(default_factory=DailyCRL)
    latency: QuantileSketch = field(default_factory=QuantileSketch)
    by_model: dict[str, Moments] = field(default_factory=dict)

    def add(self, result: CRLComputed) -> None:
        """Fold one scored run in (the caller keeps replays and shadow runs out)."""
        self.runs += 1
        self.gate_pass_rate_sum += result.terms.gate_pass_rate
        self.contradiction_rate_sum += result.terms.contradiction_rate
        for gate in result.gate_failures:
            self.gate_failures[gate] = self.gate_failures.get(gate, 0) + 1
        self.timeouts += result.timeouts
        self.security_criticals += result.security_criticals
        self.crl.add(result.loss)
        if result.latency_p95_ms is not None:
            self.latency.add(result.latency_p95_ms)
        if result.model is not None:
            self.by_model.setdefault(result.model, Moments()).add(result.loss)

    def merge(self, other: DailySkillStats) -> None:
        """Fold another day's (or partition's) statistics in."""
        self.runs += other.runs
        self.gate_pass_rate_sum += other.gate_pass_rate_sum
        self.contradiction_rate_sum += other.contradiction_rate_sum
        for gate, failed in other.gate_failures.items():
            self.gate_failures[gate] = self.gate_failures.get(gate, 0) + failed
        self.timeouts += other.timeouts
        self.security_criticals += other.security_criticals
        self.crl.merge(other.crl)
        self.latency.merge(other.latency)
        for model, moments in other.by_model.items():
            self.by_model.setdefault(model, Moments()).merge(moments)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe mapping for a table value."""
        return {
            "runs": self.runs,
            "gate_pass_rate_sum": self.gate_pass_rate_sum,
            "contradiction_rate_sum": self.contradiction_rate_sum,
            "gate_failures": dict(self.gate_failures),
            "timeouts": self.timeouts,
            "security_criticals": self.security_criticals,
            "crl": self.crl.to_dict(),
            "latency": self.latency.to_dict(),
            "by_model": {m: v.to_dict() for m, v in self.by_model.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DailySkillStats:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            runs=int(data["runs"]),
            gate_pass_rate_sum=float(data["gate_pass_rate_sum"]),
            contradiction_rate_sum=float(data["contradiction_rate_sum"]),
            gate_failures={g: int(n) for g, n in data["gate_failures"].items()},
            timeouts=int(data["timeouts"]),
            security_criticals=int(data["security_criticals"]),
            crl=DailyCRL.from_dict(data["crl"]),
            latency=QuantileSketch.from_dict(data["latency"]),
            by_model={m: Moments.from_dict(v) for m, v in data["by_model"].items()},
        )


def merged(days: Mapping[date, DailySkillStats], included: Iterable[date]) -> DailySkillStats:
    """The statistics of the given days together (days without data count as empty)."""
    total = DailySkillStats()
    for day in included:
        if day in days:
            total.merge(days[day])
    return total


def doer_stats(
    doer: str,
    days: Mapping[date, DailySkillStats],
    today: date,
    latency_objective_ms: float | None = None,
) -> DoerStats:
    """The card's input: today's runs against the 7 and 30 days before today (the baselines).

    Rates are the mean of the runs' own rates; latency p95 is the 95th
    percentile of the runs' p95 latencies; best models use the 30 days ending
    today, since a day rarely gives a model the minimum sample.
    """
    day = days.get(today, DailySkillStats())
    yesterday = today - timedelta(days=1)
    month = merged(days, days_back(today, 30))
    runs = day.runs
    return DoerStats(
        doer=doer,
        runs=runs,
        gate_pass_rate=_clamped(day.gate_pass_rate_sum / runs) if runs else 0.0,
        gate_failures=dict(day.gate_failures),
        crl_today=day.crl.moments,
        crl_7d=window(_crl(days), days_back(yesterday, 7)).moments,
        crl_30d=window(_crl(days), days_back(yesterday, 30)).moments,
        contradiction_rate=_clamped(day.contradiction_rate_sum / runs) if runs else 0.0,
        latency_p95_ms=day.latency.quantile(0.95) if day.latency.count else None,
        latency_objective_ms=latency_objective_ms,
        timeouts=day.timeouts,
        crl_by_model=month.by_model,
    )


def _crl(days: Mapping[date, DailySkillStats]) -> dict[date, DailyCRL]:
    return {day: stats.crl for day, stats in days.items()}


def _clamped(rate: float) -> float:
    # A mean of rates in [0, 1] can leave the interval by a rounding error only.
    return min(1.0, max(0.0, rate))


# Fields of a SkillCard that say when it was made, not what it says.
_NOT_CONTENT = {"event_id", "occurred_at", "content_hash", "schema_version"}


def skill_card_event(
    content: SkillCardContent,
    days: Mapping[date, DailySkillStats],
    *,
    as_of: date,
    now: datetime,
    policy: tuple[str, int] | None = None,
    experiments: Iterable[Mapping[str, Any]] = (),
    open_requests: Iterable[Mapping[str, Any]] = (),
    tenant: str = DEFAULT_TENANT,
) -> SkillCard:
    """The card of ``tenant``'s runs as the event of learning.skill-cards, with its content's hash.

    ``runs_7d``, ``crl_mean_7d`` and the other window fields cover the 7 or 30
    days ending with ``as_of``, inclusive (as learning.trends); ``delta_7d`` and
    ``delta_30d`` compare ``as_of`` with the days before it. Two cards with the
    same content have the same ``content_hash`` whenever they were made.
    """
    week, month = days_back(as_of, 7), days_back(as_of, 30)
    last_7, last_30 = merged(days, week), merged(days, month)
    findings = {
        "strengths": [f.to_dict() for f in content.strengths],
        "weaknesses": [f.to_dict() for f in content.weaknesses],
        "failure_modes": [f.to_dict() for f in content.failure_modes],
        "resource_issues": [f.to_dict() for f in content.resource_issues],
    }
    body: dict[str, Any] = {
        "tenant_id": tenant,
        "doer": content.doer,
        "as_of": as_of.isoformat(),
        "policy_id": policy[0] if policy else None,
        "policy_version": policy[1] if policy else None,
        "runs_7d": last_7.runs,
        "runs_30d": last_30.runs,
        "crl_mean_7d": last_7.crl.mean,
        "crl_mean_30d": last_30.crl.mean,
        "crl_p95_7d": last_7.crl.p95,
        "crl_trend_7d": content.delta_7d,
        "gate_failures_30d": dict(sorted(last_30.gate_failures.items())),
        "security_criticals_30d": last_30.security_criticals,
        "strengths": [f.text for f in content.strengths],
        "weaknesses": [f.text for f in content.weaknesses],
        "details": {"open_requests": [dict(r) for r in open_requests]},
        "runs": content.runs,
        "gate_pass_rate": content.gate_pass_rate if content.runs else None,
        "mean_crl": content.mean_crl,
        "delta_7d": content.delta_7d,
        "delta_30d": content.delta_30d,
        "findings": findings,
        "best_models": [m.to_dict() for m in content.best_models],
        "experiments": [dict(e) for e in experiments],
        "notes": list(content.notes),
    }
    card = SkillCard.model_validate({**body, "event_id": uuid4(), "occurred_at": now})
    digest = sha256(canonical_json(card.model_dump(mode="json", exclude=_NOT_CONTENT)))
    return card.model_copy(update={"content_hash": digest.hexdigest()})


def stats_key(doer: str, tenant: str) -> str:
    """The key of one tenant's statistics and card of a doer: ``doer/tenant``.

    Doer first, as every Faust table key of learnops (agents/tables.py places a
    change by the doer before the first ``/``); names hold no ``/``.
    """
    return f"{doer}/{tenant}"


def doer_and_tenant(key: str) -> tuple[str, str]:
    """The doer and tenant of a statistics key; a key without a tenant predates tenants."""
    doer, _, tenant = key.partition("/")
    return doer, (tenant or DEFAULT_TENANT)


# --------------------------------------------------------------------------- refreshing


@dataclass(frozen=True)
class RefreshPacing:
    """How often cards are rebuilt: see :class:`RefreshSchedule`."""

    min_interval_s: float = 5.0
    max_age_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_interval_s <= self.max_age_s:
            raise ValueError(
                f"need 0 ≤ min_interval_s ({self.min_interval_s}) ≤ max_age_s ({self.max_age_s})"
            )


class RefreshSchedule:
    """Which doers' cards are due now: changed ones, rate-limited, and all of them now and then.

    A card is rebuilt when its doer's statistics changed and the last build is
    at least ``min_interval_s`` old (a burst of runs gives one rebuild, not one
    per run), and in any case once ``max_age_s`` has passed (so a day rolling
    over shows on the card without new runs). Times are plain seconds.
    """

    def __init__(self, pacing: RefreshPacing | None = None) -> None:
        self.pacing = pacing or RefreshPacing()
        self._changed: set[str] = set()
        self._built: dict[str, float] = {}

    def changed(self, doer: str) -> None:
        """Note that the doer's statistics changed."""
        self._changed.add(doer)

    def due(self, now: float, known: Iterable[str] = ()) -> list[str]:
        """The doers whose card should be rebuilt now, sorted; ``known`` adds doers seen before."""
        due = set()
        for doer in self._changed | set(known):
            built = self._built.get(doer)
            age = math.inf if built is None else now - built
            pacing = self.pacing
            if (doer in self._changed and age >= pacing.min_interval_s) or age >= pacing.max_age_s:
                due.add(doer)
        return sorted(due)

    def building(self, doer: str, now: float) -> None:
        """Note that the doer's card is being rebuilt at ``now`` from all changes so far.

        Call it before the rebuild reads the statistics: a change noted while the
        rebuild is under way (the stage folds runs meanwhile) makes the card due
        again, instead of being cleared with the ones the rebuild saw.
        """
        self._built[doer] = now
        self._changed.discard(doer)


# --------------------------------------------------------------------------- triggers


@dataclass(frozen=True)
class TriggerConfig:
    """When a weakness asks for an experiment (docs/skill-cards.md, "Learning triggers")."""

    # A gate failing in more than this share of a day's runs asks for an experiment;
    # None follows the card's failure-mode threshold.
    gate_fail_share: float | None = None
    min_runs: int = 20  # the day needs this many runs before a gate's share is judged
    regression_kinds: tuple[str, ...] = ("crl_regression",)  # alert kinds that trigger

    def __post_init__(self) -> None:
        if self.gate_fail_share is not None:
            _rate(self.gate_fail_share, "gate_fail_share")
        _count(self.min_runs, "min_runs")


@dataclass(frozen=True)
class ExperimentTrigger:
    """A reason to experiment on a doer: at most one open request per (doer, reason)."""

    doer: str
    reason: str  # the dedup key: "crl_regression" or "gate_failure:<gate>"
    hypothesis: str
    message: str  # what was measured, against which threshold
    evidence: dict[str, Any]


def regression_trigger(
    doer: str, kind: str, message: str, evidence: Mapping[str, Any]
) -> ExperimentTrigger:
    """The trigger of a CRL regression alert (one reason per doer, whatever the day)."""
    return ExperimentTrigger(
        doer=doer,
        reason=kind,
        hypothesis=(
            f"a new policy for {doer} brings its CRL back to the baseline it regressed from"
        ),
        message=message,
        evidence=dict(evidence),
    )


def gate_triggers(
    stats: DoerStats, rules: SkillRules, config: TriggerConfig
) -> tuple[ExperimentTrigger, ...]:
    """One trigger per gate whose failure share is above the threshold, with enough runs."""
    if stats.runs == 0 or stats.runs < config.min_runs:
        return ()
    threshold = (
        rules.failure_mode_gate_fail_share
        if config.gate_fail_share is None
        else config.gate_fail_share
    )
    found = []
    for gate, failed in sorted(stats.gate_failures.items()):
        share = failed / stats.runs
        if share > threshold:
            found.append(
                ExperimentTrigger(
                    doer=stats.doer,
                    reason=f"gate_failure:{gate}",
                    hypothesis=f"a new policy for {stats.doer} fails gate {gate!r} less often",
                    message=(
                        f"gate {gate!r} failed in {failed} of {stats.runs} runs "
                        f"({share:.1%} > {threshold:.1%})"
                    ),
                    evidence={
                        "gate": gate,
                        "failed_runs": failed,
                        "runs": stats.runs,
                        "share": share,
                        "threshold": threshold,
                    },
                )
            )
    return tuple(found)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SkillConfig:
    """The ``skills`` section of config/learning.yaml: rules, refresh pacing and triggers."""

    rules: SkillRules = field(default_factory=SkillRules)
    refresh: RefreshPacing = field(default_factory=RefreshPacing)
    triggers: TriggerConfig = field(default_factory=TriggerConfig)
    tick_s: float = 1.0  # how often the stage looks for due cards

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkillConfig:
        """Build from the YAML mapping; unknown keys are an error naming them."""
        unknown = set(data) - {"rules", "refresh", "triggers", "tick_s"}
        if unknown:
            raise ValueError(f"skills: unknown keys {sorted(unknown)}")
        triggers = dict(data.get("triggers") or {})
        if "regression_kinds" in triggers:
            triggers["regression_kinds"] = tuple(triggers["regression_kinds"])
        tick_s = float(data.get("tick_s", 1.0))
        if not (math.isfinite(tick_s) and tick_s > 0):
            raise ValueError(f"skills: tick_s {tick_s} must be a positive number")
        return cls(
            rules=SkillRules(**(data.get("rules") or {})),
            refresh=RefreshPacing(**(data.get("refresh") or {})),
            triggers=TriggerConfig(**triggers),
            tick_s=tick_s,
        )
