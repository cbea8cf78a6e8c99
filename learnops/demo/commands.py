"""`learnops demo …`: a simulated orchestrator (`simulate`), what happened (`report`), skill cards.

The demo's other walk-throughs (canary, curation, experiments) register on the
same group from their own modules.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.table import Table

from agents.topics import read_from_start
from learnops.cli.main import GroupedCommand, command, fail, group
from learnops.demo.options import (
    OptionCosts,
    latest_allocations,
    parse_option_costs,
    with_options,
)
from learnops.simulation.orchestrator import DOERS, NoteMix, Orchestrator, bad_inputs
from models.bandit import BanditAllocations
from models.bundle import RunCompleted
from models.events import Alert, DeadLetter, TaskRouted
from storage.crl import count_results
from storage.pool import create_pool


@group("A simulated orchestrator and walk-throughs of what the worker does.")
def demo() -> None:
    pass


def _regression(ctx: GroupedCommand, bundles: list[Any], doer: str, last_day: datetime) -> str:
    """What the summary says of the regressing doer: and whether an alert can follow."""
    worse = sum(1 for b in bundles if b.doer == doer and b.occurred_at >= last_day)
    needed = ctx.learning.trends.min_today_count
    said = f"; {doer} regresses on the last day ({worse} runs)"
    if worse < needed:
        said += f", too few for a regression alert (trends.min_today_count {needed}: more --runs)"
    return said


async def _publish(settings: Any, records: list[tuple[str, bytes, bytes]]) -> None:
    """Send (topic, key, value) records in order and wait for every acknowledgement."""
    producer = settings.kafka_producer(linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=key, value=value) for topic, key, value in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@command(
    demo,
    "simulate",
    click.option(
        "--runs", type=click.IntRange(min=1), default=1400, show_default=True, help="Bundles."
    ),
    click.option(
        "--days", type=click.IntRange(min=1), default=14, show_default=True, help="Days they span."
    ),
    click.option(
        "--bad", type=click.IntRange(min=0), default=12, show_default=True, help="Malformed events."
    ),
    click.option(
        "--redeliver",
        type=click.IntRange(min=0),
        default=25,
        show_default=True,
        help="Bundles published a second time, as a redelivery would (at most --runs).",
    ),
    click.option(
        "--regress",
        default="CodeReviewer",
        show_default=True,
        help="A doer whose runs get much worse on the last day ('' for none).",
    ),
    click.option("--seed", type=int, default=7, show_default=True),
    click.option("--run-prefix", default="", help="Prefix of the run ids (default: demo-<time>)."),
    click.option(
        "--notes/--no-notes",
        default=True,
        show_default=True,
        help="Give every bundle a human note (PII, duplicates, copies of our documents).",
    ),
    click.option(
        "--contaminate",
        default="TestWriter",
        show_default=True,
        help="A doer whose notes are mostly duplicates and copies, in one phase ('' for none).",
    ),
)
async def simulate(
    self: GroupedCommand,
    runs: int,
    days: int,
    bad: int,
    redeliver: int,
    regress: str,
    seed: int,
    run_prefix: str,
    notes: bool,
    contaminate: str,
) -> None:
    """Publish bundles as an orchestrator would, with bad input and redeliveries mixed in."""
    settings = self.settings
    # Each simulation is new runs: with the same ids they would all be duplicates.
    orchestrator = Orchestrator(seed=seed, run_prefix=run_prefix or f"demo-{int(time.time())}")
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=days - 1
    )
    step = timedelta(days=days) / max(1, runs)
    bundles = []
    for i in range(runs):
        when = start + step * i
        doer = orchestrator.doers[i % len(orchestrator.doers)]
        worse = doer == regress and when >= start + timedelta(days=days - 1)
        # Notes draw from their own generator: the bundles' CRL is the same with or without.
        mix, phase = (_CONTAMINATED, "draft") if doer == contaminate else (NoteMix(), None)
        bundles.append(
            orchestrator.bundle(
                doer,
                occurred_at=when,
                quality=0.1 if worse else None,
                notes=mix if notes else None,
                phase=phase if notes else None,
            )
        )
    good = [(b.doer.encode(), b.to_json()) for b in bundles]
    redeliver = min(redeliver, len(good))
    broken = [(b.key, b.value) for b in bad_inputs(orchestrator, bad)]
    # Spread the bad events and the redeliveries through the stream.
    messages = list(good)
    for i, item in enumerate(broken + good[:redeliver]):
        messages.insert((i * 37) % max(1, len(messages)), item)
    started = time.perf_counter()
    await _publish(settings, [("learning.run-completed", key, value) for key, value in messages])
    elapsed = time.perf_counter() - started
    self.say(
        f"published {len(messages)} events to learning.run-completed in {elapsed:.2f}s: "
        f"{runs} distinct runs ({orchestrator.run_prefix}-…) of {len(orchestrator.doers)} doers "
        f"over {days} days "
        f"(ending today), {redeliver} redelivered, {bad} malformed"
        + (_regression(self, bundles, regress, start + timedelta(days=days - 1)) if regress else "")
        + (
            f"; human notes with PII{f', mostly copies for {contaminate}' if contaminate else ''}"
            if notes
            else ""
        )
    )


def _quality(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"{value:g} is not a quality in [0, 1]")
    return value


@command(
    demo,
    "traffic",
    click.argument("doer"),
    click.option(
        "--tasks", type=click.IntRange(min=1), default=500, show_default=True, help="Tasks."
    ),
    click.option(
        "--candidate-quality",
        type=float,
        default=None,
        callback=_quality,
        help="How good the live deployment's candidate is, in [0, 1] (default 0.8).",
    ),
    click.option(
        "--control-quality",
        type=float,
        default=None,
        callback=_quality,
        help="How good the doer's active version is, in [0, 1] (default 0.8).",
    ),
    click.option(
        "--option-cost",
        "option_costs",
        multiple=True,
        metavar="PARAMETER=OPTION:FACTOR",
        help="Runs of the active version name the option each used of PARAMETER, one its "
        "policy leaves open, as the bandit's latest allocation picks it (with its probes), "
        "and cost FACTOR × their simulated cost with OPTION (1 for an option not given); "
        "repeat per option: --option-cost router.model=model-c-small:0.6.",
    ),
    click.option("--seed", type=int, default=11, show_default=True),
)
async def traffic(
    self: GroupedCommand,
    doer: str,
    tasks: int,
    candidate_quality: float | None,
    control_quality: float | None,
    option_costs: tuple[str, ...],
    seed: int,
) -> None:
    """Route and run DOER's tasks as its orchestrator would, under its live shadow or canary.

    Each task is routed by the doer's live state in the policy store (what the
    policy stage last published on learning.policy-changes), its routing goes to
    learning.task-routed and its run's bundle to learning.run-completed, with a
    CRL set by the quality of the version that ran it: a way to drive a rollout
    started with `learnops policy shadow|canary` without an orchestrator.
    """
    from learning.routing import route
    from learnops.cli.policy import resolve_doer
    from learnops.simulation.canary import CanaryOrchestrator
    from storage.deployments import current_change

    pool = await create_pool(self.settings.database_dsn, min_size=1, max_size=2)
    try:
        doer = await resolve_doer(pool, doer)
        change = await current_change(pool, doer)
        named = await _named_options(pool, doer, option_costs) if option_costs else None
    finally:
        await pool.close()
    if change is None:
        fail(f"{doer} has no active policy: nothing routes its tasks yet")
    quality = {}
    if control_quality is not None:
        quality[(change.policy_id, change.version)] = control_quality
    live = change.deployment
    if live is not None and candidate_quality is not None:
        quality[(live.candidate_policy_id, live.candidate_version)] = candidate_quality
    simulator = CanaryOrchestrator(
        route=lambda _doer, task_id: route(change, task_id),
        quality=quality,
        # Task and run ids unique to this call, whatever the seed: a second call would
        # otherwise repeat the first's ids and be counted once.
        orchestrator=Orchestrator(seed=seed, run_prefix=f"traffic-{uuid.uuid4().hex[:10]}"),
        seed=seed,
    )
    messages: list[tuple[str, Any]] = []
    arms: Counter[str] = Counter()
    chosen: Counter[str] = Counter()
    for _ in range(tasks):
        for event in simulator.task(doer):
            if isinstance(event, TaskRouted):
                messages.append(("learning.task-routed", event))
                arms[event.arm] += 1
            elif (
                isinstance(event, RunCompleted) and named is not None and _of_active(event, change)
            ):
                for run in with_options(event, *named):
                    messages.append(("learning.run-completed", run))
                    chosen[("probe " if run.shadow else "") + run.options[named[0].parameter]] += 1
            else:
                messages.append(("learning.run-completed", event))
    await _publish(self.settings, [(t, e.doer.encode(), e.to_json()) for t, e in messages])
    if live is None:
        where = f"all to {change.policy_id}@{change.version} (no live shadow or canary)"
    elif change.status == "shadow":
        mirrored = sum(1 for _, e in messages if getattr(e, "shadow", False))
        where = f"under {live.deployment_id} (shadow: {mirrored} of them mirrored)"
    else:
        arms_said = ", ".join(f"{arm} {n}" for arm, n in sorted(arms.items()))
        where = f"under {live.deployment_id} (canary: {arms_said})"
    self.say(f"published {tasks} tasks of {doer} {where}; {len(messages)} events")
    if named is not None:
        costs, allocations = named
        by = (
            f"allocation {allocations.sequence}"
            if allocations is not None and allocations.allocation(costs.phase, costs.parameter)
            else f"the policy's default {costs.options[0]} (no allocation yet)"
        )
        said = ", ".join(f"{option} {n}" for option, n in sorted(chosen.items()))
        self.say(f"{costs.phase}/{costs.parameter} by {by}: {said}")
    self.say(
        f"note: these are simulated runs of {doer}: they count in its CRL trends, skill card "
        "and curated samples like any other (their run ids start "
        f"{simulator.orchestrator.run_prefix})",
        file=self.stderr,
    )


async def _named_options(
    pool: Any, doer: str, texts: tuple[str, ...]
) -> tuple[OptionCosts, BanditAllocations | None]:
    """The --option-cost of the doer's active policy and its latest allocation; exit 1 if bad."""
    from models.tunables import tunables_of
    from storage.dashboard import bandits_in_force
    from storage.policies import find_policy
    from storage.skills import active_policy

    active = await active_policy(pool, doer)
    record = None if active is None else await find_policy(pool, *active)
    if active is None or record is None:
        fail(f"{doer} has no active policy: no option to name")
    assert record is not None
    try:
        costs = parse_option_costs(texts, tunables_of(record.artifact), f"{active[0]}@{active[1]}")
    except ValueError as exc:
        fail(f"--option-cost: {exc}; nothing published")
    return costs, latest_allocations(await bandits_in_force(pool, doer))


