"""The console's bandit view (issue 20): the allocations the bandit stage sent, as stored in
PostgreSQL (migration 036, storage.bandit), through the API and in Chromium."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from models.events import SkillCard
from storage import dashboard
from storage.bandit import SentAllocations, expire_allocations, record_allocations
from storage.skills import store_card
from tests.integration import console_fixtures
from tests.integration.console_fixtures import SCREENSHOTS, chart_drawn, table_rows

database_url = console_fixtures.database_url
db = console_fixtures.db
console_url = console_fixtures.console_url
browser = console_fixtures.browser

OPTIONS = ("model-a-large", "model-b-medium", "model-c-small")


def _parameter(
    doer: str, sequence: int, small: float, version: int = 1, probes: bool = False
) -> dict[str, Any]:
    """One ParameterAllocation as the record carries it: the small model at SMALL."""
    rest = (1.0 - small) / 2
    allocation: dict[str, Any] = {
        "phase": "draft",
        "parameter": "router.model",
        "policy_id": doer.lower(),
        "policy_version": version,
        "shares": {OPTIONS[0]: rest, OPTIONS[1]: rest, OPTIONS[2]: small},
        "sequence": sequence,
        "runs": 100 * sequence,
    }
    if probes:
        allocation |= {"probes": [OPTIONS[1], OPTIONS[2]], "probe_share": 0.5}
    return allocation


def _rag(doer: str, sequence: int) -> dict[str, Any]:
    return {
        "phase": "research",
        "parameter": "rag.top_k",
        "policy_id": doer.lower(),
        "policy_version": 1,
        "shares": {"4": 0.25, "8": 0.5, "16": 0.25},
        "sequence": sequence,
        "runs": 50,
    }


@pytest.fixture(scope="module")
async def seeded(db: Any) -> dict[str, Any]:
    """Doer A's shares moving to the small model over five allocations, then frozen; doer B."""
    suffix = uuid.uuid4().hex[:6]
    a, b = f"BanditA{suffix}", f"BanditB{suffix}"
    smalls = [0.02, 0.02, 0.3, 0.6, 0.9]
    sent: list[SentAllocations] = []
    for sequence, small in enumerate(smalls):
        # The rag parameter's one allocation rides along in every record of the doer.
        record = [_parameter(a, sequence, small, probes=sequence < 2), _rag(a, 1)]
        sent.append((a, sequence + 1, False, record))
    for row in sent:
        await record_allocations(db, [row])
    frozen = (a, sent[-1][1], True, sent[-1][3])
    await record_allocations(db, [frozen, (b, 0, False, [_parameter(b, 0, 1 / 3)])])
    # A restart sends a record again: the same row, sent later.
    await record_allocations(db, [frozen])
    for doer in (a, b):  # the doer page exists for a doer with a card
        assert await store_card(db, _card(doer))
    return {"a": a, "b": b, "smalls": smalls, "sent": sent, "frozen": frozen}


def _card(doer: str) -> SkillCard:
    return SkillCard(
        tenant_id="default",
        doer=doer,
        as_of="2001-03-09",
        runs=4,
        mean_crl=0.3,
        gate_pass_rate=1.0,
        content_hash=hashlib.sha256(doer.encode()).hexdigest(),
    )


async def test_a_record_sent_again_is_one_row_and_the_one_sent_last_is_in_force(
    db: Any, seeded: dict[str, Any]
) -> None:
    a = seeded["a"]
    rows = await db.fetch(
        "SELECT sequence, frozen, first_sent_at, last_sent_at FROM bandit_allocations"
        " WHERE doer = $1 ORDER BY sequence, frozen",
        a,
    )
    assert [(r["sequence"], r["frozen"]) for r in rows] == [
        (1, False),
        (2, False),
        (3, False),
        (4, False),
        (5, False),
        (5, True),
    ]
    assert rows[-1]["last_sent_at"] > rows[-1]["first_sent_at"]  # sent twice, one row
    in_force = await dashboard.bandits_in_force(db, a)
    assert [(r["phase"], r["parameter"]) for r in in_force] == [
        ("draft", "router.model"),
        ("research", "rag.top_k"),
    ]
    model, rag = in_force
    assert model["frozen"] and rag["frozen"]
    assert model["sequence"] == 4 and model["runs"] == 400
    assert model["shares"][OPTIONS[2]] == pytest.approx(0.9)
    assert model["probes"] == [] and model["probe_share"] == 0.0

    # The shares over time: each allocation of a parameter once, when first sent.
    history = await dashboard.bandit_history(db, a)
    model_history = [r for r in history if r["parameter"] == "router.model"]
    assert [r["sequence"] for r in model_history] == [0, 1, 2, 3, 4]
    assert [r["shares"][OPTIONS[2]] for r in model_history] == pytest.approx(seeded["smalls"])
    assert [r["sequence"] for r in history if r["parameter"] == "rag.top_k"] == [1]

    # Unfrozen at the same sequence: the unfrozen row, sent again, is in force again.
    await record_allocations(db, [seeded["sent"][-1]])
    assert not (await dashboard.bandits_in_force(db, a))[0]["frozen"]
    await record_allocations(db, [seeded["frozen"]])
    assert (await dashboard.bandits_in_force(db, a))[0]["frozen"]


