"""The console's concern pages and their API: CRL per phase and policy, learning progress,
policy performance, skill cards, and the doer page that brings a doer's figures together."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from storage import dashboard

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

router = APIRouter()


class PhaseDay(BaseModel):
    """One phase's CRL on one day, with the phase's trailing 7-day baseline."""

    phase: str
    day: date
    runs: int
    mean_crl: float
    baseline_crl: float | None
    delta_vs_baseline: float | None


class PolicyDay(BaseModel):
    """One policy version's CRL on one day, with the version's trailing 7-day baseline."""

    policy_id: str
    policy_version: int
    day: date
    runs: int
    mean_crl: float
    baseline_crl: float | None
    delta_vs_baseline: float | None


class ExperimentType(BaseModel):
    """Experiments of one type: started, concluded, promoted, success rate, mean improvement."""

    experiment_type: str
    experiments: int
    concluded: int
    promoted: int
    success_rate: float | None
    mean_improvement: float | None
    mean_improvement_pct: float | None


class PromotedExperiment(BaseModel):
    """A promoted experiment and the CRL improvement (control − candidate) its canary measured."""

    experiment_id: str
    experiment_type: str
    doer: str
    policy_id: str
    policy_version: int
    concluded_at: datetime | None
    control_mean: float | None
    candidate_mean: float | None
    improvement: float | None
    improvement_pct: float | None


class LearningProgress(BaseModel):
    """Success rate and improvement by experiment type, and the latest promoted experiments."""

    by_type: list[ExperimentType]
    promoted: list[PromotedExperiment]


class ActivePolicy(BaseModel):
    doer: str
    policy_id: str
    version: int
    active_from: datetime
    promoted_by: str
    reason: str


class PolicyWeek(BaseModel):
    """Policy moves of one week (starting Monday, UTC)."""

    week: date
    promotions: int
    rollbacks: int
    shadows_started: int
    canaries_started: int
    rollback_rate: float | None


class PolicyPerformance(BaseModel):
    """Active versions, moves per week, and the shadow and canary deployments in flight."""

    active: list[ActivePolicy]
    weeks: list[PolicyWeek]
    in_flight: dict[str, int]


class RankedDoer(BaseModel):
    tenant_id: str  # whose runs the card summarises
    doer: str
    as_of: date
    runs: int
    mean_crl: float
    delta_7d: float | None
    gate_pass_rate: float | None
    policy_id: str | None
    policy_version: int | None


class FailureMode(BaseModel):
    """A gate failing across cards: in how many (one card per tenant and doer), how often."""

    gate: str
    doers: int
    failures: int


class SkillOverview(BaseModel):
    """Top performing and struggling cards by mean CRL, and common failure modes.

    Of one tenant's cards when ``tenant`` is set, else of every tenant's.
    """

    tenant: str | None = None
    top: list[RankedDoer]
    struggling: list[RankedDoer]
    failure_modes: list[FailureMode]


class PolicyMove(BaseModel):
    id: int
    action: str
    policy_id: str | None
    version: int | None
    from_status: str | None
    to_status: str | None
    actor: str
    approver: str | None = None  # a forced promotion's second owner
    reason: str
    deployment_id: str | None
    occurred_at: datetime


class DoerExperiment(BaseModel):
    experiment_id: str
    experiment_type: str
    phase: str
    status: str
    policy_id: str
    policy_version: int
    deployment_id: str | None
    created_at: datetime
    concluded_at: datetime | None
    improvement: float | None


class BanditParameter(BaseModel):
    """The shares in force for one phase and parameter of a doer (the record sent last)."""

    doer: str
    phase: str
    parameter: str
    policy_id: str
    policy_version: int
    sequence: int  # the parameter's allocation number; 0: the version's starting shares
    runs: int  # live runs of the version folded in
    shares: dict[str, float]
    probes: list[str]  # options on probation whose probes the bandit asks for
    probe_share: float
    frozen: bool
    sent_at: datetime
    active_policy_id: str | None  # the doer's active policy version, None if it has none
    active_version: int | None
    # Shares of a version other than the active one: they route only tasks still routed
    # under it (a version that fixes every choice sends no shares of its own).
    replaced: bool


class BanditPoint(BaseModel):
    """One allocation of a phase and parameter, when it was first sent."""

    phase: str
    parameter: str
    policy_id: str
    policy_version: int
    sequence: int
    runs: int
    shares: dict[str, float]
    sent_at: datetime


#: A window in days (1 to 100 years): out of range is a 422, not a database error's 500.
Days = Annotated[int, Query(ge=1, le=36_600, description="How many days back, 1 to 36600.")]
#: How many rows (1 to 10,000).
Limit = Annotated[int, Query(ge=1, le=10_000, description="At most this many rows.")]


def pool(request: Request) -> Any:
    return request.app.state.pool


async def known_doer(request: Request, doer: str) -> str:
    """The API's doer as given, or 404 naming it (and its spelling when only the case differs).

    An unknown name answered 200 with an empty list, which reads as "no runs yet".
    """
    db = pool(request)
    if await dashboard.doer_known(db, doer):
        return doer
    named = [d for d in await dashboard.doers_named(db, doer) if d != doer]
    hint = f"; did you mean {named[0]!r}?" if len(named) == 1 else ""
    raise HTTPException(404, f"no runs, policies, cards or experiments of doer {doer!r}{hint}")


#: For every /api/doers/{doer}/… route.
KNOWN_DOER = [Depends(known_doer)]


def series(rows: list[dict[str, Any]], *key: str) -> list[dict[str, Any]]:
    """Chart series of trend ROWS, one per value of the KEY columns: days, CRL and baseline."""
    grouped: dict[str, dict[str, list[Any]]] = defaultdict(
        lambda: {"days": [], "crl": [], "baseline": []}
    )
    for row in rows:
        name = "@".join(str(row[k]) for k in key)
        grouped[name]["days"].append(str(row["day"]))
        grouped[name]["crl"].append(row["mean_crl"])
        grouped[name]["baseline"].append(row["baseline_crl"])
    return [{"name": name, **values} for name, values in grouped.items()]


@router.get("/api/crl/trend/phases", response_model=list[PhaseDay])
async def api_trend_by_phase(
    request: Request, days: Days = 30, tenant: str | None = None
) -> list[dict[str, Any]]:
    """CRL per phase and day over all doers (or ``tenant``'s runs), with each phase's baseline."""
    return await dashboard.crl_trend_by_phase(pool(request), days, tenant)


@router.get(
    "/api/doers/{doer}/trend/phases", response_model=list[PhaseDay], dependencies=KNOWN_DOER
)
async def api_doer_trend_by_phase(
    request: Request, doer: str, days: Days = 30, tenant: str | None = None
) -> list[dict[str, Any]]:
    """The doer's CRL per phase and day (or ``tenant``'s runs), with each phase's baseline."""
    return await dashboard.doer_trend_by_phase(pool(request), doer, days, tenant)