def _of_active(run: RunCompleted, change: Any) -> bool:
    """A live run of the doer's active version (not the candidate's, not mirrored)."""
    return not run.shadow and (run.policy_id, run.policy_version) == (
        change.policy_id,
        change.version,
    )


# Mostly duplicates, near duplicates and pasted copies of our documents: enough to
# pass the contamination alert rule (config/learning.yaml, curation.alert).
_CONTAMINATED = NoteMix(duplicate=0.3, near_duplicate=0.2, self_loop=0.2)


@command(
    demo,
    "report",
    click.option(
        "--expect-runs", type=int, default=0, help="Wait until this many runs are stored."
    ),
    click.option("--run-prefix", default="", help="Count only runs whose id starts with this."),
    click.option("--timeout", type=float, default=60.0, show_default=True),
    click.option("--doer", default="CodeReviewer", show_default=True, help="Whose trend to show."),
)
async def report(
    self: GroupedCommand, expect_runs: int, run_prefix: str, timeout: float, doer: str
) -> None:
    """Show CRL per doer, one doer's daily trend, the alerts and the dead letters."""
    settings = self.settings
    console = self.console()
    doers = list(DOERS)
    pool = await create_pool(settings.database_dsn, min_size=1, max_size=2)
    try:
        deadline = time.monotonic() + timeout
        while True:
            stored = int(await pool.fetchval(_STORED, f"{run_prefix}%"))
            if stored >= expect_runs or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        total = await count_results(pool, doers)
        latest = await pool.fetch(_LATEST_PER_DOER, doers)
        trend = list(reversed(await pool.fetch(_TREND, doer)))
    finally:
        await pool.close()

    table = Table(
        title=f"CRL per doer: {stored} runs of this simulation stored, "
        f"{total} in crl_results for these doers (one row per distinct run)"
    )
    for column in ("doer", "runs", "last day", "mean", "7-day", "30-day", "vs baseline"):
        table.add_column(column, justify="left" if column == "doer" else "right")
    for row in latest:
        table.add_row(
            row["doer"],
            str(row["runs_30d"]),
            f"{row['day']}",
            _f(row["mean_crl"]),
            _f(row["mean_crl_7d"]),
            _f(row["mean_crl_30d"]),
            _pct(row["delta_pct"]),
        )
    console.print(table)

    daily = Table(title=f"Daily CRL of {doer} (v_crl_trend_by_doer; lower is better)")
    for column in ("day", "runs", "mean", "7-day", "baseline", ""):
        daily.add_column(column, justify="right")
    top = max((r["mean_crl"] for r in trend), default=1.0) or 1.0
    for row in trend:
        bar = "█" * max(1, round(30 * row["mean_crl"] / top))
        daily.add_row(
            f"{row['day']}",
            str(row["runs"]),
            _f(row["mean_crl"]),
            _f(row["mean_crl_7d"]),
            _f(row["baseline_crl"]),
            f"[{'red' if _regressed(row) else 'green'}]{bar}",
        )
    console.print(daily)

    alerts = await _alerts(settings, doers)
    if trend and _regressed(trend[-1]):
        # The CRL stage raises the regression once it has folded the day's runs, which
        # may be a moment after they are stored: wait for it rather than miss it.
        wait_until = time.monotonic() + 30.0
        while not _regression_of(alerts, doer) and time.monotonic() < wait_until:
            await asyncio.sleep(1.0)
            alerts = await _alerts(settings, doers)
    kinds_seen = Counter(a.kind for a in alerts)
    shown = Table(
        title=f"learning.alerts: {len(alerts)} alerts "
        f"({', '.join(f'{n} {kind}' for kind, n in sorted(kinds_seen.items()))}); "
        "the latest 3 of each kind"
    )
    for column in ("kind", "doer", "value", "baseline", "threshold", "message"):
        shown.add_column(column, overflow="fold")
    latest = [a for kind in sorted(kinds_seen) for a in [a for a in alerts if a.kind == kind][-3:]]
    for alert in latest:
        shown.add_row(
            alert.kind,
            alert.doer,
            _f(alert.value),
            _f(alert.baseline),
            _f(alert.threshold),
            alert.message[:70],
        )
    console.print(shown)
    if trend and _regressed(trend[-1]) and not _regression_of(alerts, doer):
        console.print(
            f"note: no crl_regression alert for {doer}: its last day's rise over the "
            "baseline is not clear of the noise by the rule of learning.yaml (trends), or "
            "the CRL stage has not folded that day yet"
        )

    letters = [d for d in await _dead_letters(settings) if d.doer in doers]
    kinds = Counter((d.stage, d.error_type) for d in letters)
    dlq = Table(title=f"learning.dlq: {len(letters)} dead letters")
    for column in ("stage", "error", "count", "example reason", "from"):
        dlq.add_column(column, overflow="fold")
    for (stage, error_type), count in sorted(kinds.items()):
        example = next(d for d in letters if (d.stage, d.error_type) == (stage, error_type))
        dlq.add_row(
            stage,
            error_type,
            str(count),
            example.reason[:90],
            f"{example.topic}[{example.partition}]@{example.offset}",
        )
    console.print(dlq)
    if expect_runs and stored < expect_runs:
        raise SystemExit(f"learnops: only {stored} of {expect_runs} runs stored after {timeout}s")


