"""Fixtures of the console's tests: a database of their own, the console served on a port,
headless Chromium, and a canary started through the policy store."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from learning.signing import SigningKey, signed_artifact
from models.commands import PromotePolicy, RegisterPolicy, StartCanary
from models.events import DecisionMade, DecisionReport
from storage import policy_commands as commands_store


# The console's views aggregate over every doer and answer relative to their latest
# day, so these tests get a database of their own instead of the session's, which
# holds every earlier test's runs.
@pytest.fixture(scope="module")
async def database_url(postgres_server: str) -> Any:
    import uuid

    from tests.services import create_migrated_database, drop_database

    name = f"learnops_console_{uuid.uuid4().hex[:10]}"
    yield await create_migrated_database(postgres_server, name)
    await drop_database(postgres_server, name)


@pytest.fixture(scope="module")
async def db(database_url: str) -> Any:
    from storage.pool import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=5)
    yield pool
    await pool.close()


async def start_canary(db: Any, key: SigningKey, doer: str) -> str:
    """Register versions 1 and 2 of DOER's policy, make 1 active, start a canary of 2."""
    policy_id = doer.lower()
    for version in (1, 2):
        registered = await commands_store.apply_command(
            db,
            RegisterPolicy(
                doer=doer,
                actor="tests",
                reason="console",
                policy_id=policy_id,
                version=version,
                **signed_artifact(
                    {"prompts": {"system": "Write."}, "revision": version},
                    key,
                    doer=doer,
                    policy_id=policy_id,
                    version=version,
                ),
            ),
        )
        assert registered is not None and registered.applied, registered
    for command in (
        PromotePolicy(
            doer=doer, actor="tests", reason="first", policy_id=policy_id, version=1, force=True
        ),
        StartCanary(
            doer=doer, actor="tests", reason="try", policy_id=policy_id, version=2, force=True
        ),
    ):
        outcome = await commands_store.apply_command(db, command)
        assert outcome is not None and outcome.applied, outcome
    deployment_id = await db.fetchval(
        "SELECT deployment_id FROM shadow_deployments WHERE doer = $1 AND ended_at IS NULL", doer
    )
    assert deployment_id
    return str(deployment_id)


def decisions_made(doer: str, deployment_id: str, actions: list[str], start: datetime) -> list[Any]:
    """Decisions a minute apart, 100 more results per arm each, the interval narrowing as 1/√n.

    The first has no interval yet (too few results to estimate it).
    """
    made = []
    for n, action in enumerate(actions, start=1):
        half_width = None if n == 1 else 0.4 / math.sqrt(n)
        delta = -0.02 - 0.001 * n
        made.append(
            DecisionMade(
                doer=doer,
                occurred_at=start + timedelta(minutes=n),
                deployment_id=deployment_id,
                candidate_policy_id=doer.lower(),
                candidate_version=2,
                action=action,
                reason=f"{action} after {200 * n} results",
                step=min(n // 2, 3),
                report=DecisionReport(
                    control_mean=0.40,
                    candidate_mean=0.40 + delta,
                    control_count=100 * n,
                    candidate_count=100 * n,
                    delta=delta,
                    p_value=min(1.0, 0.5 / n),
                    ci_low=None if half_width is None else delta - half_width,
                    ci_high=None if half_width is None else delta + half_width,
                    confidence=0.95,
                ),
            )
        )
    return made


# --------------------------------------------------------------------------- in a real browser

REPOSITORY = Path(__file__).resolve().parents[2]
# Where the browser tests save their screenshots: under .local/ (not tracked), so that
# `make test` leaves the checkout clean; `make screenshots` refreshes docs/screenshots.
SCREENSHOTS = Path(
    os.environ.get("LEARNOPS_SCREENSHOTS_DIR") or REPOSITORY / ".local" / "screenshots"
)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(database_url: str) -> Iterator[str]:
    """The console served by uvicorn on a free loopback port, in a thread: its base URL."""
    import threading
    import time

    import uvicorn

    from learnops.console import create_console

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_console(database_url),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=5,  # the live stream is endless
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the console did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive(), "the console did not stop"


@contextmanager
def served(database_url: str) -> Iterator[httpx.Client]:
    """An HTTP client of the console served over ``database_url`` (what an operator gets)."""
    with (
        serving(database_url) as url,
        httpx.Client(base_url=url, timeout=30.0, follow_redirects=True) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def console_url(database_url: str) -> Any:
    """The console served on a free loopback port for the module, for the browser."""
    with serving(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Any:
    """Headless Chromium from Debian's packages, driven by Selenium through chromedriver."""
    import subprocess

    from selenium import webdriver

    subprocess.run(["bash", str(REPOSITORY / "scripts" / "chromium.sh")], check=True, timeout=600)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def chart_drawn(driver: Any, chart_id: str) -> None:
    """Wait until plotly has drawn CHART_ID; raises TimeoutException if it never does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#{chart_id} .main-svg")
    )


def table_rows(driver: Any, table: str, key: str, *classes: str) -> list[tuple[str, ...]]:
    """(KEY attribute, text of each cell of CLASSES) for every row of TABLE that has KEY."""
    from selenium.webdriver.common.by import By

    return [
        (
            str(row.get_attribute(key)),
            *(row.find_element(By.CLASS_NAME, name).text for name in classes),
        )
        for row in driver.find_elements(By.CSS_SELECTOR, f"#{table} tr[{key}]")
    ]
