"""Daily CRL aggregates, windows, and the regression rule with its minimum counts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from learning.trends import (
    DailyCRL,
    TrendConfig,
    check_regression,
    day_of,
    days_back,
    trend,
)

TODAY = date(2026, 3, 10)


def day_with(losses: list[float]) -> DailyCRL:
    daily = DailyCRL()
    for loss in losses:
        daily.add(loss)
    return daily


def history(baseline: list[float], today: list[float], days: int = 7) -> dict[date, DailyCRL]:
    """The same losses on each of ``days`` days before TODAY, and ``today``'s losses."""
    data = {TODAY - timedelta(days=i): day_with(baseline) for i in range(1, days + 1)}
    data[TODAY] = day_with(today)
    return data


class TestDayOf:
    def test_buckets_at_utc_midnight(self) -> None:
        assert day_of(datetime(2026, 3, 9, 23, 59, 59, 999999, tzinfo=UTC)) == date(2026, 3, 9)
        assert day_of(datetime(2026, 3, 10, 0, 0, tzinfo=UTC)) == date(2026, 3, 10)

    def test_converts_other_zones_to_utc_first(self) -> None:
        # 01:30 in UTC+2 is 23:30 the previous day in UTC.
        plus_two = timezone(timedelta(hours=2))
        assert day_of(datetime(2026, 3, 10, 1, 30, tzinfo=plus_two)) == date(2026, 3, 9)
        minus_five = timezone(timedelta(hours=-5))
        assert day_of(datetime(2026, 3, 9, 20, 0, tzinfo=minus_five)) == date(2026, 3, 10)

    def test_rejects_naive_timestamps(self) -> None:
        with pytest.raises(ValueError, match="no timezone"):
            day_of(datetime(2026, 3, 10, 12, 0))


def test_days_back_ends_with_today_oldest_first() -> None:
    assert days_back(TODAY, 3) == [date(2026, 3, 8), date(2026, 3, 9), TODAY]


class TestDailyCRL:
    def test_round_trips_through_json(self) -> None:
        daily = day_with([0.0, 1.0, 2.5, 7.0])
        restored = DailyCRL.from_dict(orjson.loads(orjson.dumps(daily.to_dict())))
        assert restored.moments == daily.moments
        assert restored.sketch == daily.sketch

    def test_empty_day_has_no_mean_or_p95(self) -> None:
        assert (DailyCRL().count, DailyCRL().mean, DailyCRL().p95) == (0, None, None)

    def test_p95_is_within_the_sketch_accuracy(self) -> None:
        losses = list(np.random.default_rng(7).gamma(2.0, 1.5, size=2_000))
        exact = float(np.quantile(losses, 0.95, method="lower"))
        p95 = day_with(losses).p95
        assert p95 is not None and abs(p95 - exact) <= 0.0101 * exact


@given(
    st.lists(st.lists(st.floats(min_value=0, max_value=100), max_size=20), min_size=1, max_size=30)
)
def test_window_means_are_count_weighted(per_day: list[list[float]]) -> None:
    days = {TODAY - timedelta(days=i): day_with(losses) for i, losses in enumerate(per_day)}
    t = trend(days, TODAY)
    last_7 = [x for losses in per_day[:7] for x in losses]
    last_30 = [x for losses in per_day[:30] for x in losses]
    assert t.count_7d == len(last_7)
    assert t.count_30d == len(last_30)
    if last_7:
        assert t.mean_7d == pytest.approx(float(np.mean(last_7)), abs=1e-9)
    else:
        assert t.mean_7d is None
    if last_30:
        assert t.mean_30d == pytest.approx(float(np.mean(last_30)), abs=1e-9)


def test_a_busy_day_weighs_more_than_a_quiet_one() -> None:
    days = {TODAY: day_with([1.0] * 90), TODAY - timedelta(days=1): day_with([11.0] * 10)}
    # Mean of means would be 6; the count-weighted mean is (90·1 + 10·11) / 100 = 2.
    assert trend(days, TODAY).mean_7d == pytest.approx(2.0)


def test_baseline_is_the_seven_days_before_today_excluding_today() -> None:
    days = history(baseline=[1.0] * 10, today=[9.0] * 10)
    days[TODAY - timedelta(days=8)] = day_with([100.0] * 10)  # outside the baseline
    t = trend(days, TODAY)
    assert (t.baseline_mean, t.baseline_count) == (1.0, 70)
    assert t.today_mean == 9.0
    assert t.delta == pytest.approx(8.0)
    assert t.delta_pct == pytest.approx(8.0)


