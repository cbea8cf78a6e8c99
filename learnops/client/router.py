"""The orchestrator's routing client: follows learning.policy-changes, routes tasks locally.

An orchestrator keeps one :class:`Router`. It reads the compacted
``learning.policy-changes`` topic from the beginning (every doer's latest
state) and keeps following it in the background, so ``route(doer, task_id)``
is a dictionary look-up and a hash (``learning.routing.route``), with no
network call per task. The orchestrator then runs the task under the route's
policy and publishes a ``TaskRouted`` on ``learning.task-routed``
(``learnops.simulation.canary`` shows how).

    async with Router("kafka:9092") as router:   # plus aiokafka security options, if any
        found = router.route("PRDWriter", task_id)

It needs only the event contract (``models``), the routing rules
(``learning.routing``) and aiokafka: an orchestrator embeds it without the
service's Faust, database or numerical dependencies. aiokafka and the
contract are imported when the Router starts and reads its first record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from learning.routing import Route, route

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from models.policy_change import PolicyChange

log = logging.getLogger("learnops.router")

CHANGES = "learning.policy-changes"


class UnknownDoer(LookupError):
    """The doer has no active policy on learning.policy-changes (yet)."""


class Router:
    """Routes tasks from the latest PolicyChange of each doer, kept up to date in the background."""

    def __init__(self, bootstrap_servers: str, **client_options: Any) -> None:
        """Follow the cluster at ``bootstrap_servers`` (``host:port,…``).

        ``client_options`` go to aiokafka's consumer as they are: its security
        (``security_protocol``, ``ssl_context``, ``sasl_mechanism``,
        ``sasl_plain_username``, ``sasl_plain_password``) or any other option.
        """
        self._bootstrap_servers = bootstrap_servers
        self._client_options = client_options
        self._live: dict[str, PolicyChange] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.skipped = 0  # records that were not a valid PolicyChange

    async def start(self) -> None:
        """Read every doer's latest state, then keep following the topic."""
        # Imported here: an orchestrator importing the client pays for aiokafka
        # (~0.1-0.3 s) only when it starts following.
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            CHANGES,
            bootstrap_servers=self._bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._client_options,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._follow(), name="router-follow")

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def __aenter__(self) -> Router:
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
                    self.apply(record.value)

    def apply(self, value: bytes) -> PolicyChange | None:
        """Take one record of the topic; one that is not a PolicyChange is counted, not used."""
        # Imported at the first record, not with the client: the contract is
        # pydantic models (~0.2 s to import), and importing the client is kept
        # to what an orchestrator pays up front (bench/startup.py).
        from pydantic import ValidationError

        from models.policy_change import PolicyChange

        try:
            change = PolicyChange.from_json(value)
        except ValidationError as exc:
            self.skipped += 1
            log.warning("router_skipped_record error_count=%d", exc.error_count())
            return None
        self._live[change.doer] = change
        self._changed.set()
        return change

    def live(self, doer: str) -> PolicyChange | None:
        """The doer's latest known state."""
        return self._live.get(doer)

    def route(self, doer: str, task_id: str) -> Route:
        """The route of a task: which policy serves it, its arm, whether to mirror it."""
        change = self._live.get(doer)
        if change is None:
            raise UnknownDoer(f"{doer} has no active policy on {CHANGES} yet")
        return route(change, task_id)

    async def wait_for(
        self, doer: str, predicate: Callable[[PolicyChange], bool], timeout: float = 60.0
    ) -> PolicyChange:
        """The doer's state once ``predicate`` holds for it; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while True:
                change = self._live.get(doer)
                if change is not None and predicate(change):
                    return change
                self._changed.clear()
                await self._changed.wait()