@router.get(
    "/api/doers/{doer}/trend/policies", response_model=list[PolicyDay], dependencies=KNOWN_DOER
)
async def api_doer_trend_by_policy(
    request: Request, doer: str, days: Days = 30, tenant: str | None = None
) -> list[dict[str, Any]]:
    """The doer's CRL per policy version and day (or ``tenant``'s runs), with each baseline."""
    return await dashboard.doer_trend_by_policy(pool(request), doer, days, tenant)


@router.get("/api/doers/{doer}/skill-card", dependencies=KNOWN_DOER)
async def api_skill_card(request: Request, doer: str, tenant: str | None = None) -> dict[str, Any]:
    """The doer's current skill card of ``tenant`` as stored (the SkillCard event).

    Each tenant has its own card of a doer; without ``tenant`` the doer's only
    card is returned, and 409 names the tenants when it has several. 404 if none.
    """
    cards = await dashboard.skill_cards(pool(request), doer, tenant)
    if not cards:
        whose = f" for tenant {tenant}" if tenant else ""
        raise HTTPException(404, f"no skill card of {doer}{whose}")
    if len(cards) > 1:
        tenants = ", ".join(c["tenant_id"] for c in cards)
        raise HTTPException(409, f"{doer} has a card for each of {tenants}: give ?tenant=")
    return dict(orjson.loads(cards[0]["card"]))


