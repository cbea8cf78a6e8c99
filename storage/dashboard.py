"""Read-only queries of the operator console (issue 18), over the dashboard views."""

from __future__ import annotations

from typing import Any


async def _fetch(pool: Any, query: str, *args: Any) -> list[dict[str, Any]]:
    """The rows QUERY gives with ARGS, as dicts."""
    return [dict(row) for row in await pool.fetch(query, *args)]


async def crl_trend_overall(
    pool: Any, days: int = 30, tenant: str | None = None
) -> list[dict[str, Any]]:
    """CRL over all doers per day for the last DAYS days, with the 7-day baseline (of TENANT)."""
    if tenant is not None:
        return await tenant_trend(pool, tenant, days=days)
    return await _fetch(
        pool,
        "SELECT day, runs, mean_crl, baseline_crl, delta_vs_baseline FROM v_crl_trend_overall"
        " WHERE day > (SELECT max(day) FROM v_crl_trend_overall) - $1::int ORDER BY day",
        days,
    )


async def experiments_per_day(pool: Any, days: int = 30) -> list[dict[str, Any]]:
    """Experiments started per day and type for the last DAYS days."""
    return await _fetch(
        pool,
        "SELECT day, experiment_type, experiments, concluded, promoted FROM v_experiments_per_day"
        " WHERE day > (SELECT max(day) FROM v_experiments_per_day) - $1::int"
        " ORDER BY day, experiment_type",
        days,
    )


async def doers(pool: Any, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every doer with its latest day, 7-day mean CRL and change against its baseline.

    With ``tenant``: the doers with runs of that tenant, and the figures of those
    runs only (crl_daily, migration 025), as v_doers_latest computes them.
    """
    if tenant is not None:
        return await _fetch(pool, _TENANT_DOERS, tenant)
    return await _fetch(
        pool,
        "SELECT doer, day, mean_crl_7d, delta_vs_baseline FROM v_doers_latest ORDER BY doer",
    )


_TENANT_DOERS = """
WITH days AS (
    SELECT doer, day, sum(runs) AS runs, sum(mean_crl * runs) / sum(runs) AS mean_crl
    FROM crl_daily WHERE tenant_id = $1 GROUP BY doer, day
), latest AS (
    SELECT doer, max(day) AS day FROM days GROUP BY doer
)
SELECT l.doer, l.day,
       sum(d.mean_crl * d.runs) FILTER (WHERE d.day > l.day - 7)
           / sum(d.runs) FILTER (WHERE d.day > l.day - 7) AS mean_crl_7d,
       max(d.mean_crl) FILTER (WHERE d.day = l.day)
           - sum(d.mean_crl * d.runs) FILTER (WHERE d.day < l.day)
             / nullif(sum(d.runs) FILTER (WHERE d.day < l.day), 0) AS delta_vs_baseline
FROM latest l JOIN days d ON d.doer = l.doer AND d.day BETWEEN l.day - 7 AND l.day
GROUP BY l.doer, l.day
ORDER BY l.doer
"""


async def doer_trend(
    pool: Any, doer: str, days: int = 30, tenant: str | None = None
) -> list[dict[str, Any]]:
    """DOER's CRL per day for its last DAYS days, with the 7-day baseline (of TENANT's runs)."""
    if tenant is not None:
        return await tenant_trend(pool, tenant, doer=doer, days=days)
    return await _fetch(
        pool,
        "SELECT day, runs, mean_crl, baseline_crl, delta_vs_baseline FROM v_crl_trend_by_doer"
        " WHERE doer = $1"
        " AND day > (SELECT max(day) FROM learning_progress WHERE doer = $1) - $2::int"
        " ORDER BY day",
        doer,
        days,
    )


async def canaries(
    pool: Any, limit: int = 100, *, in_flight: bool | None = None
) -> list[dict[str, Any]]:
    """Shadow and canary deployments, in flight first, then the latest started; at most LIMIT.

    IN_FLIGHT True keeps only the deployments in flight, False only the ended ones.
    """
    return await _fetch(
        pool,
        "SELECT * FROM v_canary_deployments WHERE $2::boolean IS NULL OR in_flight = $2"
        " ORDER BY in_flight DESC, started_at DESC, deployment_id LIMIT $1",
        limit,
        in_flight,
    )


async def canary(pool: Any, deployment_id: str) -> dict[str, Any] | None:
    """The deployment DEPLOYMENT_ID as canaries() shows it; None if there is none."""
    row = await pool.fetchrow(
        "SELECT * FROM v_canary_deployments WHERE deployment_id = $1", deployment_id
    )
    return dict(row) if row is not None else None


async def canary_decisions(pool: Any, deployment_id: str) -> list[dict[str, Any]]:
    """Every decision of DEPLOYMENT_ID, oldest first, with its results and interval."""
    return await _fetch(
        pool,
        "SELECT id, action, reason, step, decided_at, results, control_count, candidate_count,"
        " control_mean, candidate_mean, delta, ci_low, ci_high, p_value, confidence"
        " FROM v_canary_intervals WHERE deployment_id = $1 ORDER BY decided_at, id",
        deployment_id,
    )


async def canary_moves(pool: Any, deployment_id: str) -> list[dict[str, Any]]:
    """DEPLOYMENT_ID's audited step-ups, approvals, pauses and resumes, oldest first."""
    return await _fetch(
        pool,
        "SELECT id, recorded_at, action, from_step, to_step, outcome, refusal, actor, reason,"
        " verdict FROM deployment_steps WHERE deployment_id = $1 ORDER BY id",
        deployment_id,
    )


