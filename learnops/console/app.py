"""The console's FastAPI app: JSON API under /api/, pages, and the locally served chart bundle."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from storage import dashboard

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


def plotly_bundle() -> Path | None:
    """plotly.min.js from the installed plotly package (the machines are offline: no CDN)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    return path if path.exists() else None


def create_console(database_dsn: str) -> FastAPI:
    """The read-only console over the database at DATABASE_DSN."""
    from storage.pool import create_pool

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(database_dsn, min_size=1, max_size=4)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(title="learnops console", version="1", lifespan=lifespan)

    def pool(request: Request) -> Any:
        return request.app.state.pool

    @app.get("/api/crl/trend", response_model=list[CRLDay])
    async def api_crl_trend(request: Request, days: int = 30) -> list[dict[str, Any]]:
        """CRL over all doers per day, with the trailing 7-day baseline."""
        return await dashboard.crl_trend_overall(pool(request), days)

    @app.get("/api/experiments/per-day", response_model=list[ExperimentsDay])
    async def api_experiments_per_day(request: Request, days: int = 30) -> list[dict[str, Any]]:
        """Experiments started per day and type, concluded and promoted."""
        return await dashboard.experiments_per_day(pool(request), days)

    @app.get("/api/doers", response_model=list[DoerSummary])
    async def api_doers(request: Request) -> list[dict[str, Any]]:
        """Every doer with its latest 7-day mean CRL and change against its baseline."""
        return await dashboard.doers(pool(request))

    @app.get("/api/doers/{doer}/trend", response_model=list[CRLDay])
    async def api_doer_trend(request: Request, doer: str, days: int = 30) -> list[dict[str, Any]]:
        """The doer's CRL per day, with the trailing 7-day baseline."""
        return await dashboard.doer_trend(pool(request), doer, days)

    @app.get("/doers/{doer}", response_class=HTMLResponse, include_in_schema=False)
    async def doer_page(request: Request, doer: str) -> HTMLResponse:
        trend = await dashboard.doer_trend(pool(request), doer)
        if not trend:
            raise HTTPException(404, f"no runs of {doer}")
        return TEMPLATES.TemplateResponse(
            request,
            "doer.html",
            {
                "doer": doer,
                "trend": trend,
                "days": [str(row["day"]) for row in trend],
                "crl": [row["mean_crl"] for row in trend],
                "baseline": [row["baseline_crl"] for row in trend],
            },
        )

    @app.get("/static/plotly.min.js", include_in_schema=False)
    async def plotly_js() -> FileResponse:
        path = plotly_bundle()
        if path is None:
            raise HTTPException(404, "plotly is not installed")
        return FileResponse(path, media_type="application/javascript")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def overview(request: Request) -> HTMLResponse:
        trend = await dashboard.crl_trend_overall(pool(request))
        experiments = await dashboard.experiments_per_day(pool(request))
        doers = await dashboard.doers(pool(request))
        return TEMPLATES.TemplateResponse(
            request,
            "overview.html",
            {
                "trend": trend,
                "experiments": experiments,
                "doers": doers,
                "days": [str(row["day"]) for row in trend],
                "crl": [row["mean_crl"] for row in trend],
                "baseline": [row["baseline_crl"] for row in trend],
            },
        )

    return app
