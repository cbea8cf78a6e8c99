"""Small real-broker helpers for the integration tests: publish, read, and wait honestly."""

from __future__ import annotations

import asyncio
import reprlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient

T = TypeVar("T")

# Canary ``missing_grace_s`` for tests that are not about missing data (the
# stages' in-process tests cover that pause): on a loaded two-core CI machine a
# worker's CRL results can trail its routings by more than the 30 s default.
LAG_S = 600.0

# How much of the last probed value a timeout message shows.
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 400
_SHOW.maxlist = _SHOW.maxdict = _SHOW.maxset = _SHOW.maxtuple = 20


async def publish(producer: Any, topic: str, messages: list[tuple[bytes, bytes]]) -> list[Any]:
    """Send (key, value) pairs and wait for every acknowledgement; returns record metadata."""
    futures = [await producer.send(topic, key=key, value=value) for key, value in messages]
    return list(await asyncio.gather(*futures))


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, timeout: float = 60.0
) -> T:
    """Return ``probe()``'s first result for which ``done`` holds, polling until ``timeout``.

    Raises AssertionError with the last result seen when the time runs out: a
    test never goes on with a value its wait did not accept.
    """
    deadline = time.monotonic() + timeout
    result = await probe()
    while not done(result):
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"still not done after {timeout:g} s; last saw {_SHOW.repr(result)}"
            )
        await asyncio.sleep(0.5)
        result = await probe()
    return result


async def stays(
    probe: Callable[[], Awaitable[T]], holds: Callable[[T], bool], *, seconds: float
) -> T:
    """Return ``probe()``'s last result once ``holds`` was true of it throughout ``seconds``.

    For what must *not* happen (a second pause, a duplicate): the window is a
    bound on how long to watch, and the first violation fails at once with
    what was seen.
    """
    deadline = time.monotonic() + seconds
    while True:
        result = await probe()
        if not holds(result):
            raise AssertionError(f"no longer holds; saw {_SHOW.repr(result)}")
        if time.monotonic() >= deadline:
            return result
        await asyncio.sleep(0.25)


async def committed_offsets(settings: Any, group: str) -> dict[tuple[str, int], int]:
    """The offsets consumer ``group`` (a worker's app id) has committed, by (topic, partition)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, **settings.kafka_client_options()
    )
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}


async def consumed(settings: Any, group: str, sent: list[Any], *, timeout: float = 60.0) -> None:
    """Wait until the worker whose app id is ``group`` has processed every record in ``sent``.

    ``sent`` is what :func:`publish` returned.  Faust commits an offset once
    every agent reading the partition has acknowledged the records before it,
    so a commit past a record means the worker is done with it.
    """
    last: dict[tuple[str, int], int] = {}
    for record in sent:
        where = (record.topic, record.partition)
        last[where] = max(last.get(where, -1), record.offset)

    async def behind() -> dict[str, int]:
        committed = await committed_offsets(settings, group)
        return {
            f"{topic}#{partition} committed {committed.get((topic, partition), -1)}": offset
            for (topic, partition), offset in last.items()
            if committed.get((topic, partition), -1) <= offset
        }

    await eventually(behind, lambda waiting: not waiting, timeout=timeout)


def unsigned(change: Any) -> Any:
    """A published PolicyChange without what publishing adds (its sequence number and signature).

    What remains is what ``storage.deployments.current_change`` builds from the database.
    """
    return change.model_copy(update={"sequence": None, "signature": None})