@router.get(
    "/api/doers/{doer}/policy-history", response_model=list[PolicyMove], dependencies=KNOWN_DOER
)
async def api_policy_history(
    request: Request, doer: str, limit: Limit = 50
) -> list[dict[str, Any]]:
    """The doer's applied policy moves, latest first."""
    return await dashboard.policy_history(pool(request), doer, limit)


@router.get(
    "/api/doers/{doer}/experiments", response_model=list[DoerExperiment], dependencies=KNOWN_DOER
)
async def api_doer_experiments(
    request: Request, doer: str, limit: Limit = 50
) -> list[dict[str, Any]]:
    """The doer's experiments, latest first, with the improvement of the promoted ones."""
    return await dashboard.doer_experiments(pool(request), doer, limit)


@router.get("/api/bandits", response_model=list[BanditParameter])
async def api_bandits(request: Request, doer: str | None = None) -> list[dict[str, Any]]:
    """Every doer's bandit shares in force (or ``doer``'s), one row per phase and parameter."""
    if doer is not None:
        await known_doer(request, doer)  # 404 for a name nothing is known of
    return await dashboard.bandits_in_force(pool(request), doer)


@router.get(
    "/api/doers/{doer}/bandits/history", response_model=list[BanditPoint], dependencies=KNOWN_DOER
)
async def api_bandit_history(request: Request, doer: str, days: Days = 30) -> list[dict[str, Any]]:
    """The doer's allocations of the last ``days`` days, each when first sent, oldest first."""
    return await dashboard.bandit_history(pool(request), doer, days)


def share_series(
    history: list[dict[str, Any]], until: datetime, in_force: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One chart per phase, parameter and policy version: each option's share at each allocation.

    Shares hold from one allocation to the next, so a series whose version is
    in force (``in_force``: the doer's rows of ``dashboard.bandits_in_force``, of
    the active version) ends at ``until`` (the page's time) with the shares of its
    last allocation; one a newer version replaced ends at its last allocation.
    """
    charts: dict[str, dict[str, Any]] = {}
    for row in [*history, *_held_until(history, until, in_force)]:
        name = f"{row['phase']}/{row['parameter']} of {row['policy_id']}@{row['policy_version']}"
        chart = charts.setdefault(name, {"name": name, "times": [], "shares": defaultdict(list)})
        chart["times"].append(row["sent_at"].isoformat())
        for option in set(row["shares"]) | set(chart["shares"]):
            padding = len(chart["times"]) - 1 - len(chart["shares"][option])
            chart["shares"][option] += [None] * padding + [row["shares"].get(option)]
    return [
        {"name": c["name"], "times": c["times"], "shares": dict(sorted(c["shares"].items()))}
        for c in charts.values()
    ]


def _held_until(
    history: list[dict[str, Any]], until: datetime, in_force: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each series in force: its last allocation again at ``until``, the shares it holds now."""

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["phase"], row["parameter"], row["policy_id"], row["policy_version"])

    held = {key(row) for row in in_force if not row.get("replaced")}
    last = {key(row): row for row in history if key(row) in held}
    return [{**row, "sent_at": max(until, row["sent_at"])} for row in last.values()]


async def _progress(request: Request) -> dict[str, Any]:
    return {
        "by_type": await dashboard.experiment_success_by_type(pool(request)),
        "promoted": await dashboard.promoted_experiments(pool(request)),
    }


@router.get("/api/progress", response_model=LearningProgress)
async def api_progress(request: Request) -> dict[str, Any]:
    """Success rate and mean CRL improvement by experiment type; the latest promoted ones."""
    return await _progress(request)


async def _policies(request: Request) -> dict[str, Any]:
    active, weeks, in_flight = await asyncio.gather(
        dashboard.active_policies(pool(request)),
        dashboard.policy_moves_per_week(pool(request)),
        dashboard.deployments_in_flight(pool(request)),
    )
    return {"active": active, "weeks": weeks, "in_flight": in_flight}


@router.get("/api/policies", response_model=PolicyPerformance)
async def api_policies(request: Request) -> dict[str, Any]:
    """Active version per doer, promotions and rollbacks per week, deployments in flight."""
    return await _policies(request)


async def _skills(request: Request, tenant: str | None) -> dict[str, Any]:
    ranking = await dashboard.skill_ranking(pool(request), tenant=tenant)
    modes = await dashboard.failure_modes(pool(request), tenant=tenant)
    return {**ranking, "failure_modes": modes, "tenant": tenant}


@router.get("/api/skills", response_model=SkillOverview)
async def api_skills(request: Request, tenant: str | None = None) -> dict[str, Any]:
    """Top performing and struggling cards, and common failure modes: of ``tenant``, or all."""
    return await _skills(request, tenant)


@router.get("/progress", response_class=HTMLResponse, include_in_schema=False)
async def progress_page(request: Request) -> HTMLResponse:
    experiments = await dashboard.experiments_per_day(pool(request))
    per_day: dict[str, int] = defaultdict(int)
    for row in experiments:
        per_day[str(row["day"])] += row["experiments"]
    return TEMPLATES.TemplateResponse(
        request,
        "progress.html",
        {**await _progress(request), "experiments": experiments, "per_day": dict(per_day)},
    )


#: How many activations the policies page lists (the API lists every active version).
RECENT_ACTIVATIONS = 50


@router.get("/policies", response_class=HTMLResponse, include_in_schema=False)
async def policies_page(request: Request) -> HTMLResponse:
    figures = await _policies(request)
    active = sorted(figures["active"], key=lambda row: row["active_from"], reverse=True)
    return TEMPLATES.TemplateResponse(
        request,
        "policies.html",
        {**figures, "active": active[:RECENT_ACTIVATIONS], "active_count": len(active)},
    )


@router.get("/bandits", response_class=HTMLResponse, include_in_schema=False)
async def bandits_page(request: Request) -> HTMLResponse:
    bandits = await dashboard.bandits_in_force(pool(request))
    return TEMPLATES.TemplateResponse(request, "bandits.html", {"bandits": bandits})


@router.get("/skills", response_class=HTMLResponse, include_in_schema=False)
async def skills_page(request: Request, tenant: str | None = None) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "skills.html", await _skills(request, tenant))