async def dead_letters_by_stage(pool: Any) -> list[dict[str, Any]]:
    """Dead letters per stage with how many reasons and the latest time, most letters first."""
    return await _fetch(
        pool,
        "SELECT stage, letters, reasons, latest_at FROM v_dead_letters_by_stage"
        " ORDER BY letters DESC, stage",
    )


async def dead_letters_by_reason(pool: Any, limit: int = 200) -> list[dict[str, Any]]:
    """Dead letters per stage, error type and reason, the latest first; at most LIMIT groups."""
    return await _fetch(
        pool,
        "SELECT stage, error_type, reason, letters, doers, first_at, latest_at"
        " FROM v_dead_letters_by_reason"
        " ORDER BY latest_at DESC, stage, error_type, reason LIMIT $1",
        limit,
    )


_ALERT_COLUMNS = "id, doer, kind, severity, message, value, threshold, deployment_id, occurred_at"
_DECISION_COLUMNS = (
    "id, deployment_id, doer, action, reason, step, decided_at, results, delta, ci_low, ci_high"
)


async def alerts_after(pool: Any, after: int | None, limit: int = 50) -> list[dict[str, Any]]:
    """Alerts with an id above AFTER, oldest first (at most LIMIT); the latest LIMIT if None."""
    if after is None:
        return await _fetch(
            pool,
            "SELECT * FROM (SELECT " + _ALERT_COLUMNS + " FROM alerts ORDER BY id DESC LIMIT $1)"
            " latest ORDER BY id",
            limit,
        )
    return await _fetch(
        pool,
        "SELECT " + _ALERT_COLUMNS + " FROM alerts WHERE id > $2 ORDER BY id LIMIT $1",
        limit,
        after,
    )


async def decisions_after(pool: Any, after: int | None, limit: int = 50) -> list[dict[str, Any]]:
    """Canary decisions with an id above AFTER, oldest first; the latest LIMIT if None."""
    if after is None:
        return await _fetch(
            pool,
            "SELECT * FROM (SELECT " + _DECISION_COLUMNS + " FROM v_canary_intervals"
            " ORDER BY id DESC LIMIT $1) latest ORDER BY id",
            limit,
        )
    return await _fetch(
        pool,
        "SELECT " + _DECISION_COLUMNS + " FROM v_canary_intervals WHERE id > $2"
        " ORDER BY id LIMIT $1",
        limit,
        after,
    )


# --------------------------------------------------------------------------- migration 017

_TREND_COLUMNS = "day, runs, mean_crl, baseline_crl, delta_vs_baseline"


