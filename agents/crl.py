"""The CRL stage: learning.run-completed → the run's loss, daily aggregates, regression alerts.

Per batch of events: decode → score (learning.crl) → emit learning.crl-computed
per run; fold the batch's live runs into the daily tables once per key
(learning.trends); store the batch in crl_results with one INSERT (idempotent
on run_id); and check each touched doer-day for a regression
(learning.alerts). Replay and shadow runs are scored, emitted and stored like
any run but never folded into the live aggregates.

Batches, not single events, because each table write is a changelog record:
folding 1,000 runs of 5 doers costs 15 writes instead of 3,000, and the
regression check reads a doer's week once per batch instead of once per run.
Faust acks a batch's offsets after the body returns, so nothing is acked
before its effects are written (and flushed, before the commit).
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import asyncpg

from agents.stage import Stage
from agents.streams import batches
from agents.tables import HISTORY_DAYS, SEPARATOR, day_start, history
from agents.web import register_views
from learning.crl import BundleError, score_bundle
from learning.trends import DailyCRL, check_regression, day_of
from models.events import Alert, CRLComputed, RunCompleted
from storage.crl import insert_crl_results
from storage.pool import durably

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.crl")

DAY = timedelta(days=1)
BATCH = 1000  # at most this many events per batch (agents/streams.py)


def counts_toward_live(result: CRLComputed) -> bool:
    """Replays and shadow runs never move live statistics."""
    return result.replay_id is None and not result.shadow


class BatchFold:
    """The batch's live runs, folded per table, key and day before one write each."""

    def __init__(self, stage: CRLStage) -> None:
        self.stage = stage
        self.aggregates: dict[tuple[int, str, date], tuple[Any, DailyCRL]] = {}
        self.runs: set[tuple[str, date]] = set()

    def add(self, result: CRLComputed) -> bool:
        """Fold one run unless it was folded before (in this batch or an earlier one)."""
        stage = self.stage
        day = day_of(result.run_occurred_at)
        run_key = f"{result.doer}{SEPARATOR}{result.run_id}"
        if (run_key, day) in self.runs or stage.folded.relative_to(day_start(day))[run_key].value():
            return False
        self.runs.add((run_key, day))
        doer = result.doer
        for table, key in (
            (stage.by_doer, doer),
            (stage.by_phase, f"{doer}{SEPARATOR}{result.phase}"),
            (stage.by_policy, f"{doer}{SEPARATOR}{result.policy_id}@{result.policy_version}"),
        ):
            slot = (id(table), key, day)
            if slot not in self.aggregates:
                stored = table.relative_to(day_start(day))[key].value()
                self.aggregates[slot] = (
                    table,
                    DailyCRL.from_dict(stored) if stored else DailyCRL(),
                )
            self.aggregates[slot][1].add(result.loss)
        return True

    def write(self) -> set[tuple[str, date]]:
        """Write every touched aggregate and run mark once; the doer-days touched."""
        touched = set()
        for (_, key, day), (table, daily) in self.aggregates.items():
            table.relative_to(day_start(day))[key] = daily.to_dict()
            if table is self.stage.by_doer:
                touched.add((key, day))
        for run_key, day in self.runs:
            self.stage.folded.relative_to(day_start(day))[run_key] = True
        return touched


class CRLStage(Stage):
    """learning.run-completed → scored runs, daily aggregates, crl_results, regression alerts."""

    name = "crl"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)
        self.by_doer = self._daily("crl-daily-doer", "Daily CRL (Moments + p95 sketch) per doer")
        self.by_phase = self._daily("crl-daily-phase", "Daily CRL per doer/phase")
        self.by_policy = self._daily("crl-daily-policy", "Daily CRL per doer/policy@version")
        # Runs already folded, by doer/run id, over the same 30-day horizon as the
        # aggregates: a redelivered bundle is folded once (older duplicates would only
        # touch expired days anyway).
        self.folded = self._daily(
            "crl-folded-runs", "Run ids already folded into the aggregates", default=bool
        )
        # Doer-days that already raised a regression alert: one alert per doer and day.
        self.alerted = self.table("crl-alerted", default=bool, help_="Alerted doer/days")

        async def crl(stream: Any) -> None:
            """Score and emit each run; fold, store and check the batch; ack after all of it."""
            async for events in batches(stream, BATCH):
                async with self.guarded_batch(events):
                    await self.process(events)

        app.agent(self.topics.run_completed.channel, name=self.name)(crl)
        register_views(app, self)

    def _daily(self, name: str, help_: str, default: Any = dict) -> Any:
        # One value per key and UTC day, kept 30 days; no key or value type, so
        # Faust serialises both as JSON.
        return self.table(
            name,
            default=default,
            help_=help_,
            window=DAY,
            expires=timedelta(days=HISTORY_DAYS),
        )

    async def process(self, events: list[Any]) -> None:
        """One batch: score and emit each run, fold the live ones, store all, check regressions."""
        batch = BatchFold(self)
        scored: list[tuple[Any, CRLComputed]] = []
        for event in events:
            async with self.guarded(event):
                result = await self._score(event)
                if result is None:
                    continue
                self.partitions.seen(result.doer, event.message.partition)
                if counts_toward_live(result):
                    batch.add(result)
                scored.append((event, result))
                # Emitted for duplicates too: downstream writes are idempotent by
                # run id, and a crash before the table writes must not lose it.
                await self.topics.crl_computed.send(result)
        touched = batch.write()
        await self._store(scored)
        for doer, day in sorted(touched):
            await self._check_regression(doer, day)

    async def _score(self, event: Any) -> CRLComputed | None:
        bundle = await self.decode(event, RunCompleted)
        if bundle is None:
            return None
        config = self.app.learning
        try:
            return score_bundle(bundle, config.weights, config.objectives)
        except BundleError as exc:
            await self.dead_letter(event, error_type="bundle", reason=exc.reason, doer=bundle.doer)
            return None

    async def _check_regression(self, doer: str, today: date) -> None:
        flag = f"{doer}{SEPARATOR}{today.isoformat()}"
        if self.alerted[flag]:
            return
        trends = self.app.learning.trends
        days = history(self.by_doer, doer, today, trends.baseline_days + 1)
        check = check_regression(days, today, trends)
        if not check.regressed:
            return
        self.alerted[flag] = True
        alert = Alert(
            doer=doer,
            kind="crl_regression",
            severity="warning",
            message=check.reason,
            value=check.measured,
            baseline=check.baseline,
            threshold=check.threshold,
            evidence={
                "day": today.isoformat(),
                "today_count": check.today_count,
                "baseline_count": check.baseline_count,
                "baseline_days": trends.baseline_days,
                "lower_bound": check.lower_bound,
            },
        )
        await self.topics.alerts.send(alert)
        log.warning(
            "crl_regression doer=%s day=%s measured=%.4f baseline=%.4f threshold=%.4f",
            doer,
            today,
            check.measured,
            check.baseline,
            check.threshold,
        )

    async def _store(self, scored: list[tuple[Any, CRLComputed]]) -> None:
        """Insert the batch's results with one statement; find a refused row one by one."""
        pool = self.app.pool
        try:
            await durably(partial(insert_crl_results, pool, [r for _, r in scored]), what="crl")
        except asyncpg.PostgresError as exc:
            log.warning("batch_rejected error=%r rows=%d; retrying one by one", exc, len(scored))
            for event, result in scored:
                try:
                    await durably(partial(insert_crl_results, pool, [result]), what="crl row")
                except asyncpg.PostgresError as row_exc:
                    await self.dead_letter(
                        event, error_type="storage", reason=str(row_exc), doer=result.doer
                    )
