"""Changelog recovery that takes the changelog queue's records in batches.

Faust's :class:`faust.tables.recovery.Recovery` reads the changelogs of a
worker's tables (at every start with the memory store; with RocksDB, what its
files lack) in ``_slurp_changelogs``: for every record it waits on the queue
through ``asyncio.wait_for`` (a task and a timer per record) and then asks
whether recovery is done, which builds a counter of the remaining offsets of
every active partition, and whether the standbys are ready, another counter.
py-spy over a worker recovering 244,000 records (1,000 doers × 30 days,
``bench/recovery.py``, 3,800–3,900 records/s) found those per-record costs at
about a quarter of the busy main thread, beside the delivery itself.

:class:`Recovery` reads the same queue in the same order and applies each
record exactly as Faust does — its offset recorded, the record buffered for its
table and handed to ``on_changelog_event``, the buffer applied when it reaches
the table's recovery buffer size — but waits only when the queue is empty, takes
what is queued (up to :data:`BATCH`) at once, and asks "done?" and "standbys
ready?" once per batch, giving the event loop's other tasks a turn after each.
When the last record a partition needed is in a batch, recovery ends after that
batch instead of after that record: the same state, a few records later.

Only the at-least-once guarantee is supported (learnops does not use Kafka
transactions): Faust's check for aborted transactions is not reproduced, and
:meth:`Recovery._slurp_changelogs` refuses to run under ``exactly_once``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import monotonic
from typing import Any, Final

from faust.tables import manager as faust_manager
from faust.tables import recovery as faust_recovery
from faust.utils.tracing import finish_span
from mode import Service

log = logging.getLogger(__name__)

#: The most records taken from the changelog queue in one turn of the loop: at about
#: 40 µs a record, 20 ms before the event loop's other tasks (the streams, while a
#: standby partition catches up beside them) get a turn.
BATCH: Final = 500
#: How long an empty queue is waited on before "done?" is asked again (Faust's 5 s).
IDLE_S: Final = 5.0


class Recovery(faust_recovery.Recovery):
    """Faust's recovery service, reading the changelog queue a batch at a time."""

    def need_recovery(self) -> bool:
        """Whether an active partition still has records to read (Faust's answer, no counter)."""
        offsets = self.active_offsets
        for tp, highwater in self.active_highwaters.items():
            offset = offsets[tp]
            if highwater is not None and offset is not None and highwater - offset > 0:
                return True
        return False

    def _standbys_remaining(self) -> int:
        """Faust's ``standby_remaining_total()``, summed without building a counter."""
        offsets = self.standby_offsets
        total = 0
        for tp, highwater in self.standby_highwaters.items():
            offset = offsets[tp]
            if highwater >= 0 and offset >= 0:
                total += highwater - offset
        return total

    @Service.task
    async def _slurp_changelogs(self) -> None:
        if self.app.in_transaction:
            raise RuntimeError(
                "agents.faust_internals.recovery supports at-least-once processing only"
            )
        # A batch is applied without a suspension, so a rebalance (which clears the queue)
        # never runs halfway through it; a changelog callback that awaited would break that.
        if any(getattr(t, "_on_changelog_event", None) for t in self.tables.values()):
            raise RuntimeError(
                "agents.faust_internals.recovery: a table has an on_changelog_event callback"
            )
        queue = self.tables.changelog_queue
        take: Callable[[], Any] = queue.get_nowait
        while not self.should_stop:
            try:
                self.signal_recovery_end.clear()
                events = _drain(take)
                if not events:
                    try:
                        first = await asyncio.wait_for(queue.get(), timeout=IDLE_S)
                    except TimeoutError:
                        if self.should_stop:
                            return
                        self._end_if_recovered()
                        continue
                    events = [first, *_drain(take, BATCH - 1)]
                started, actives = monotonic(), 0
                for event in events:
                    if self.should_stop:  # stopping: what is left is read at the next start
                        break
                    try:
                        actives += await self._apply(event, started)
                    except Exception as exc:  # noqa: BLE001 - as Faust's loop: logged, it goes on
                        log.warning("Error in recovery %r", exc)
                if actives:
                    self._time_actives(actives, started)
                self._end_if_recovered()
                self._note_standbys_ready()
                await asyncio.sleep(0)  # a turn for the other tasks between two batches
            except Exception as exc:  # noqa: BLE001 - as Faust's loop: logged, and it goes on
                log.warning("Error in recovery %r", exc)

    async def _apply(self, event: Any, received_at: float) -> int:
        """Apply one changelog record as Faust's loop does; 1 if its partition is active."""
        message = event.message
        tp, offset = message.tp, message.offset
        if tp in self.active_tps:
            active, offsets = 1, self.active_offsets
            self._active_events_received_at[tp] = received_at
        elif tp in self.standby_tps:
            active, offsets = 0, self.standby_offsets
            self._standby_events_received_at[tp] = received_at
        else:
            log.warning("recovery unknown topic %s offset %s", tp, offset)
            return 0
        table = self.tp_to_table[tp]
        size = self.buffer_sizes.get(tp)
        if size is None:
            size = table.recovery_buffer_size if active else table.standby_buffer_size
            self.buffer_sizes[tp] = size
        seen = offsets.get(tp)
        if seen is not None and offset <= seen:
            return active
        offsets[tp] = offset
        buffer = self.buffers[table]
        buffer.append(event)
        await table.on_changelog_event(event)
        if len(buffer) >= size:
            table.apply_changelog_batch(buffer)
            buffer.clear()
            self._last_flush_at = monotonic()
        return active

    def _time_actives(self, count: int, started: float) -> None:
        """Feed Faust's estimate of the time left: the batch's mean time per active record."""
        now = monotonic()
        times = self._processing_times
        limit = self.num_samples_required_for_estimate
        times.extend([(now - started) / count] * min(count, limit))
        while len(times) > limit:
            times.popleft()
        self._last_active_event_processed_at = now

    def _end_if_recovered(self) -> None:
        if self.in_recovery and not self.need_recovery():
            self.flush_buffers()
            self._set_recovery_ended()
            if self._actives_span is not None:
                self._actives_span.set_tag("Actives-Ready", True)
            self.signal_recovery_end.set()

    def _note_standbys_ready(self) -> None:
        if self._standbys_span is None and self.tables.standbys_ready:
            return
        if self._standbys_remaining():
            return
        if self._standbys_span is not None:
            finish_span(self._standbys_span)
            self._standbys_span = None
        self.tables.on_standbys_ready()


def _drain(take: Callable[[], Any], most: int = BATCH) -> list[Any]:
    """Up to ``most`` records already queued, without waiting.

    An error thrown into the queue (Faust throws a changelog record it cannot
    decode there) comes out of ``take`` once; it is logged as Faust's loop logs
    it, and the records taken before it are returned, not dropped with it.
    """
    events: list[Any] = []
    append = events.append
    try:
        while len(events) < most:
            append(take())
    except asyncio.QueueEmpty:
        pass
    except Exception as exc:  # noqa: BLE001 - as Faust's loop: logged, and it goes on
        log.warning("Error in recovery %r", exc)
    return events


class TableManager(faust_manager.TableManager):
    """Faust's table manager with :class:`Recovery`."""

    @property
    def recovery(self) -> Recovery:
        """The recovery service, created on first use as Faust's is."""
        current = self._recovery
        if not isinstance(current, Recovery):
            current = self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return current