async def crl_trend_by_phase(
    pool: Any, days: int = 30, tenant: str | None = None
) -> list[dict[str, Any]]:
    """CRL per phase and day over all doers for the last DAYS days, with each phase's baseline."""
    if tenant is not None:
        return await tenant_trend(pool, tenant, by=("phase",), days=days)
    return await _fetch(
        pool,
        "SELECT phase, " + _TREND_COLUMNS + " FROM v_crl_trend_by_phase"
        " WHERE day > (SELECT max(day) FROM crl_daily) - $1::int ORDER BY phase, day",
        days,
    )


async def doer_trend_by_phase(
    pool: Any, doer: str, days: int = 30, tenant: str | None = None
) -> list[dict[str, Any]]:
    """DOER's CRL per phase and day for its last DAYS days, with each phase's baseline."""
    if tenant is not None:
        return await tenant_trend(pool, tenant, doer=doer, by=("phase",), days=days)
    return await _fetch(
        pool,
        "SELECT phase, " + _TREND_COLUMNS + " FROM v_crl_trend_by_doer_phase"
        " WHERE doer = $1 AND day > (SELECT max(day) FROM crl_daily WHERE doer = $1) - $2::int"
        " ORDER BY phase, day",
        doer,
        days,
    )


async def doer_trend_by_policy(
    pool: Any, doer: str, days: int = 30, tenant: str | None = None
) -> list[dict[str, Any]]:
    """DOER's CRL per policy version and day for its last DAYS days, with each one's baseline."""
    if tenant is not None:
        by = ("policy_id", "policy_version")
        return await tenant_trend(pool, tenant, doer=doer, by=by, days=days)
    return await _fetch(
        pool,
        "SELECT policy_id, policy_version, " + _TREND_COLUMNS + " FROM v_crl_trend_by_policy"
        " WHERE doer = $1 AND day > (SELECT max(day) FROM crl_daily WHERE doer = $1) - $2::int"
        " ORDER BY policy_id, policy_version, day",
        doer,
        days,
    )


#: The columns a tenant's trend may be split by (crl_daily's, migration 025).
_TREND_BY = frozenset({"phase", "policy_id", "policy_version"})


async def tenant_trend(
    pool: Any,
    tenant: str,
    *,
    doer: str | None = None,
    by: tuple[str, ...] = (),
    days: int = 30,
) -> list[dict[str, Any]]:
    """TENANT's CRL per day (of one doer, split ``by`` phase or policy), with the 7-day baseline.

    The same figures as the views of migrations 014 and 017, from crl_daily's
    rows of one tenant only (migration 025): the run-weighted mean per day,
    and the baseline of the 7 days before each day.
    """
    if not set(by) <= _TREND_BY:
        raise ValueError(f"a trend is split by {sorted(_TREND_BY)}, not {by}")
    keys = "".join(f"{column}, " for column in by)
    partition = f"PARTITION BY {', '.join(by)} " if by else ""
    query = f"""
    WITH days AS (
        SELECT {keys}day, sum(runs) AS runs, sum(mean_crl * runs) / sum(runs) AS mean_crl
        FROM crl_daily
        WHERE tenant_id = $1 AND ($2::text IS NULL OR doer = $2)
        GROUP BY {keys}day
    ), windowed AS (
        SELECT {keys}day, runs, mean_crl,
               sum(mean_crl * runs) OVER wb AS sum_base, sum(runs) OVER wb AS runs_base
        FROM days
        WINDOW wb AS ({partition}ORDER BY day
                      RANGE BETWEEN INTERVAL '7 days' PRECEDING AND INTERVAL '1 day' PRECEDING)
    )
    SELECT {keys}day, runs, mean_crl,
           sum_base / nullif(runs_base, 0) AS baseline_crl,
           mean_crl - sum_base / nullif(runs_base, 0) AS delta_vs_baseline
    FROM windowed
    WHERE day > (SELECT max(day) FROM days) - $3::int
    ORDER BY {keys}day
    """
    return await _fetch(pool, query, tenant, doer, days)


async def experiment_success_by_type(pool: Any) -> list[dict[str, Any]]:
    """Per experiment type: started, concluded, promoted, success rate, and mean improvement."""
    return await _fetch(
        pool,
        "SELECT s.experiment_type, s.experiments, s.concluded, s.promoted, s.success_rate,"
        " i.mean_improvement, i.mean_improvement_pct"
        " FROM v_experiment_success_by_type s"
        " LEFT JOIN v_experiment_improvement_by_type i USING (experiment_type)"
        " ORDER BY s.experiment_type",
    )


