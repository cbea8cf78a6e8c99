"""The operator console's queries against the real PostgreSQL (issue 18)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from storage.dashboard import crl_trend_overall, doer_trend, experiments_per_day


# The console's views aggregate over every doer and answer relative to their latest
# day, so these tests get a database of their own instead of the session's, which
# holds every earlier test's runs.
@pytest.fixture(scope="module")
async def database_url(postgres_server: str) -> Any:
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    from storage.migrate import migrate
    from storage.pool import create_pool

    name = f"learnops_console_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = urlunsplit(urlsplit(postgres_server)._replace(path=f"/{name}"))
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
    finally:
        await pool.close()
    yield dsn
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def db(database_url: str) -> Any:
    from storage.pool import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=5)
    yield pool
    await pool.close()


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

    from fastapi.testclient import TestClient

    from learnops.console import create_console

    await db.execute(
        "INSERT INTO learning_progress (doer, day, runs, mean_crl, m2) VALUES"
        " ('console-c', $1, 5, 0.5, 0)"
        " ON CONFLICT DO NOTHING",
        date(2001, 1, 3),
    )
    expected = await db.fetch("SELECT day, runs, mean_crl FROM v_crl_trend_overall ORDER BY day")
    shown = await crl_trend_overall(db)

    def call() -> tuple[Any, str, Any, int]:
        with TestClient(create_console(database_url)) as client:
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_overview_in_headless_chromium_shows_the_database_figures(
    db: Any, database_url: str
) -> None:
    """Real browser: Debian's chromium + chromedriver via Selenium; saves a screenshot."""
    import asyncio
    import subprocess
    import threading
    import time
    from pathlib import Path

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    from learnops.console import create_console

    repo = Path(__file__).resolve().parents[2]
    await asyncio.to_thread(
        subprocess.run, ["bash", str(repo / "scripts" / "chromium.sh")], check=True, timeout=600
    )
    await db.executemany(
        "INSERT INTO learning_progress (doer, day, runs, mean_crl, m2) VALUES"
        " ('console-d', $1, 4, $2, 0) ON CONFLICT DO NOTHING",
        [(date(2001, 1, 2), 0.6), (date(2001, 1, 3), 0.4), (date(2001, 1, 4), 0.25)],
    )
    shown = await crl_trend_overall(db)
    doer_shown = await doer_trend(db, "console-d")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_console(database_url), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def browse() -> tuple[list[tuple[str, str]], bool, list[tuple[str, str]]]:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1000,900",
        ):
            options.add_argument(arg)
        service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
        driver = webdriver.Chrome(options=options, service=service)
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            rows = [
                (
                    str(row.get_attribute("data-day")),
                    row.find_element(By.CLASS_NAME, "mean-crl").text,
                )
                for row in driver.find_elements(By.CSS_SELECTOR, "#crl-table tr[data-day]")
            ]
            time.sleep(0.5)
            charted = bool(driver.find_elements(By.CSS_SELECTOR, "#crl-chart .main-svg"))
            out = repo / "docs" / "screenshots"
            out.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out / "console-overview.png"))
            driver.find_element(By.LINK_TEXT, "console-d").click()
            assert driver.find_element(By.ID, "doer").text == "console-d"
            doer_rows = [
                (
                    str(row.get_attribute("data-day")),
                    row.find_element(By.CLASS_NAME, "mean-crl").text,
                )
                for row in driver.find_elements(By.CSS_SELECTOR, "#crl-table tr[data-day]")
            ]
            time.sleep(0.5)
            driver.save_screenshot(str(out / "console-doer.png"))
            return rows, charted, doer_rows
        finally:
            driver.quit()

    try:
        rows, charted, doer_rows = await asyncio.to_thread(browse)
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10)
    assert rows == [(str(row["day"]), f"{row['mean_crl']:.4f}") for row in shown]
    assert charted, "the plotly chart did not render"
    assert doer_rows == [(str(row["day"]), f"{row['mean_crl']:.4f}") for row in doer_shown]
    assert doer_rows, "the doer page shows no days"
