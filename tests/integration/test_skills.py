"""Skill cards and learning triggers through a real worker, real Kafka and real PostgreSQL.

Runs of a few doers, published as learning bundles, must give each doer the
card the pure rules give for the same runs, stored in skill_cards and
published on the compacted learning.skill-cards topic; a gate failing in
every run and a storm of regression alerts must each give exactly one
experiment request; replay and shadow bundles must leave a card unchanged.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from agents.config import load_learning_config
from agents.topics import read_from_start
from learning.crl import score_bundle
from learning.skills import DailySkillStats, doer_stats, skill_card
from learning.trends import day_of
from learnops.simulation.orchestrator import SIMULATED_TENANT, Orchestrator
from models.commands import POLICY_COMMANDS, RequestExperiment
from models.events import Alert, RunCompleted, SkillCard
from storage.skills import current_card
from tests.integration.kafka_io import consumed, eventually, publish
from tests.services import REPO, WorkerProcess, run_learnops

RUNS = "learning.run-completed"
CONFIG = load_learning_config(REPO / "config" / "learning.yaml")


def _now() -> datetime:
    return datetime.now(UTC)


def expected_card(
    bundles: list[RunCompleted], doer: str, today: date, tenant: str = SIMULATED_TENANT
) -> Any:
    """The card the pure rules give for the live runs of ``tenant``'s doer among ``bundles``."""
    days: dict[date, DailySkillStats] = defaultdict(DailySkillStats)
    seen = set()
    for b in bundles:
        if b.doer != doer or b.tenant_id != tenant or b.run_id in seen:
            continue
        if b.replay_id is not None or b.shadow:
            continue
        seen.add(b.run_id)
        days[day_of(b.occurred_at)].add(score_bundle(b, CONFIG.weights, CONFIG.objectives))
    stats = doer_stats(doer, days, today, CONFIG.objectives.for_doer(doer))
    return skill_card(stats, CONFIG.skills.rules)


async def _requests(settings: Any, doer: str, worker: WorkerProcess) -> list[RequestExperiment]:
    """This worker's experiment requests for the doer (other workers may share the broker)."""
    found = []
    for record in await read_from_start(settings, "learning.commands"):
        if record.key != doer.encode():
            continue
        command = POLICY_COMMANDS.validate_json(record.value)
        if (
            isinstance(command, RequestExperiment)
            and command.evidence.get("raised_by") == worker.app_id
        ):
            found.append(command)
    return found


@pytest.fixture(scope="module")
async def scenario(producer: Any, worker: WorkerProcess) -> dict[str, Any]:
    """Publish the runs of every doer of this module once."""
    tag = uuid.uuid4().hex[:8]
    good, fair = f"SkGood{tag}", f"SkFair{tag}"
    gated, regressing = f"SkGate{tag}", f"SkReg{tag}"
    orchestrator = Orchestrator(seed=20261110, doers=(good, fair), run_prefix=f"sk-{tag}")
    now = _now()
    start = now - timedelta(minutes=30)
    if start.date() != now.date():  # keep today's runs on today
        start = now.replace(hour=0, minute=0, second=1)
    bundles: list[RunCompleted] = []
    for i in range(80):
        when = start + timedelta(seconds=i)
        bundles.append(orchestrator.bundle(good, occurred_at=when, quality=0.9))
        bundles.append(orchestrator.bundle(fair, occurred_at=when, quality=0.4))
    # A doer whose security scan fails in every run: a failure mode, and one request.
    for i in range(40):
        b = orchestrator.bundle(gated, occurred_at=start + timedelta(seconds=i), quality=0.8)
        passed = [g for g in b.gates.passed if g != "security_scan"]
        bundles.append(
            b.model_copy(
                update={
                    "gates": b.gates.model_copy(
                        update={"passed": passed, "failed": ["security_scan"]}
                    )
                }
            )
        )
    # A doer that was good for a week and is bad today: a CRL regression alert.
    for day in range(1, 8):
        for k in range(12):
            when = now - timedelta(days=day, seconds=k)
            bundles.append(orchestrator.bundle(regressing, occurred_at=when, quality=0.95))
    for i in range(40):
        when = start + timedelta(seconds=i)
        bundles.append(orchestrator.bundle(regressing, occurred_at=when, quality=0.05))
    await publish(producer, RUNS, [(b.doer.encode(), b.to_json()) for b in bundles])
    return {
        "orchestrator": orchestrator,
        "bundles": bundles,
        "good": good,
        "fair": fair,
        "gated": gated,
        "regressing": regressing,
    }


