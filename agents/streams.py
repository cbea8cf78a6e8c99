"""How every stage iterates its stream: an event is acked only once its body has finished.

Faust acks an event when the agent's ``async for`` moves on, and also when the
iteration ends in any other way: its ``finally`` acks the event in hand when a
stopping worker cancels the agent mid-body. ``stream.take_events`` does the same
for a whole batch, and on closing it restores ``enable_acks``; the stream's
passive drainer, still running until the stream itself stops, then acks every
event it reads, with no agent left to process it. A stop in the middle of
traffic lost events that way (tests/integration/test_canary.py).

So the stages turn the stream's own acks off for good (``enable_acks = False``:
take_events saves and restores that value) and ack themselves:

* :func:`each` acks an event when the body asks for the next one, so a body
  that was cancelled or raised past it leaves it unacked;
* :func:`batches` is take_events, which acks a yielded batch itself; a batch
  body cut short is kept unacked by :func:`agents.dlq.guarded_batch`.

An unacked event's offset is never committed (agents/transport.py), so the next
owner of the partition processes it again; every write is idempotent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


async def each(stream: Any) -> AsyncIterator[Any]:
    """Every event of ``stream``, acked once the body that took it has finished."""
    stream.enable_acks = False
    async for event in stream.events():
        yield event
        await stream.ack(event)


def batches(stream: Any, max_events: int, within: float) -> AsyncIterator[list[Any]]:
    """Batches of up to ``max_events`` events, or what ``within`` seconds gathered."""
    stream.enable_acks = False
    batched: AsyncIterator[list[Any]] = stream.take_events(max_events, within=within)
    return batched
