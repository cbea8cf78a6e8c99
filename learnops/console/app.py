"""The console's FastAPI app: JSON API under /api/, pages, and the locally served chart bundle."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from learnops.console import concerns, contract
from storage import dashboard

log = logging.getLogger("learnops.console")

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


class CRLDay(BaseModel):
    day: date
    runs: int
    mean_crl: float
    baseline_crl: float | None
    delta_vs_baseline: float | None


class ExperimentsDay(BaseModel):
    day: date
    experiment_type: str
    experiments: int
    concluded: int
    promoted: int


class DoerSummary(BaseModel):
    doer: str
    day: date
    mean_crl_7d: float
    delta_vs_baseline: float | None


class CanarySummary(BaseModel):
    """A shadow or canary deployment, where it stands, and its latest decision."""

    deployment_id: str
    doer: str
    mode: Literal["shadow", "canary"]
    candidate_policy_id: str
    candidate_version: int
    control_policy_id: str
    control_version: int
    step: int
    allocation: float
    steps: list[float]
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None
    paused_at: datetime | None
    paused_reason: str | None
    in_flight: bool
    state: Literal["running", "paused", "promoted", "rolled_back", "advanced"]
    decisions: int
    latest_action: str | None
    latest_reason: str | None
    latest_decided_at: datetime | None


class CanaryDecision(BaseModel):
    """One decision of a deployment with the results it saw and its always-valid interval."""

    id: int
    action: str
    reason: str
    step: int
    decided_at: datetime
    results: int
    control_count: int
    candidate_count: int
    control_mean: float
    candidate_mean: float
    delta: float
    ci_low: float | None
    ci_high: float | None
    p_value: float
    confidence: float | None


class CanaryMove(BaseModel):
    """One audited step-up, approval, pause or resume of a deployment, applied or refused."""

    id: int
    recorded_at: datetime
    action: Literal["step_up", "approve", "pause", "resume"]
    from_step: int | None
    to_step: int
    outcome: Literal["applied", "refused"]
    refusal: str | None
    actor: str
    reason: str
    verdict: str


class CanaryDetail(BaseModel):
    """A deployment, its decision history and its audited moves, oldest first."""

    deployment: CanarySummary
    decisions: list[CanaryDecision]
    moves: list[CanaryMove]


class DeadLetterStage(BaseModel):
    """Dead letters one stage refused."""

    stage: str
    letters: int
    reasons: int
    latest_at: datetime


class DeadLetterReason(BaseModel):
    """Dead letters of one stage, error type and reason (metadata only: never a payload)."""

    stage: str
    error_type: str
    reason: str
    letters: int
    doers: int
    first_at: datetime
    latest_at: datetime


class DeadLetterSummary(BaseModel):
    """The dead-letter queue by stage, and by stage and reason."""

    by_stage: list[DeadLetterStage]
    by_reason: list[DeadLetterReason]


class LiveAlert(BaseModel):
    """An alert as the live page shows it."""

    id: int
    doer: str
    kind: str
    severity: str
    message: str
    value: float | None
    threshold: float | None
    deployment_id: str | None
    occurred_at: datetime


class LiveDecision(BaseModel):
    """A canary decision as the live page shows it."""

    id: int
    deployment_id: str
    doer: str
    action: str
    reason: str
    step: int
    decided_at: datetime
    results: int
    delta: float
    ci_low: float | None
    ci_high: float | None


class LiveBatch(BaseModel):
    """Alerts and decisions after the given ids, oldest first."""

    alerts: list[LiveAlert]
    decisions: list[LiveDecision]


#: How often the live stream looks for new rows, and sends a comment when there is none
#: (so a proxy keeps the connection and a gone client is noticed).
LIVE_POLL_S = 1.0
LIVE_KEEPALIVE_POLLS = 15


def last_event_ids(header: str | None) -> tuple[int | None, int | None]:
    """The (alert, decision) ids of an SSE Last-Event-ID "ALERT:DECISION"; Nones if unusable."""
    if header:
        alert, _, decision = header.partition(":")
        if alert.isdigit() and decision.isdigit():
            return int(alert), int(decision)
    return None, None


def sse(kind: str, data: BaseModel, last: tuple[int, int]) -> str:
    """One server-sent event: its type, the id to resume after, and its JSON."""
    return f"event: {kind}\nid: {last[0]}:{last[1]}\ndata: {data.model_dump_json()}\n\n"


#: Decisions that move a deployment (the others only report where it stands).
MOVES = frozenset({"step_up", "promote", "rollback", "pause"})


def interval_chart(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """The canary page's chart series: delta and its interval per result count, and the moves."""
    moves = [row for row in decisions if row["action"] in MOVES]
    return {
        "results": [row["results"] for row in decisions],
        "delta": [row["delta"] for row in decisions],
        "ci_low": [row["ci_low"] for row in decisions],
        "ci_high": [row["ci_high"] for row in decisions],
        "moves": {
            "results": [row["results"] for row in moves],
            "delta": [row["delta"] for row in moves],
            "action": [row["action"] for row in moves],
        },
    }


