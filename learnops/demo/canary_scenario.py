"""A canary from start to decision, driven as an operator and an orchestrator would.

Used by ``learnops demo canary`` and the integration tests: register signed
policy versions for a doer, promote the first, start a shadow or canary of
another through learning.commands, then route tasks with the :class:`Router`
and publish learning.task-routed and learning.run-completed from a
:class:`learnops.simulation.canary.CanaryOrchestrator` until the canary stage decides.
It talks to a running worker only through Kafka, and reads PostgreSQL to see
what happened.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from learning.signing import SigningKey, signed_artifact
from learnops.client.router import Router
from learnops.demo.operators import demo_signed
from learnops.simulation.canary import CanaryOrchestrator
from learnops.simulation.orchestrator import Orchestrator
from models.base import Event
from models.commands import CanarySettings, PromotePolicy, RegisterPolicy, StartCanary, StartShadow
from models.events import PolicyChange
from storage import audit as store
from storage import canary as canary_store

FINAL = ("promote", "rollback", "pause")


def decided(decisions: list[Any]) -> bool:
    """Whether a deployment's decisions include a promote, rollback or pause."""
    return any(d.action in FINAL for d in decisions)


def artifact(doer: str, version: int) -> dict[str, Any]:
    """A small policy artifact for a doer's version."""
    return {
        "prompts": {"system": f"You are {doer}, revision {version}. Be precise; cite sources."},
        "hyper": {"temperature": round(0.1 * version, 2), "max_tokens": 2048},
    }


