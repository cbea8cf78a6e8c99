"""The CRL stage: learning.run-completed → the run's loss, daily aggregates, regression alerts.

Per batch of events: decode → score (learning.crl) → store the batch in
crl_results with one INSERT (idempotent on run_id) → emit learning.crl-computed
per run at once. The batch's live runs are folded into pending daily
aggregates, which are written to the tables (learning.trends) and checked for
a regression (learning.alerts) at most every ``LEARNOPS_CRL_FOLD_INTERVAL_S``
(0.25 s), after a batch or by a timer. Replay and shadow runs are scored,
emitted and stored like any run but never folded into the live aggregates.

Coalesced, not per event or per batch, because each table write is a
changelog record of the key's whole day (moments and quantile sketch): folding
1,000 runs of 5 doers costs 15 writes instead of 3,000, and at 1,000 runs/s in
batches of ~35 the per-batch writes were half the stage's time per run
(docs/operations.md). A batch's events are acked only once their aggregates are
written, and Faust commits an offset only after the changelog records before
it are acknowledged, so nothing is committed before its effects are written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import asyncpg

from agents.faust_internals.introspection import consumer_generation
from agents.stage import Stage
from agents.tables import HISTORY_DAYS, SEPARATOR, day_start, folded_up_to, history, marked
from agents.web import register_views
from learning.crl import BundleError, score_bundle
from learning.moments import Moments
from learning.trends import DailyCRL, baseline, day_of, regression_against
from models.events import Alert, CRLComputed, RunCompleted
from models.ids import regression_alert_id
from storage.crl import Owner, Source, store_crl_results
from storage.pool import durably, refused_for_its_data

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.crl")

#: A run to fold into the pending aggregates: its result and the (partition, offset) owning it.
Fold = tuple[CRLComputed, int, int]

DAY = timedelta(days=1)
BATCH = 1000  # at most this many events per batch (agents/streams.py)
MAX_BASELINES = 200_000  # cached baselines kept before the cache starts afresh
EXPIRY_MARGIN_DAYS = 2  # baselines this close to table expiry are not cached (near_expiry)

#: Why a bundle whose run id another doer's or tenant's stored run holds is refused.
#: It names neither: the reason is logged and kept, and the other run is not the sender's.
RUN_ID_TAKEN = (
    "the run_id is already stored for another doer or tenant; run ids must be unique "
    "across doers and tenants (docs/security.md, Tenants)"
)


def counts_toward_live(result: CRLComputed) -> bool:
    """Replays and shadow runs never move live statistics."""
    return result.replay_id is None and not result.shadow


class _Slot:
    """One aggregate a batch touches: its table, its value so far, and its source mark."""

    def __init__(self, table: Any, stored: Any, partition: int) -> None:
        self.table = table
        self.daily = DailyCRL.from_dict(stored) if stored else DailyCRL()
        self.partition = partition
        self.mark = folded_up_to(stored, partition)
        self.changed = False


class BatchFold:
    """The batch's live runs, folded per table, key and day before one write each."""

    def __init__(self, stage: CRLStage) -> None:
        self.stage = stage
        self.slots: dict[tuple[int, str, date], _Slot] = {}

    def add(self, result: CRLComputed, partition: int, offset: int) -> None:
        """Fold the run that the record at (partition, offset) owns into its three aggregates.

        An aggregate whose mark is at or past the offset already holds the run
        (folded before a crash, written with its mark in one changelog record).
        """
        stage = self.stage
        day = day_of(result.run_occurred_at)
        doer = result.doer
        for table, key in (
            (stage.by_doer, doer),
            (stage.by_phase, f"{doer}{SEPARATOR}{result.phase}"),
            (stage.by_policy, f"{doer}{SEPARATOR}{result.policy_id}@{result.policy_version}"),
        ):
            slot_key = (id(table), key, day)
            slot = self.slots.get(slot_key)
            if slot is None:
                stored = table.relative_to(day_start(day))[key].value()
                slot = self.slots[slot_key] = _Slot(table, stored, partition)
            if offset <= slot.mark:
                continue
            slot.daily.add(result.loss)
            slot.mark = offset
            slot.changed = True

    def write(self) -> list[tuple[Any, str, date, Moments]]:
        """Write each changed aggregate with its mark, once; the (table, key, day, moments)s."""
        written = []
        for (_, key, day), slot in self.slots.items():
            if not slot.changed:
                continue
            value = marked(slot.daily.to_dict(), slot.partition, slot.mark)
            slot.table.relative_to(day_start(day))[key] = value
            written.append((slot.table, key, day, slot.daily.moments))
        return written


