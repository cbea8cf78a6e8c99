"""The operator console's queries against the real PostgreSQL (issue 18)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from storage.dashboard import crl_trend_overall, experiments_per_day


async def test_crl_trend_overall_weights_doers_by_runs_and_has_a_baseline(db: Any) -> None:
    await db.executemany(
        "INSERT INTO learning_progress (doer, day, runs, mean_crl, m2) VALUES ($1, $2, $3, $4, 0)"
        " ON CONFLICT DO NOTHING",
        [
            ("console-a", date(2001, 1, 1), 1, 1.0),
            ("console-b", date(2001, 1, 1), 3, 2.0),
            ("console-a", date(2001, 1, 2), 2, 4.0),
        ],
    )
    trend = await crl_trend_overall(db, days=2)
    by_day = {row["day"]: row for row in trend}
    assert by_day[date(2001, 1, 1)]["mean_crl"] == pytest.approx(1.75)
    assert by_day[date(2001, 1, 1)]["baseline_crl"] is None
    assert by_day[date(2001, 1, 2)]["baseline_crl"] == pytest.approx(1.75)
    assert by_day[date(2001, 1, 2)]["delta_vs_baseline"] == pytest.approx(2.25)


async def test_experiments_per_day_answers_on_any_data(db: Any) -> None:
    rows = await experiments_per_day(db)
    total = await db.fetchval("SELECT count(*) FROM experiments")
    assert sum(row["experiments"] for row in rows) <= total
