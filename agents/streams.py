"""How every stage iterates its stream: an event is acked only once its body has finished.

Faust acks an event when the agent's ``async for`` moves on, and also when the
iteration ends in any other way: its ``finally`` acks the event in hand when a
stopping worker cancels the agent mid-body. ``stream.take_events`` does the same
for a whole batch, and on closing it restores ``enable_acks``; the stream's
passive drainer, still running until the stream itself stops, then acks every
event it reads, with no agent left to process it. A stop in the middle of
traffic lost events that way (tests/integration/test_canary.py).

So the stages turn the stream's own acks off for good (``enable_acks = False``)
and ack themselves:

* :func:`each` acks an event when the body asks for the next one, so a body
  that was cancelled or raised past it leaves it unacked;
* :func:`batches` acks a batch when the body asks for the next one, in the same
  way; a batch body cut short is kept unacked (see also
  :func:`agents.dlq.guarded_batch`).

An unacked event's offset is never committed (agents/faust_internals/transport.py), so the next
owner of the partition processes it again; every write is idempotent.

Both count, in a :class:`Bodies` the app hands them, the bodies that hold
events they will still ack. A stopping worker (or one giving up partitions)
clears the streams' queues and waits for acks; once no body is running, none
will come, so it stops waiting (``Consumer.wait_empty``) instead of sitting
out its bound behind events a cleared queue dropped.

How big a batch is
------------------
A batch is the first event to arrive plus every event already fetched behind it
(waiting in the stream's queue), up to ``max_events``. No timer: at a low rate
an event is processed as soon as the body is free, and under load the queue
fills while a batch is processed, so batches grow by themselves and the
per-batch work (one INSERT, one table write per key) is shared by more events.
Faust's ``take_events(max, within)`` instead waits ``within`` seconds after
every batch before it hands over the next, however many events are waiting; at
1,000 runs/s that put ~20 ms of waiting into the CRL stage's median latency
(bench/crl_pipeline.py).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from agents.faust_internals.introspection import skips_next

log = logging.getLogger("learnops.streams")

SLOW_TAKE_S = 1.0  # a take inside a batch that waits this long is logged


class Bodies:
    """The stage bodies that hold events they will still ack, by stage (one per app)."""

    def __init__(self) -> None:
        self.by_stage: Counter[str] = Counter()

    @property
    def running(self) -> int:
        """How many bodies hold events."""
        return self.by_stage.total()

    @contextmanager
    def holding(self, stage: str) -> Iterator[None]:
        """Count one body of ``stage`` while the block runs."""
        self.by_stage[stage] += 1
        try:
            yield
        finally:
            self.by_stage[stage] -= 1


async def each(stream: Any, bodies: Bodies | None = None, stage: str = "") -> AsyncIterator[Any]:
    """Every event of ``stream``, acked once the body that took it has finished."""
    stream.enable_acks = False
    counted = bodies or Bodies()
    async for event in stream.events():
        with counted.holding(stage):
            yield event
            await stream.ack(event)


async def batches(
    stream: Any,
    max_events: int,
    bodies: Bodies | None = None,
    stage: str = "",
    *,
    ack: bool = True,
) -> AsyncIterator[list[Any]]:
    """Batches of the events ready now, up to ``max_events``; acked once the body has finished.

    With ``ack=False`` the body acks them itself (``stream.ack``), when their
    effects are written: the CRL stage holds a batch until its aggregates are.
    """
    if max_events < 1:
        raise ValueError(f"max_events must be at least 1, not {max_events}")
    stream.enable_acks = False
    counted = bodies or Bodies()
    ready = stream.channel.empty
    events = aiter(stream.events())
    while True:
        try:
            batch = [await anext(events)]
        except StopAsyncIteration:
            return  # the stream ended (the worker is stopping)
        try:
            # Not past an event Faust will skip: with nothing behind it, the take would
            # wait for the next event with the batch held (tests/unit/test_streams.py).
            while len(batch) < max_events and not ready() and not skips_next(stream):
                # Timed per take, not per batch: a full batch of queued events can take
                # a second on a loaded loop without any one take waiting.
                asked = time.monotonic()
                batch.append(await anext(events))
                _note_slow_take(stage, len(batch) - 1, time.monotonic() - asked)
        except StopAsyncIteration:
            return  # ended while taking the batch: what was taken stays unacked
        # Not counted while taking: a stop that clears the queue between ``ready()``
        # and the take leaves it waiting for an event that never comes.
        with counted.holding(stage):
            yield batch
            if ack:
                for event in batch:
                    await stream.ack(event)


def _note_slow_take(stage: str, held: int, waited_s: float) -> None:
    """Log a take that waited while holding events: the queue said ready, the event came late.

    Faust skips a queued event (flow stopped, a stale generation) without handing
    it over; when it was the last one, the take waited for the next event with
    the batch unprocessed and its offsets uncommitted (a clean-clone make test,
    docs/canary.md). The take now stops before such an event (``skips_next``);
    this line says if some other way to wait is left.
    """
    if waited_s >= SLOW_TAKE_S:
        log.warning(
            "batch_take_waited stage=%s held=%d waited=%.1fs: events held unprocessed meanwhile",
            stage,
            held,
            waited_s,
        )


@asynccontextmanager
async def unacked_if_cut_short(events: list[Any], *, stage: str) -> AsyncIterator[None]:
    """Keep a batch unacked, for good, when its body does not finish.

    A body that is cancelled or whose generator is closed (how a stopping worker
    ends an agent in the middle of a batch) takes one more reference on each
    event's message, so that no ack that might still come for them (Faust's own
    ``take_events`` acks a closed batch) lets a commit move past events whose
    effects never happened. Whoever owns the partition next processes them
    again (every write is idempotent). tests/integration/test_transport.py stops
    a worker in mid-batch and checks that no offset was committed unprocessed.
    """
    try:
        yield
    except Exception:
        raise
    except BaseException:  # CancelledError, GeneratorExit: the worker is stopping
        for event in events:
            event.message.incref()
        log.info("batch_unfinished stage=%s batch=%d left unacked", stage, len(events))
        raise
