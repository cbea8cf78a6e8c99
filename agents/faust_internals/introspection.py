"""Read-only looks into Faust's private state that the health and metrics pages need.

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
