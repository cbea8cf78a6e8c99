"""The learnops Kafka transport: Faust's aiokafka transport without its one-second waits.

A bare Faust agent did ~3k events/s on a quarter of a core while raw aiokafka did
~200k/s: the worker waited, in two places, each good for a second or more per
batch. ``bench/faust_throughput.py`` shows both and the figures with this module.

What waited
-----------
Faust runs aiokafka in a consumer thread; the event loop of the agents asks it
for records (``Consumer._drain_messages`` → ``Consumer.getmany(timeout=1.0)`` →
``_wait_next_records`` → ``AIOKafkaConsumerThread.getmany`` →
``call_thread(_fetch_records)`` → aiokafka ``Fetcher.fetched_records``), then
pushes them one by one into the stream's queue.

1. The fetch parked for 1.5 s. aiokafka keeps one fetch request in flight per
   broker (``Fetcher._in_flight``) and leaves a partition whose records are
   buffered but not yet consumed out of the next request: after
   ``prefetch_backoff`` (0.1 s) it fetches the other partitions alone
   (``Fetcher._get_actions_per_node``). Faust builds the consumer with
   ``fetch_max_wait_ms=1500`` hard-coded (``_create_worker_consumer``) and
   ``fetch_min_bytes=1``, so when those other partitions have nothing new — one
   that has caught up, or one no doer hashes to — the broker holds the request
   for 1.5 s, and the partition the agents have meanwhile drained cannot be
   fetched again until it returns. It happens whenever a batch (up to 1 MB per
   partition, ~700 bundles) takes the agents more than 0.1 s.
2. The poll slept through the end of buffer pressure. When a stream's queue
   passes its high-water mark, Faust takes that partition out of the active set
   (``Consumer.on_buffer_full``) and puts it back once the queue has drained
   (``on_buffer_drop``). A poll already waiting for the remaining partitions is
   not woken by that, so it sits out its full 1 s timeout although the records
   are already in memory; and when every partition is held back,
   ``_wait_next_records`` sleeps a fixed second.

The fix
-------
1. While records flow (the last poll got some, or the fetcher still holds some),
   fetches ask the broker to wait at most ``FETCH_WAIT_BUSY_MS`` (25 ms): a
   request for idle partitions comes back within it and the drained ones are
   fetched again. Once a poll comes back empty with nothing buffered (caught up),
   fetches go back to Faust's 1.5 s long poll, so an idle worker does not poll
   the broker 100 times a second (~3 % of a core). The broker answers a parked
   fetch as soon as data arrives either way.

   While records flow, a fetch also asks for ``FETCH_MIN_BYTES_BUSY`` (64 KB;
   ``LEARNOPS_FETCH_MIN_BYTES`` sets it per process) before the broker answers
   early, and may wait ``FETCH_WAIT_BUSY_MS`` (25 ms) for it. With Faust's
   ``fetch_min_bytes=1`` a worker reading a steady trickle on some sixty
   partitions sent a fetch for every few records: at 100 bundles/s
   its consumer thread took 0.26 cores, the fetch requests' encoding and
   responses' decoding in pure Python, and each small fetch became small stage
   batches. Waiting for 64 KB or 25 ms (2026-12-05, ``bench/worker.py``, one
   worker with every stage, back to back): worker CPU at 100 bundles/s 0.88 →
   0.56 cores, at 170/s 0.96 → 0.82 (p99 → CRL result 182 → 85 ms), 250/s
   carried with bounded lag (it was not), a 10,000-run backlog drained at 294
   runs/s against 248. The price, when records trickle, is up to 25 ms per
   fetch (p50 → CRL result at 100/s 27 → 37 ms), and up to about 50 ms for a
   partition whose records were buffered while a fetch was in flight (it waits
   for that fetch, then its own); at a backlog the 64 KB is there at once.
   A process that reads few records and wants them soon sets
   ``LEARNOPS_FETCH_MIN_BYTES=1``: the canary alone, at 170 runs/s, p50 / p99
   from a CRL result to its decision 30–31 / 53–63 ms → 15–16 / 38–44 ms (two
   90 s windows each, back to back), for at most 0.04 cores (docs/operations.md).
   "Caught up" counts only records Faust can hand over: records aiokafka keeps
   for a partition Faust paused (an active table's changelog after recovery)
   would otherwise keep every fetch busy (an idle worker's consumer thread
   0.046 cores, ~40 fetches a second, before this was fixed).
2. While a partition is held back for buffer pressure, polls wait at most
   ``BUFFER_PRESSURE_POLL_S`` (10 ms) instead of 1 s, so the drain loop sees the
   partition come back within 10 ms.

The producer (settings, in ``build_app``)
-----------------------------------------
With the waits gone an agent that sends per event is CPU-bound, and much of it
is per-request work: aiokafka sends one batch per partition per round trip, and
with Faust's ``producer_linger`` of 0 each request carries one or two records.
``PRODUCER_LINGER_S`` (5 ms) and ``PRODUCER_MAX_BATCH_BYTES`` (256 KB, under the
broker's 1 MB ``message.max.bytes``; Faust's 16 KB default holds ~11 bundles)
gave ~40 % more validate-and-send throughput, for at most 5 ms of latency.

Why it is safe
--------------
The changes set only how long the broker may hold a fetch response, how many
bytes end that wait early (the only wait made longer: at most 25 ms per fetch,
while records flow), and how long a poll waits before the drain loop looks
again. Which records arrive, their order, and everything that happens to them
afterwards — acks, gap tracking, offsets committed only once events are acked,
the rebalance listener, Faust's flow control and buffer limits — is Faust's and
aiokafka's own code, untouched; at-least-once delivery is unchanged. The fetch
limits are set on the consumer thread's event loop, the loop whose fetcher task
reads them, so nothing races.

One correction to Faust's commit bookkeeping
--------------------------------------------
``Consumer._new_offset`` refuses to commit while the message at the committed
offset is unacked. Faust 0.15.3 checks ``first acked − committed > 1`` although
its committed offset is already the next to read, so a single unacked message
followed by acked ones was committed past and never redelivered.

Records fetched but never delivered
-----------------------------------
Faust counts an offset jump between two delivered records as a gap with
nothing stored in it, and commits past it; records it fetched and then dropped
(around the seek that ends a rebalance, or a fetched batch cut short when the
flow stops) were lost that way. :class:`agents.faust_internals.offsets.OffsetGuard` stands
between the fetched records and the delivery loop and fetches them again; see
agents/faust_internals/offsets.py.

Changelog writes acknowledged before the commit
-----------------------------------------------
A table write is a record handed to the producer's buffer (``send_soon``), and
before each commit Faust calls ``Producer.flush``. Faust 0.15.3's buffer flush
returns as soon as 0.1 s passes without a record leaving the buffer, so records
still queued there (or on their way to aiokafka: a send waiting for metadata
right after a restart) were not flushed, yet the input offsets that wrote them
were committed. A kill -9 then lost table updates whose input would never be
read again: ``tests/faults/kill9.py`` found a daily aggregate 11 runs behind
PostgreSQL. :class:`Producer` keeps every record put in its buffer until the
broker acknowledges it, and its flush waits for all of them (at most
:data:`FLUSH_TIMEOUT_S`; past that, or if one failed, the flush raises and
nothing is committed: the worker stops and the records are read again).

Records handed to the streams without a task each
-------------------------------------------------
Faust's delivery loop (``Consumer._drain_messages``) hands each record to the
conductor with ``wait_first(callback(message), suspend_flow.wait())``, so a
flow stopped by a rebalance can interrupt a delivery blocked on a full stream
queue. ``wait_first`` makes four tasks and an ``asyncio.wait`` per record, and
the record reaches its stream's queue only on a later turn of the event loop.
In a worker with every stage that cost twice over: the tasks themselves, and
batches of one or two events (agents/streams.py takes what is queued), so every
stage paid its per-batch work (a PostgreSQL round trip, table writes, checks)
per event. :meth:`Consumer.wait_first` first runs the delivery inline: the
conductor's ``on_message`` only waits when a queue is full or the flow or the
producer's buffer is held, and otherwise finishes without suspending, with the
same effect as the stock path. Only a delivery that does wait goes the stock
way, interruptible as before (:class:`_Resumed` carries on the started
coroutine). The loop still yields every 100 records.

The transport is chosen by the broker URL scheme ``learnops-kafka://host:port``
(:func:`broker_urls`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from aiokafka.errors import IllegalStateError
from aiokafka.partitioner import DefaultPartitioner
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode import Service
from mode.services import WaitResults

from agents.faust_internals.membership import guard_membership
from agents.faust_internals.offsets import OffsetGuard, Verdict
from agents.placement import key_hash

log = logging.getLogger(__name__)

#: URL scheme that selects this transport in Faust's ``broker`` setting.
SCHEME = "learnops-kafka"

#: Longest the broker may hold a fetch while records are flowing.
FETCH_WAIT_BUSY_MS = 25
#: Bytes a fetch asks for before the broker may answer early, while records are flowing
#: (the default of ``LEARNOPS_FETCH_MIN_BYTES``: an app's ``fetch_min_bytes`` overrides it).
FETCH_MIN_BYTES_BUSY = 64 * 1024
#: The same once the worker has caught up (Faust's own value: answer at the first record).
FETCH_MIN_BYTES_IDLE = 1
#: Longest the broker may hold a fetch once the worker has caught up (Faust's own value).
FETCH_WAIT_IDLE_MS = 1500
#: Longest a poll waits while a partition is held back because its stream buffer is full.
BUFFER_PRESSURE_POLL_S = 0.01

#: Longest a stop or rebalance waits for in-flight messages before it commits what is acked.
WAIT_EMPTY_S = 8.0

#: How long a partition's commit may stand still behind one unacked offset before it is logged.
COMMIT_STALL_LOG_S = 30.0

#: Longest a flush before a commit waits for the broker to acknowledge the buffered records.
FLUSH_TIMEOUT_S = 120.0

#: Faust ``producer_linger``: how long a produce batch may wait for more records.
PRODUCER_LINGER_S = 0.005
#: Faust ``producer_max_batch_size``: bytes per produce batch and partition.
PRODUCER_MAX_BATCH_BYTES = 256 * 1024


def fetch_limits(
    records_returned: int, records_buffered: bool, busy_min_bytes: int = FETCH_MIN_BYTES_BUSY
) -> tuple[int, int]:
    """The next fetches' longest wait (ms) and the bytes that end it early, given the last poll."""
    if records_returned > 0 or records_buffered:
        return FETCH_WAIT_BUSY_MS, busy_min_bytes
    return FETCH_WAIT_IDLE_MS, FETCH_MIN_BYTES_IDLE


