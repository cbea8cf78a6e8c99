"""Small real-broker helpers for the integration tests: publish and read topics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def publish(producer: Any, topic: str, messages: list[tuple[bytes, bytes]]) -> list[Any]:
    """Send (key, value) pairs and wait for every acknowledgement; returns record metadata."""
    futures = [await producer.send(topic, key=key, value=value) for key, value in messages]
    return list(await asyncio.gather(*futures))


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, timeout: float = 60.0
) -> T:
    """Poll ``probe`` until ``done`` holds for its result; the last result either way."""
    deadline = time.monotonic() + timeout
    result = await probe()
    while not done(result) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        result = await probe()
    return result
