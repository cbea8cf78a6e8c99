"""The operator console's queries against the real PostgreSQL (issue 18)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from learning.signing import generate_key
from models.events import Alert
from storage import canary as canary_store
from storage import deployments as deployments_store
from storage import policy_commands as commands_store
from storage import signing_keys as keys_store
from storage.alerts import insert_alerts
from storage.dashboard import (
    alerts_after,
    canaries,
    canary_decisions,
    crl_trend_overall,
    dead_letters_by_reason,
    dead_letters_by_stage,
    decisions_after,
    doer_trend,
    experiments_per_day,
)
from storage.dead_letters import DeadLetterRecord, insert_dead_letters
from tests.integration import console_fixtures
from tests.integration.console_fixtures import (
    SCREENSHOTS,
    chart_drawn,
    decisions_made,
    served,
    start_canary,
    table_rows,
)

# The console's fixtures, shared with test_console_concerns.py (module-scoped: each
# module gets a database of its own).
database_url = console_fixtures.database_url
db = console_fixtures.db
console_url = console_fixtures.console_url
browser = console_fixtures.browser


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


async def test_api_and_overview_show_the_database_figures(db: Any, database_url: str) -> None:
    import asyncio

    await db.execute(
        "INSERT INTO learning_progress (doer, day, runs, mean_crl, m2) VALUES"
        " ('console-c', $1, 5, 0.5, 0)"
        " ON CONFLICT DO NOTHING",
        date(2001, 1, 3),
    )
    expected = await db.fetch("SELECT day, runs, mean_crl FROM v_crl_trend_overall ORDER BY day")
    shown = await crl_trend_overall(db)

    def call() -> tuple[Any, str, Any, int]:
        with served(database_url) as client:
            api = client.get("/api/crl/trend", params={"days": 10000}).json()
            page = client.get("/").text
            spec = client.get("/openapi.json").json()
            js = client.get("/static/plotly.min.js").status_code
        return api, page, spec, js

    api, page, spec, js = await asyncio.to_thread(call)
    assert [(row["day"], row["runs"]) for row in api] == [
        (str(r["day"]), r["runs"]) for r in expected
    ]
    assert [row["mean_crl"] for row in api] == pytest.approx([r["mean_crl"] for r in expected])
    assert "/api/crl/trend" in spec["paths"] and "/api/experiments/per-day" in spec["paths"]
    for row in shown:
        assert f'data-day="{row["day"]}"' in page and f"{row['mean_crl']:.4f}" in page
    assert js == 200


@pytest.fixture(scope="module")
async def seeded_canaries(db: Any) -> dict[str, str]:
    """Two deployments: 'running' (in flight, six decisions) and 'ended' (rolled back)."""
    key = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="tests", note="console")
    start = datetime.now(UTC)
    running_doer = f"ConsoleRunning{uuid.uuid4().hex[:6]}"
    ended_doer = f"ConsoleEnded{uuid.uuid4().hex[:6]}"
    ended = await start_canary(db, key, ended_doer)
    running = await start_canary(db, key, running_doer)
    actions = ["report", "step_up", "report", "step_up", "report", "report"]
    made = decisions_made(running_doer, running, actions, start)
    assert await canary_store.insert_decisions(db, made) == len(actions)
    for decision in made:
        if decision.action == "step_up":
            assert (await deployments_store.apply_step(db, decision)).applied
    # An operator held it and let it go on: audited moves beside the step-ups.
    for pause in (True, False):
        held = await deployments_store.operator_pause(
            db, running_doer, running, pause=pause, event_id=uuid.uuid4(), actor="ops", reason="x"
        )
        assert held.applied
    ended_decisions = decisions_made(ended_doer, ended, ["report", "rollback"], start)
    await canary_store.insert_decisions(db, ended_decisions)
    rolled_back = await commands_store.apply_decision(db, ended_decisions[-1])
    assert rolled_back is not None and rolled_back.applied, rolled_back
    return {"running": running, "ended": ended}


async def test_canaries_are_listed_in_flight_first_with_their_latest_decision(
    db: Any, seeded_canaries: dict[str, str]
) -> None:
    listed = {row["deployment_id"]: row for row in await canaries(db)}
    running = listed[seeded_canaries["running"]]
    ended = listed[seeded_canaries["ended"]]
    assert (running["in_flight"], running["state"]) == (True, "running")
    assert (ended["in_flight"], ended["state"]) == (False, "rolled_back")
    order = [row["deployment_id"] for row in await canaries(db)]
    assert order.index(seeded_canaries["running"]) < order.index(seeded_canaries["ended"])
    assert [row["in_flight"] for row in await canaries(db)] == sorted(
        (row["in_flight"] for row in listed.values()), reverse=True
    )
    for deployment_id, row in listed.items():
        latest = await db.fetchrow(
            "SELECT action, count(*) OVER () AS n FROM deployment_decisions"
            " WHERE deployment_id = $1 ORDER BY decided_at DESC, id DESC LIMIT 1",
            deployment_id,
        )
        stored = await db.fetchrow(
            "SELECT step, allocation, mode, version, control_version FROM shadow_deployments"
            " WHERE deployment_id = $1",
            deployment_id,
        )
        assert row["latest_action"] == (latest["action"] if latest else None)
        assert row["decisions"] == (latest["n"] if latest else 0)
        assert (row["step"], row["allocation"], row["mode"]) == (
            stored["step"],
            stored["allocation"],
            stored["mode"],
        )
        assert (row["candidate_version"], row["control_version"]) == (2, 1)
    assert running["latest_action"] == "report" and running["decisions"] == 6
    assert ended["latest_action"] == "rollback" and ended["decisions"] == 2
    only_running = await canaries(db, in_flight=True)
    assert seeded_canaries["running"] in {row["deployment_id"] for row in only_running}
    assert all(row["in_flight"] for row in only_running)


async def test_canary_decisions_carry_the_results_and_interval_of_their_report(
    db: Any, seeded_canaries: dict[str, str]
) -> None:
    shown = await canary_decisions(db, seeded_canaries["running"])
    stored = await canary_store.decisions(db, seeded_canaries["running"])
    assert [row["action"] for row in shown] == [d.action for d in stored]
    for row, decision in zip(shown, stored, strict=True):
        report = decision.report
        assert row["results"] == report["control_count"] + report["candidate_count"]
        assert row["delta"] == pytest.approx(report["delta"])
        assert row["ci_low"] == report["ci_low"] and row["ci_high"] == report["ci_high"]
    widths = [row["ci_high"] - row["ci_low"] for row in shown if row["ci_low"] is not None]
    assert shown[0]["ci_low"] is None and len(widths) == 5
    assert widths == sorted(widths, reverse=True), "the seeded interval narrows"


async def test_canary_api_and_pages_show_the_database_figures(
    db: Any, database_url: str, seeded_canaries: dict[str, str]
) -> None:
    import asyncio

    running = seeded_canaries["running"]
    listed = await canaries(db)
    decisions = await canary_decisions(db, running)

    def call() -> dict[str, Any]:
        with served(database_url) as client:
            return {
                "list": client.get("/api/canaries").json(),
                "detail": client.get(f"/api/canaries/{running}").json(),
                "missing": client.get("/api/canaries/no-such-deployment").status_code,
                "missing_page": client.get("/canaries/no-such-deployment").status_code,
                "spec": client.get("/openapi.json").json(),
                "list_page": client.get("/canaries").text,
                "page": client.get(f"/canaries/{running}").text,
                "overview": client.get("/").text,
            }

    got = await asyncio.to_thread(call)
    assert [row["deployment_id"] for row in got["list"]] == [r["deployment_id"] for r in listed]
    assert [row["latest_action"] for row in got["list"]] == [r["latest_action"] for r in listed]
    detail = got["detail"]
    assert detail["deployment"]["deployment_id"] == running
    assert [(d["id"], d["results"], d["ci_low"]) for d in detail["decisions"]] == [
        (d["id"], d["results"], d["ci_low"]) for d in decisions
    ]
    assert [(m["action"], m["to_step"], m["outcome"]) for m in detail["moves"]] == [
        ("step_up", 1, "applied"),
        ("step_up", 2, "applied"),
        ("pause", 2, "applied"),
        ("resume", 2, "applied"),
    ]
    for move in detail["moves"]:
        assert f'data-move="{move["id"]}"' in got["page"]
    assert "resumed at step 2" in got["page"] and 'id="no-moves"' not in got["page"]
    assert got["missing"] == 404 and got["missing_page"] == 404
    paths = got["spec"]["paths"]
    assert "/api/canaries" in paths and "/api/canaries/{deployment_id}" in paths
    schemas = got["spec"]["components"]["schemas"]
    assert {"CanarySummary", "CanaryDecision", "CanaryDetail", "CanaryMove"} <= set(schemas)
    assert f'data-deployment="{running}"' in got["list_page"]
    assert f'data-deployment="{seeded_canaries["ended"]}"' in got["list_page"]
    for row in decisions:
        assert f'data-decision="{row["id"]}"' in got["page"]
        assert f"{row['delta']:+.4f}" in got["page"]
        if row["ci_low"] is not None:
            assert f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]" in got["page"]
    assert f'href="/canaries/{running}"' in got["overview"]
    assert f'href="/canaries/{seeded_canaries["ended"]}"' not in got["overview"]


LETTERS = [  # (stage, error_type, reason, doer, minutes after the first)
    ("crl", "schema", "qav.grounding_score: 1.4 is above 1", "PRDWriter", 0),
    ("crl", "schema", "qav.grounding_score: 1.4 is above 1", "PRDWriter", 5),
    ("crl", "schema", "qav.grounding_score: 1.4 is above 1", "Planner", 9),
    ("crl", "json", "Invalid JSON: EOF while parsing a string at line 1 column 40", "unknown", 3),
    ("crl", "json", "Invalid JSON: EOF while parsing a string at line 1 column 44", "unknown", 4),
    ("curator", "curation", "artifact text is empty", "PRDWriter", 7),
]


@pytest.fixture(scope="module")
async def seeded_dead_letters(db: Any) -> list[DeadLetterRecord]:
    """Five letters of two stages and three reasons, minutes apart."""
    start = datetime(2001, 1, 6, 8, tzinfo=UTC)
    records = [
        DeadLetterRecord(
            event_id=uuid.uuid4(),
            doer=doer,
            stage=stage,
            error_type=error_type,
            reason=reason,
            topic="learning.run-completed",
            partition=n % 4,
            offset=100 + n,
            consumer="learnops",
            payload_size=512,
            occurred_at=start + timedelta(minutes=minutes),
        )
        for n, (stage, error_type, reason, doer, minutes) in enumerate(LETTERS)
    ]
    assert await insert_dead_letters(db, records) == len(records)
    assert await insert_dead_letters(db, records) == 0, "a redelivered letter adds a row"
    return records


async def test_a_record_two_app_ids_refused_is_counted_once(db: Any) -> None:
    """Workers of two app ids each refuse a bad record and write their own letter: the
    console counted that input twice (a platform engineer's walk, 2026-12-06)."""
    stage = f"twice-{uuid.uuid4().hex[:8]}"

    def letter(consumer: str, offset: int) -> DeadLetterRecord:
        return DeadLetterRecord(
            event_id=uuid.uuid4(),
            doer="PRDWriter",
            stage=stage,
            error_type="schema",
            reason="qav.claims: -1 is below 0",
            topic="learning.run-completed",
            partition=1,
            offset=offset,
            consumer=consumer,
            payload_size=100,
            occurred_at=datetime(2001, 1, 7, 8, tzinfo=UTC),
        )

    records = [letter("learnops", 7), letter("learnops-b", 7), letter("learnops", 8)]
    try:
        assert await insert_dead_letters(db, records) == 3  # every letter is kept
        by_stage = {row["stage"]: row for row in await dead_letters_by_stage(db)}
        assert by_stage[stage]["letters"] == 2
        by_reason = await dead_letters_by_reason(db, 100_000)
        assert [row["letters"] for row in by_reason if row["stage"] == stage] == [2]
    finally:  # the other tests here count every letter in the table
        await db.execute("DELETE FROM dead_letters WHERE stage = $1", stage)


async def test_dead_letters_are_counted_by_stage_and_reason_with_the_latest_time(
    db: Any, seeded_dead_letters: list[DeadLetterRecord]
) -> None:
    by_stage = {row["stage"]: row for row in await dead_letters_by_stage(db)}
    # One cause found at two columns of the record is one reason (the letters keep theirs).
    for stage, reasons in (("crl", 2), ("curator", 1)):
        mine = [r for r in seeded_dead_letters if r.stage == stage]
        assert by_stage[stage]["letters"] == len(mine)
        assert by_stage[stage]["reasons"] == reasons
        assert by_stage[stage]["latest_at"] == max(r.occurred_at for r in mine)
    by_reason = await dead_letters_by_reason(db)
    truncated = [row for row in by_reason if row["reason"].startswith("Invalid JSON: EOF")]
    assert [(row["reason"], row["letters"]) for row in truncated] == [
        ("Invalid JSON: EOF while parsing a string at line … column …", 2)
    ]
    grounding = next(row for row in by_reason if row["reason"].startswith("qav.grounding"))
    assert (grounding["stage"], grounding["error_type"]) == ("crl", "schema")
    assert (grounding["letters"], grounding["doers"]) == (3, 2)
    assert grounding["first_at"] == seeded_dead_letters[0].occurred_at
    assert grounding["latest_at"] == seeded_dead_letters[2].occurred_at
    assert [row["latest_at"] for row in by_reason] == sorted(
        (row["latest_at"] for row in by_reason), reverse=True
    )
    assert sum(row["letters"] for row in by_reason) == await db.fetchval(
        "SELECT count(*) FROM dead_letters"
    )


async def test_dead_letter_api_and_page_show_the_counts_and_no_payload(
    db: Any, database_url: str, seeded_dead_letters: list[DeadLetterRecord]
) -> None:
    import asyncio

    by_reason = await dead_letters_by_reason(db)

    def call() -> tuple[Any, str, Any]:
        with served(database_url) as client:
            return (
                client.get("/api/dead-letters").json(),
                client.get("/dead-letters").text,
                client.get("/openapi.json").json(),
            )

    api, page, spec = await asyncio.to_thread(call)
    assert [(r["stage"], r["reason"], r["letters"]) for r in api["by_reason"]] == [
        (r["stage"], r["reason"], r["letters"]) for r in by_reason
    ]
    assert {r["stage"]: r["letters"] for r in api["by_stage"]} == {"crl": 5, "curator": 1}
    assert "/api/dead-letters" in spec["paths"]
    assert "DeadLetterSummary" in spec["components"]["schemas"]
    assert "value_b64" not in str(api) and "payload" not in str(api)
    for row in by_reason:
        assert row["reason"] in page
        assert f'<td class="letters">{row["letters"]}</td>' in page


def _alert(doer: str, n: int) -> Alert:
    return Alert(
        doer=doer,
        kind="crl_regression",
        severity="warning",
        message=f"CRL {n} % above its 7-day baseline",
        value=0.3 + n / 100,
        baseline=0.3,
        threshold=0.05,
    )


async def test_alerts_and_decisions_after_an_id_come_oldest_first(
    db: Any, seeded_canaries: dict[str, str]
) -> None:
    doer = f"ConsoleAlerted{uuid.uuid4().hex[:6]}"
    assert await insert_alerts(db, [_alert(doer, n) for n in range(3)]) == 3
    ids = [r["id"] for r in await db.fetch("SELECT id FROM alerts ORDER BY id")]
    assert [row["id"] for row in await alerts_after(db, None, limit=2)] == ids[-2:]
    assert [row["id"] for row in await alerts_after(db, ids[0])] == ids[1:]
    assert await alerts_after(db, ids[-1]) == []
    decision_ids = [
        r["id"] for r in await db.fetch("SELECT id FROM deployment_decisions ORDER BY id")
    ]
    assert [row["id"] for row in await decisions_after(db, None, limit=3)] == decision_ids[-3:]
    assert [row["id"] for row in await decisions_after(db, decision_ids[1], limit=2)] == (
        decision_ids[2:4]
    )


async def _read_events(
    lines: Any, wanted: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Server-sent events from LINES until WANTED(events) holds; raises TimeoutError after 15 s."""
    import asyncio
    import json

    events: list[dict[str, Any]] = []
    event: dict[str, Any] = {}
    async with asyncio.timeout(15):
        async for line in lines:
            if line.startswith(("event: ", "id: ")):
                name, _, value = line.partition(": ")
                event[name] = value
            elif line.startswith("data: "):
                event["data"] = json.loads(line.removeprefix("data: "))
            elif not line and event:
                events.append(event)
                event = {}
                if wanted(events):
                    return events
    raise AssertionError(f"the stream ended after {len(events)} events")


async def test_the_live_stream_sends_the_latest_rows_then_each_new_one_and_resumes(
    db: Any, console_url: str, seeded_canaries: dict[str, str]
) -> None:
    import httpx

    doer = f"ConsoleLive{uuid.uuid4().hex[:6]}"
    await insert_alerts(db, [_alert(doer, 1)])
    latest_alerts = await alerts_after(db, None)
    latest_decisions = await decisions_after(db, None)
    async with (
        httpx.AsyncClient(base_url=console_url, timeout=20) as client,
        client.stream("GET", "/api/live/stream") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        first = await _read_events(
            lines, lambda got: len(got) == len(latest_alerts) + len(latest_decisions)
        )
        assert [e["data"]["id"] for e in first if e["event"] == "alert"] == [
            row["id"] for row in latest_alerts
        ]
        assert [e["data"]["id"] for e in first if e["event"] == "decision"] == [
            row["id"] for row in latest_decisions
        ]
        new_alert = _alert(doer, 7)
        await insert_alerts(db, [new_alert])
        stored = await db.fetchrow(
            "SELECT id, value FROM alerts WHERE event_id = $1", new_alert.event_id
        )
        (arrived,) = await _read_events(lines, lambda got: len(got) == 1)
    assert arrived["event"] == "alert" and arrived["data"]["id"] == stored["id"]
    assert arrived["data"]["value"] == pytest.approx(stored["value"])
    assert arrived["id"] == f"{stored['id']}:{latest_decisions[-1]['id']}"

    # A client that reconnects with the last id it saw gets only what came after.
    later = _alert(doer, 9)
    await insert_alerts(db, [later])
    async with (
        httpx.AsyncClient(base_url=console_url, timeout=20) as client,
        client.stream(
            "GET", "/api/live/stream", headers={"Last-Event-ID": arrived["id"]}
        ) as response,
    ):
        (resumed,) = await _read_events(response.aiter_lines(), lambda got: len(got) == 1)
    assert resumed["data"]["message"] == later.message


# --------------------------------------------------------------------------- in a real browser


async def test_overview_in_headless_chromium_shows_the_database_figures(
    db: Any, console_url: str, browser: Any
) -> None:
    """The overview and a doer's page, clicked through; saves their screenshots."""
    from selenium.webdriver.common.by import By

    await db.executemany(
        "INSERT INTO learning_progress (doer, day, runs, mean_crl, m2) VALUES"
        " ('console-d', $1, 4, $2, 0) ON CONFLICT DO NOTHING",
        [(date(2001, 1, 2), 0.6), (date(2001, 1, 3), 0.4), (date(2001, 1, 4), 0.25)],
    )
    shown = await crl_trend_overall(db)
    doer_shown = await doer_trend(db, "console-d")

    browser.get(f"{console_url}/")
    rows = table_rows(browser, "crl-table", "data-day", "mean-crl")
    chart_drawn(browser, "crl-chart")
    browser.save_screenshot(str(SCREENSHOTS / "console-overview.png"))
    browser.find_element(By.LINK_TEXT, "console-d").click()
    assert browser.find_element(By.ID, "doer").text == "console-d"
    doer_rows = table_rows(browser, "crl-table", "data-day", "mean-crl")
    chart_drawn(browser, "crl-chart")

    assert rows == [(str(row["day"]), f"{row['mean_crl']:.4f}") for row in shown]
    assert doer_rows == [(str(row["day"]), f"{row['mean_crl']:.4f}") for row in doer_shown]
    assert doer_rows, "the doer page shows no days"


async def test_a_canary_clicked_from_the_overview_shows_its_decisions_and_interval(
    db: Any, console_url: str, browser: Any, seeded_canaries: dict[str, str]
) -> None:
    """Overview → canary page in Chromium: decisions and chart against the database."""
    from selenium.webdriver.common.by import By

    running = seeded_canaries["running"]
    decisions = await canary_decisions(db, running)
    listed = await canaries(db)

    browser.get(f"{console_url}/")
    browser.find_element(By.LINK_TEXT, running).click()
    assert browser.find_element(By.ID, "deployment").text == running
    rows = table_rows(browser, "decisions-table", "data-decision", "action", "results", "interval")
    chart_drawn(browser, "interval-chart")
    charted = browser.execute_script(
        "const data = document.getElementById('interval-chart').data;"
        "return {results: data[2].x, low: data[1].y, moves: data[3].x, labels: data[3].text};"
    )
    browser.save_screenshot(str(SCREENSHOTS / "console-canary.png"))
    browser.find_element(By.LINK_TEXT, "canaries").click()
    listed_rows = table_rows(browser, "canaries-table", "data-deployment", "state", "latest-action")
    browser.save_screenshot(str(SCREENSHOTS / "console-canaries.png"))

    assert rows == [
        (
            str(row["id"]),
            row["action"],
            str(row["results"]),
            "–" if row["ci_low"] is None else f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]",
        )
        for row in decisions
    ]
    assert charted["results"] == [row["results"] for row in decisions]
    assert charted["low"] == pytest.approx([row["ci_low"] for row in decisions], nan_ok=True)
    moves = [row for row in decisions if row["action"] != "report"]
    assert len(moves) == 2
    assert charted["moves"] == [row["results"] for row in moves]
    assert charted["labels"] == ["step_up", "step_up"]
    assert listed_rows == [
        (row["deployment_id"], row["state"], row["latest_action"] or "–") for row in listed
    ]


async def test_the_dead_letter_page_in_chromium_shows_the_counts_of_the_database(
    db: Any, console_url: str, browser: Any, seeded_dead_letters: list[DeadLetterRecord]
) -> None:
    from selenium.webdriver.common.by import By

    by_stage = await dead_letters_by_stage(db)
    by_reason = await dead_letters_by_reason(db)

    browser.get(f"{console_url}/")
    browser.find_element(By.LINK_TEXT, "dead letters").click()
    stages = table_rows(browser, "stages-table", "data-stage", "letters", "latest")
    reasons = table_rows(browser, "reasons-table", "data-stage", "error-type", "reason", "letters")
    browser.save_screenshot(str(SCREENSHOTS / "console-dead-letters.png"))

    assert stages == [
        (row["stage"], str(row["letters"]), row["latest_at"].strftime("%Y-%m-%d %H:%M:%S"))
        for row in by_stage
    ]
    assert reasons == [
        (row["stage"], row["error_type"], row["reason"], str(row["letters"])) for row in by_reason
    ]


async def test_the_live_page_in_chromium_appends_a_new_alert_without_a_reload(
    db: Any, console_url: str, browser: Any, seeded_canaries: dict[str, str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    alerts = await alerts_after(db, None)
    decisions = await decisions_after(db, None)

    browser.get(f"{console_url}/")
    browser.find_element(By.LINK_TEXT, "live").click()
    WebDriverWait(browser, 10).until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#decisions-table tr[data-decision]"))
            == len(decisions)
            and len(d.find_elements(By.CSS_SELECTOR, "#alerts-table tr[data-alert]")) == len(alerts)
        )
    )
    page = browser.execute_script("return performance.timeOrigin")
    alert = Alert(
        doer="ConsoleLivePage",
        kind="canary_rollback",
        severity="critical",
        message="canary rolled back: candidate CRL 6 % above control",
        value=0.0612,
        threshold=0.05,
    )
    await insert_alerts(db, [alert])
    alert_id = await db.fetchval("SELECT id FROM alerts WHERE event_id = $1", alert.event_id)
    WebDriverWait(browser, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#alerts-table tr[data-alert="{alert_id}"]')
    )
    top = browser.find_element(By.CSS_SELECTOR, "#alerts-table tbody tr")
    shown = (
        top.get_attribute("data-alert"),
        top.find_element(By.CLASS_NAME, "kind").text,
        top.find_element(By.CLASS_NAME, "value").text,
    )
    decision_rows = table_rows(browser, "decisions-table", "data-decision", "action", "results")
    assert browser.execute_script("return performance.timeOrigin") == page, "the page reloaded"
    assert browser.find_element(By.ID, "live-state").text == "live"
    browser.save_screenshot(str(SCREENSHOTS / "console-live.png"))

    assert shown == (str(alert_id), "canary_rollback", "0.0612")
    assert decision_rows == [
        (str(row["id"]), row["action"], str(row["results"])) for row in reversed(decisions)
    ]


async def test_a_database_that_stops_answering_gives_503_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The console started, then PostgreSQL went away: its pool now connects to a loopback
    # port nothing listens on. Every page and API route said a bare 500 before, and
    # logged a traceback per request.
    import httpx

    from learnops.console import create_console
    from storage.pool import create_pool
    from tests.services import free_port

    app = create_console("postgresql://unused/unused")
    app.state.pool = await create_pool(
        f"postgresql://learnops:learnops@127.0.0.1:{free_port()}/learnops", min_size=0
    )
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            api = await client.get("/api/doers")
            page = await client.get("/", headers={"accept": "text/html"})
            ready = await client.get("/readyz")
    finally:
        await app.state.pool.close()
    assert api.status_code == 503
    assert api.json()["detail"].startswith("PostgreSQL does not answer (ConnectionRefusedError)")
    assert page.status_code == 503 and "PostgreSQL does not answer" in page.text
    assert "<html" in page.text.lower()
    assert ready.status_code == 503
    warnings = [r for r in caplog.records if r.name == "learnops.console"]
    assert len(warnings) == 3 and all(r.exc_info is None for r in warnings)