async def promoted_experiments(pool: Any, limit: int = 50) -> list[dict[str, Any]]:
    """Promoted experiments with the CRL improvement their canary measured, latest first."""
    return await _fetch(
        pool,
        "SELECT experiment_id, experiment_type, doer, policy_id, policy_version, concluded_at,"
        " control_mean, candidate_mean, improvement, improvement_pct FROM v_promoted_experiments"
        " ORDER BY concluded_at DESC NULLS LAST, experiment_id LIMIT $1",
        limit,
    )


async def active_policies(pool: Any) -> list[dict[str, Any]]:
    """Every doer's active policy version, since when, and who promoted it."""
    return await _fetch(
        pool,
        "SELECT doer, policy_id, version, active_from, promoted_by, reason"
        " FROM v_active_policies ORDER BY doer",
    )


async def policy_moves_per_week(pool: Any, weeks: int = 26) -> list[dict[str, Any]]:
    """Promotions, rollbacks, shadows and canaries started per week for the last WEEKS weeks."""
    return await _fetch(
        pool,
        "SELECT week, promotions, rollbacks, shadows_started, canaries_started, rollback_rate"
        " FROM v_policy_moves_per_week"
        " WHERE week > (SELECT max(week) FROM v_policy_moves_per_week) - 7 * $1::int"
        " ORDER BY week",
        weeks,
    )


async def deployments_in_flight(pool: Any) -> dict[str, int]:
    """How many shadow and how many canary deployments are in flight."""
    rows = await pool.fetch(
        "SELECT mode, count(*) AS n FROM shadow_deployments WHERE ended_at IS NULL GROUP BY mode"
    )
    counts = {"shadow": 0, "canary": 0}
    counts.update({row["mode"]: row["n"] for row in rows})
    return counts


_RANKING = (
    "SELECT tenant_id, doer, as_of, runs, mean_crl, delta_7d, gate_pass_rate, policy_id,"
    " policy_version FROM v_skill_card_ranking"
)


async def skill_ranking(
    pool: Any, limit: int = 10, tenant: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The LIMIT best and LIMIT struggling cards by mean CRL: of ``tenant``, or of every tenant."""
    args: tuple[Any, ...]
    if tenant is None:
        best, worst, args = "rank_best_all <= $1", "rank_worst_all <= $1", (limit,)
        order_best, order_worst = "rank_best_all", "rank_worst_all"
    else:
        best = "tenant_id = $2 AND rank_best <= $1"
        worst = "tenant_id = $2 AND rank_worst <= $1"
        args, order_best, order_worst = (limit, tenant), "rank_best", "rank_worst"
    return {
        "top": await _fetch(pool, f"{_RANKING} WHERE {best} ORDER BY {order_best}", *args),
        "struggling": await _fetch(pool, f"{_RANKING} WHERE {worst} ORDER BY {order_worst}", *args),
    }


async def failure_modes(
    pool: Any, limit: int = 20, tenant: str | None = None
) -> list[dict[str, Any]]:
    """The gates that fail across cards (of ``tenant``, or all), most cards first, 30 days."""
    return await _fetch(
        pool,
        "SELECT gate, sum(doers)::bigint AS doers, sum(failures)::bigint AS failures"
        " FROM v_failure_modes WHERE ($2::text IS NULL OR tenant_id = $2) GROUP BY gate"
        " ORDER BY doers DESC, failures DESC, gate LIMIT $1",
        limit,
        tenant,
    )


async def skill_cards(pool: Any, doer: str, tenant: str | None = None) -> list[dict[str, Any]]:
    """DOER's current skill cards, one per tenant (only ``tenant``'s when named), by tenant.

    Each holds the whole card as JSON text in "card".
    """
    return await _fetch(
        pool,
        "SELECT tenant_id, doer, as_of, runs, gate_pass_rate, mean_crl, delta_7d, delta_30d,"
        " policy_id, policy_version, card::text AS card, computed_at"
        " FROM skill_cards WHERE doer = $1 AND is_current"
        " AND ($2::text IS NULL OR tenant_id = $2) ORDER BY tenant_id",
        doer,
        tenant,
    )


async def doers_named(pool: Any, name: str) -> list[str]:
    """The doers (with runs or policies) whose name is NAME regardless of case."""
    rows = await pool.fetch(
        "SELECT doer FROM learning_progress WHERE lower(doer) = lower($1)"
        " UNION SELECT doer FROM policies WHERE lower(doer) = lower($1) ORDER BY 1",
        name,
    )
    return [row["doer"] for row in rows]


async def doer_known(pool: Any, doer: str) -> bool:
    """Whether anything is known of DOER: scored runs, a policy, a card, an experiment, bandits."""
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM learning_progress WHERE doer = $1)"
            " OR EXISTS (SELECT 1 FROM policies WHERE doer = $1)"
            " OR EXISTS (SELECT 1 FROM skill_cards WHERE doer = $1)"
            " OR EXISTS (SELECT 1 FROM experiments WHERE doer = $1)"
            " OR EXISTS (SELECT 1 FROM bandit_allocations WHERE doer = $1)",
            doer,
        )
    )


async def policy_history(pool: Any, doer: str, limit: int = 50) -> list[dict[str, Any]]:
    """DOER's applied policy moves (register, shadow, canary, promote, rollback), latest first."""
    return await _fetch(
        pool,
        "SELECT p.id, p.action, p.policy_id, p.version, p.from_status, p.to_status, p.actor,"
        " c.approver, p.reason, p.deployment_id, p.occurred_at FROM policy_promotions p"
        " LEFT JOIN applied_commands c ON c.event_id = p.event_id"
        " WHERE p.doer = $1 AND p.outcome = 'applied' ORDER BY p.id DESC LIMIT $2",
        doer,
        limit,
    )