async def _card_with_runs(db: Any, doer: str, runs: int, timeout: float = 90.0) -> SkillCard:
    card = await eventually(
        lambda: current_card(db, doer, SIMULATED_TENANT),
        lambda c: c is not None and c.runs >= runs,
        timeout=timeout,
    )
    assert card is not None, f"no card for {doer}"
    return card


async def test_runs_give_each_doer_the_card_of_the_rules_in_postgres_and_on_the_topic(
    scenario: dict[str, Any], db: Any, settings: Any
) -> None:
    doers = (scenario["good"], scenario["fair"])
    for doer in doers:
        card = await _card_with_runs(db, doer, 80)
        want = expected_card(scenario["bundles"], doer, card.as_of)
        assert card.runs == want.runs == 80
        assert card.gate_pass_rate == pytest.approx(want.gate_pass_rate, rel=1e-9)
        assert card.mean_crl == pytest.approx(want.mean_crl, rel=1e-9)
        for section in ("strengths", "weaknesses", "failure_modes", "resource_issues"):
            got = [(f["rule"], f["subject"]) for f in card.findings[section]]
            assert got == [(f.rule, f.subject) for f in getattr(want, section)], (doer, section)
        assert [m["model"] for m in card.best_models] == [m.model for m in want.best_models]
        for got_m, want_m in zip(card.best_models, want.best_models, strict=True):
            assert got_m["mean_crl"] == pytest.approx(want_m.mean_crl, rel=1e-9)
            assert got_m["std_error"] == pytest.approx(want_m.std_error, rel=1e-9)
            assert (got_m["rank_low"], got_m["rank_high"]) == (want_m.rank_low, want_m.rank_high)
            assert got_m["distinct_from_next"] == want_m.distinct_from_next
        current = await db.fetchval(
            "SELECT count(*) FROM skill_cards WHERE doer = $1 AND is_current", doer
        )
        assert current == 1
    good = await current_card(db, scenario["good"], SIMULATED_TENANT)
    fair = await current_card(db, scenario["fair"], SIMULATED_TENANT)
    assert good is not None and fair is not None
    assert good.mean_crl is not None and fair.mean_crl is not None
    assert good.mean_crl < fair.mean_crl, "the better doer has the lower CRL"

    async def latest_on_topic() -> dict[str, SkillCard]:
        latest: dict[str, SkillCard] = {}
        for record in await read_from_start(settings, "learning.skill-cards"):
            card = SkillCard.from_json(record.value)
            if card.doer not in doers:
                continue  # another test's (or, on a shared broker, an older worker's)
            assert record.key == f"{card.tenant_id}/{card.doer}".encode(), "keyed tenant/doer"
            latest[card.doer] = card  # offsets grow within a doer's partition
        return latest

    async def stored_hashes() -> dict[str, str | None]:
        cards = [await current_card(db, d, SIMULATED_TENANT) for d in doers]
        return {c.doer: c.content_hash for c in cards if c is not None}

    hashes = await stored_hashes()
    latest = await eventually(
        latest_on_topic,
        lambda got: {d: got[d].content_hash for d in doers if d in got} == hashes,
        timeout=30,
    )
    assert {d: latest[d].content_hash for d in doers} == hashes


