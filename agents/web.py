"""Web views of the worker: a doer's daily CRL aggregates and trend, routed to its partition."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from functools import wraps
from typing import TYPE_CHECKING, Any

from faust.exceptions import SameNode

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


View = Callable[..., Awaitable[Any]]


def doer_route(app: Any, table: Any) -> Callable[[View], View]:
    """Serve the view on the worker that holds the doer's partition of ``table``.

    Faust's ``table_route`` hashes the key as the table serialises it (JSON:
    ``"PRDWriter"`` with its quotes), but a doer's state lives in the partition
    its name hashes to as the input topics key it (the raw bytes): an operator
    trial with two workers got another worker's empty answer for some doers.
    """
    base = getattr(table, "table", table)  # a windowed table's wrapper names its table
    name = base.name

    def decorator(view: View) -> View:
        @wraps(view)
        async def routed(web_view: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            doer = request.match_info["doer"]
            # The router hashes by the producer's metadata of the table's changelog.
            await app.producer.know_topic(base.changelog_topic.get_topic_name())
            try:
                return await app.router.route_req(name, doer.encode(), web_view.web, request)
            except SameNode:
                return await view(web_view, request, *args, **kwargs)

        return routed

    return decorator


def register_views(app: Any, stage: CRLStage) -> None:
    """Serve ``/crl/{doer}/`` on the worker's web server, routed to the doer's partition."""
    by_doer, by_phase, by_policy = stage.by_doer, stage.by_phase, stage.by_policy

    @app.page("/crl/{doer}/")
    @doer_route(app, by_doer)
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