async def test_expiry_deletes_old_allocations_and_keeps_each_doers_latest(
    db: Any, seeded: dict[str, Any]
) -> None:
    doer = f"BanditOld{uuid.uuid4().hex[:6]}"
    await record_allocations(
        db, [(doer, n, False, [_parameter(doer, n, 0.1 * n)]) for n in range(1, 4)]
    )
    # All three sent 40 days ago, the latest last: only the latest stays.
    await db.execute(
        "UPDATE bandit_allocations SET first_sent_at = now() - interval '40 days' - "
        "  (3 - sequence) * interval '1 hour', last_sent_at = now() - interval '40 days' - "
        "  (3 - sequence) * interval '1 hour' WHERE doer = $1",
        doer,
    )
    removed = await expire_allocations(db, timedelta(days=30))
    assert removed == 2
    left = await db.fetch("SELECT sequence FROM bandit_allocations WHERE doer = $1", doer)
    assert [r["sequence"] for r in left] == [3]
    assert (await dashboard.bandits_in_force(db, doer))[0]["sequence"] == 3
    # The seeded doers' recent rows are untouched.
    assert len(await dashboard.bandit_history(db, seeded["a"])) == 6


async def test_the_api_and_pages_show_the_stored_allocations(
    db: Any, console_url: str, seeded: dict[str, Any]
) -> None:
    a, b = seeded["a"], seeded["b"]
    async with httpx.AsyncClient(base_url=console_url) as client:
        every = (await client.get("/api/bandits")).json()
        of_a = (await client.get("/api/bandits", params={"doer": a})).json()
        history = (await client.get(f"/api/doers/{a}/bandits/history")).json()
        page = (await client.get("/bandits")).text
        doer_page = (await client.get(f"/doers/{a}")).text
        empty = (await client.get("/doers/" + b)).text
        spec = (await client.get("/openapi.json")).json()
        # A window or a limit out of range is the client's error (it was a 500).
        ranges = [
            (await client.get(path)).status_code
            for path in (
                f"/api/doers/{a}/bandits/history?days=99999999999",
                f"/api/doers/{a}/bandits/history?days=0",
                "/api/crl/trend?days=3000000",
                f"/api/doers/{a}/policy-history?limit=-1",
            )
        ]
    assert {(r["doer"], r["parameter"]) for r in every} >= {
        (a, "router.model"),
        (a, "rag.top_k"),
        (b, "router.model"),
    }
    stored = await dashboard.bandits_in_force(db, a)
    assert [(r["parameter"], r["shares"], r["frozen"]) for r in of_a] == [
        (r["parameter"], r["shares"], r["frozen"]) for r in stored
    ]
    assert [r["sequence"] for r in history if r["parameter"] == "router.model"] == [0, 1, 2, 3, 4]
    assert ranges == [422] * 4
    assert "/api/bandits" in spec["paths"] and "/api/doers/{doer}/bandits/history" in spec["paths"]
    assert f'data-key="{a}/draft/router.model"' in page
    assert f'data-key="{b}/draft/router.model"' in page
    assert f'data-option="{OPTIONS[2]}" data-share="0.9"' in doer_page
    assert 'class="text state">frozen<' in doer_page
    assert 'id="share-chart-1"' in doer_page and 'id="share-chart-2"' in doer_page
    # Doer B has one allocation: its table and one chart, uniform shares.
    assert f'data-key="{b}/draft/router.model"' in empty and 'id="share-chart-2"' not in empty


