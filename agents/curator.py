"""The curator stage: learning.run-completed → redacted, labelled, guarded learning.samples.

Per bundle: decode → curate (learning.samples: redact, guard, label) → keep each
verdict in a table → emit one SampleCurated per artifact with content, accepted
or rejected with its reason → a contamination alert on learning.alerts when a
dataset's contamination rate passes the rule (at most once per dataset and
day).

Tenants. A bundle's samples go to its tenant's dataset (``tenant/doer/phase``)
and are checked against that tenant's samples and our outputs for that tenant
only (learning.samples, docs/curation.md "Tenants"); the state stays one per
doer, so it keeps the doer's partition.

State. Each doer's guard state (near-duplicate index, exact hashes, diversity
window, memory of our own outputs, statistics) lives in this worker's memory,
rebuilt from two changelog-backed tables the first time the doer is seen after
the worker starts or its partitions move: ``curator-samples`` (one verdict
record per checked sample, with its MinHash signature when the state needs it)
and ``curator-own-outputs`` (artifacts of ours that were not samples). A
restart or rebalance therefore loses nothing, and a redelivered bundle gets
the verdicts it got the first time (same sample and event ids). Records
older than ``curation.memory_days`` are deleted on the doer's first bundle of
a day (:meth:`CuratorStage.prune`), so the state is bounded by what a doer
sends in that time.

Bad input. The crl stage dead-letters what cannot be decoded from
learning.run-completed, one letter per bad event; this stage skips the same
events (counted by ``learnops_curator_skipped_total``) instead of writing a
second letter. What it alone refuses (content under a reused artifact id) it
dead-letters itself.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import CancelledError
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, date, datetime
from functools import partial
from pickle import PickleError
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from pydantic import ValidationError

from agents.curation_pool import PREPARED, CurationPool, PreparedBatch
from agents.stage import Stage, misplaced, remember_validated, validated_before
from agents.tables import SEPARATOR, doer_of
from learning.contamination import GoldenSet, reason_kind
from learning.samples import (
    CurationError,
    DoerCuration,
    PreparedBundle,
    bundle_text,
    is_live,
)
from models.base import duplicate_key_problem
from models.events import RunCompleted
from models.keys import key_problem
from storage.datasets import golden_sets, golden_texts
from storage.pool import durably

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.curator")

#: Bundles curated per batch at most (a batch is what is queued when the stage is free).
BATCH = 200
#: How often the curator reads the golden datasets frozen since it last looked.
GOLDEN_REFRESH_S = 30.0

SAMPLES = Counter(
    "learnops_samples_curated_total",
    "Samples curated, by verdict (accepted, or the reject reason).",
    ["verdict"],
)
EXPIRED = Counter(
    "learnops_curator_records_expired_total",
    "Curator verdict and own-output records deleted after curation.memory_days.",
)
SKIPPED = Counter(
    "learnops_curator_skipped_total",
    "Bundles the curator gave no samples: invalid (dead-lettered by crl), replay, shadow.",
    ["reason"],
)


def _key(doer: str, sample: str) -> str:
    return f"{doer}{SEPARATOR}{sample}"


class CuratorMemory:
    """Each doer's curation state in this worker, rebuilt from the tables when first needed."""

    def __init__(self, stage: CuratorStage) -> None:
        self.stage = stage
        self._doers: dict[str, DoerCuration] = {}
        self._grouped: dict[str, tuple[list[Any], list[tuple[str, Any]]]] | None = None

    def of(self, doer: str) -> DoerCuration:
        """The doer's state, restored from the tables if this worker has not built it yet."""
        state = self._doers.get(doer)
        if state is None:
            if self._grouped is None:
                self._grouped = self._group()
            samples, own = self._grouped.pop(doer, ([], []))
            app = self.stage.app
            state = DoerCuration(doer, app.learning.curation, curator=app.conf.id)
            state.restore(samples, own)
            self._doers[doer] = state
            if samples or own:
                log.info(
                    "curator_restored doer=%s samples=%d own_outputs=%d datasets=%d",
                    doer,
                    len(samples),
                    len(own),
                    len(state.guards),
                )
        return state

    def replace(self, doer: str, state: DoerCuration) -> None:
        """Use ``state`` for the doer from now on (rebuilt after some of its records expired)."""
        self._doers[doer] = state

    def drop(self, doer: str) -> None:
        """Forget one doer's state (it is rebuilt from the tables when next needed)."""
        self._doers.pop(doer, None)
        # The doer's share of the last pass is gone (consumed when it was
        # built): the next doer to be built takes a fresh pass over the tables.
        self._grouped = None

    def forget(self, *_: Any, **__: Any) -> None:
        """Forget every doer: partitions moved, the tables are the truth again."""
        self._doers.clear()
        self._grouped = None

    def _group(self) -> dict[str, tuple[list[Any], list[tuple[str, Any]]]]:
        # One pass over the recovered tables, grouped by doer; each doer's
        # share is consumed when the doer is first seen.
        grouped: dict[str, tuple[list[Any], list[tuple[str, Any]]]] = defaultdict(lambda: ([], []))
        for key, record in self.stage.verdicts.items():
            grouped[doer_of(key)][0].append(record)
        for key, record in self.stage.own_outputs.items():
            grouped[doer_of(key)][1].append((str(key).split(SEPARATOR, 1)[1], record))
        return dict(grouped)