def test_delta_pct_is_none_against_a_zero_baseline() -> None:
    t = trend(history(baseline=[0.0] * 10, today=[1.0] * 10), TODAY)
    assert (t.delta, t.delta_pct) == (1.0, None)


class TestRegression:
    config = TrendConfig(
        max_relative_increase=0.10,
        min_absolute_increase=0.05,
        min_today_count=20,
        min_baseline_count=50,
    )

    def test_a_rise_past_the_margin_is_a_regression_with_its_figures(self) -> None:
        check = check_regression(history([2.0] * 10, [2.5] * 20), TODAY, self.config)
        assert check.regressed
        assert (check.measured, check.baseline) == (2.5, 2.0)
        assert check.threshold == pytest.approx(2.2)
        assert (check.today_count, check.baseline_count) == (20, 70)
        assert check.reason.startswith("regression: today's mean CRL 2.5 (n=20)")

    def test_a_rise_within_the_margin_is_not(self) -> None:
        check = check_regression(history([2.0] * 10, [2.15] * 20), TODAY, self.config)
        assert not check.regressed
        assert check.threshold == pytest.approx(2.2)

    def test_an_improvement_is_not(self) -> None:
        assert not check_regression(history([2.0] * 10, [1.0] * 20), TODAY, self.config).regressed

    def test_one_bad_run_on_a_quiet_day_does_not_alert(self) -> None:
        check = check_regression(history([1.0] * 10, [50.0]), TODAY, self.config)
        assert not check.regressed
        assert check.reason == "too few runs today (1 < 20)"
        assert check.measured == 50.0 and check.threshold is None

    def test_a_thin_baseline_does_not_alert(self) -> None:
        check = check_regression(history([1.0] * 2, [5.0] * 30), TODAY, self.config)
        assert not check.regressed
        assert check.reason == "too few runs in the 7-day baseline (14 < 50)"

    def test_counts_exactly_at_the_minimums_are_judged(self) -> None:
        days = {TODAY - timedelta(days=1): day_with([1.0] * 50), TODAY: day_with([5.0] * 20)}
        assert check_regression(days, TODAY, self.config).regressed

    def test_a_near_zero_baseline_needs_the_absolute_increase(self) -> None:
        small = check_regression(history([0.0] * 10, [0.04] * 20), TODAY, self.config)
        assert not small.regressed and small.threshold == pytest.approx(0.05)
        large = check_regression(history([0.0] * 10, [0.06] * 20), TODAY, self.config)
        assert large.regressed

    def test_no_data_at_all_is_not_a_regression(self) -> None:
        check = check_regression({}, TODAY)
        assert not check.regressed and check.measured is None and check.baseline is None

    @pytest.mark.parametrize(
        "bad",
        [
            {"baseline_days": 0},
            {"max_relative_increase": -0.1},
            {"min_today_count": 0},
        ],
    )
    def test_invalid_configuration_is_rejected(self, bad: dict[str, float]) -> None:
        with pytest.raises(ValueError):
            TrendConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(40))
def test_the_regression_rule_needs_the_days_moments_only_and_agrees_with_the_trend(
    seed: int,
) -> None:
    """The CRL stage reads moments alone for its check: the verdict is the one full days give."""
    rng = np.random.default_rng(seed)
    days: dict[date, DailyCRL] = {}
    for back in range(int(rng.integers(0, 9))):
        if rng.random() < 0.8:
            n = int(rng.integers(1, 60))
            days[TODAY - timedelta(days=back)] = day_with(
                list(rng.lognormal(0.0, 1.0, n) * rng.uniform(0.5, 1.5))
            )
    config = TrendConfig(min_today_count=int(rng.integers(1, 30)), min_baseline_count=20)
    full = check_regression(days, TODAY, config)
    moments_only = {d: DailyCRL(moments=v.moments) for d, v in days.items()}
    assert check_regression(moments_only, TODAY, config) == full
    t = trend(days, TODAY, config.baseline_days)
    assert (full.measured, full.baseline) == (t.today_mean, t.baseline_mean)
    assert (full.today_count, full.baseline_count) == (t.today_count, t.baseline_count)