async def doer_experiments(pool: Any, doer: str, limit: int = 50) -> list[dict[str, Any]]:
    """DOER's experiments, latest first, with the improvement of the promoted ones."""
    return await _fetch(
        pool,
        "SELECT e.experiment_id, e.experiment_type, e.phase, e.status, e.policy_id,"
        " e.policy_version, e.deployment_id, e.created_at, e.concluded_at, p.improvement"
        " FROM experiments e LEFT JOIN v_promoted_experiments p USING (experiment_id)"
        " WHERE e.doer = $1 ORDER BY e.created_at DESC, e.experiment_id LIMIT $2",
        doer,
        limit,
    )


async def bandits_in_force(pool: Any, doer: str | None = None) -> list[dict[str, Any]]:
    """Each doer's last bandit shares sent, one row per phase and parameter (of DOER, or all).

    With the doer's active policy version (``active_policy_id``, ``active_version``;
    None when it has none) and ``replaced``, true when the shares are of another
    version: they route only the tasks still routed under it, and a version that
    fixes every choice never sends shares of its own, so its doer's last record
    stays the version before it.
    """
    where, args = ("WHERE b.doer = $1", [doer]) if doer is not None else ("", [])
    return await _fetch(
        pool,
        "SELECT b.doer, b.phase, b.parameter, b.policy_id, b.policy_version, b.sequence,"
        " b.runs, b.shares, b.probes, b.probe_share, b.frozen, b.sent_at, b.doer_sequence,"
        " a.policy_id AS active_policy_id, a.version AS active_version,"
        " coalesce((a.policy_id, a.version) <> (b.policy_id, b.policy_version), false)"
        " AS replaced"
        " FROM v_bandit_in_force b LEFT JOIN v_active_policies a USING (doer)"
        f" {where} ORDER BY b.doer, b.phase, b.parameter",
        *args,
    )


async def bandit_history(pool: Any, doer: str, days: int = 30) -> list[dict[str, Any]]:
    """The doer's allocations of the last DAYS days, each when first sent, oldest first."""
    return await _fetch(
        pool,
        "SELECT phase, parameter, policy_id, policy_version, sequence, runs, shares, sent_at"
        " FROM v_bandit_history WHERE doer = $1 AND sent_at > now() - make_interval(days => $2)"
        " ORDER BY phase, parameter, sent_at, sequence",
        doer,
        days,
    )