def broker_urls(hosts: Iterable[str]) -> list[str]:
    """Faust ``broker`` URLs that select this transport for each ``host:port``."""
    return [f"{SCHEME}://{host}" for host in hosts]


def fetch_positions(consumer: Any) -> dict[Any, int]:
    """The position of every assigned partition that has one (the offset its next fetch reads)."""
    assignment = consumer._subscription.subscription
    assignment = None if assignment is None else assignment.assignment
    if assignment is None:
        return {}
    positions = {}
    for tp in assignment.tps:
        state = assignment.state_value(tp)
        if state.has_valid_position:
            positions[tp] = state.position
    return positions


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with the fetch wait following the backlog."""

    #: Per partition, its position when the latest records were handed over.
    fetch_starts: Mapping[Any, int] = MappingProxyType({})
    #: The bytes a fetch asks for while records flow (:func:`fetch_limits`); the app's
    #: ``fetch_min_bytes`` when it has one (``LEARNOPS_FETCH_MIN_BYTES``).
    busy_min_bytes: int = FETCH_MIN_BYTES_BUSY

    async def on_start(self) -> None:
        """Start the aiokafka consumer and check that the fetcher has the fields we use."""
        await super().on_start()
        fetcher = self._ensure_consumer()._fetcher
        fields = {"_fetch_max_wait_ms": int, "_fetch_min_bytes": int, "_records": dict}
        missing = [
            name
            for name, kind in fields.items()
            if not isinstance(getattr(fetcher, name, None), kind)
        ]
        if missing:
            # Failing here beats a silent no-op that brings the 1.5 s stall back.
            raise RuntimeError(
                f"aiokafka's Fetcher lacks {', '.join(missing)}; "
                "agents/faust_internals/transport.py needs updating for this aiokafka version"
            )
        # A worker that lost its place in the group exits instead of fetching nothing or
        # sharing its partitions with a worker of the same group instance id.
        guard_membership(self._ensure_consumer(), self.app.conf.consumer_group_instance_id)

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Mapping[Any, list[Any]]:
        """Hand the buffered records over and set the limits of the fetches that follow.

        Also notes each assigned partition's position first (:attr:`fetch_starts`):
        aiokafka hands a partition's fetched records over only while its
        position is where their fetch began, so it tells the offset guard where
        the records it gets began, and whether a jump before the first one is a
        gap in the log or records skipped (agents/faust_internals/offsets.py).
        A seek while this call waits is told apart by the guard's epochs.
        """
        self.fetch_starts = MappingProxyType(fetch_positions(consumer))
        records: Mapping[Any, list[Any]] = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        fetcher = consumer._fetcher
        # Records buffered for a partition Faust has paused (an active table's changelog
        # after recovery: Faust pauses it in its own bookkeeping, aiokafka keeps fetching
        # it) are never handed over; counting them kept an idle worker's fetches busy
        # (~40 a second). A partition held back for buffer pressure is not paused, so its
        # records still count. Both values are set together on the fetcher's own event
        # loop (this method runs on the consumer thread's), so no fetch request is built
        # between the two stores.
        paused = frozenset(self.consumer._paused_partitions)
        deliverable = any(tp not in paused for tp in fetcher._records)
        fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes = fetch_limits(
            sum(len(batch) for batch in records.values()), deliverable, self.busy_min_bytes
        )
        return records


class _Resumed:
    """A coroutine already started by one ``send(None)``, awaitable from where it stopped.

    ``await _Resumed(coro, waiting_on)`` behaves as ``await coro`` would have from
    its first suspension on: the future it waits on goes up to the task, and what
    the task sends or throws (a cancellation) goes down to the coroutine.
    """

    def __init__(self, coro: Any, waiting_on: Any) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Any:
        coro, value = self.coro, self.waiting_on
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - forwarded to the coroutine, as await does
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value


def _waits_for_flow(coro: Any, flow: asyncio.Event) -> bool:
    """Whether ``coro`` is ``flow.wait()`` not yet started (the delivery loop's second argument)."""
    return (
        getattr(coro, "cr_code", None) is asyncio.Event.wait.__code__
        and coro.cr_frame is not None
        and coro.cr_frame.f_locals.get("self") is flow
    )


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer on :class:`ConsumerThread`, polling briefly under pressure."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._guard: OffsetGuard[TP] = OffsetGuard()
        self._fetched_epochs: dict[TP, int] = {}
        self._seeking = 0
        self._seek_done = asyncio.Event()
        self._seek_done.set()
        # Per partition: since when its commit has waited on the offset it names.
        self._stalled: dict[TP, tuple[int, float, bool]] = {}

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        """Deliver a record inline when it needs no wait; otherwise Faust's ``wait_first``.

        Only the delivery loop's call, ``(callback(message), suspend_flow.wait())``
        while the flow is not suspended, takes the inline path (module docstring).
        """
        if (
            len(coros) == 2
            and timeout is None
            and asyncio.iscoroutine(coros[0])
            and not self.suspend_flow.is_set()
            and _waits_for_flow(coros[1], self.suspend_flow)
        ):
            delivery, flow = coros
            try:
                waiting_on = delivery.send(None)
            except StopIteration as done:
                flow.close()
                return WaitResults([delivery], [done.value], False)
            except BaseException:
                flow.close()
                raise
            coros = (_Resumed(delivery, waiting_on), flow)
        return await super().wait_first(*coros, timeout=timeout)

    def _acks_enabled_for(self, topic: str) -> bool:
        enabled: bool = self.app.topics.acks_enabled_for(topic)
        return enabled

    def _new_consumer_thread(self) -> ConsumerThread:
        thread = ConsumerThread(self, loop=self.loop, beacon=self.beacon)
        # The learnops app carries LEARNOPS_FETCH_MIN_BYTES; a plain Faust app on this
        # transport (bench/faust_throughput.py) keeps the default.
        thread.busy_min_bytes = getattr(self.app, "fetch_min_bytes", FETCH_MIN_BYTES_BUSY)
        return thread

    async def seek_to_committed(self) -> Mapping[Any, int]:
        """Seek every assigned partition to its committed offset; tell the guard which moved.

        A partition with no commit goes back to where its first fetch began
        (agents/faust_internals/offsets.py), so what was delivered before this
        seek and dropped with the streams' queues is fetched again.
        """
        self._seeking += 1
        self._seek_done.clear()
        try:
            found: Mapping[Any, int] = await super().seek_to_committed()
            # aiokafka seeks only the partitions committed above zero, but one
            # committed at 0 is read from 0 too: the guard expects every commit.
            committed = {
                tp: offset for tp, offset in found.items() if offset is not None and offset >= 0
            }
            self._guard.sought(committed)
            for tp in found:
                origin = None if tp in committed else self._guard.origin(tp)
                if origin is not None:
                    log.info(
                        "seek_uncommitted topic=%s partition=%d to=%d",
                        tp.topic,
                        tp.partition,
                        origin,
                    )
                    await self.seek(tp, origin)
            return found
        finally:
            self._seeking -= 1
            if not self._seeking:
                self._seek_done.set()

    async def seek(self, partition: Any, offset: int) -> None:
        """Seek one partition; the guard expects it to continue from ``offset``."""
        await super().seek(partition, offset)
        self._guard.sought({partition: offset})

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Forget what the guard knew of partitions that are no longer ours."""
        self._guard.forget(set(revoked))
        await super().on_partitions_revoked(revoked)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        """Faust's records, minus those to fetch again (agents/faust_internals/offsets.py)."""
        async for tp, message in super().getmany(timeout):
            if not self._acks_enabled_for(tp.topic):  # changelogs: Faust tracks no acks
                yield tp, message
                continue
            if self._seeking:
                await self._seek_done.wait()
            decision = self._guard.judge(tp, message.offset, self._fetched_epochs)
            if decision.verdict is Verdict.DELIVER:
                yield tp, message
            elif decision.verdict is Verdict.GAP:
                assert decision.offset is not None
                # The log holds nothing from decision.offset up to this record: those
                # offsets count as acked, so the commit can move past them.
                log.info(
                    "offset_gap topic=%s partition=%d from=%d to=%d",
                    tp.topic,
                    tp.partition,
                    decision.offset,
                    message.offset,
                )
                self._gap[tp].addi(decision.offset, message.offset)
                self._gap[tp].merge_overlaps()
                yield tp, message
            elif decision.verdict is Verdict.REWIND:
                assert decision.offset is not None
                await self._rewind(tp, decision.offset)

    async def _rewind(self, tp: Any, offset: int) -> None:
        """Seek back for the guard (which counted this seek already)."""
        log.info("refetch topic=%s partition=%d from=%d", tp.topic, tp.partition, offset)
        try:
            await faust_aiokafka.Consumer.seek(self, tp, offset)
        except IllegalStateError:
            # No longer assigned (a rebalance is under way): its next owner
            # starts from the committed offset, which is not past the records.
            self._guard.forget({tp})

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit for ``tp``; None while the message at the committed one is unacked.

        Faust's own check lets one unacked message through: the committed offset is
        the next to read, yet it only refuses when the first acked offset is more
        than one past it. With offset N unacked and N+1… acked it commits past N,
        and a restart never sees N again. Here the head must be acked (or a gap:
        offsets with no record) before anything is committed.
        """
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None:
            head = min(acked)
            gaps = self._gap[tp]
            if gaps:
                head = min(head, min(interval.begin for interval in gaps))
            if head > committed:
                self._note_stall(tp, committed, head)
                return None
        self._stalled.pop(tp, None)
        found: int | None = super()._new_offset(tp)
        return found

    def _note_stall(self, tp: Any, committed: int, head: int) -> None:
        """Log, once per offset, a commit held for ``COMMIT_STALL_LOG_S`` behind an unacked offset.

        Everything after the offset is acked, so one record holds the partition:
        whether it is in hand (unacked, and by how many streams) or was never
        delivered tells a stuck stage from a record lost between fetch and delivery.
        """
        now = self.loop.time()
        offset, since, logged = self._stalled.get(tp, (committed, now, False))
        if offset != committed:
            offset, since, logged = committed, now, False
        if not logged and now - since >= COMMIT_STALL_LOG_S:
            logged = True
            held = [m for m in list(self._unacked_messages) if m.tp == tp and m.offset == committed]
            log.warning(
                "commit_stalled topic=%s partition=%d committed=%d first_acked=%d for_s=%.0f "
                "in_hand=%s refcount=%s read_offset=%s guard_expects=%s",
                tp.topic,
                tp.partition,
                committed,
                head,
                now - since,
                bool(held),
                [m.refcount for m in held],
                self._read_offset.get(tp),
                self._guard.expected(tp),
            )
        self._stalled[tp] = (offset, since, logged)

    async def wait_empty(self) -> None:
        """Wait for in-flight messages to be acked, for at most ``WAIT_EMPTY_S``, then commit.

        Faust waits without end (and swallows the cancellation of a timeout
        around it). A message read by two stages (learning.run-completed: crl and
        curator) holds one reference per stream; when a stop clears the streams'
        queues, one that the other stage had already processed keeps its last
        reference for good, and the stopping worker waited until it was killed. A
        killed worker does not leave its consumer group, so the next one waits
        out its session before it gets the partitions. After the bound, offsets
        are committed up to the first unacked message only (:meth:`_new_offset`),
        so what was not acked is processed again by the partition's next owner.

        It stops waiting sooner when no ack can come: the flow is stopped (the
        streams' queues were cleared) and no stage body holds events it will still
        ack (``app.bodies``, agents/streams.py). Without that, every stop or
        revocation behind such a message took the whole bound.
        """
        deadline = self.loop.time() + WAIT_EMPTY_S
        bodies = getattr(self.app, "bodies", None)
        waited = False
        while self._unacked_messages and not self.should_stop:
            waited = True
            gc.collect()  # as Faust does: messages nothing refers to leave the weak set
            await self.commit()
            left = deadline - self.loop.time()
            if not self._unacked_messages or left <= 0:
                break
            if bodies is not None and not bodies.running and not self.flow_active:
                log.info(
                    "wait_empty: no stage is processing; %d taken, unprocessed messages stay "
                    "uncommitted for the partition's next owner: %s",
                    len(self._unacked_messages),
                    _first_offsets(self._unacked_messages),
                )
                await self.commit_and_end_transactions()
                return
            # Faust's ack() resolves this future: wake up on the next ack.
            self._waiting_for_ack = self.loop.create_future()
            try:
                await asyncio.wait_for(self._waiting_for_ack, timeout=min(1.0, left))
            except TimeoutError:
                pass
            finally:
                self._waiting_for_ack = None
            self._clean_unacked_messages()
        if waited and self._unacked_messages:
            running = dict(+bodies.by_stage) if bodies is not None else "unknown"
            log.warning(
                "wait_empty gave up after %.0f s; stage bodies running: %s; left uncommitted: %s",
                WAIT_EMPTY_S,
                running,
                _first_offsets(self._unacked_messages),
            )
        await self.commit_and_end_transactions()

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        """Poll for records; for at most 10 ms while a partition is held back for pressure."""
        for tp, offset in self._guard.rewinds().items():
            await self._rewind(tp, offset)
        # The records this poll returns are judged against the seeks known now.
        fetched = self._fetched_epochs = self._guard.epochs()
        if self._buffered_partitions and not self.app.client_only:
            # on_buffer_drop puts the partition back but wakes no poll in progress.
            timeout = min(timeout, BUFFER_PRESSURE_POLL_S)
            if self.flow_active and not self._get_active_partitions():
                # Every partition is held back: Faust would sleep a whole second here.
                await self.sleep(timeout)
                return {}, self._get_active_partitions()
        records, active = await super()._wait_next_records(timeout)
        starts = self._thread.fetch_starts if isinstance(self._thread, ConsumerThread) else {}
        for tp, batch in (records or {}).items():
            if batch and self._acks_enabled_for(tp.topic):
                offsets = [record.offset for record in batch]
                self._guard.fetched(tp, offsets, fetched, starts.get(tp))
        return records, active


def _first_offsets(messages: Iterable[Any], count: int = 20) -> list[tuple[str, int, int]]:
    """The lowest (topic, partition, offset)s of ``messages``, for a log line."""
    return sorted((m.tp.topic, m.tp.partition, m.offset) for m in messages)[:count]


class ChangelogFlushError(RuntimeError):
    """Buffered records were not acknowledged: committing the offsets behind them loses them."""


class AcknowledgedBuffer(ProducerBuffer):
    """Faust's producer buffer that also remembers each record until the broker acknowledges it."""

    #: Records waiting for the producer above which the conductor holds input back
    #: (``wait_until_ebb``). Faust's 100 stalled delivery after any batch that wrote a
    #: few hundred table values; the queue is now handed over whole each turn
    #: (:meth:`_handle_pending`), so this only bounds memory if the producer itself stalls.
    max_messages = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        self.unacknowledged: set[asyncio.Future[Any]] = set()
        self.failures: list[BaseException] = []

    def put(self, fut: Any) -> None:
        self.watch(fut)
        super().put(fut)

    def watch(self, fut: Any) -> None:
        """Hold the next commit until the broker acknowledges ``fut``; fail it if that fails."""
        self.unacknowledged.add(fut)
        fut.add_done_callback(self._acknowledged)

    @Service.task
    async def _handle_pending(self) -> None:
        """Hand every queued record to the producer in one turn of the event loop.

        Faust's task hands over one record per turn, and its conductor stops
        delivering input (``wait_until_ebb``) while more than 100 wait: a stage
        that writes a few hundred table values at the end of a batch held its
        input back for as many turns of the loop, each shared with every stage.
        """
        pending = self.pending
        while not self.should_stop:
            await self._send_pending(await pending.get())
            while not pending.empty():
                await self._send_pending(pending.get_nowait())
            self.message_sent.set()

    def _acknowledged(self, fut: asyncio.Future[Any]) -> None:
        self.unacknowledged.discard(fut)
        failure = None if fut.cancelled() else fut.exception()
        if failure is not None or fut.cancelled():
            self.failures.append(failure or asyncio.CancelledError())

    async def flush(self) -> None:
        """Return once every record put so far is acknowledged; raise if one failed or hung."""
        waiting = set(self.unacknowledged)
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=FLUSH_TIMEOUT_S)
            if pending:
                raise ChangelogFlushError(
                    f"{len(pending)} buffered records not acknowledged after {FLUSH_TIMEOUT_S:g} s"
                )
        if self.failures:
            failure = self.failures[0]
            raise ChangelogFlushError(
                f"{len(self.failures)} buffered records failed: {failure!r}"
            ) from failure


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer whose flush waits for every buffered record's acknowledgement."""

    async def send_acknowledged(self, topic: str, key: bytes, value: bytes) -> Any:
        """Send one record through aiokafka; the next commit waits for the broker's ack.

        The stages' output records (agents/event_topics.py). Faust's ``Topic.send``
        wraps each record in a message, a future and sensor callbacks before it
        reaches this producer, and then only logs a failed delivery: the offsets
        behind a record the broker never took were committed all the same. Here
        the record goes straight to aiokafka's accumulator (on the partition the
        default partitioner picks, :meth:`partition_of`; same batching and linger)
        and its future joins the records that the flush before
        every commit waits for (:class:`AcknowledgedBuffer`), so a failed send fails
        the commit and the input is processed again.
        """
        future = await self.send(topic, key, value, self.partition_of(topic, key), None, None)
        buffer = self.buffer
        assert isinstance(buffer, AcknowledgedBuffer)
        buffer.watch(future)
        return future

    def partition_of(self, topic: str, key: bytes) -> int | None:
        """The partition aiokafka's default partitioner gives ``key``, hashed once per key.

        aiokafka hashes every record's key with a pure-Python murmur2 (about 3 %
        of the CRL stage at its full rate, py-spy); a stage's keys are its few
        thousand doers. None leaves the choice to aiokafka: before the topic's
        metadata is known, or when the app sets a partitioner of its own.
        """
        producer = self._producer
        if not self._hash_partitions or producer is None:
            return None
        partitions = producer.client.cluster.partitions_for_topic(topic)
        if not partitions:
            return None
        # DefaultPartitioner indexes the sorted partition ids, which are 0..n-1.
        return key_hash(key) % len(partitions)

    async def know_topic(self, topic: str) -> None:
        """Fetch ``topic``'s metadata unless the producer has it (nothing before it started).

        Faust's router hashes a key with ``key_partition``, which reads the
        producer's metadata and raised a TypeError for a topic the producer had
        not sent to yet: a table's web view then answered 500 until the first
        changelog write (seen in `make test` on a replay-only doer).
        """
        producer = self._producer
        if producer is not None:
            await producer.partitions_for(topic)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust fills in aiokafka's DefaultPartitioner when none is configured.
        self._hash_partitions = type(self.partitioner) is DefaultPartitioner
        if self.app.conf.producer_threaded:  # pragma: no cover - learnops never sets it
            raise RuntimeError("learnops' producer buffer does not support producer_threaded")
        buffer = AcknowledgedBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.app
        self.buffer = buffer


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer` and :class:`Producer`."""

    Consumer = Consumer
    Producer = Producer


# Faust picks the transport class from the broker URL's scheme through this registry.
TRANSPORTS[SCHEME] = f"{__name__}:Transport"