async def test_a_gate_failing_in_every_run_gives_one_experiment_request(
    scenario: dict[str, Any], db: Any, settings: Any, producer: Any, worker: WorkerProcess
) -> None:
    doer = scenario["gated"]
    card = await _card_with_runs(db, doer, 40)
    assert [f["subject"] for f in card.findings["failure_modes"]] == ["security_scan"]
    # More failing runs keep the storm going over several refreshes.
    orchestrator = scenario["orchestrator"]
    more = []
    for _ in range(20):
        b = orchestrator.bundle(doer, occurred_at=_now(), quality=0.8)
        passed = [g for g in b.gates.passed if g != "security_scan"]
        gates = b.gates.model_copy(update={"passed": passed, "failed": ["security_scan"]})
        more.append(b.model_copy(update={"gates": gates}))
    await publish(producer, RUNS, [(b.doer.encode(), b.to_json()) for b in more])
    await _card_with_runs(db, doer, 60)
    # The refresh of the 60-run card saw the failures again: it touched the open
    # request (last_triggered_at) instead of opening another one.
    rows = await eventually(
        lambda: db.fetch("SELECT * FROM experiment_requests WHERE doer = $1", doer),
        lambda got: any(
            r["last_triggered_at"] > r["opened_at"] and r["published_at"] is not None for r in got
        ),
        timeout=60,
    )
    assert [(r["reason"], r["status"]) for r in rows] == [("gate_failure:security_scan", "open")]
    assert rows[0]["published_at"] is not None
    requests = await _requests(settings, doer, worker)
    assert len(requests) == 1, "one request however many refreshes saw the failures"
    (request,) = requests
    assert request.event_id == rows[0]["request_id"]
    assert request.evidence["gate"] == "security_scan"
    assert request.evidence["share"] == 1.0 and request.evidence["threshold"] == 0.2
    assert request.reason.startswith("gate_failure:security_scan: ")


async def test_a_storm_of_regression_alerts_gives_one_experiment_request(
    scenario: dict[str, Any], db: Any, settings: Any, producer: Any, worker: WorkerProcess
) -> None:
    doer = scenario["regressing"]

    async def regression_alerts() -> list[Alert]:
        found = [
            Alert.from_json(r.value) for r in await read_from_start(settings, "learning.alerts")
        ]
        return [a for a in found if a.doer == doer and a.kind == "crl_regression"]

    alerts = await eventually(regression_alerts, lambda a: len(a) >= 1, timeout=90)
    # Every worker on the broker (other sessions' too) may alert once for this doer-day.
    # The storm: the same regression seen again and again (other days, other workers).
    storm = [
        alerts[0].model_copy(update={"event_id": uuid.uuid4(), "occurred_at": _now()})
        for _ in range(15)
    ]
    sent = await publish(
        producer, "learning.alerts", [(a.doer.encode(), a.to_json()) for a in storm]
    )

    async def opened() -> list[Any]:
        return list(
            await db.fetch(
                "SELECT * FROM experiment_requests WHERE doer = $1 AND reason = 'crl_regression'",
                doer,
            )
        )

    rows = await eventually(opened, lambda r: len(r) >= 1 and r[0]["published_at"] is not None)
    # Count once the worker has handled (and committed past) every alert of the storm.
    await consumed(settings, worker.app_id, sent, timeout=60)
    rows = await opened()
    assert len(rows) == 1 and rows[0]["status"] == "open"
    requests = [
        r
        for r in await _requests(settings, doer, worker)
        if r.evidence.get("trigger") == "crl_regression"
    ]
    assert len(requests) == 1, "one request for the whole storm"
    (request,) = requests
    everything = {a.event_id: a for a in [*await regression_alerts(), *storm]}
    alert = everything[uuid.UUID(str(request.evidence["alert_event_id"]))]
    assert request.evidence["value"] == alert.value
    assert request.evidence["threshold"] == alert.threshold
    assert request.evidence["baseline"] == alert.baseline
    assert request.evidence["day"] == alert.evidence["day"]
    assert alert.message in request.reason


