"""Web views of the worker: a doer's daily CRL aggregates and trend, routed to its partition."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

from agents.tables import history
from learning.trends import DailyCRL, trend

if TYPE_CHECKING:
    from agents.crl import CRLStage


def _describe(daily: DailyCRL) -> dict[str, Any]:
    return {
        "count": daily.count,
        "mean": daily.mean,
        "variance": daily.moments.variance,
        "p95": daily.p95,
    }


def register_views(app: Any, stage: CRLStage) -> None:
    """Serve ``/crl/{doer}/`` on the worker's web server, routed to the doer's partition."""
    by_doer, by_phase, by_policy = stage.by_doer, stage.by_phase, stage.by_policy

    @app.page("/crl/{doer}/")
    @app.table_route(table=by_doer, match_info="doer")
    async def crl_view(web: Any, request: Any, doer: str) -> Any:
        """A doer's daily aggregates for 30 days and its trend (?day=, ?phase= or ?policy=id@v)."""
        query = request.query
        table, key = by_doer, doer
        if "phase" in query:
            table, key = by_phase, f"{doer}/{query['phase']}"
        elif "policy" in query:
            table, key = by_policy, f"{doer}/{query['policy']}"
        today = date.fromisoformat(query["day"]) if "day" in query else date.today()
        days = history(table, key, today)
        summary = trend(days, today)
        return web.json(
            {
                "doer": doer,
                "key": key,
                "today": today.isoformat(),
                "days": {day.isoformat(): _describe(daily) for day, daily in sorted(days.items())},
                "trend": {
                    "today_count": summary.today_count,
                    "today_mean": summary.today_mean,
                    "mean_7d": summary.mean_7d,
                    "count_7d": summary.count_7d,
                    "mean_30d": summary.mean_30d,
                    "count_30d": summary.count_30d,
                    "p95_7d": summary.p95_7d,
                    "baseline_mean": summary.baseline_mean,
                    "delta": summary.delta,
                    "delta_pct": summary.delta_pct,
                },
            }
        )
