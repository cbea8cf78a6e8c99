"""The skill-card stage: learning.crl-computed → per-doer daily statistics → skill cards.

Per batch of scored runs: decode → fold each live run once into its doer's
daily statistics (learning.skills.DailySkillStats, a Faust table per UTC day,
kept 31 days) → note the doer as changed. Replays and shadow runs are never
folded. Cards are not rebuilt per run: a timer rebuilds a changed doer's card
at most every ``refresh.min_interval_s``, and every doer's card every
``refresh.max_age_s`` (learning.skills.RefreshSchedule). A rebuild applies the
rules (learning.skills.skill_card), adds the doer's active policy and recent
experiments from PostgreSQL, stores the card in ``skill_cards`` when its
content changed, and publishes it on the compacted learning.skill-cards topic
keyed by doer. A gate failing too often also raises an experiment request
(agents/triggers.py).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg

from agents.app import app
from agents.codecs import decode
from agents.crl import counts_toward_live
from agents.dlq import guarded, guarded_batch
from agents.streams import batches
from agents.tables import SEPARATOR, DoerPartitions, doer_table
from agents.triggers import raise_request
from learning.skills import (
    DailySkillStats,
    RefreshSchedule,
    doer_stats,
    gate_triggers,
    skill_card,
    skill_card_event,
)
from learning.trends import day_of, days_back
from models.events import CRLComputed, SkillCard
from storage.pool import durably
from storage.skills import active_policy, open_requests, recent_experiments, store_card

log = logging.getLogger("learnops.skills")

SOURCE = "learning.crl-computed"
crl_computed = app.topic(SOURCE, key_type=bytes, value_type=bytes)
skill_cards = app.topic("learning.skill-cards", key_type=bytes, value_type=bytes)

DAY = timedelta(days=1)
HISTORY_DAYS = 31  # the 30-day baseline before today, and today
BATCH = 1000  # at most this many events per batch (agents/streams.py)

partitions = DoerPartitions()
daily = doer_table(
    app,
    "skills-daily",
    partitions,
    default=dict,
    help_="Daily skill statistics per doer (learning.skills.DailySkillStats)",
    window=DAY,
    expires=timedelta(days=HISTORY_DAYS),
)
# Runs already folded, per doer/run id and day: a redelivered result counts once.
folded = doer_table(
    app,
    "skills-folded-runs",
    partitions,
    default=bool,
    help_="Run ids already folded into the skill statistics",
    window=DAY,
    expires=timedelta(days=HISTORY_DAYS),
)
# Every doer with statistics, and the partition its results arrive on: the
# timer rebuilds the cards of the doers whose partition this worker owns.
doers = doer_table(app, "skills-doers", partitions, default=int, help_="Doer → source partition")

schedule = RefreshSchedule(app.learning.skills.refresh)
published: set[str] = set()  # doers whose card this process has published


def _day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def history(doer: str, today: date) -> dict[date, DailySkillStats]:
    """The doer's daily statistics for the 31 days ending today (days with data only)."""
    found = {}
    for day in days_back(today, HISTORY_DAYS):
        value = daily.relative_to(_day_start(day))[doer].value()
        if value:
            found[day] = DailySkillStats.from_dict(value)
    return found


def _fold(events: list[tuple[Any, CRLComputed]]) -> set[str]:
    """Fold the batch's live, not yet folded runs into the tables; the doers changed."""
    stats: dict[tuple[str, date], DailySkillStats] = {}
    runs: set[tuple[str, date]] = set()
    for event, result in events:
        doer, day = result.doer, day_of(result.run_occurred_at)
        partitions.seen(doer, event.message.partition)
        if doers[doer] != event.message.partition + 1:  # 0 is "never seen"
            doers[doer] = event.message.partition + 1
        run_key = f"{doer}{SEPARATOR}{result.run_id}"
        if not counts_toward_live(result) or (run_key, day) in runs:
            continue
        if folded.relative_to(_day_start(day))[run_key].value():
            continue
        runs.add((run_key, day))
        if (doer, day) not in stats:
            stored = daily.relative_to(_day_start(day))[doer].value()
            stats[(doer, day)] = DailySkillStats.from_dict(stored) if stored else DailySkillStats()
        stats[(doer, day)].add(result)
    for (doer, day), value in stats.items():
        daily.relative_to(_day_start(day))[doer] = value.to_dict()
    for run_key, day in runs:
        folded.relative_to(_day_start(day))[run_key] = True
    return {doer for doer, _ in stats}