def _parse(app: LearnopsApp, event: Any) -> RunCompleted | None:
    """The bundle, or None for what the crl stage dead-letters (so it is not sent twice)."""
    message = event.message
    if message.value is None:
        SKIPPED.labels("invalid").inc()
        return None
    bundle: RunCompleted | None = validated_before(message, RunCompleted)
    if bundle is None:
        if duplicate_key_problem(message.value) is not None:
            SKIPPED.labels("invalid").inc()
            return None
        try:
            bundle = RunCompleted.model_validate_json(message.value)
        except ValidationError:
            SKIPPED.labels("invalid").inc()
            return None
        remember_validated(message, RunCompleted, bundle)
    if key_problem(message.key, bundle) is not None or misplaced(app, message) is not None:
        SKIPPED.labels("invalid").inc()
        return None
    return bundle


class CuratorStage(Stage):
    """learning.run-completed → redacted, labelled, guarded samples on learning.samples."""

    name = "curator"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)
        # Keys are "<doer>/<sample id>"; values are JSON records (learning.samples).
        self.verdicts = self.table(
            "curator-samples", default=None, help_="Curator verdict per sample"
        )
        self.own_outputs = self.table(
            "curator-own-outputs",
            default=None,
            help_="Artifacts of our policies that were not samples, for the self-loop check",
        )
        self.memory = CuratorMemory(self)
        self._pruned: dict[str, date] = {}  # doer -> the day its expired records were last pruned
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # a test may set it
        # After a rebalance the tables hold what this worker now owns; rebuild from them.
        app.on_partitions_revoked.connect(self.memory.forget)
        app.on_partitions_assigned.connect(self.memory.forget)

        self.pool = CurationPool(
            app.settings.learnops_curation_processes, app.learning.curation.hashing
        )
        # Each tenant's golden samples, which no sample may copy (evaluation data kept out
        # of training data): read at the first batch, then every GOLDEN_REFRESH_S.
        self.golden: dict[str, GoldenSet] = {}
        self._golden_read: set[tuple[str, int]] = set()  # (name, version) in self.golden
        self._golden_loaded = False
        self.every(GOLDEN_REFRESH_S, self.refresh_golden)

        async def curator(stream: Any) -> None:
            """Curate each bundle's artifacts into samples; keep verdicts; emit samples, alerts."""
            async for events in self.batches(stream, BATCH):
                async with self.guarded_batch(events):
                    await self.curate_batch(events)

        app.agent(self.topics.run_completed.channel, name=self.name)(curator)

    def close(self) -> None:
        """Stop the curation processes."""
        self.pool.close()

    async def curate_batch(self, events: list[Any]) -> None:
        """Curate a batch's bundles in order, their text prepared by the curation processes.

        Each event is guarded on its own: an error dead-letters that event
        only. The batch is acked once the last one is curated.
        """
        if not self._golden_loaded:
            await self.refresh_golden()
        parsed: list[tuple[Any, RunCompleted | None]] = []
        for event in events:
            async with self.guarded(event):
                parsed.append((event, _parse(self.app, event)))
        live = [bundle for _, bundle in parsed if bundle is not None and is_live(bundle)]
        batch = self.pool.prepare([bundle_text(bundle) for bundle in live])
        n = 0  # live bundles seen so far
        for event, bundle in parsed:
            if bundle is None:
                continue
            live_index = None
            if is_live(bundle):
                live_index, n = n, n + 1
            # Guarded as a whole: a bundle whose preparing raised is its own dead letter.
            async with self.guarded(event):
                prepared = None
                if live_index is not None:
                    if batch is not None:
                        prepared, batch = await self._prepared(batch, live_index)
                    PREPARED.labels("loop" if prepared is None else "pool").inc()
                await self.curate(event, bundle, prepared)

    async def refresh_golden(self) -> None:
        """Read the golden dataset versions frozen since the last look into ``self.golden``.

        Their texts are hashed off the event loop; a version is read once (a
        frozen version never changes). PostgreSQL down: retried (``durably``).
        """
        if not self.app.pool_open:  # the worker has not opened its pool yet (or closed it)
            return
        config = self.app.learning.curation.guard
        versions = await durably(partial(golden_sets, self.app.pool), what="golden datasets")
        for name, version, tenant in sorted(versions):
            if (name, version) in self._golden_read:
                continue
            texts = await durably(
                partial(golden_texts, self.app.pool, name, version), what="golden datasets"
            )
            golden = self.golden.setdefault(tenant, GoldenSet(config))
            hashed = await asyncio.to_thread(golden.keys, texts)
            for sample, digest, signature in hashed:
                golden.add_signature(f"{name}@{version}/{sample}", digest, signature)
            self._golden_read.add((name, version))
            log.info(
                "curator_golden name=%s version=%d tenant=%s samples=%d",
                name,
                version,
                tenant,
                len(hashed),
            )
        self._golden_loaded = True

    async def _prepared(
        self, batch: PreparedBatch, n: int
    ) -> tuple[PreparedBundle | None, PreparedBatch | None]:
        """The n-th live bundle's prepared text, and the batch (None once the processes failed).

        A failure of the processes (one died, the pool was shut down) leaves
        the rest of the batch to be prepared in the loop.
        """
        try:
            return await batch.get(n), batch
        except CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker is stopping the stage, not the processes failing
            error: BaseException = CancelledError()
        except (BrokenProcessPool, RuntimeError, OSError, PickleError) as exc:
            # A process died, the pool was shut down or a value did not cross: not the
            # bundle's fault. An error of preparing itself reaches the bundle's guard.
            error = exc
        batch.cancel()
        self.pool.failed(error)
        return None, None

    async def curate(
        self, event: Any, bundle: RunCompleted, prepared: PreparedBundle | None = None
    ) -> None:
        """Curate one bundle; a curation refusal is a dead letter and leaves the state as it was."""
        doer = bundle.doer
        self.partitions.seen(doer, event.message.partition)
        state = self.memory.of(doer)
        today = self.clock().date()
        if self._pruned.get(doer) != today:
            state = self.prune(doer, state, today)
            self._pruned[doer] = today
        try:
            await self._apply(state, bundle, prepared)
        except CurationError as exc:
            # Refused before anything changed (DoerCuration.curate): the state stays.
            await self.dead_letter(event, error_type="curation", reason=exc.reason, doer=doer)
        except Exception:
            # The state in memory may now be ahead of the tables; rebuild it from them.
            self.memory.drop(doer)
            raise

    def prune(self, doer: str, state: DoerCuration, today: date) -> DoerCuration:
        """Delete the doer's records older than ``memory_days``; the state rebuilt without them.

        Runs in the agent, on an event of the doer, so the deletions (and the
        dates given to undated records) go to the changelog partition of the
        doer's records. Returns the state to curate with from now on.
        """
        tables = {"sample": self.verdicts, "own": self.own_outputs}
        for kind, sample in state.undated():
            key = _key(doer, sample)
            record = tables[kind].get(key)
            if record is not None:
                tables[kind][key] = {**record, "day": today.isoformat()}
        expired = set(state.expiring(today))
        if not expired:
            return state
        for kind, sample in expired:
            tables[kind].pop(_key(doer, sample), None)
        samples, own = [], []
        for kind, sample in state.kept:
            if (kind, sample) in expired:
                continue
            record = tables[kind].get(_key(doer, sample))
            if record is None:
                continue
            if kind == "sample":
                samples.append(record)
            else:
                own.append((sample, record))
        fresh = DoerCuration(doer, self.app.learning.curation, curator=self.app.conf.id)
        fresh.restore(samples, own)
        self.memory.replace(doer, fresh)
        EXPIRED.inc(len(expired))
        log.info("curator_expired doer=%s records=%d kept=%d", doer, len(expired), len(fresh.kept))
        return fresh

    async def _apply(
        self, state: DoerCuration, bundle: RunCompleted, prepared: PreparedBundle | None
    ) -> None:
        doer = bundle.doer
        curation = state.curate(
            bundle,
            now=self.clock(),
            previous=lambda s: self.verdicts.get(_key(doer, s)),
            prepared=prepared,
            golden=self.golden.get(bundle.tenant_id),
        )
        if curation.skipped:
            SKIPPED.labels(curation.skipped).inc()
        for sample, record in curation.own_outputs.items():
            self.own_outputs[_key(doer, sample)] = record
        for curated in curation.samples:
            sample_event = curated.event
            if curated.record is not None:
                self.verdicts[_key(doer, sample_event.sample_id)] = curated.record
                verdict = sample_event.reject_reason or "accepted"
                SAMPLES.labels(reason_kind(verdict)).inc()
            await self.topics.samples.send(sample_event)
            if curated.alert is not None:
                # Sent again for a redelivered sample (same event id): a crash
                # between the table write and this send must not lose it.
                await self.topics.alerts.send(curated.alert)
                if curated.record is not None:
                    log.warning(
                        "contamination doer=%s dataset=%s rate=%.4f threshold=%.4f",
                        doer,
                        sample_event.dataset,
                        curated.alert.value,
                        curated.alert.threshold,
                    )
