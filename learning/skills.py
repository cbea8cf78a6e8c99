"""Skill cards: what a doer is good at, where it fails, and which models serve it best.

A skill card is computed from statistics the stream already keeps (counts,
rates and :class:`~learning.moments.Moments` of CRL), never from raw runs, by
the rules in :class:`SkillRules`. Every finding carries the figure measured
and the threshold it was compared with, so a reader can see why it is there.
The rules and their defaults are documented in docs/skill-cards.md.

Best models are ranked by mean CRL (lower is better) among models with at
least ``best_models_min_runs`` runs, each with a normal-approximation
confidence interval ``mean ± z·s/√n`` (``s`` the sample standard deviation,
ddof = 1; ``z`` = 1.96 for 95 %). With 30 or more runs the central limit
theorem makes the normal approximation reasonable for a bounded loss; with
fewer runs the interval would be too narrow, which is one reason for the
minimum sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from learning.moments import Moments


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
    confidence: float = 0.95  # of the best-model intervals

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

    @property
    def z(self) -> float:
        """The two-sided normal quantile of ``confidence`` (1.96 for 95 %)."""
        return NormalDist().inv_cdf(0.5 + self.confidence / 2.0)


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
    """A model's place among the doer's best: mean CRL, its interval, and the sample size.

    ``distinct_from_next``: the interval ends below the next model's interval,
    so the order of these two is established; None for the last listed model.
    """

    rank: int
    model: str
    mean_crl: float
    ci_low: float
    ci_high: float
    n: int
    distinct_from_next: bool | None

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping for a JSON column."""
        return {
            "rank": self.rank,
            "model": self.model,
            "mean_crl": self.mean_crl,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "distinct_from_next": self.distinct_from_next,
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

    Ties in mean are broken by the narrower interval, then by name, so the
    order is deterministic.
    """
    z = rules.z
    eligible = []
    for model, m in crl_by_model.items():
        if m.count < rules.best_models_min_runs:
            continue
        half = z * m.std / math.sqrt(m.count)
        eligible.append((m.mean, half, model, m.count))
    unranked = len(crl_by_model) - len(eligible)
    eligible.sort()
    listed = eligible[: rules.best_models_limit]
    ranking = []
    for i, (mean, half, model, n) in enumerate(listed):
        following = listed[i + 1] if i + 1 < len(listed) else None
        distinct = None if following is None else mean + half < following[0] - following[1]
        ranking.append(ModelRanking(i + 1, model, mean, mean - half, mean + half, n, distinct))
    return tuple(ranking), unranked


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