@app.agent(crl_computed, name="skills")
async def skills(stream: Any) -> None:
    """Fold each batch of scored runs into the daily statistics; the timer builds the cards."""
    async for events in batches(stream, BATCH):
        async with guarded_batch(events, stage="skills"):
            decoded = []
            for event in events:
                async with guarded(event, stage="skills"):
                    result = await decode(event, CRLComputed, stage="skills")
                    if result is not None:
                        decoded.append((event, result))
            for doer in _fold(decoded):
                schedule.changed(doer)


async def build_card(doer: str, now: datetime) -> tuple[SkillCard, Any]:
    """The doer's card as of now, and its statistics (for the triggers)."""
    config = app.learning
    today = now.date()
    days = history(doer, today)
    stats = doer_stats(doer, days, today, config.objectives.for_doer(doer))
    pool = app.pool
    policy = await durably(partial(active_policy, pool, doer), what="policies")
    experiments = await durably(partial(recent_experiments, pool, doer), what="experiments")
    requests = await durably(partial(open_requests, pool, doer), what="requests")
    card = skill_card_event(
        skill_card(stats, config.skills.rules),
        days,
        as_of=today,
        now=now,
        policy=policy,
        experiments=experiments,
        open_requests=[
            {
                "request_id": str(r["request_id"]),
                "reason": r["reason"],
                "opened_at": r["opened_at"].isoformat(),
            }
            for r in requests
        ],
    )
    return card, stats


async def refresh(doer: str) -> None:
    """Rebuild, store and publish one doer's card; raise its gate triggers."""
    card, stats = await build_card(doer, datetime.now(UTC))
    changed = await durably(partial(store_card, app.pool, card), what="skill_cards")
    if changed or doer not in published:
        await (await skill_cards.send(key=doer.encode(), value=card.to_json()))
        published.add(doer)
        log.info(
            "skill_card doer=%s as_of=%s runs=%d changed=%s", doer, card.as_of, card.runs, changed
        )
    config = app.learning.skills
    for trigger in gate_triggers(stats, config.rules, config.triggers):
        await raise_request(trigger)


def _owned_doers() -> list[str]:
    """Doers whose results arrive on a partition this worker actively owns."""
    owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == SOURCE}
    return [doer for doer, partition in doers.items() if partition and partition - 1 in owned]


@app.timer(interval=app.learning.skills.tick_s)
async def refresh_due_cards() -> None:
    """Rebuild the cards that are due; skipped while tables recover or partitions move."""
    # Nothing to do on a worker that does not run the stage (LEARNOPS_STAGES).
    if "skills" not in app.agents or app.in_recovery or app.rebalancing or not _pool_open():
        return
    now = time.monotonic()
    owned = _owned_doers()
    for doer in schedule.due(now, owned):
        if doer not in owned:
            continue  # its partition moved to another worker
        # Before the rebuild: runs folded while it runs make the card due again.
        schedule.building(doer, now)
        try:
            await refresh(doer)
        except (asyncpg.PostgresError, ValueError) as exc:
            log.error("skill_card_failed doer=%s error=%r", doer, exc)
            schedule.changed(doer)  # try again after min_interval_s, not every tick


def _pool_open() -> bool:
    try:
        app.pool  # noqa: B018
    except RuntimeError:  # the worker has not finished starting
        return False
    return True
