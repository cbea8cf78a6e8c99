"""`learnops alerts list|show`: alerts published on learning.alerts, recorded by the session
worker's alerts stage, read back as an operator meets them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from models.events import Alert
from tests.integration.kafka_io import eventually
from tests.services import WorkerProcess, run_learnops

ALERTS = "learning.alerts"


async def learnops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(lambda: run_learnops(env, *args))


def listed(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


async def test_an_operator_lists_alerts_by_doer_kind_severity_and_age_and_shows_one_whole(
    worker: WorkerProcess, producer: Any, db: Any, settings_env: dict[str, str]
) -> None:
    doer = f"AlertCli{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    old = Alert(
        doer=doer,
        kind="crl_regression",
        severity="warning",
        message="the CRL of draft rose 40 % above its 7-day baseline",
        value=0.42,
        baseline=0.30,
        threshold=0.36,
        phase="draft",
        evidence={"days": 7, "runs": [120, 131]},
        occurred_at=now - timedelta(days=3),
    )
    new = Alert(
        doer=doer,
        kind="canary_rollback",
        severity="critical",
        message="the candidate is worse [/bold] [red]: rolled back",  # text, never markup
        deployment_id=f"dep-{doer}",
        occurred_at=now - timedelta(minutes=5),
    )
    for alert in (old, new):
        await producer.send_and_wait(ALERTS, value=alert.to_json(), key=doer.encode())
    await eventually(
        lambda: db.fetchval("SELECT count(*) FROM alerts WHERE doer = $1", doer),
        lambda n: n == 2,
    )

    everything = listed(await learnops(settings_env, "alerts", "list", "--doer", doer, "--json"))
    assert [a["event_id"] for a in everything] == [str(new.event_id), str(old.event_id)]
    assert everything[1]["evidence"] == {"days": 7, "runs": [120, 131]}
    assert everything[1]["value"] == 0.42 and everything[1]["phase"] == "draft"
    # Any case of the doer and kind; each filter narrows it to its own alert.
    for args, want in (
        (("--kind", "CRL_REGRESSION"), old),
        (("--severity", "critical"), new),
        (("--since", "1d"), new),
        (("--since", (now - timedelta(days=4)).date().isoformat()), None),
        (("--limit", "1"), new),
    ):
        found = listed(
            await learnops(settings_env, "alerts", "list", "--doer", doer.lower(), *args, "--json")
        )
        wanted = [new, old] if want is None else [want]
        assert [a["event_id"] for a in found] == [str(a.event_id) for a in wanted], args

    table = await learnops(settings_env, "alerts", "list", "--doer", doer)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:4] == ["event", "id", "when", "doer"]
    assert str(old.event_id) in table.stdout and "canary_rollback" in table.stdout
    assert "the candidate is worse [/bold] [red]: rolled back" in table.stdout

    # The start of an id, dashes or not, shows it whole with its evidence.
    shown = await learnops(settings_env, "alerts", "show", str(old.event_id).replace("-", "")[:12])
    assert shown.returncode == 0, shown.stderr
    assert "crl_regression" in shown.stdout and '"runs"' in shown.stdout
    assert "baseline" in shown.stdout and "0.3" in shown.stdout
    as_json = json.loads(
        (await learnops(settings_env, "alerts", "show", str(new.event_id), "--json")).stdout
    )
    assert as_json["deployment_id"] == f"dep-{doer}" and as_json["severity"] == "critical"

    # A redelivered alert is one row: once a later alert of the doer (same partition,
    # read after it) is listed, the copy has been read too.
    marker = Alert(doer=doer, kind="missing_data", severity="info", message="after the copy")
    for alert in (new, marker):
        await producer.send_and_wait(ALERTS, value=alert.to_json(), key=doer.encode())
    again = await eventually(
        lambda: learnops(settings_env, "alerts", "list", "--doer", doer, "--json"),
        lambda result: str(marker.event_id) in result.stdout,
    )
    assert [a["event_id"] for a in listed(again)] == [str(a.event_id) for a in (marker, new, old)]


async def test_mistakes_get_one_line_naming_the_fix(
    worker: WorkerProcess, producer: Any, db: Any, settings_env: dict[str, str]
) -> None:
    doer = f"AlertTypo{uuid.uuid4().hex[:8]}"
    alert = Alert(doer=doer, kind="contamination", severity="warning", message="m")
    await producer.send_and_wait(ALERTS, value=alert.to_json(), key=doer.encode())
    await eventually(
        lambda: db.fetchval("SELECT count(*) FROM alerts WHERE doer = $1", doer),
        lambda n: n == 1,
    )
    typo = await learnops(settings_env, "alerts", "list", "--doer", doer[:-1] + "x")
    assert typo.returncode == 0, typo.stderr
    assert f"did you mean '{doer}'?" in typo.stdout
    for args, needle, code in (
        (("alerts", "list", "--since", "yesterday"), "neither an age", 2),
        (("alerts", "list", "--since", "999999999w"), "reaches before the year 1", 2),
        (("alerts", "list", "--severity", "urgent"), "'urgent' is not one of", 2),
        (("alerts", "show", "12ab"), "too short", 2),
        (("alerts", "show", "not-hex!"), "hex digits and dashes", 2),
        (("alerts", "show", "00000000ffff"), "no alert with event id", 1),
    ):
        result = await learnops(settings_env, *args)
        assert result.returncode == code, (args, result.stderr)
        assert needle in result.stderr, (args, result.stderr)