def near_expiry(oldest: date, today: date) -> bool:
    """Whether a baseline reaching back to ``oldest`` may lose a day to table expiry soon.

    Faust deletes a day's window by the wall clock once it is ``HISTORY_DAYS`` old,
    without telling the stage; a baseline cached over such a day would go on
    counting it. Baselines within ``EXPIRY_MARGIN_DAYS`` of that are read anew
    each time (only late runs, weeks old, have them).
    """
    return (today - oldest).days >= HISTORY_DAYS - EXPIRY_MARGIN_DAYS


class CRLStage(Stage):
    """learning.run-completed → scored runs, daily aggregates, crl_results, regression alerts."""

    name = "crl"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)
        self.by_doer = self._daily("crl-daily-doer", "Daily CRL (Moments + p95 sketch) per doer")
        self.by_phase = self._daily("crl-daily-phase", "Daily CRL per doer/phase")
        self.by_policy = self._daily("crl-daily-policy", "Daily CRL per doer/policy@version")
        # Doer-days that already raised a regression alert: one alert per doer and day.
        self.alerted = self.table("crl-alerted", default=bool, help_="Alerted doer/days")
        # (table, key, day) → the moments of the day's baseline (:meth:`_baseline`).
        self._baselines: dict[tuple[int, str, date], Moments] = {}
        self._baselines_generation: int | None = None

        # Runs folded into aggregates not yet written, and the events that hold them
        # (acked once written); see :meth:`_write_folds`.
        self.fold_interval_s = app.settings.learnops_crl_fold_interval_s
        self._pending = BatchFold(self)
        self._held: list[Any] = []
        self._held_since: float | None = None  # by ``clock``, when the oldest was held
        self.clock: Callable[[], float] = time.monotonic
        self._fold_lock = asyncio.Lock()
        self._stream: Any = None
        self._revocations = 0  # partition revocations seen (:meth:`_forget_folds`)

        async def crl(stream: Any) -> None:
            """Score, store and emit each batch; write the aggregates when due, then ack."""
            self._stream = stream
            async for events in self.batches(stream, BATCH, ack=False):
                async with self._fold_lock:
                    revocations = self._revocations
                    folds: list[Fold] = []
                    async with self.guarded_batch(events):
                        folds = await self.process(events)
                    if revocations != self._revocations:
                        # Partitions moved while the batch was processed: its folds would
                        # be written to partitions that may be another worker's now. It
                        # stays unacked; the partitions' next owner processes it again.
                        continue
                    for result, partition, offset in folds:
                        self._pending.add(result, partition, offset)
                    self._held.extend(events)
                    if self._held_since is None:
                        self._held_since = self.clock()
                    if self._folds_due():
                        await self._write_folds()

        app.agent(self.topics.run_completed.channel, name=self.name)(crl)
        if self.fold_interval_s > 0:
            self.every(max(0.05, self.fold_interval_s / 2), self.write_due_folds)
        app.on_partitions_revoked.connect(self._forget_folds)
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

    async def process(self, events: list[Any]) -> list[Fold]:
        """One batch: score, store, then emit each stored run; the runs it owns, to fold.

        PostgreSQL first: a run it refuses is a dead letter, never emitted or
        folded. A run is folded by the record that owns it (the first to store
        it), so a publisher's duplicate is stored and emitted once, folded never.
        The returned (result, partition, offset)s join the pending aggregates
        once the whole batch went through (a batch that fails part-way adds
        none); :meth:`_write_folds` writes them.
        """
        scored: list[tuple[Any, CRLComputed]] = []
        for event in events:
            async with self.guarded(event):
                result = await self._score(event)
                if result is not None:
                    scored.append((event, result))
        owners = await self._store(scored)
        folds: list[Fold] = []
        for event, result in scored:
            owner = owners.get(result.run_id)
            if owner is None:
                continue  # refused by PostgreSQL: dead-lettered
            if not owner.owns(result):
                # Another doer's or tenant's run holds the id: never merge the two.
                await self.dead_letter(
                    event, error_type="run_id", reason=RUN_ID_TAKEN, doer=result.doer
                )
                continue
            source = (event.message.partition, event.message.offset)
            self.partitions.seen(result.doer, source[0])
            if counts_toward_live(result) and owner.source == source:
                folds.append((result, *source))
            # Emitted again when redelivered: downstream writes are idempotent by
            # run id, and a crash before this send must not lose it.
            await self.topics.crl_computed.send(result)
        return folds

    def _folds_due(self) -> bool:
        held_since = self._held_since
        return held_since is not None and self.clock() - held_since >= self.fold_interval_s

    async def write_due_folds(self) -> None:
        """The timer's turn: write the pending aggregates once they are due (no new batch came)."""
        if not self._folds_due() or self.app.rebalancing:
            return
        async with self._fold_lock:
            if self._folds_due():
                await self._write_folds()

    def _forget_folds(self, *_: Any, **__: Any) -> None:
        """Partitions move: drop the unwritten folds; their runs are processed again.

        Their events were never acked, so no offset past them was committed: the
        partitions' next owner (this worker too, after the rebalance) reads them
        again, stores and emits them again (idempotent) and folds them once, since
        no aggregate's mark covers them.
        """
        self._revocations += 1
        if self._held:
            log.info("crl_folds_dropped events=%d: their offsets stay uncommitted", len(self._held))
        self._pending = BatchFold(self)
        self._held = []
        self._held_since = None

    async def _write_folds(self) -> None:
        """Write the pending aggregates, check them for regressions, then ack their events.

        Called with the fold lock held, after a batch or by the timer, at most
        every ``LEARNOPS_CRL_FOLD_INTERVAL_S``: each aggregate a run touched is
        written once per interval instead of once per batch, with its mark (the
        last offset folded into it), in one changelog record. The events are
        acked only after their aggregates are written, and Faust commits an offset
        only after the changelog records before it are acknowledged, so a crash at
        any point leaves each run either folded with its mark or uncommitted.
        """
        fold, events = self._pending, self._held
        self._pending, self._held, self._held_since = BatchFold(self), [], None
        if not events:
            return
        with self.app.bodies.holding(self.name):
            async with self.guarded_batch(events):
                await self._write(fold)
            stream = self._stream
            for event in events:
                await stream.ack(event)

    async def _write(self, batch: BatchFold) -> None:
        # A write to a day changes the baselines of the days after it: dropped before
        # the writes, so a write that fails part-way leaves no stale baseline behind.
        baseline_days = self.app.learning.trends.baseline_days
        for (table_id, key, day), slot in batch.slots.items():
            if slot.changed:
                for later in range(1, baseline_days + 1):
                    self._baselines.pop((table_id, key, day + later * DAY), None)
        # Doers first: a phase or policy of a doer that regressed as a whole that day
        # adds nothing; its own alert is for a regression the doer's mean hides.
        written = sorted(batch.write(), key=lambda w: w[0] is not self.by_doer)
        for table, key, day, moments in written:
            if table is self.by_doer or not self._doer_alerted(key, day):
                await self._check_regression(table, key, day, moments)

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

    def _doer_alerted(self, key: str, day: date) -> bool:
        """Whether the doer of a phase or policy key already raised its regression alert today."""
        doer = key.split(SEPARATOR, 1)[0]
        return bool(self.alerted[f"{doer}{SEPARATOR}{day.isoformat()}"])

    def _baseline(self, table: Any, key: str, today: date) -> Moments:
        """The key's baseline before ``today``, cached while the worker's partitions stay put.

        Only this stage writes these tables, and it drops the cached baselines a
        write changes (:meth:`process`); a rebalance (a new consumer generation)
        may hand back a partition another worker wrote meanwhile, so the cache
        holds for one generation. Reading eight days from the tables for every
        key of every batch was most of the stage's per-batch time at 1,000
        bundles/s (docs/operations.md, "The whole worker under load").
        """
        trends = self.app.learning.trends
        generation = consumer_generation(self.app)
        if generation != self._baselines_generation or len(self._baselines) > MAX_BASELINES:
            self._baselines.clear()
            self._baselines_generation = generation
        cache_key = (id(table), key, today)
        cached = self._baselines.get(cache_key)
        if cached is None:
            days = history(table, key, today - DAY, trends.baseline_days, sketches=False)
            cached = baseline(days, today, trends)
            # Faust's table expiry goes by the wall clock.
            if not near_expiry(today - trends.baseline_days * DAY, datetime.now(UTC).date()):
                self._baselines[cache_key] = cached
        return cached

    async def _check_regression(self, table: Any, key: str, today: date, moments: Moments) -> None:
        """Alert once per key and day when the key's day regresses against its baseline.

        ``key`` is a doer (by_doer), doer/phase (by_phase) or doer/policy@version
        (by_policy): a regression confined to one phase or one policy version is
        found even when the doer's overall mean hides it.
        """
        flag = f"{key}{SEPARATOR}{today.isoformat()}"
        if self.alerted[flag]:
            return
        trends = self.app.learning.trends
        check = regression_against(moments, self._baseline(table, key, today), trends)
        if not check.regressed:
            return
        self.alerted[flag] = True
        doer, _, rest = key.partition(SEPARATOR)
        scope: dict[str, Any] = {}
        if table is self.by_phase:
            scope["phase"] = rest
        elif table is self.by_policy:
            policy_id, _, version = rest.rpartition("@")
            scope.update(policy_id=policy_id, policy_version=int(version))
        alert = Alert(
            # One id per key and day: a regression alert sent again after a restart
            # (its table mark lost with the kill) is recognisably the same alert.
            event_id=regression_alert_id(self.app.conf.id, key, today.isoformat()),
            doer=doer,
            kind="crl_regression",
            severity="warning",
            message=check.reason if not rest else f"{rest}: {check.reason}",
            value=check.measured,
            baseline=check.baseline,
            threshold=check.threshold,
            evidence={
                "day": today.isoformat(),
                "scope": "doer" if not rest else ("phase" if "phase" in scope else "policy"),
                "today_count": check.today_count,
                "baseline_count": check.baseline_count,
                "baseline_days": trends.baseline_days,
                "lower_bound": check.lower_bound,
            },
            **scope,
        )
        await self.topics.alerts.send(alert)
        log.warning(
            "crl_regression key=%s day=%s measured=%.4f baseline=%.4f threshold=%.4f",
            key,
            today,
            check.measured,
            check.baseline,
            check.threshold,
        )

    async def _store(self, scored: list[tuple[Any, CRLComputed]]) -> dict[str, Owner]:
        """Store the batch with one statement (a refused row is found one by one); run owners."""
        pool = self.app.pool
        results = [r for _, r in scored]
        sources: list[Source] = [(e.message.partition, e.message.offset) for e, _ in scored]
        try:
            return await durably(
                partial(store_crl_results, pool, results, sources), what="crl_results"
            )
        except asyncpg.PostgresError as exc:
            if not refused_for_its_data(exc):
                raise  # grants, schema or a bug: no row is to blame (Stage.guarded_batch)
            log.warning(
                "batch_rejected error=%s rows=%d; storing one by one", _sqlstate(exc), len(scored)
            )
        owners: dict[str, Owner] = {}
        for (event, result), source in zip(scored, sources, strict=True):
            try:
                owners.update(
                    await durably(
                        partial(store_crl_results, pool, [result], [source]), what="crl_results row"
                    )
                )
            except asyncpg.PostgresError as row_exc:
                if not refused_for_its_data(row_exc):
                    raise
                await self.dead_letter(
                    event,
                    error_type="storage",
                    reason=f"PostgreSQL refused the result ({_sqlstate(row_exc)})",
                    doer=result.doer,
                )
        return owners


def _sqlstate(exc: asyncpg.PostgresError) -> str:
    """The error's class and SQLSTATE, without its message (which may quote input values)."""
    return f"{type(exc).__name__} {getattr(exc, 'sqlstate', '?')}"