#: How many doers the overview lists (the API lists them all): those moving most.
OVERVIEW_DOERS = 25


def moving_most(doers: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The LIMIT doers whose CRL rose most against their baseline; those with none last."""
    rising = sorted(
        doers, key=lambda row: (row["delta_vs_baseline"] is None, -(row["delta_vs_baseline"] or 0))
    )
    return rising[:limit]


def plotly_bundle() -> Path | None:
    """plotly.min.js from the installed plotly package (the machines are offline: no CDN)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    return path if path.exists() else None


def create_console(database_dsn: str, topics_file: Path | None = None) -> FastAPI:
    """The read-only console over the database at DATABASE_DSN (topics: TOPICS_FILE or packaged)."""
    from agents.topics import load_catalog
    from storage.pool import TRANSIENT_ERRORS, create_pool

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(database_dsn, min_size=1, max_size=4)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(title="learnops console", version="1", lifespan=lifespan)
    app.state.catalog = load_catalog(topics_file)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """A page's error as a page (the API's, and a client asking for JSON, as JSON)."""
        path = request.url.path
        wants_html = "text/html" in request.headers.get("accept", "")
        if path.startswith(("/api/", "/static/", "/schemas/")) or not wants_html:
            return await http_exception_handler(request, exc)
        return TEMPLATES.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail},
            status_code=exc.status_code,
        )

    async def database_down(request: Request, exc: Exception) -> Response:
        """PostgreSQL did not answer: 503 with the reason (a plain 500 and a traceback before)."""
        log.warning(
            "console_database_unavailable path=%s error=%s: %s",
            request.url.path,
            type(exc).__name__,
            exc,
        )
        unavailable = StarletteHTTPException(
            503,
            f"PostgreSQL does not answer ({type(exc).__name__}); the console shows what it "
            "holds, so try again once the database is back",
        )
        return await http_error(request, unavailable)

    for error in TRANSIENT_ERRORS:  # what storage.pool.durably waits out in a worker
        app.add_exception_handler(error, database_down)
    app.include_router(concerns.router)
    app.include_router(contract.router)

    def pool(request: Request) -> Any:
        return request.app.state.pool

    @app.get("/api/crl/trend", response_model=list[CRLDay])
    async def api_crl_trend(
        request: Request, days: concerns.Days = 30, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """CRL over all doers per day (every tenant, or ``tenant``'s), with the 7-day baseline."""
        return await dashboard.crl_trend_overall(pool(request), days, tenant)

    @app.get("/api/experiments/per-day", response_model=list[ExperimentsDay])
    async def api_experiments_per_day(
        request: Request, days: concerns.Days = 30
    ) -> list[dict[str, Any]]:
        """Experiments started per day and type, concluded and promoted."""
        return await dashboard.experiments_per_day(pool(request), days)

    @app.get("/api/doers", response_model=list[DoerSummary])
    async def api_doers(request: Request, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every doer with its latest 7-day mean CRL (every tenant's runs, or ``tenant``'s)."""
        return await dashboard.doers(pool(request), tenant)

    @app.get(
        "/api/doers/{doer}/trend", response_model=list[CRLDay], dependencies=concerns.KNOWN_DOER
    )
    async def api_doer_trend(
        request: Request, doer: str, days: concerns.Days = 30, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """The doer's CRL per day (of every tenant, or ``tenant``'s), with the 7-day baseline."""
        return await dashboard.doer_trend(pool(request), doer, days, tenant)

    @app.get("/api/canaries", response_model=list[CanarySummary])
    async def api_canaries(
        request: Request, limit: concerns.Limit = 100, in_flight: bool | None = None
    ) -> list[dict[str, Any]]:
        """Shadow and canary deployments, in flight first, with their latest decision."""
        return await dashboard.canaries(pool(request), limit, in_flight=in_flight)

    @app.get(
        "/api/canaries/{deployment_id}",
        response_model=CanaryDetail,
        responses={404: {"description": "No deployment has this id"}},
    )
    async def api_canary(request: Request, deployment_id: str) -> dict[str, Any]:
        """The deployment, every decision about it with the always-valid interval, and its moves.

        ``moves`` are the step-ups, approvals, pauses and resumes the policy store
        audited (``deployment_steps``), applied or refused.
        """
        return await _canary(request, deployment_id)

    async def _canary(request: Request, deployment_id: str) -> dict[str, Any]:
        deployment = await dashboard.canary(pool(request), deployment_id)
        if deployment is None:
            raise HTTPException(404, f"no deployment {deployment_id}")
        decisions = await dashboard.canary_decisions(pool(request), deployment_id)
        moves = await dashboard.canary_moves(pool(request), deployment_id)
        return {"deployment": deployment, "decisions": decisions, "moves": moves}

    @app.get("/canaries", response_class=HTMLResponse, include_in_schema=False)
    async def canaries_page(request: Request) -> HTMLResponse:
        rows = await dashboard.canaries(pool(request))
        return TEMPLATES.TemplateResponse(
            request,
            "canaries.html",
            {"canaries": rows, "in_flight": sum(1 for row in rows if row["in_flight"])},
        )

    @app.get("/canaries/{deployment_id}", response_class=HTMLResponse, include_in_schema=False)
    async def canary_page(request: Request, deployment_id: str) -> HTMLResponse:
        detail = await _canary(request, deployment_id)
        return TEMPLATES.TemplateResponse(
            request,
            "canary.html",
            {
                "canary": detail["deployment"],
                "decisions": detail["decisions"],
                "moves": detail["moves"],
                "chart": interval_chart(detail["decisions"]),
            },
        )

    @app.get("/api/dead-letters", response_model=DeadLetterSummary)
    async def api_dead_letters(request: Request, limit: concerns.Limit = 200) -> dict[str, Any]:
        """The dead-letter queue by stage, and by stage, error type and reason (latest first)."""
        return {
            "by_stage": await dashboard.dead_letters_by_stage(pool(request)),
            "by_reason": await dashboard.dead_letters_by_reason(pool(request), limit),
        }

    @app.get("/dead-letters", response_class=HTMLResponse, include_in_schema=False)
    async def dead_letters_page(request: Request) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request,
            "dead_letters.html",
            {
                "by_stage": await dashboard.dead_letters_by_stage(pool(request)),
                "by_reason": await dashboard.dead_letters_by_reason(pool(request)),
            },
        )

    @app.get("/api/live", response_model=LiveBatch)
    async def api_live(
        request: Request, after_alert: int | None = None, after_decision: int | None = None
    ) -> dict[str, Any]:
        """Alerts and decisions with ids above the given ones (the latest 50 of each if none)."""
        return {
            "alerts": await dashboard.alerts_after(pool(request), after_alert),
            "decisions": await dashboard.decisions_after(pool(request), after_decision),
        }

    @app.get(
        "/api/live/stream",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "Server-sent events: `alert` (LiveAlert) and `decision`"
                " (LiveDecision), the latest 50 of each first, then each new one as it is"
                " stored. An event's id is `ALERT_ID:DECISION_ID`; a client that reconnects"
                " with it as Last-Event-ID resumes after it.",
                "content": {"text/event-stream": {}},
            }
        },
    )
    async def api_live_stream(request: Request) -> StreamingResponse:
        """Alerts and decisions as they are stored, as server-sent events."""
        after_alert, after_decision = last_event_ids(request.headers.get("last-event-id"))

        async def events() -> AsyncIterator[str]:
            nonlocal after_alert, after_decision
            quiet = 0
            while not await request.is_disconnected():
                alerts = await dashboard.alerts_after(pool(request), after_alert)
                decisions = await dashboard.decisions_after(pool(request), after_decision)
                # Before the first row of a kind, resume from 0: a later row is new.
                after_alert = after_alert or 0
                after_decision = after_decision or 0
                for row in alerts:
                    after_alert = row["id"]
                    yield sse("alert", LiveAlert(**row), (after_alert, after_decision))
                for row in decisions:
                    after_decision = row["id"]
                    yield sse("decision", LiveDecision(**row), (after_alert, after_decision))
                quiet = 0 if alerts or decisions else quiet + 1
                if quiet and quiet % LIVE_KEEPALIVE_POLLS == 0:
                    yield ": nothing new\n\n"
                await asyncio.sleep(LIVE_POLL_S)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/live", response_class=HTMLResponse, include_in_schema=False)
    async def live_page(request: Request) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, "live.html", {})

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """The process answers (no database round trip: the benchmarks' baseline)."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> dict[str, str]:
        """PostgreSQL answers a SELECT 1 (503 from ``database_down`` if it does not)."""
        await pool(request).fetchval("SELECT 1")
        return {"status": "ready"}

    @app.get("/static/plotly.min.js", include_in_schema=False)
    async def plotly_js() -> FileResponse:
        path = plotly_bundle()
        if path is None:
            raise HTTPException(404, "plotly is not installed")
        return FileResponse(path, media_type="application/javascript")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def overview(request: Request) -> HTMLResponse:
        # Independent reads: run at once on the pool's connections, not one after another.
        trend, experiments, doers, canaries, phases = await asyncio.gather(
            dashboard.crl_trend_overall(pool(request)),
            dashboard.experiments_per_day(pool(request)),
            dashboard.doers(pool(request)),
            dashboard.canaries(pool(request), in_flight=True),
            dashboard.crl_trend_by_phase(pool(request)),
        )
        return TEMPLATES.TemplateResponse(
            request,
            "overview.html",
            {
                "trend": trend,
                "experiments": experiments,
                "doers": moving_most(doers, OVERVIEW_DOERS),
                "doer_count": len(doers),
                "canaries": canaries,
                "days": [str(row["day"]) for row in trend],
                "crl": [row["mean_crl"] for row in trend],
                "baseline": [row["baseline_crl"] for row in trend],
                "phases": phases,
                "phase_series": concerns.series(phases, "phase"),
            },
        )

    return app