_STORED = "SELECT count(*) FROM crl_results WHERE run_id LIKE $1"
_LATEST_PER_DOER = """
SELECT DISTINCT ON (doer) doer, day, mean_crl, mean_crl_7d, mean_crl_30d, runs_30d,
       delta_vs_baseline / nullif(baseline_crl, 0) AS delta_pct
FROM v_crl_trend_by_doer WHERE doer = ANY($1::text[]) ORDER BY doer, day DESC
"""
_TREND = """
SELECT day, runs, mean_crl, mean_crl_7d, baseline_crl
FROM v_crl_trend_by_doer WHERE doer = $1 ORDER BY day DESC LIMIT 14
"""


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.0%}"


async def _alerts(settings: Any, doers: list[str]) -> list[Alert]:
    records = await read_from_start(settings, "learning.alerts")
    return [a for a in (Alert.from_json(r.value) for r in records) if a.doer in doers]


def _regression_of(alerts: list[Alert], doer: str) -> bool:
    return any(a.kind == "crl_regression" and a.doer == doer for a in alerts)


def _regressed(row: Any) -> bool:
    base = row["baseline_crl"]
    return base is not None and row["mean_crl"] > 1.1 * base


async def _dead_letters(settings: Any) -> list[DeadLetter]:
    records = await read_from_start(settings, "learning.dlq")
    return [DeadLetter.from_json(r.value) for r in records]


@command(
    demo,
    "skills",
    click.option("--timeout", type=float, default=60.0, show_default=True),
    click.option("--min-runs", type=int, default=1, help="Wait until a card has this many runs."),
)
async def demo_skills(self: GroupedCommand, timeout: float, min_runs: int) -> None:
    """Show every doer's skill card, and the worst doer's in full."""
    from learnops.cli.main import database
    from learnops.cli.skills import cards_table, print_card
    from storage.skills import current_cards, open_requests

    async with database(self) as pool:
        deadline = time.monotonic() + timeout
        cards = await current_cards(pool)
        while not any(c.runs >= min_runs for c in cards) and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            cards = await current_cards(pool)
        if not cards:
            fail("no skill cards yet: is the worker running?")
        worst = max(cards, key=lambda c: (c.mean_crl or 0.0, c.doer))
        requests = await open_requests(pool, worst.doer)
    console = self.console()
    console.print(cards_table(cards))
    print_card(console, worst, requests)