@router.get("/doers/{doer}", response_class=HTMLResponse, include_in_schema=False)
async def doer_page(request: Request, doer: str, tenant: str | None = None) -> Response:
    db = pool(request)
    trend = await dashboard.doer_trend(db, doer, tenant=tenant)
    cards = await dashboard.skill_cards(db, doer, tenant)
    history = await dashboard.policy_history(db, doer)
    experiments = await dashboard.doer_experiments(db, doer)
    if tenant is not None and not (trend or cards):
        # Policies and experiments are the doer's, not a tenant's: a tenant with no
        # run (a typo too) has no page.
        raise HTTPException(404, f"no runs of {doer} of tenant {tenant}")
    if not (trend or cards or history or experiments):
        named = [d for d in await dashboard.doers_named(db, doer) if d != doer]
        if len(named) == 1:
            # The doer's name in another case (policy ids are lower-cased): its page.
            query = f"?{urlencode({'tenant': tenant})}" if tenant is not None else ""
            return RedirectResponse(f"/doers/{quote(named[0])}{query}", status_code=307)
        # A doer with a policy or an experiment but no run yet has a page (its
        # history); a name nothing is known of has none.
        raise HTTPException(404, f"no runs, policies or experiments of {doer}")
    phases = await dashboard.doer_trend_by_phase(db, doer, tenant=tenant)
    policies = await dashboard.doer_trend_by_policy(db, doer, tenant=tenant)
    bandits = await dashboard.bandits_in_force(db, doer)
    bandit_history = await dashboard.bandit_history(db, doer)
    return TEMPLATES.TemplateResponse(
        request,
        "doer.html",
        {
            "doer": doer,
            "tenant": tenant,
            "trend": trend,
            "days": [str(row["day"]) for row in trend],
            "crl": [row["mean_crl"] for row in trend],
            "baseline": [row["baseline_crl"] for row in trend],
            "cards": cards,
            "phases": phases,
            "phase_series": series(phases, "phase"),
            "policies": policies,
            "policy_series": series(policies, "policy_id", "policy_version"),
            "history": history,
            "experiments": experiments,
            "bandits": bandits,
            "bandit_charts": share_series(bandit_history, datetime.now(UTC), bandits),
        },
    )
