"""Decoding raw topic bytes into event models, with bad input routed to the DLQ."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import TypeAdapter, ValidationError

from agents.dlq import dead_letter
from models.base import Event, describe_validation_error

E = TypeVar("E", bound=Event)


class _Keyed(Protocol):
    @property
    def doer(self) -> str: ...


K = TypeVar("K", bound=_Keyed)


async def decode(event: Any, model: type[E], *, stage: str) -> E | None:
    """The validated event, or None after its bytes were sent to learning.dlq with the reason.

    Bad JSON and schema violations both surface as a pydantic ValidationError.
    An event whose Kafka key is not its doer is refused too: it would land in
    another doer's partition and split that doer's state across workers.
    """
    return await _decode(event, model.model_validate_json, stage=stage)


async def decode_with(event: Any, adapter: TypeAdapter[K], *, stage: str) -> K | None:
    """As :func:`decode`, for a topic whose value is a union of models (``POLICY_COMMANDS``)."""
    return await _decode(event, adapter.validate_json, stage=stage)


async def _decode(event: Any, parse: Callable[[Any], K], *, stage: str) -> K | None:
    value = event.message.value
    try:
        decoded = parse(value)
    except ValidationError as exc:
        is_json = not any(e["type"] == "json_invalid" for e in exc.errors())
        await dead_letter(
            event,
            stage=stage,
            error_type="schema" if is_json else "json",
            reason=describe_validation_error(exc),
        )
        return None
    key = event.message.key
    if key is not None and key != decoded.doer.encode():
        await dead_letter(
            event,
            stage=stage,
            error_type="key",
            reason=f"key {key[:64]!r} is not the event's doer {decoded.doer!r}",
            doer=decoded.doer,
        )
        return None
    return decoded
