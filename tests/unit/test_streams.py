"""agents.streams.batches: a batch is what is ready now, up to the maximum, with no timer.

Faust's ``agent.test_context()`` runs the agent on an in-memory channel (no
broker is contacted); the acks and commits are covered by the integration tests
(tests/integration/test_transport.py stops a worker in mid-batch).
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from agents.streams import Bodies, batches

MAX = 3

app = faust.App(
    "test-streams",
    broker="kafka://127.0.0.1:1",  # never contacted by test_context
    store="memory://",
    autodiscover=False,
    web_enabled=False,
)
seen: list[list[int]] = []
bodies = Bodies()
#: bodies.running as each batch's body saw it.
running_in_body: list[int] = []


@app.agent()
async def grouped(stream: Any) -> None:
    async for batch in batches(stream, MAX, bodies):
        running_in_body.append(bodies.running)
        seen.append([event.value for event in batch])


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.001)


async def test_waiting_events_come_in_full_batches_and_a_lone_event_comes_at_once() -> None:
    seen.clear()
    async with grouped.test_context() as agent:
        # Queued before the agent runs: the first batches are full.
        for value in range(7):
            await agent.put(value, wait=False)
        await asyncio.wait_for(_until(lambda: sum(map(len, seen)) == 7), timeout=10)
        assert seen[:2] == [[0, 1, 2], [3, 4, 5]]
        assert [value for batch in seen for value in batch] == list(range(7))
        assert all(1 <= len(batch) <= MAX for batch in seen)

        # Nothing else waiting: the next event is a batch of its own, with no timer to wait
        # out (take_events with no ``within`` would hold it until two more arrived).
        await asyncio.wait_for(agent.put(99), timeout=10)
        assert seen[-1] == [99]


async def test_a_body_counts_as_running_until_its_batch_is_acked() -> None:
    seen.clear()
    running_in_body.clear()
    async with grouped.test_context() as agent:
        for value in range(4):
            await agent.put(value, wait=False)
        await asyncio.wait_for(_until(lambda: sum(map(len, seen)) == 4), timeout=10)
        assert running_in_body == [1, 1]
        # The second batch's body has returned; the count drops once it asks for the next.
        await asyncio.wait_for(_until(lambda: bodies.running == 0), timeout=10)


async def test_max_events_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await anext(batches(object(), 0))


async def test_a_batch_is_handed_over_when_the_last_queued_event_is_one_faust_skips() -> None:
    """Faust skips an event of an older consumer generation (after a rebalance) unseen.

    Taken after the batch's first event, such a last queued event left the take
    waiting for the next event to arrive, with the batch held unprocessed and its
    offsets uncommitted until then.
    """
    seen.clear()
    async with grouped.test_context() as agent:
        channel = agent.stream().channel
        first = await channel.decode(agent.to_message(None, 1, offset=0))
        stale_message = agent.to_message(None, 2, offset=1)
        stale_message.generation_id = app.consumer_generation_id - 1
        stale = await channel.decode(stale_message)
        await channel.put(first)
        await channel.put(stale)
        # Nothing else arrives: the batch must still come.
        await asyncio.wait_for(_until(lambda: seen == [[1]]), timeout=10)
