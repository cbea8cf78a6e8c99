"""The regression alert under continuous monitoring, by simulation (seeded).

check_regression runs after every run of the day, so a rule that ignores the
repeated looks would alert on stationary doers far more often than alpha.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np

from learning.trends import DailyCRL, TrendConfig, check_regression

TODAY = date(2026, 11, 20)
CONFIG = TrendConfig(alpha=0.01)


def _alerts(rng: np.random.Generator, days: int, shift: float) -> int:
    """How many of ``days`` simulated doer-days raise an alert at any look."""
    alerted = 0
    for _ in range(days):
        # Skewed, CRL-like losses: lognormal around 1 with a long right tail.
        history = {
            TODAY - timedelta(days=d): DailyCRL() for d in range(1, CONFIG.baseline_days + 1)
        }
        for daily in history.values():
            for x in rng.lognormal(0.0, 0.6, size=60):
                daily.add(float(x))
        today = DailyCRL()
        history[TODAY] = today
        for x in rng.lognormal(0.0, 0.6, size=80) * (1.0 + shift):
            today.add(float(x))
            if (
                today.count >= CONFIG.min_today_count
                and check_regression(history, TODAY, CONFIG).regressed
            ):
                alerted += 1
                break
    return alerted


def test_stationary_doers_alert_at_most_alpha_of_days_despite_a_look_after_every_run() -> None:
    rng = np.random.default_rng(20261125)
    days = 600
    rate = _alerts(rng, days, shift=0.0) / days
    assert rate <= CONFIG.alpha, f"false alert rate {rate:.3%} above alpha {CONFIG.alpha:.0%}"


def test_a_doubled_loss_is_caught_within_the_day() -> None:
    rng = np.random.default_rng(7)
    days = 100
    rate = _alerts(rng, days, shift=1.0) / days
    assert rate >= 0.95, f"only {rate:.0%} of regressed days alerted"


def test_a_rise_just_inside_the_margin_rarely_alerts() -> None:
    rng = np.random.default_rng(11)
    days = 300
    # 5 % worse against a 10 % margin: not a regression by the configured rule.
    rate = _alerts(rng, days, shift=0.05) / days
    assert rate <= CONFIG.alpha
