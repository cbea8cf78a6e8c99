"""The console's concern pages (issue 18): CRL per phase and policy, learning progress, policy
performance, skill cards and the doer page, against the real PostgreSQL and in Chromium."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest

from learning.signing import generate_key
from models.events import SkillCard
from storage import canary as canary_store
from storage import dashboard
from storage import policy_commands as commands_store
from storage import signing_keys as keys_store
from storage.skills import store_card
from tests.integration import console_fixtures
from tests.integration.console_fixtures import (
    SCREENSHOTS,
    chart_drawn,
    decisions_made,
    served,
    start_canary,
    table_rows,
)

database_url = console_fixtures.database_url
db = console_fixtures.db
console_url = console_fixtures.console_url
browser = console_fixtures.browser

FIRST_DAY = date(2001, 3, 1)
DAYS = 9


def _loss(doer: str, phase: str, n: int, i: int) -> float:
    """A run's CRL: review worse than plan, the second doer worse, drifting up by day."""
    base = {"plan": 0.2, "review": 0.5}[phase] + (0.1 if doer.endswith("b") else 0.0)
    return round(base + 0.01 * n + 0.005 * i, 6)


def _runs(doers: dict[str, str]) -> list[tuple[Any, ...]]:
    """Live runs of both doers over DAYS days: two phases, version 1 then 2 from day 5."""
    rows = []
    for n in range(DAYS):
        day = FIRST_DAY + timedelta(days=n)
        for doer in doers.values():
            for phase in ("plan", "review"):
                for i in range(1 + n % 3):
                    version = 1 if n < 5 else 2
                    rows.append((doer, phase, doer.lower(), version, day, _loss(doer, phase, n, i)))
    return rows


