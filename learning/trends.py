"""Daily CRL aggregates, their 7- and 30-day windows, and the daily regression rule.

A day's aggregate is sufficient statistics (``Moments``) plus a quantile
sketch, never the list of losses, so it fits in a table row and days merge
exactly: the mean of a window is the count-weighted mean of its days.

Days are UTC calendar days.  "Today" is the day being judged; the *baseline*
is the ``baseline_days`` days before it, excluding it; the 7- and 30-day
windows end with today, inclusive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from learning.canary import contrast_interval
from learning.moments import Moments
from learning.sketch import QuantileSketch


@dataclass
class DailyCRL:
    """The CRL losses of one key on one day: count, mean, variance and a p95 sketch."""

    moments: Moments = field(default_factory=Moments)
    sketch: QuantileSketch = field(default_factory=QuantileSketch)

    def add(self, loss: float) -> None:
        """Fold one run's loss in."""
        self.moments.add(loss)
        self.sketch.add(loss)

    def merge(self, other: DailyCRL) -> None:
        """Fold another aggregate in (another partition's, or another day's for a window)."""
        self.moments.merge(other.moments)
        self.sketch.merge(other.sketch)

    @property
    def count(self) -> int:
        """Number of runs."""
        return self.moments.count

    @property
    def mean(self) -> float | None:
        """Mean loss, or None with no runs."""
        return self.moments.mean if self.moments.count else None

    @property
    def p95(self) -> float | None:
        """95th percentile loss within the sketch's relative accuracy, or None with no runs."""
        return self.sketch.quantile(0.95) if self.sketch.count else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe mapping for a table value."""
        return {"moments": self.moments.to_dict(), "sketch": self.sketch.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DailyCRL:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            moments=Moments.from_dict(data["moments"]),
            sketch=QuantileSketch.from_dict(data["sketch"]),
        )


def day_of(timestamp: datetime) -> date:
    """Return the UTC calendar day of a timezone-aware timestamp; naive ones are rejected."""
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise ValueError(f"timestamp {timestamp.isoformat()} has no timezone")
    return timestamp.astimezone(UTC).date()


def days_back(today: date, n: int) -> list[date]:
    """Return the ``n`` days ending with ``today``, oldest first."""
    return [today - timedelta(days=offset) for offset in range(n - 1, -1, -1)]


def window(days: Mapping[date, DailyCRL], included: Iterable[date]) -> DailyCRL:
    """Return the merged aggregate of the given days (days without data count as empty)."""
    total = DailyCRL()
    for day in included:
        if day in days:
            total.merge(days[day])
    return total


@dataclass(frozen=True)
class TrendConfig:
    """When a day's mean CRL counts as a regression against its baseline."""

    baseline_days: int = 7
    # Relative margin: alert when today's mean exceeds the baseline by more than 10 %.
    max_relative_increase: float = 0.10
    # Absolute floor of the margin, in CRL units, so a baseline near 0 (nearly
    # perfect runs) does not alert on any tiny loss.
    min_absolute_increase: float = 0.05
    # A day needs this many runs, and the baseline this many, before either is
    # judged: one bad run on a quiet day is not a regression.
    min_today_count: int = 20
    min_baseline_count: int = 50
    # The rule is re-checked after every run, so it uses the canary's always-valid
    # confidence sequence: over a whole day of looks, a doer whose CRL did not
    # rise past the margin raises a false alert with probability at most alpha.
    alpha: float = 0.01
    # Mixing scale of that sequence, in units of the pooled standard deviation.
    # The bound is tightest near 16 / mixing_sd² runs (see learning.canary):
    # 0.5 suits a day of tens of runs, where the canary's 0.1 suits thousands.
    mixing_sd: float = 0.5

    def __post_init__(self) -> None:
        if self.baseline_days < 1:
            raise ValueError(f"baseline_days {self.baseline_days} is below 1")
        if self.max_relative_increase < 0 or self.min_absolute_increase < 0:
            raise ValueError("regression margins must be non-negative")
        if self.min_today_count < 1 or self.min_baseline_count < 1:
            raise ValueError("minimum counts must be at least 1")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha {self.alpha} is not in (0, 1)")


@dataclass(frozen=True)
class Trend:
    """Today's CRL against its recent past."""

    today: date
    today_count: int
    today_mean: float | None
    mean_7d: float | None  # today and the 6 days before, count-weighted
    count_7d: int
    mean_30d: float | None  # today and the 29 days before, count-weighted
    count_30d: int
    p95_7d: float | None
    baseline_mean: float | None  # the baseline_days before today, count-weighted
    baseline_count: int
    delta: float | None  # today_mean − baseline_mean
    delta_pct: float | None  # delta / baseline_mean; None when the baseline mean is 0


