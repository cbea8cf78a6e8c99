"""Read-only queries of the operator console (issue 18), over the dashboard views."""

from __future__ import annotations

from typing import Any


async def crl_trend_overall(pool: Any, days: int = 30) -> list[dict[str, Any]]:
    """CRL over all doers per day for the last DAYS days, with the 7-day baseline."""
    rows = await pool.fetch(
        "SELECT day, runs, mean_crl, baseline_crl, delta_vs_baseline FROM v_crl_trend_overall"
        " WHERE day > (SELECT max(day) FROM v_crl_trend_overall) - $1::int ORDER BY day",
        days,
    )
    return [dict(row) for row in rows]


async def experiments_per_day(pool: Any, days: int = 30) -> list[dict[str, Any]]:
    """Experiments started per day and type for the last DAYS days."""
    rows = await pool.fetch(
        "SELECT day, experiment_type, experiments, concluded, promoted FROM v_experiments_per_day"
        " WHERE day > (SELECT max(day) FROM v_experiments_per_day) - $1::int"
        " ORDER BY day, experiment_type",
        days,
    )
    return [dict(row) for row in rows]


async def doers(pool: Any) -> list[dict[str, Any]]:
    """Every doer with its latest day, 7-day mean CRL and change against its baseline."""
    rows = await pool.fetch(
        "SELECT DISTINCT ON (doer) doer, day, mean_crl_7d, delta_vs_baseline"
        " FROM v_crl_trend_by_doer ORDER BY doer, day DESC"
    )
    return [dict(row) for row in rows]


async def doer_trend(pool: Any, doer: str, days: int = 30) -> list[dict[str, Any]]:
    """DOER's CRL per day for its last DAYS days, with the 7-day baseline."""
    rows = await pool.fetch(
        "SELECT day, runs, mean_crl, baseline_crl, delta_vs_baseline FROM v_crl_trend_by_doer"
        " WHERE doer = $1"
        " AND day > (SELECT max(day) FROM learning_progress WHERE doer = $1) - $2::int"
        " ORDER BY day",
        doer,
        days,
    )
    return [dict(row) for row in rows]


async def canaries(
    pool: Any, limit: int = 100, *, in_flight: bool | None = None
) -> list[dict[str, Any]]:
    """Shadow and canary deployments, in flight first, then the latest started; at most LIMIT.

    IN_FLIGHT True keeps only the deployments in flight, False only the ended ones.
    """
    rows = await pool.fetch(
        "SELECT * FROM v_canary_deployments WHERE $2::boolean IS NULL OR in_flight = $2"
        " ORDER BY in_flight DESC, started_at DESC, deployment_id LIMIT $1",
        limit,
        in_flight,
    )
    return [dict(row) for row in rows]


async def canary(pool: Any, deployment_id: str) -> dict[str, Any] | None:
    """The deployment DEPLOYMENT_ID as canaries() shows it; None if there is none."""
    row = await pool.fetchrow(
        "SELECT * FROM v_canary_deployments WHERE deployment_id = $1", deployment_id
    )
    return dict(row) if row is not None else None


async def canary_decisions(pool: Any, deployment_id: str) -> list[dict[str, Any]]:
    """Every decision of DEPLOYMENT_ID, oldest first, with its results and interval."""
    rows = await pool.fetch(
        "SELECT id, action, reason, step, decided_at, results, control_count, candidate_count,"
        " control_mean, candidate_mean, delta, ci_low, ci_high, p_value, confidence"
        " FROM v_canary_intervals WHERE deployment_id = $1 ORDER BY decided_at, id",
        deployment_id,
    )
    return [dict(row) for row in rows]


async def dead_letters_by_stage(pool: Any) -> list[dict[str, Any]]:
    """Dead letters per stage with how many reasons and the latest time, most letters first."""
    rows = await pool.fetch(
        "SELECT stage, letters, reasons, latest_at FROM v_dead_letters_by_stage"
        " ORDER BY letters DESC, stage"
    )
    return [dict(row) for row in rows]


async def dead_letters_by_reason(pool: Any, limit: int = 200) -> list[dict[str, Any]]:
    """Dead letters per stage, error type and reason, the latest first; at most LIMIT groups."""
    rows = await pool.fetch(
        "SELECT stage, error_type, reason, letters, doers, first_at, latest_at"
        " FROM v_dead_letters_by_reason"
        " ORDER BY latest_at DESC, stage, error_type, reason LIMIT $1",
        limit,
    )
    return [dict(row) for row in rows]


_ALERT_COLUMNS = "id, doer, kind, severity, message, value, threshold, deployment_id, occurred_at"
_DECISION_COLUMNS = (
    "id, deployment_id, doer, action, reason, step, decided_at, results, delta, ci_low, ci_high"
)


async def alerts_after(pool: Any, after: int | None, limit: int = 50) -> list[dict[str, Any]]:
    """Alerts with an id above AFTER, oldest first (at most LIMIT); the latest LIMIT if None."""
    if after is None:
        rows = await pool.fetch(
            "SELECT * FROM (SELECT " + _ALERT_COLUMNS + " FROM alerts ORDER BY id DESC LIMIT $1)"
            " latest ORDER BY id",
            limit,
        )
    else:
        rows = await pool.fetch(
            "SELECT " + _ALERT_COLUMNS + " FROM alerts WHERE id > $2 ORDER BY id LIMIT $1",
            limit,
            after,
        )
    return [dict(row) for row in rows]


async def decisions_after(pool: Any, after: int | None, limit: int = 50) -> list[dict[str, Any]]:
    """Canary decisions with an id above AFTER, oldest first; the latest LIMIT if None."""
    if after is None:
        rows = await pool.fetch(
            "SELECT * FROM (SELECT " + _DECISION_COLUMNS + " FROM v_canary_intervals"
            " ORDER BY id DESC LIMIT $1) latest ORDER BY id",
            limit,
        )
    else:
        rows = await pool.fetch(
            "SELECT " + _DECISION_COLUMNS + " FROM v_canary_intervals WHERE id > $2"
            " ORDER BY id LIMIT $1",
            limit,
            after,
        )
    return [dict(row) for row in rows]
