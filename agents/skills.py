"""The skill-card stage: learning.crl-computed → daily statistics per tenant and doer → cards.

Per batch of scored runs: decode → fold each live run once into the daily
statistics of its tenant and doer (learning.skills.DailySkillStats, a Faust
table per UTC day keyed ``doer/tenant``, kept 31 days) → note that card as
changed. Replays and shadow runs are never folded. Cards are not rebuilt per
run: a timer rebuilds a changed card at most every ``refresh.min_interval_s``,
and every card every ``refresh.max_age_s`` (learning.skills.RefreshSchedule).
A rebuild applies the rules (learning.skills.skill_card), adds the doer's
active policy and recent experiments from PostgreSQL, stores the card in
``skill_cards`` when its content changed, and publishes it on the compacted
learning.skill-cards topic keyed ``tenant/doer``. One tenant's runs never
reach another tenant's card (docs/security.md, "Tenants"). A gate failing too
often also raises an experiment request (agents/triggers.py).

A key without a tenant (``doer``) is daily statistics kept before tenants were
(migration 024): they are the default tenant's until they expire.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import asyncpg

from agents.crl import counts_toward_live
from agents.stage import Stage
from agents.tables import day_start, folded_up_to, marked
from agents.triggers import raise_request
from learning.skills import (
    DailySkillStats,
    RefreshSchedule,
    doer_and_tenant,
    doer_stats,
    gate_triggers,
    skill_card,
    skill_card_event,
    stats_key,
)
from learning.trends import day_of, days_back
from models.base import describe_exception
from models.events import CRLComputed, SkillCard
from storage.claims import Claim, owned_claims
from storage.pool import durably
from storage.skills import active_policy, open_requests, recent_experiments, store_card

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.skills")

DAY = timedelta(days=1)
HISTORY_DAYS = 31  # the 30-day baseline before today, and today
BATCH = 1000  # at most this many events per batch (agents/streams.py)
CLAIMS = "skills"  # this stage's name in fold_claims


class SkillsStage(Stage):
    """learning.crl-computed → daily skill statistics per tenant and doer → cards on a timer."""

    name = "skills"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)
        self.daily = self.table(
            "skills-daily",
            default=dict,
            help_="Daily skill statistics per doer/tenant (learning.skills.DailySkillStats)",
            window=DAY,
            expires=timedelta(days=HISTORY_DAYS),
        )
        # Every card (doer/tenant) with statistics, and the partition its results arrive
        # on: the timer rebuilds the cards whose partition this worker owns.
        self.cards = self.table(
            "skills-doers",
            default=int,
            help_="Card key (doer/tenant) → source partition",
            holds_partition=True,
        )
        self.schedule = RefreshSchedule(app.learning.skills.refresh)
        self.published: set[str] = set()  # cards (doer/tenant) this process has published

        async def skills(stream: Any) -> None:
            """Fold each batch of scored runs into the daily statistics; the timer builds cards."""
            async for events in self.batches(stream, BATCH):
                async with self.guarded_batch(events):
                    await self.process(events)

        app.agent(self.topics.crl_computed.channel, name=self.name)(skills)
        self.every(app.learning.skills.tick_s, self.refresh_due_cards)
        self.expire_claims_every(CLAIMS, 3600.0, timedelta(days=HISTORY_DAYS + 1))

    def history(self, key: str, today: date) -> dict[date, DailySkillStats]:
        """One card's daily statistics for the 31 days ending today (days with data only)."""
        found = {}
        for day in days_back(today, HISTORY_DAYS):
            value = self.daily.relative_to(day_start(day))[key].value()
            if value:
                found[day] = DailySkillStats.from_dict(value)
        return found

    async def process(self, events: list[Any]) -> None:
        """Decode a batch of scored runs, fold the live runs it owns, mark their cards changed."""
        decoded = []
        for event in events:
            async with self.guarded(event):
                result = await self.decode(event, CRLComputed)
                if result is not None:
                    decoded.append((event, result))
        claims = [
            (result.run_id, event.message.partition, event.message.offset)
            for event, result in decoded
            if counts_toward_live(result)
        ]
        owned = await durably(
            partial(owned_claims, self.app.pool, CLAIMS, claims), what="fold_claims"
        )
        for key in self.fold(decoded, owned):
            self.schedule.changed(key)

    def fold(self, events: list[tuple[Any, CRLComputed]], owned: set[Claim]) -> set[str]:
        """Fold the runs the batch's records own into the daily values; the cards changed.

        A record owns a run when it was the first to deliver it (storage.claims),
        and a daily value skips records at or below its source mark: both a
        duplicate result and a redelivery after a crash are folded once.
        """
        stats: dict[tuple[str, date], tuple[DailySkillStats, int, int]] = {}
        folded: set[tuple[str, date]] = set()
        for event, result in events:
            key, day = stats_key(result.doer, result.tenant_id), day_of(result.run_occurred_at)
            partition, offset = event.message.partition, event.message.offset
            self.partitions.seen(result.doer, partition)
            if self.cards[key] != partition + 1:  # 0 is "never seen"
                self.cards[key] = partition + 1
            if (result.run_id, partition, offset) not in owned:
                continue
            if (key, day) not in stats:
                stored = self.daily.relative_to(day_start(day))[key].value()
                value = DailySkillStats.from_dict(stored) if stored else DailySkillStats()
                stats[(key, day)] = (value, partition, folded_up_to(stored, partition))
            value, _, mark = stats[(key, day)]
            if offset <= mark:
                continue
            value.add(result)
            stats[(key, day)] = (value, partition, offset)
            folded.add((key, day))
        for key, day in folded:
            value, partition, mark = stats[(key, day)]
            self.daily.relative_to(day_start(day))[key] = marked(value.to_dict(), partition, mark)
        return {key for key, _ in folded}

    async def build_card(self, key: str, now: datetime) -> tuple[SkillCard, Any]:
        """One tenant's card of a doer (``key``: doer/tenant) as of now, and its statistics."""
        config = self.app.learning
        today = now.date()
        days = self.history(key, today)
        doer, tenant = doer_and_tenant(key)
        stats = doer_stats(doer, days, today, config.objectives.for_doer(doer))
        pool = self.app.pool
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
            tenant=tenant,
        )
        return card, stats

    async def refresh(self, key: str) -> None:
        """Rebuild, store and publish one card (``key``: doer/tenant); raise its gate triggers."""
        card, stats = await self.build_card(key, datetime.now(UTC))
        changed = await durably(partial(store_card, self.app.pool, card), what="skill_cards")
        if changed or key not in self.published:
            await (await self.topics.skill_cards.send(card))
            self.published.add(key)
            log.info(
                "skill_card tenant=%s doer=%s as_of=%s runs=%d changed=%s",
                card.tenant_id,
                card.doer,
                card.as_of,
                card.runs,
                changed,
            )
        config = self.app.learning.skills
        for trigger in gate_triggers(stats, config.rules, config.triggers):
            await raise_request(self.app, trigger)

    def _owned_cards(self) -> list[str]:
        """Cards (doer/tenant) whose results arrive on a partition this worker actively owns."""
        source = self.topics.crl_computed.name
        owned = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == source}
        return [k for k, partition in self.cards.items() if partition and partition - 1 in owned]

    async def refresh_due_cards(self) -> None:
        """Rebuild the cards that are due; skipped while tables recover or partitions move."""
        app = self.app
        if app.in_recovery or app.rebalancing or not app.pool_open:
            return
        now = time.monotonic()
        owned = self._owned_cards()
        for key in self.schedule.due(now, owned):
            if key not in owned:
                continue  # its partition moved to another worker
            # Before the rebuild: runs folded while it runs make the card due again.
            self.schedule.building(key, now)
            try:
                await self.refresh(key)
            except (asyncpg.PostgresError, ValueError) as exc:
                log.error("skill_card_failed card=%s error=%r", key, describe_exception(exc))
                self.schedule.changed(key)  # try again after min_interval_s, not every tick
