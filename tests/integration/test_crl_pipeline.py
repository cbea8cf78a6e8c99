"""The CRL pipeline through a real worker process, real Kafka and real PostgreSQL.

Thousands of bundles for several doers over ten days, with redeliveries,
malformed events and bundles that cannot be scored mixed in, must give exactly
the aggregates computed here from the same bundles, one crl_results row per
distinct run, and one dead letter per bad event.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import aiohttp
import pytest

from agents.config import load_learning_config
from agents.topics import read_from_start
from learning.crl import score_bundle
from learning.trends import DailyCRL, day_of
from learnops.simulation.orchestrator import Orchestrator, bad_inputs
from models.events import Alert, DeadLetter, RunCompleted
from tests.integration.kafka_io import eventually, publish
from tests.services import REPO, WorkerProcess

TOPIC = "learning.run-completed"
DAYS = 10
# Relative to today: the daily tables keep 30 days behind the newest event of their
# partition, and other tests publish runs of today (fixed dates aged out of them).
START = datetime.combine(datetime.now(UTC).date() - timedelta(days=DAYS + 4), time(), tzinfo=UTC)


def _unscoreable(bundle: RunCompleted) -> bytes:
    # Valid by the schema, but without the QAV results the CRL needs.
    return bundle.model_copy(update={"qav": None}).to_json()


@pytest.fixture(scope="module")
async def published(producer: Any, worker: WorkerProcess) -> dict[str, Any]:
    """Publish the scenario once for the tests of this module."""
    tag = uuid.uuid4().hex[:8]
    doers = tuple(f"Crl{tag}{i}" for i in range(4))
    # A fixed seed: the scenario (and so the one expected alert) is the same every run.
    orchestrator = Orchestrator(seed=20261001, doers=doers, run_prefix=f"crl-{tag}")
    regressing = doers[0]
    good: list[RunCompleted] = []
    per_day = 240
    for day in range(DAYS):
        for k in range(per_day):
            when = START + timedelta(days=day, seconds=30 + k * 300)
            doer = doers[k % len(doers)]
            # The first doer gets much worse on the last day: one regression alert.
            quality = 0.1 if (doer == regressing and day == DAYS - 1) else None
            good.append(orchestrator.bundle(doer, occurred_at=when, quality=quality))
    bad = bad_inputs(orchestrator, 16)
    unscoreable = [orchestrator.bundle(doers[1], occurred_at=START) for _ in range(4)]

    messages: list[tuple[bytes, bytes]] = [(b.doer.encode(), b.to_json()) for b in good]
    # Redeliveries of 150 bundles, byte for byte, scattered through the stream.
    for i, b in enumerate(good[::16][:150]):
        messages.insert((i * 97) % len(messages), (b.doer.encode(), b.to_json()))
    bad_at = []
    for i, item in enumerate(bad):
        at = (i * 211 + 5) % len(messages)
        messages.insert(at, (item.key, item.value))
        bad_at.append(item)
    for b in unscoreable:
        messages.append((b.doer.encode(), _unscoreable(b)))
    metadata = await publish(producer, TOPIC, messages)
    by_value = {value: m for (key, value), m in zip(messages, metadata, strict=True)}
    return {
        "doers": doers,
        "regressing": regressing,
        "good": good,
        "bad": bad,
        "bad_positions": {
            (m.topic, m.partition, m.offset) for m in (by_value[b.value] for b in bad)
        },
        "unscoreable_positions": {
            (m.topic, m.partition, m.offset)
            for m in (by_value[_unscoreable(b)] for b in unscoreable)
        },
    }


async def test_one_result_row_per_distinct_run(published: dict[str, Any], db: Any) -> None:
    doers = list(published["doers"])

    async def stored() -> int:
        query = "SELECT count(*) FROM crl_results WHERE doer = ANY($1::text[])"
        return int(await db.fetchval(query, doers))

    expected = len(published["good"])
    assert await eventually(stored, lambda n: n >= expected, timeout=120) == expected
    rows = await db.fetch(
        "SELECT run_id, loss, weights_version FROM crl_results WHERE doer = ANY($1::text[])", doers
    )
    config = load_learning_config(REPO / "config" / "learning.yaml")
    want = {b.run_id: score_bundle(b, config.weights, config.objectives) for b in published["good"]}
    assert {r["run_id"] for r in rows} == set(want)
    for row in rows:
        assert row["loss"] == pytest.approx(want[row["run_id"]].loss, rel=1e-12)
        assert row["weights_version"] == want[row["run_id"]].weights_version


async def test_one_dead_letter_per_bad_event_with_its_reason(
    published: dict[str, Any], settings: Any, db: Any, worker: WorkerProcess
) -> None:
    wanted = published["bad_positions"] | published["unscoreable_positions"]

    async def letters() -> list[DeadLetter]:
        found = [
            DeadLetter.from_json(r.value) for r in await read_from_start(settings, "learning.dlq")
        ]
        # Only this worker's letters: other consumer groups may read the same topic.
        return [
            d
            for d in found
            if (d.topic, d.partition, d.offset) in wanted and d.consumer == worker.app_id
        ]

    found = await eventually(letters, lambda ds: len(ds) >= len(wanted), timeout=120)
    assert len(found) == len(wanted), "exactly one dead letter per bad event"
    assert {d.stage for d in found} == {"crl"}
    by_type = defaultdict(int)
    for letter in found:
        by_type[letter.error_type] += 1
        assert letter.reason
    assert by_type["bundle"] == len(published["unscoreable_positions"])
    bundle_reasons = [d.reason for d in found if d.error_type == "bundle"]
    assert all("qav" in reason for reason in bundle_reasons), bundle_reasons
    originals = {b.value for b in published["bad"]}
    assert {d.value for d in found if d.error_type != "bundle"} == originals
    # A run id holding an address: refused naming the field, the address not quoted.
    address = {b.value for b in published["bad"] if b.fault == "address"}
    reasons = [d.reason for d in found if d.value in address]
    assert len(reasons) == len(address) > 0
    assert all(r.startswith("run_id holds an email address") and "@" not in r for r in reasons)


def _expected_days(published: dict[str, Any], doer: str) -> dict[date, DailyCRL]:
    config = load_learning_config(REPO / "config" / "learning.yaml")
    days: dict[date, DailyCRL] = defaultdict(DailyCRL)
    for bundle in published["good"]:
        if bundle.doer == doer:
            result = score_bundle(bundle, config.weights, config.objectives)
            days[day_of(bundle.occurred_at)].add(result.loss)
    return days


async def _view(settings_env: dict[str, str], doer: str, day: date) -> dict[str, Any]:
    url = f"http://127.0.0.1:{settings_env['LEARNOPS_WEB_PORT']}/crl/{doer}/?day={day.isoformat()}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def test_daily_tables_hold_exactly_the_expected_aggregates(
    published: dict[str, Any], db: Any, settings_env: dict[str, str]
) -> None:
    doers = list(published["doers"])
    total = len(published["good"])
    query = "SELECT count(*) FROM crl_results WHERE doer = ANY($1::text[])"
    await eventually(lambda: db.fetchval(query, doers), lambda n: n >= total, timeout=120)
    last_day = (START + timedelta(days=DAYS - 1)).date()
    for doer in doers:
        expected = _expected_days(published, doer)
        # A batch's rows are in PostgreSQL before its runs are folded into the tables
        # (the stage stores, emits, then folds): wait until the doer's last are in.
        total_runs = sum(d.count for d in expected.values())
        view = await eventually(
            lambda doer=doer: _view(settings_env, doer, last_day),
            lambda v, n=total_runs: v["trend"]["count_30d"] >= n,
            timeout=60,
        )
        assert sorted(view["days"]) == sorted(d.isoformat() for d in expected)
        for day, daily in expected.items():
            got = view["days"][day.isoformat()]
            assert got["count"] == daily.count, (doer, day)
            assert got["mean"] == pytest.approx(daily.mean, rel=1e-9)
            assert got["variance"] == pytest.approx(daily.moments.variance, rel=1e-6)
            assert got["p95"] == pytest.approx(daily.p95, rel=1e-12)
        assert view["trend"]["count_30d"] == sum(d.count for d in expected.values())


async def test_learning_progress_and_trend_view_match_the_results(
    published: dict[str, Any], db: Any
) -> None:
    doers = list(published["doers"])
    total = len(published["good"])
    query = "SELECT count(*) FROM crl_results WHERE doer = ANY($1::text[])"
    await eventually(lambda: db.fetchval(query, doers), lambda n: n >= total, timeout=120)
    rows = await db.fetch(
        "SELECT doer, day, runs, mean_crl, mean_crl_7d, baseline_crl FROM v_crl_trend_by_doer "
        "WHERE doer = ANY($1::text[]) ORDER BY doer, day",
        doers,
    )
    assert len(rows) == len(doers) * DAYS
    for doer in doers:
        expected = _expected_days(published, doer)
        mine = [r for r in rows if r["doer"] == doer]
        for row in mine:
            daily = expected[row["day"]]
            assert row["runs"] == daily.count
            assert row["mean_crl"] == pytest.approx(daily.mean, rel=1e-9)
        last = mine[-1]
        week = [expected[last["day"] - timedelta(days=i)] for i in range(7)]
        week_mean = sum(d.count * (d.mean or 0) for d in week) / sum(d.count for d in week)
        assert last["mean_crl_7d"] == pytest.approx(week_mean, rel=1e-9)


async def test_a_regressing_doer_raises_one_alert_with_its_numbers(
    published: dict[str, Any], settings: Any
) -> None:
    regressing = published["regressing"]

    async def alerts() -> list[Alert]:
        found = [
            Alert.from_json(r.value) for r in await read_from_start(settings, "learning.alerts")
        ]
        return [a for a in found if a.doer in published["doers"] and a.kind == "crl_regression"]

    found = await eventually(alerts, lambda a: len(a) >= 1, timeout=120)
    assert [a.doer for a in found] == [regressing], "only the regressing doer, only once"
    alert = found[0]
    assert alert.value is not None and alert.baseline is not None and alert.threshold is not None
    assert alert.value > alert.threshold > alert.baseline
    assert alert.evidence["day"] == (START + timedelta(days=DAYS - 1)).date().isoformat()