def trend(days: Mapping[date, DailyCRL], today: date, baseline_days: int = 7) -> Trend:
    """Return today's mean, the 7- and 30-day means, and today's change against the baseline."""
    day = days.get(today, DailyCRL())
    last_7, last_30 = window(days, days_back(today, 7)), window(days, days_back(today, 30))
    baseline = window(days, days_back(today - timedelta(days=1), baseline_days))
    delta = delta_pct = None
    if day.mean is not None and baseline.mean is not None:
        delta = day.mean - baseline.mean
        delta_pct = delta / baseline.mean if baseline.mean > 0 else None
    return Trend(
        today=today,
        today_count=day.count,
        today_mean=day.mean,
        mean_7d=last_7.mean,
        count_7d=last_7.count,
        mean_30d=last_30.mean,
        count_30d=last_30.count,
        p95_7d=last_7.p95,
        baseline_mean=baseline.mean,
        baseline_count=baseline.count,
        delta=delta,
        delta_pct=delta_pct,
    )


@dataclass(frozen=True)
class RegressionCheck:
    """Whether today regressed, with the measured value, baseline and threshold for the alert."""

    regressed: bool
    reason: str
    measured: float | None  # today's mean CRL
    baseline: float | None  # the baseline's mean CRL
    threshold: float | None  # the mean above which today is a regression
    today_count: int
    baseline_count: int
    # Always-valid lower bound of today_mean − threshold; a regression needs it > 0.
    lower_bound: float | None = None


def check_regression(
    days: Mapping[date, DailyCRL], today: date, config: TrendConfig | None = None
) -> RegressionCheck:
    """Return whether today's mean CRL rose above the baseline by more than the margin, confidently.

    threshold = baseline + max(max_relative_increase · baseline, min_absolute_increase).
    Today regressed when the always-valid lower bound (level 1 − alpha) of
    ``today_mean − threshold`` is above 0: the normal-mixture confidence sequence
    of learning.canary (Johari et al. 2022) on the contrast between today's runs
    and the baseline's, so re-checking after every run does not inflate false
    alerts. It also needs ``min_today_count`` runs today and
    ``min_baseline_count`` in the baseline.
    """
    cfg = config or TrendConfig()
    return regression_against(days.get(today, DailyCRL()).moments, baseline(days, today, cfg), cfg)


def baseline(days: Mapping[date, DailyCRL], today: date, config: TrendConfig) -> Moments:
    """The moments of the ``baseline_days`` days before ``today``, merged oldest first.

    Moments only: the rule needs counts, means and variances, and merging the
    days' quantile sketches as trend() does cost most of the CRL stage's
    per-batch check (docs/operations.md, "The whole worker under load").
    """
    base = Moments()
    for earlier in days_back(today - timedelta(days=1), config.baseline_days):
        if earlier in days:
            base.merge(days[earlier].moments)
    return base


def regression_against(day: Moments, base: Moments, cfg: TrendConfig) -> RegressionCheck:
    """:func:`check_regression` of a day's moments against its baseline's (:func:`baseline`)."""
    today_mean = day.mean if day.count else None
    baseline_mean = base.mean if base.count else None

    def result(
        regressed: bool, reason: str, threshold: float | None = None, low: float | None = None
    ) -> RegressionCheck:
        return RegressionCheck(
            regressed=regressed,
            reason=reason,
            measured=today_mean,
            baseline=baseline_mean,
            threshold=threshold,
            today_count=day.count,
            baseline_count=base.count,
            lower_bound=low,
        )

    if day.count < cfg.min_today_count:
        return result(False, f"too few runs today ({day.count} < {cfg.min_today_count})")
    if base.count < cfg.min_baseline_count:
        return result(
            False,
            f"too few runs in the {cfg.baseline_days}-day baseline "
            f"({base.count} < {cfg.min_baseline_count})",
        )
    assert today_mean is not None and baseline_mean is not None  # counts are positive
    relative = cfg.max_relative_increase * baseline_mean
    if relative >= cfg.min_absolute_increase:
        # today − (1 + r)·baseline > 0, with the baseline's own noise counted.
        ratio, offset = 1.0 + cfg.max_relative_increase, 0.0
    else:
        # today − baseline > the absolute floor.
        ratio, offset = 1.0, cfg.min_absolute_increase
    _, low, _, _ = contrast_interval(
        base.count,
        baseline_mean,
        base.variance,
        day.count,
        today_mean,
        day.variance,
        ratio=ratio,
        alpha=cfg.alpha,
        mixing_sd=cfg.mixing_sd,
    )
    lower_bound = float(low) - offset
    threshold = baseline_mean + max(relative, cfg.min_absolute_increase)
    summary = (
        f"today's mean CRL {today_mean:.4g} (n={day.count}) against the "
        f"{cfg.baseline_days}-day baseline {baseline_mean:.4g} (n={base.count}), "
        f"threshold {threshold:.4g}, always-valid lower bound of the excess {lower_bound:.4g}"
    )
    if lower_bound > 0:
        return result(True, f"regression: {summary}", threshold, lower_bound)
    return result(False, f"no regression: {summary}", threshold, lower_bound)
