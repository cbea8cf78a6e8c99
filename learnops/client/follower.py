"""A client that reads a compacted topic from the beginning and keeps following it.

The orchestrator's clients (:class:`learnops.client.router.Router` on
learning.policy-changes, :class:`learnops.client.allocations.Allocations`) hold each doer's
latest record in memory, so a look-up per task makes no network call.
aiokafka is imported when the follower starts, not with the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer


class TopicFollower:
    """Reads ``topic`` from the start in the background and hands each record to :meth:`apply`."""

    topic: ClassVar[str]

    def __init__(self, bootstrap_servers: str, **client_options: Any) -> None:
        """Follow the cluster at ``bootstrap_servers``; ``client_options`` go to aiokafka.

        They are aiokafka's consumer options as they are: its security
        (``security_protocol``, ``ssl_context``, ``sasl_mechanism``, …) or any other.
        """
        self._bootstrap_servers = bootstrap_servers
        self._client_options = client_options
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def apply(self, value: bytes, key: bytes | None = None) -> Any:
        """Take one record of the topic: its value and its Kafka key."""
        raise NotImplementedError

    async def start(self) -> None:
        """Read every record from the beginning, then keep following the topic."""
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self._bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._client_options,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._follow(), name=f"follow {self.topic}")

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    self.apply(record.value, record.key)