def _trend(runs: list[tuple[Any, ...]], key: Any) -> dict[tuple[Any, date], tuple[float, float]]:
    """Reference figures: per (key, day) the mean CRL and the mean of the 7 days before."""
    by: dict[Any, dict[date, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by[key(run)][run[4]].append(run[5])
    out = {}
    for k, days in by.items():
        for day, losses in days.items():
            before = [x for d, xs in days.items() if day - timedelta(days=7) <= d < day for x in xs]
            base = sum(before) / len(before) if before else float("nan")
            out[(k, day)] = (sum(losses) / len(losses), base)
    return out


async def _insert_runs(
    db: Any, runs: list[tuple[Any, ...]], tenant: str = "t", **flags: Any
) -> None:
    await db.executemany(
        "INSERT INTO crl_results (run_id, event_id, source_event_id, doer, phase, policy_id,"
        " policy_version, tenant_id, occurred_at, loss, terms, contributions, weights_version,"
        " shadow, replay_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $12, $8, $9, '{}', '{}', 'v1', $10, $11)"
        " ON CONFLICT DO NOTHING",
        [
            (
                f"run-{uuid.uuid5(uuid.NAMESPACE_URL, repr((run, tenant, flags)))}",
                uuid.uuid5(uuid.NAMESPACE_DNS, repr((run, tenant, flags))),
                uuid.uuid4(),
                *run[:4],
                datetime.combine(run[4], time(12), UTC),
                run[5],
                flags.get("shadow", False),
                flags.get("replay_id"),
                tenant,
            )
            for run in runs
        ],
    )


def _card(
    doer: str, mean_crl: float, failures: dict[str, int], tenant: str = "default"
) -> SkillCard:
    return SkillCard(
        tenant_id=tenant,
        doer=doer,
        as_of=str(FIRST_DAY + timedelta(days=DAYS - 1)),
        runs=4,
        mean_crl=mean_crl,
        delta_7d=0.01,
        gate_pass_rate=0.75,
        gate_failures_30d=failures,
        content_hash=hashlib.sha256(f"{tenant}{doer}{mean_crl}{failures}".encode()).hexdigest(),
    )


@pytest.fixture(scope="module")
async def seeded(db: Any) -> dict[str, Any]:
    """Two doers' runs, policies (one canary promoted, one rolled back), experiments, cards."""
    suffix = uuid.uuid4().hex[:6]
    doers = {"a": f"ConcernA{suffix}a", "b": f"ConcernB{suffix}b"}
    runs = _runs(doers)
    await _insert_runs(db, runs)
    await _insert_runs(db, runs)  # redelivered: counted once
    await _insert_runs(db, runs[:5], shadow=True)  # shadow and replay runs never count
    await _insert_runs(db, runs[:5], replay_id="replay-x")

    key = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="tests", note="concerns")
    deployments = {name: await start_canary(db, key, doer) for name, doer in doers.items()}
    start = datetime.now(UTC)
    promoted = decisions_made(doers["a"], deployments["a"], ["report", "promote"], start)
    rolled_back = decisions_made(doers["b"], deployments["b"], ["report", "rollback"], start)
    await canary_store.insert_decisions(db, promoted + rolled_back)
    for decision in (promoted[-1], rolled_back[-1]):
        outcome = await commands_store.apply_decision(db, decision)
        assert outcome is not None and outcome.applied, outcome

    experiments = [
        ("a", "prompt_synthesis", "promoted", deployments["a"]),
        ("b", "prompt_synthesis", "rolled_back", deployments["b"]),
        ("a", "tool_tuning", "failed", None),
        ("b", "tool_tuning", "replaying", None),
    ]
    for n, (who, kind, status, deployment_id) in enumerate(experiments):
        await db.execute(
            "INSERT INTO experiments (experiment_id, created_by, experiment_type, doer, phase,"
            " hypothesis, actor, reason, seeds, policy_id, policy_version, status, deployment_id,"
            " created_at, concluded_at)"
            " VALUES ($1, $2, $3, $4, 'plan', 'better', 'tests', 'console', '{1}', $5, 2, $6, $7,"
            " $8, CASE WHEN $6::text IN ('promoted', 'rolled_back', 'failed')"
            " THEN $8::timestamptz END)",
            f"exp-{suffix}-{n}",
            uuid.uuid4(),
            kind,
            doers[who],
            doers[who].lower(),
            status,
            deployment_id,
            start + timedelta(minutes=n),
        )
    cards = [
        _card(doers["a"], 0.25, {"lint": 3, "tests": 1}),
        _card(doers["b"], 0.65, {"lint": 2, "types": 0}),
        _card(f"ConcernC{suffix}", 0.45, {}),
    ]
    for card in cards:
        assert await store_card(db, card)
    return {
        "doers": doers,
        "runs": runs,
        "deployments": deployments,
        "promote_report": promoted[-1].report,
        "suffix": suffix,
    }


async def test_crl_daily_folds_live_runs_once_per_doer_phase_policy_and_day(
    db: Any, seeded: dict[str, Any]
) -> None:
    stored = await db.fetch(
        "SELECT doer, phase, policy_id, policy_version, day, runs, mean_crl FROM crl_daily"
        " WHERE doer = ANY($1::text[])",
        list(seeded["doers"].values()),
    )
    expected: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for run in seeded["runs"]:
        expected[run[:5]].append(run[5])
    assert {tuple(row)[:5]: row["runs"] for row in stored} == {
        k: len(v) for k, v in expected.items()
    }
    for row in stored:
        losses = expected[tuple(row)[:5]]
        assert row["mean_crl"] == pytest.approx(sum(losses) / len(losses))


async def test_phase_trend_over_all_doers_has_each_phase_s_7_day_baseline(
    db: Any, seeded: dict[str, Any]
) -> None:
    reference = _trend(seeded["runs"], key=lambda run: run[1])
    shown = await dashboard.crl_trend_by_phase(db, days=DAYS)
    assert {(row["phase"], row["day"]) for row in shown} == set(reference)
    for row in shown:
        mean, base = reference[(row["phase"], row["day"])]
        assert row["mean_crl"] == pytest.approx(mean)
        if row["day"] == FIRST_DAY:
            assert row["baseline_crl"] is None
        else:
            assert row["baseline_crl"] == pytest.approx(base)
            assert row["delta_vs_baseline"] == pytest.approx(mean - base)


async def test_doer_trends_per_phase_and_per_policy_match_its_runs(
    db: Any, seeded: dict[str, Any]
) -> None:
    doer = seeded["doers"]["b"]
    mine = [run for run in seeded["runs"] if run[0] == doer]
    by_phase = _trend(mine, key=lambda run: run[1])
    by_policy = _trend(mine, key=lambda run: (run[2], run[3]))
    phases = await dashboard.doer_trend_by_phase(db, doer, days=DAYS)
    policies = await dashboard.doer_trend_by_policy(db, doer, days=DAYS)
    assert {(row["phase"], row["day"]) for row in phases} == set(by_phase)
    assert {((r["policy_id"], r["policy_version"]), r["day"]) for r in policies} == set(by_policy)
    for row in phases:
        assert row["mean_crl"] == pytest.approx(by_phase[(row["phase"], row["day"])][0])
    for row in policies:
        mean, base = by_policy[((row["policy_id"], row["policy_version"]), row["day"])]
        assert row["mean_crl"] == pytest.approx(mean)
        # Version 2's first day has no baseline of its own, whatever version 1 did.
        if row["day"] == FIRST_DAY + timedelta(days=5):
            assert row["baseline_crl"] is None
        elif row["baseline_crl"] is not None:
            assert row["baseline_crl"] == pytest.approx(base)


async def test_learning_progress_has_success_rate_and_improvement_by_type(
    db: Any, seeded: dict[str, Any]
) -> None:
    rows = await dashboard.experiment_success_by_type(db)
    by_type = {row["experiment_type"]: row for row in rows}
    synthesis, tuning = by_type["prompt_synthesis"], by_type["tool_tuning"]
    assert (synthesis["experiments"], synthesis["concluded"], synthesis["promoted"]) == (2, 2, 1)
    assert synthesis["success_rate"] == pytest.approx(0.5)
    assert (tuning["experiments"], tuning["concluded"], tuning["promoted"]) == (2, 1, 0)
    assert tuning["success_rate"] == 0 and tuning["mean_improvement"] is None
    report = seeded["promote_report"]
    improvement = report.control_mean - report.candidate_mean
    assert improvement > 0
    assert synthesis["mean_improvement"] == pytest.approx(improvement)
    assert synthesis["mean_improvement_pct"] == pytest.approx(improvement / report.control_mean)
    (promoted,) = await dashboard.promoted_experiments(db)
    assert promoted["experiment_id"] == f"exp-{seeded['suffix']}-0"
    assert promoted["improvement"] == pytest.approx(improvement)


async def test_policy_performance_counts_moves_per_week_and_deployments_in_flight(
    db: Any, seeded: dict[str, Any]
) -> None:
    doers = seeded["doers"]
    active = {row["doer"]: row for row in await dashboard.active_policies(db)}
    # a's canary of version 2 was promoted; b's was rolled back and version 1 stays.
    assert (active[doers["a"]]["policy_id"], active[doers["a"]]["version"]) == (
        doers["a"].lower(),
        2,
    )
    assert active[doers["b"]]["version"] == 1
    (week,) = await dashboard.policy_moves_per_week(db)
    monday = datetime.now(UTC).date() - timedelta(days=datetime.now(UTC).weekday())
    assert week["week"] == monday
    # Each doer: a forced promotion of version 1 and a canary start; then a promote and a rollback.
    assert (week["promotions"], week["rollbacks"], week["canaries_started"]) == (3, 1, 2)
    assert week["shadows_started"] == 0 and week["rollback_rate"] == pytest.approx(0.25)
    assert await dashboard.deployments_in_flight(db) == {"shadow": 0, "canary": 0}


async def test_skill_cards_rank_doers_and_count_failure_modes_across_doers(
    db: Any, seeded: dict[str, Any]
) -> None:
    ranking = await dashboard.skill_ranking(db, limit=2)
    suffix = seeded["suffix"]
    assert [row["doer"] for row in ranking["top"]] == [seeded["doers"]["a"], f"ConcernC{suffix}"]
    assert [row["doer"] for row in ranking["struggling"]] == [
        seeded["doers"]["b"],
        f"ConcernC{suffix}",
    ]
    modes = await dashboard.failure_modes(db)
    assert [(row["gate"], row["doers"], row["failures"]) for row in modes] == [
        ("lint", 2, 5),
        ("tests", 1, 1),
    ]


def _get(database_url: str, *paths: str) -> list[Any]:
    with served(database_url) as client:
        responses = [client.get(path) for path in paths]
    for path, response in zip(paths, responses, strict=True):
        assert response.status_code == 200, (path, response.text)
    return responses


async def test_a_doer_with_a_policy_but_no_run_has_a_page_and_an_unknown_name_none(
    postgres_server: str,
) -> None:
    from storage.pool import create_pool
    from tests.services import create_migrated_database, drop_database

    # A database of its own: the module's counts canaries in flight across its tests.
    suffix = uuid.uuid4().hex[:6]
    name = f"learnops_console_noruns_{suffix}"
    url = await create_migrated_database(postgres_server, name)
    doer = f"NoRunsYet{suffix}"
    key = generate_key()
    own = await create_pool(url, min_size=1, max_size=2)
    try:
        await keys_store.add_signing_key(own, key.public_key, created_by="tests", note="no runs")
        deployment = await start_canary(own, key, doer)
    finally:
        await own.close()

    def get(*paths: str) -> list[Any]:
        with served(url) as client:
            return [client.get(path) for path in paths]

    def browse(*paths: str) -> list[Any]:
        with served(url) as client:
            return [client.get(path, headers={"accept": "text/html"}) for path in paths]

    try:
        page, unknown, typo = await asyncio.to_thread(
            get, f"/doers/{doer}", f"/doers/Nobody{suffix}", f"/doers/{doer}?tenant=nobody"
        )
        browsed, api, folded = await asyncio.to_thread(
            browse,
            f"/doers/Nobody{suffix}",
            "/api/canaries/no-such-deployment",
            f"/doers/{doer.lower()}",
        )
        # The API about a doer: an unknown name is a 404 (it was 200 and an empty list).
        doer_api = [
            f"/api/doers/{{}}/{path}"
            for path in (
                "trend",
                "trend/phases",
                "trend/policies",
                "policy-history",
                "experiments",
                "bandits/history",
                "skill-card",
            )
        ]
        known, nobody, lowered = await asyncio.to_thread(
            lambda: [
                get(*(p.format(name) for p in doer_api))
                for name in (doer, f"Nobody{suffix}", doer.lower())
            ]
        )
    finally:
        await drop_database(postgres_server, name)
    assert page.status_code == 200, page.text
    assert 'id="no-runs"' in page.text and 'id="crl-chart"' not in page.text
    assert f'href="/canaries/{deployment}"' in page.text  # its policy history
    assert 'class="text action">start_canary<' in page.text
    assert unknown.status_code == 404
    assert f"no runs, policies or experiments of Nobody{suffix}" in unknown.text
    # A tenant is a tenant's runs: one with none (a typo) has no page.
    assert typo.status_code == 404 and f"no runs of {doer} of tenant nobody" in typo.text
    # A browser asking for a page gets a page (with the console's links), the API JSON.
    assert browsed.status_code == 404 and browsed.headers["content-type"].startswith("text/html")
    assert f"no runs, policies or experiments of Nobody{suffix}" in browsed.text
    assert 'id="nav"' in browsed.text
    assert api.status_code == 404 and api.json()["detail"] == "no deployment no-such-deployment"
    # The doer's name in another case (as policy ids are written) leads to its page.
    assert folded.status_code == 200 and folded.url.path == f"/doers/{doer}", folded.url
    # Known with a policy and no run: empty lists (no card yet: its own 404).
    assert [r.status_code for r in known] == [200] * 6 + [404]
    assert all(r.json() == [] for r in known[:2]) and known[3].json()
    assert [r.status_code for r in nobody + lowered] == [404] * 14
    assert all(f"of doer 'Nobody{suffix}'" in r.json()["detail"] for r in nobody)
    assert all(f"did you mean {doer!r}?" in r.json()["detail"] for r in lowered)


async def test_a_doers_trend_of_one_tenant_counts_that_tenants_runs_only(
    db: Any, database_url: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    doer = f"TwoTenants{suffix}a"
    mine = _runs({"a": doer})
    theirs = [(*run[:5], round(run[5] + 0.3, 6)) for run in mine[::2]]
    await _insert_runs(db, mine, tenant=f"ta-{suffix}")
    await _insert_runs(db, theirs, tenant=f"tb-{suffix}")
    for tenant, runs in ((f"ta-{suffix}", mine), (f"tb-{suffix}", theirs)):
        want = _trend(runs, key=lambda run: run[0])
        got = await dashboard.doer_trend(db, doer, tenant=tenant)
        assert [row["day"] for row in got] == sorted({run[4] for run in runs})
        for row in got:
            mean, base = want[(doer, row["day"])]
            assert row["runs"] == sum(1 for run in runs if run[4] == row["day"])
            assert row["mean_crl"] == pytest.approx(mean)
            if row["baseline_crl"] is not None:
                assert row["baseline_crl"] == pytest.approx(base)
        phases = await dashboard.doer_trend_by_phase(db, doer, tenant=tenant)
        want_phases = _trend(runs, key=lambda run: run[1])
        assert {(r["phase"], r["day"]): r["mean_crl"] for r in phases} == pytest.approx(
            {key: mean for key, (mean, _) in want_phases.items()}
        )
    # Without a tenant: both tenants' runs together, as before.
    every = await dashboard.doer_trend(db, doer)
    assert sum(r["runs"] for r in every) == len(mine) + len(theirs)
    # The doer list of one tenant: its 7-day mean from that tenant's runs only.
    for tenant, runs in ((f"ta-{suffix}", mine), (f"tb-{suffix}", theirs)):
        listed = {r["doer"]: r for r in await dashboard.doers(db, tenant)}
        assert set(listed) == {doer}
        last = max(run[4] for run in runs)
        week = [run[5] for run in runs if run[4] > last - timedelta(days=7)]
        assert listed[doer]["day"] == last
        assert listed[doer]["mean_crl_7d"] == pytest.approx(sum(week) / len(week))

    def fetch() -> Any:
        with served(database_url) as client:
            return client.get(f"/api/doers/{doer}/trend?tenant=tb-{suffix}&days=30")

    response = await asyncio.to_thread(fetch)
    assert response.status_code == 200, response.text
    assert sum(r["runs"] for r in response.json()) == len(theirs)


async def test_each_tenant_has_its_card_and_the_api_filters_by_tenant(
    db: Any, database_url: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    doer, t1, t2 = f"ConcernT{suffix}", f"t1-{suffix}", f"t2-{suffix}"
    # Gates of this test's own: the other tests count the failure modes of every card.
    lint, tests = f"lint-{suffix}", f"tests-{suffix}"
    assert await store_card(db, _card(doer, 0.2, {lint: 4}, tenant=t1))
    assert await store_card(db, _card(doer, 0.7, {tests: 1}, tenant=t2))
    assert await store_card(db, _card(f"ConcernU{suffix}", 0.9, {lint: 1}, tenant=t1))

    def fetch() -> list[Any]:
        with served(database_url) as client:
            return [
                client.get(f"/api/doers/{doer}/skill-card"),
                client.get(f"/api/doers/{doer}/skill-card?tenant={t2}"),
                client.get(f"/api/skills?tenant={t1}"),
            ]

    ambiguous, second, ranked = await asyncio.to_thread(fetch)
    # Two tenants' cards: the API names them rather than pick one.
    assert ambiguous.status_code == 409 and f"{t1}, {t2}" in ambiguous.text
    assert second.status_code == 200, second.text
    assert (second.json()["tenant_id"], second.json()["mean_crl"]) == (t2, 0.7)
    overview = ranked.json()
    assert overview["tenant"] == t1
    assert {r["tenant_id"] for r in overview["top"] + overview["struggling"]} == {t1}
    assert [r["doer"] for r in overview["top"]] == [doer, f"ConcernU{suffix}"]
    assert {m["gate"]: (m["doers"], m["failures"]) for m in overview["failure_modes"]} == {
        lint: (2, 5)
    }
    by_tenant = await dashboard.skill_cards(db, doer)
    assert [(c["tenant_id"], c["mean_crl"]) for c in by_tenant] == [(t1, 0.2), (t2, 0.7)]


async def test_api_and_pages_show_the_figures_of_the_views(
    db: Any, database_url: str, seeded: dict[str, Any]
) -> None:
    doer = seeded["doers"]["a"]
    responses = await asyncio.to_thread(
        _get,
        database_url,
        "/api/crl/trend/phases?days=30",
        f"/api/doers/{doer}/trend/phases",
        f"/api/doers/{doer}/trend/policies",
        f"/api/doers/{doer}/skill-card",
        f"/api/doers/{doer}/policy-history",
        f"/api/doers/{doer}/experiments",
        "/api/progress",
        "/api/policies",
        "/api/skills",
        "/progress",
        "/policies",
        "/skills",
        f"/doers/{doer}",
        "/openapi.json",
        "/",
    )
    phases, d_phases, d_policies, card, history, experiments = (r.json() for r in responses[:6])
    progress, policies, skills = (r.json() for r in responses[6:9])
    progress_page, policies_page, skills_page, doer_page = (r.text for r in responses[9:13])
    spec = responses[13].json()

    expected = await dashboard.crl_trend_by_phase(db)
    assert [(r["phase"], r["day"]) for r in phases] == [
        (r["phase"], str(r["day"])) for r in expected
    ]
    assert [r["mean_crl"] for r in phases] == pytest.approx([r["mean_crl"] for r in expected])
    assert len(d_phases) == len(await dashboard.doer_trend_by_phase(db, doer))
    assert {r["policy_version"] for r in d_policies} == {1, 2}
    assert card["doer"] == doer and card["mean_crl"] == 0.25
    assert [r["action"] for r in history][:2] == ["promote", "start_canary"]
    assert {r["experiment_id"]: r["improvement"] is not None for r in experiments} == {
        f"exp-{seeded['suffix']}-0": True,
        f"exp-{seeded['suffix']}-2": False,
    }
    assert progress["by_type"][0]["success_rate"] == pytest.approx(0.5)
    assert policies["weeks"][0]["rollbacks"] == 1 and policies["in_flight"]["canary"] == 0
    assert skills["failure_modes"][0] == {"gate": "lint", "doers": 2, "failures": 5}
    for path in ("/api/progress", "/api/policies", "/api/skills", "/api/crl/trend/phases"):
        assert path in spec["paths"], path

    improvement = progress["promoted"][0]["improvement"]
    assert f"{improvement:+.4f}" in progress_page
    assert 'data-type="prompt_synthesis"' in progress_page
    assert 'class="rollback-rate">0.250<' in policies_page
    assert f'data-doer="{doer}"' in policies_page and f"{doer.lower()}@2" in policies_page
    assert 'data-gate="lint"><td class="text">lint</td><td class="doers">2<' in skills_page
    for row in d_phases:
        assert f'data-key="{row["phase"]}/{row["day"]}"' in doer_page
        assert f"{row['mean_crl']:.4f}" in doer_page
    assert f'class="mean-crl">{0.25:.4f}<' in doer_page and "exp-" in doer_page

    overview = responses[14].text
    doers = await dashboard.doers(db)
    rising = sorted(
        (r for r in doers if r["delta_vs_baseline"] is not None),
        key=lambda r: -r["delta_vs_baseline"],
    )
    listed = re.findall(r'class="doer-link" href="/doers/([^"]+)"', overview)
    assert listed[: len(rising)] == [r["doer"] for r in rising][: len(listed)]
    assert f'id="doer-count">{len(doers)}<' in overview
    active = await dashboard.active_policies(db)
    assert f'id="active-count">{len(active)}<' in policies_page


async def test_overview_to_doer_to_canary_in_chromium_shows_the_database_figures(
    db: Any, console_url: str, browser: Any, seeded: dict[str, Any]
) -> None:
    """Overview → doer (skill card, phase and policy trends, history) → canary; screenshots."""
    from selenium.webdriver.common.by import By

    doer = seeded["doers"]["a"]
    phases = await dashboard.crl_trend_by_phase(db)
    doer_phases = await dashboard.doer_trend_by_phase(db, doer)
    doer_policies = await dashboard.doer_trend_by_policy(db, doer)

    browser.get(f"{console_url}/")
    overview_phases = table_rows(browser, "phase-table", "data-key", "mean-crl")
    chart_drawn(browser, "phase-chart")
    browser.find_element(By.LINK_TEXT, doer).click()
    assert browser.find_element(By.ID, "doer").text == doer
    card = browser.find_element(By.CSS_SELECTOR, "#skill-card .mean-crl").text
    shown_phases = table_rows(browser, "phase-table", "data-key", "mean-crl")
    shown_policies = table_rows(browser, "policy-table", "data-key", "mean-crl")
    history = table_rows(browser, "history-table", "data-id", "action")
    for chart in ("crl-chart", "phase-chart", "policy-chart"):
        chart_drawn(browser, chart)
    browser.save_screenshot(str(SCREENSHOTS / "console-doer.png"))
    browser.find_element(By.CSS_SELECTOR, "#history-table a.canary-link").click()
    canary_title = browser.title

    assert overview_phases == [(f"{r['phase']}/{r['day']}", f"{r['mean_crl']:.4f}") for r in phases]
    assert card == "0.2500"
    assert shown_phases == [
        (f"{r['phase']}/{r['day']}", f"{r['mean_crl']:.4f}") for r in doer_phases
    ]
    assert shown_policies == [
        (f"{r['policy_id']}@{r['policy_version']}/{r['day']}", f"{r['mean_crl']:.4f}")
        for r in doer_policies
    ]
    assert [action for _, action in history][:2] == ["promote", "start_canary"]
    assert seeded["deployments"]["a"] in browser.page_source, canary_title


async def test_progress_policies_and_skills_pages_in_chromium(
    db: Any, console_url: str, browser: Any, seeded: dict[str, Any]
) -> None:
    """Each concern page in Chromium against its query; saves their screenshots."""
    by_type = await dashboard.experiment_success_by_type(db)
    weeks = await dashboard.policy_moves_per_week(db)
    modes = await dashboard.failure_modes(db)

    browser.get(f"{console_url}/progress")
    types = table_rows(browser, "types-table", "data-type", "success-rate", "improvement")
    chart_drawn(browser, "experiments-chart")
    browser.save_screenshot(str(SCREENSHOTS / "console-progress.png"))
    browser.get(f"{console_url}/policies")
    shown_weeks = table_rows(browser, "weeks-table", "data-week", "promotions", "rollbacks")
    chart_drawn(browser, "moves-chart")
    browser.save_screenshot(str(SCREENSHOTS / "console-policies.png"))
    browser.get(f"{console_url}/skills")
    shown_modes = table_rows(browser, "failures-table", "data-gate", "doers", "failures")
    chart_drawn(browser, "failures-chart")
    browser.save_screenshot(str(SCREENSHOTS / "console-skills.png"))

    assert types == [
        (
            r["experiment_type"],
            f"{r['success_rate']:.3f}",
            "–" if r["mean_improvement"] is None else f"{r['mean_improvement']:+.4f}",
        )
        for r in by_type
    ]
    assert shown_weeks == [
        (str(r["week"]), str(r["promotions"]), str(r["rollbacks"])) for r in weeks
    ]
    assert shown_modes == [(r["gate"], str(r["doers"]), str(r["failures"])) for r in modes]


async def test_the_doer_list_has_the_figures_of_each_doer_s_latest_day_in_the_trend_view(
    db: Any, seeded: dict[str, Any]
) -> None:
    expected = await db.fetch(
        "SELECT DISTINCT ON (doer) doer, day, mean_crl_7d, delta_vs_baseline"
        " FROM v_crl_trend_by_doer ORDER BY doer, day DESC"
    )
    shown = await dashboard.doers(db)
    assert [(r["doer"], r["day"]) for r in shown] == [(r["doer"], r["day"]) for r in expected]
    assert seeded["doers"]["a"] in {r["doer"] for r in shown}
    for row, want in zip(shown, expected, strict=True):
        assert row["mean_crl_7d"] == pytest.approx(want["mean_crl_7d"])
        if want["delta_vs_baseline"] is None:
            assert row["delta_vs_baseline"] is None
        else:
            assert row["delta_vs_baseline"] == pytest.approx(want["delta_vs_baseline"])