async def test_bandits_page_to_the_doers_shares_over_time_in_chromium(
    db: Any, console_url: str, browser: Any, seeded: dict[str, Any]
) -> None:
    from selenium.webdriver.common.by import By

    a = seeded["a"]
    stored = await dashboard.bandits_in_force(db)
    browser.get(f"{console_url}/bandits")
    shown = table_rows(browser, "bandits-table", "data-key", "state", "runs")
    browser.save_screenshot(str(SCREENSHOTS / "console-bandits.png"))
    assert shown == [
        (
            f"{r['doer']}/{r['phase']}/{r['parameter']}",
            "frozen" if r["frozen"] else "learning",
            str(r["runs"]),
        )
        for r in stored
    ]
    browser.find_element(By.CSS_SELECTOR, f'#bandits-table a.doer-link[href="/doers/{a}"]').click()
    assert browser.find_element(By.ID, "doer").text == a
    chart_drawn(browser, "share-chart-1")
    chart_drawn(browser, "share-chart-2")
    # The stacked chart has one trace per option; plotly keeps the data on the element.
    options = browser.execute_script(
        "return document.getElementById('share-chart-1').data.map(t => t.name)"
    )
    smalls = browser.execute_script(
        "return document.getElementById('share-chart-1').data"
        f".find(t => t.name === '{OPTIONS[2]}').y"
    )
    browser.find_element(By.ID, "bandits").location_once_scrolled_into_view  # noqa: B018
    browser.save_screenshot(str(SCREENSHOTS / "console-doer-bandits.png"))
    assert options == sorted(OPTIONS)
    # Each allocation, then the last one's shares held to the page's time.
    assert smalls == pytest.approx([*seeded["smalls"], seeded["smalls"][-1]])


async def test_a_record_sent_again_with_other_contents_is_what_the_row_holds(db: Any) -> None:
    doer = f"BanditTwo{uuid.uuid4().hex[:6]}"
    # A second parameter's first allocation keeps the doer's sequence (0 + 0).
    await record_allocations(db, [(doer, 0, False, [_parameter(doer, 0, 1 / 3)])])
    await record_allocations(db, [(doer, 0, False, [_parameter(doer, 0, 1 / 3), _rag(doer, 0)])])
    in_force = await dashboard.bandits_in_force(db, doer)
    assert [r["parameter"] for r in in_force] == ["router.model", "rag.top_k"]
    history = await dashboard.bandit_history(db, doer)
    assert sorted(r["parameter"] for r in history) == ["rag.top_k", "router.model"]
    # An older record sent after a newer one (a retried write) is not what is in force.
    await record_allocations(db, [(doer, 2, False, [_parameter(doer, 2, 0.5), _rag(doer, 0)])])
    await record_allocations(db, [(doer, 1, False, [_parameter(doer, 1, 0.2), _rag(doer, 0)])])
    model = (await dashboard.bandits_in_force(db, doer))[0]
    assert model["sequence"] == 2 and model["shares"][OPTIONS[2]] == pytest.approx(0.5)
    # And expiry keeps that row, not the one sent last.
    await db.execute(
        "UPDATE bandit_allocations SET first_sent_at = now() - interval '40 days' WHERE doer = $1",
        doer,
    )
    assert await expire_allocations(db, timedelta(days=30)) == 2
    left = await db.fetch("SELECT sequence FROM bandit_allocations WHERE doer = $1", doer)
    assert [r["sequence"] for r in left] == [2]


async def test_shares_of_a_version_the_active_one_replaced_are_shown_as_such(
    db: Any, console_url: str
) -> None:
    """A version that fixes every choice sends no shares: the last record stays its parent's."""
    from learning.signing import generate_key
    from storage import signing_keys as keys_store
    from tests.integration.console_fixtures import start_canary

    doer = f"BanditGone{uuid.uuid4().hex[:6]}"
    key = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="tests", note="replaced")
    await start_canary(db, key, doer)  # version 1 active, version 2 in a canary
    await record_allocations(
        db, [(doer, n, False, [_parameter(doer, n, 0.3 * n, version=2)]) for n in (1, 2)]
    )
    (row,) = await dashboard.bandits_in_force(db, doer)
    assert row["replaced"] and (row["active_policy_id"], row["active_version"]) == (
        doer.lower(),
        1,
    )
    async with httpx.AsyncClient(base_url=console_url) as client:
        (api,) = (await client.get("/api/bandits", params={"doer": doer})).json()
        page = (await client.get(f"/doers/{doer}")).text
        unknown = await client.get("/api/bandits", params={"doer": doer.lower()})
    assert api["replaced"] and api["active_version"] == 1
    assert f"replaced: {doer.lower()}@1 is active" in page
    # Its chart ends at its last allocation: not held to the page's time as if in force.
    assert page.count('class="share-chart"') == 1
    history = await dashboard.bandit_history(db, doer)
    from learnops.console.concerns import share_series

    (chart,) = share_series(history, datetime.now(UTC), [row])
    assert len(chart["times"]) == 2
    assert unknown.status_code == 404 and "did you mean" in unknown.json()["detail"]