@dataclass
class CanaryScenario:
    """One doer's policies, one deployment at a time, and the tasks that exercise it."""

    pool: Any
    producer: Any
    router: Router
    doer: str
    key: SigningKey
    quality: dict[int, float]  # version → quality in [0, 1] (higher: lower CRL)
    actor: str = "canary-demo"
    published_tasks: int = 0
    deployment_id: str | None = None
    # Run ids must not repeat across scenarios sharing a database: crl_results keeps
    # the first row of a run id. None: this doer's own prefix, unique per scenario.
    orchestrator: Orchestrator = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.orchestrator is None:
            self.orchestrator = Orchestrator(run_prefix=f"{self.doer}-{uuid.uuid4().hex[:8]}")

    @property
    def policy_id(self) -> str:
        return self.doer.lower()

    async def send(self, topic: str, *events: Event) -> None:
        """Publish events keyed by doer and wait for the acknowledgements."""
        futures = [
            await self.producer.send(topic, key=e.doer.encode(), value=e.to_json()) for e in events
        ]
        await asyncio.gather(*futures)

    async def command(self, event: Event, timeout: float = 60.0) -> store.Outcome:
        """Send a command, signed, and wait until the policy store has handled it."""
        await self.send("learning.commands", await demo_signed(self.pool, event))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outcome = await store.outcome_of(self.pool, event.event_id)
            if outcome is not None:
                return outcome
            await asyncio.sleep(0.2)
        raise TimeoutError(f"the worker never handled {type(event).__name__} for {self.doer}")

    async def setup(self) -> None:
        """Register every version, signed, and make the first one active."""
        for version in sorted(self.quality):
            outcome = await self.command(
                RegisterPolicy(
                    doer=self.doer,
                    actor=self.actor,
                    reason=f"revision {version}",
                    policy_id=self.policy_id,
                    version=version,
                    **signed_artifact(
                        artifact(self.doer, version),
                        self.key,
                        doer=self.doer,
                        policy_id=self.policy_id,
                        version=version,
                    ),
                )
            )
            assert outcome.applied, outcome.verdict
        first = min(self.quality)
        promoted = await self.command(
            PromotePolicy(
                doer=self.doer,
                actor=self.actor,
                reason="first policy",
                policy_id=self.policy_id,
                version=first,
                force=True,
            )
        )
        assert promoted.applied, promoted.verdict

    async def start_canary(
        self,
        version: int,
        settings: CanarySettings,
        steps: list[float] | None = None,
        *,
        require_approval: bool = False,
    ) -> str:
        """Start a canary of ``version``; its deployment id once the router sees it live."""
        outcome = await self.command(
            StartCanary(
                doer=self.doer,
                actor=self.actor,
                reason=f"canary of revision {version}",
                policy_id=self.policy_id,
                version=version,
                steps=steps,
                require_approval=require_approval,
                force=True,
                canary=settings,
            )
        )
        return await self._started(outcome)

    async def start_shadow(self, version: int, settings: CanarySettings, mirror: float) -> str:
        """Start a shadow of ``version``; its deployment id once the router sees it live."""
        outcome = await self.command(
            StartShadow(
                doer=self.doer,
                actor=self.actor,
                reason=f"shadow of revision {version}",
                policy_id=self.policy_id,
                version=version,
                mirror_fraction=mirror,
                canary=settings,
            )
        )
        return await self._started(outcome)

    async def _started(self, outcome: store.Outcome) -> str:
        assert outcome.applied and outcome.deployment_id, outcome.verdict
        deployment_id = outcome.deployment_id
        await self.router.wait_for(
            self.doer,
            lambda c: c.deployment is not None and c.deployment.deployment_id == deployment_id,
        )
        self.deployment_id = deployment_id
        return deployment_id

    def simulator(self, *, bias: float = 0.0, lose: str | None = None) -> CanaryOrchestrator:
        """An orchestrator routing through the router, with CRL set by each version's quality."""
        quality = {(self.policy_id, v): q for v, q in self.quality.items()}
        return CanaryOrchestrator(
            route=self.router.route,
            quality=quality,
            orchestrator=self.orchestrator,
            bias=bias,
            lose=lose,
        )

    async def publish_tasks(self, simulator: CanaryOrchestrator, n: int) -> None:
        """Route and run ``n`` tasks: their routings and bundles go to Kafka."""
        routed: list[Event] = []
        runs: list[Event] = []
        for _ in range(n):
            for event in simulator.task(self.doer):
                (routed if type(event).__name__ == "TaskRouted" else runs).append(event)
        await self.send("learning.task-routed", *routed)
        await self.send("learning.run-completed", *runs)
        self.published_tasks += n

    async def decisions(self, deployment_id: str | None = None) -> list[Any]:
        """The stored decisions of the deployment (the current one by default)."""
        found = deployment_id or self.deployment_id
        assert found is not None
        return await canary_store.decisions(self.pool, found)

    async def run_until(
        self,
        simulator: CanaryOrchestrator,
        done: Callable[[list[Any]], bool] | None = None,
        *,
        per_round: int = 100,
        max_tasks: int = 30_000,
        timeout: float = 240.0,
        pause: Callable[[int], bool] | None = None,
    ) -> list[Any]:
        """Publish tasks in rounds until ``done(decisions)`` holds; the decisions.

        Each round waits until the worker has stored most of the routings sent
        so far, so the orchestrator does not run far ahead of the decisions.
        ``pause(tasks)`` true stops publishing (a test restarts the worker there).
        By default it stops at the first promote, rollback or pause.
        """
        done = done or decided
        deadline = time.monotonic() + timeout
        found: list[Any] = []
        while time.monotonic() < deadline:
            found = await self.decisions()
            if done(found):
                return found
            if self.published_tasks >= max_tasks or (pause and pause(self.published_tasks)):
                await asyncio.sleep(0.5)
                continue
            await self.publish_tasks(simulator, per_round)
            settle = min(deadline, time.monotonic() + 15.0)
            while time.monotonic() < settle:
                stored = sum(
                    (await canary_store.routed_counts(self.pool, self.deployment_id or "")).values()
                )
                if stored >= self.published_tasks - 2 * per_round:
                    break
                await asyncio.sleep(0.1)
        return found

    async def live(self) -> PolicyChange | None:
        """The doer's state as the router knows it."""
        return self.router.live(self.doer)
