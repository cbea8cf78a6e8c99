"""Read-only looks into Faust's private state (health and metrics pages, the stage helpers).

Quarantined here with the transport overrides, pinned to the versions they were
written for (agents/faust_internals/compat.py checks the names at start).
"""

from __future__ import annotations

from typing import Any


def committed_offsets(app: Any) -> dict[Any, int]:
    """The offset each assigned partition has committed (the next to read), as Faust knows it."""
    consumer = app.consumer
    committed = getattr(consumer, "_committed_offset", {})
    return {tp: offset for tp, offset in committed.items() if offset is not None}


def kafka_client(app: Any) -> Any | None:
    """The aiokafka client under Faust's producer, or None before the producer started."""
    producer = getattr(app.producer, "_producer", None)
    return None if producer is None else producer.client


def skips_next(stream: Any) -> bool:
    """Whether Faust will skip, unseen, the event at the head of ``stream``'s queue.

    The stream's iteration (``Stream._py_aiter``) drops an event while the flow
    is stopped or when it was fetched under an older consumer generation (before
    a rebalance), and then waits for the next one. A batch being taken must stop
    before such an event (agents/streams.py). Reads the channel queue's deque,
    ``asyncio.Queue._queue``.
    """
    queued = getattr(stream.channel.queue, "_queue", None)
    if not queued:
        return False
    message = getattr(queued[0], "message", None)
    if message is None:
        return False
    app = stream.app
    return bool(
        not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id
    )


def consumer_generation(app: Any) -> int:
    """The consumer group generation the worker is in (``App.consumer_generation_id``).

    It changes with every rebalance, so state cached from tables under one
    generation (a partition's values, which another worker may have written
    meanwhile) is known to be stale under the next.
    """
    return int(app.consumer_generation_id)