async def test_replay_and_shadow_bundles_do_not_change_a_card(
    scenario: dict[str, Any], db: Any, producer: Any
) -> None:
    doer = scenario["good"]
    before = await _card_with_runs(db, doer, 80)
    orchestrator = scenario["orchestrator"]
    replays = [
        orchestrator.bundle(doer, occurred_at=_now(), quality=0.0).model_copy(
            update={"replay_id": f"replay-{uuid.uuid4().hex[:6]}"}
        )
        for _ in range(30)
    ]
    shadows = [
        orchestrator.bundle(
            doer,
            occurred_at=_now(),
            quality=0.0,
            shadow=True,
            arm="candidate",
            deployment_id="dep-shadow",
        )
        for _ in range(20)
    ]
    await publish(producer, RUNS, [(b.doer.encode(), b.to_json()) for b in replays + shadows])
    replay_runs = [b.run_id for b in replays + shadows]
    stored = await eventually(
        lambda: db.fetchval("SELECT count(*) FROM crl_results WHERE run_id = ANY($1)", replay_runs),
        lambda n: n >= len(replay_runs),
    )
    assert stored == len(replay_runs), "the replays were scored"
    # A live run after them, on the same partition: once the card counts it, the
    # skill stage has seen every replay and shadow run before it.
    sentinel = orchestrator.bundle(doer, occurred_at=_now(), quality=0.9)
    await publish(producer, RUNS, [(doer.encode(), sentinel.to_json())])
    after = await _card_with_runs(db, doer, 81)
    assert after.runs == before.runs + 1 == 81
    live = [*scenario["bundles"], sentinel]
    want = expected_card(live, doer, after.as_of)
    assert after.mean_crl == pytest.approx(want.mean_crl, rel=1e-9)
    with_replays = expected_card(
        [*live, *(b.model_copy(update={"replay_id": None}) for b in replays)], doer, after.as_of
    )
    assert with_replays.mean_crl is not None and after.mean_crl is not None
    assert after.mean_crl < with_replays.mean_crl, "the bad replays would have raised the CRL"


async def test_two_tenants_of_one_doer_get_two_cards_each_of_its_own_runs_only(
    producer: Any, worker: WorkerProcess, db: Any, settings: Any, settings_env: dict[str, str]
) -> None:
    doer = f"SkTwo{uuid.uuid4().hex[:8]}"
    start = _now().replace(microsecond=0) - timedelta(minutes=10)
    if start.date() != _now().date():
        start = _now().replace(hour=0, minute=0, second=1)
    acme = Orchestrator(seed=11, doers=(doer,), run_prefix=f"{doer}-a")
    globex = Orchestrator(seed=12, doers=(doer,), tenant_id="globex", run_prefix=f"{doer}-g")
    bundles = [
        acme.bundle(doer, occurred_at=start + timedelta(seconds=i), quality=0.95) for i in range(30)
    ] + [
        globex.bundle(doer, occurred_at=start + timedelta(seconds=i), quality=0.1)
        for i in range(20)
    ]
    await publish(producer, RUNS, [(b.doer.encode(), b.to_json()) for b in bundles])

    mine = await eventually(
        lambda: _cards_of(db, doer),
        lambda cards: {t: c.runs for t, c in cards.items()} == {SIMULATED_TENANT: 30, "globex": 20},
        timeout=90,
    )
    for tenant, card in mine.items():
        want = expected_card(bundles, doer, card.as_of, tenant)
        assert card.tenant_id == tenant
        assert card.mean_crl == pytest.approx(want.mean_crl, rel=1e-9), tenant
        assert card.gate_pass_rate == pytest.approx(want.gate_pass_rate, rel=1e-9), tenant
    # Globex's poor runs are on its card only.
    assert mine["globex"].mean_crl > mine[SIMULATED_TENANT].mean_crl

    async def keys_on_topic() -> set[bytes]:
        return {
            record.key
            for record in await read_from_start(settings, "learning.skill-cards")
            if SkillCard.from_json(record.value).doer == doer
        }

    want_keys = {f"{SIMULATED_TENANT}/{doer}".encode(), f"globex/{doer}".encode()}
    assert await eventually(keys_on_topic, lambda keys: keys == want_keys, timeout=30) == want_keys

    # The CLI names both tenants instead of picking one, and shows the one asked for.
    both = run_learnops(settings_env, "skills", "show", doer)
    assert both.returncode != 0 and "acme, globex" in both.stderr + both.stdout, both
    one = run_learnops(settings_env, "skills", "show", doer, "--tenant", "globex", "--json")
    assert one.returncode == 0, one.stderr
    shown = SkillCard.model_validate_json(one.stdout)
    assert (shown.tenant_id, shown.runs) == ("globex", 20)
    # A tenant with no card of the doer: the error names the tenants that have one.
    wrong = run_learnops(settings_env, "skills", "show", doer, "--tenant", "globx")
    assert wrong.returncode == 1, wrong
    assert "'acme', 'globex'" in wrong.stderr and "did you mean 'globex'" in wrong.stderr, wrong


async def _cards_of(db: Any, doer: str) -> dict[str, SkillCard]:
    cards = [await current_card(db, doer, t) for t in (SIMULATED_TENANT, "globex")]
    return {c.tenant_id: c for c in cards if c is not None}
