"""A simulated orchestrator under a canary: it routes each task, reports the routing, runs it.

It asks a router for each task's route (the :class:`learnops.client.router.Router`
client in the integration tests and the demo; any ``(doer, task_id) → Route``
function here), publishes what ``learning.task-routed`` and
``learning.run-completed`` would carry, and draws each run's bundle from
:class:`learnops.simulation.orchestrator.Orchestrator` with a quality per policy version, so
the CRL depends on the arm. Faults for the tests: a ``bias`` that sends that
share of control tasks to the candidate anyway (a broken router: sample ratio
mismatch), and ``lose`` an arm's bundles (missing data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from learning.routing import Route
from learnops.simulation.orchestrator import Orchestrator
from models.base import Event
from models.events import RunCompleted, TaskRouted


@dataclass
class CanaryOrchestrator:
    """Routes and runs tasks; ``quality[(policy_id, version)]`` in [0, 1] sets their CRL."""

    route: Callable[[str, str], Route]
    quality: dict[tuple[str, int], float]
    orchestrator: Orchestrator = field(default_factory=Orchestrator)
    bias: float = 0.0  # share of control tasks sent to the candidate regardless
    lose: str | None = None  # "control" | "candidate": that arm's bundles never arrive
    seed: int = 11

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._tasks = 0

    def task(self, doer: str, task_id: str | None = None) -> list[Event]:
        """Route one task and run it: its TaskRouted (when a deployment is live) and bundles."""
        self._tasks += 1
        task_id = task_id or f"{self.orchestrator.run_prefix}-task-{self._tasks:08d}"
        found = self.route(doer, task_id)
        now = datetime.now(UTC)
        if found.deployment_id is None or found.arm is None:
            return [self._run(doer, (found.policy_id, found.version), now)]
        arm = found.arm
        policy = (found.policy_id, found.version)
        if arm == "control" and not found.mirror and self._rng.random() < self.bias:
            arm = "candidate"
            assert found.candidate_policy_id is not None and found.candidate_version is not None
            policy = (found.candidate_policy_id, found.candidate_version)
        events: list[Event] = [
            TaskRouted(
                doer=doer,
                occurred_at=now,
                task_id=task_id,
                deployment_id=found.deployment_id,
                arm=arm,
                policy_id=policy[0],
                policy_version=policy[1],
                step=found.step,
                allocation=found.allocation,
            )
        ]
        if self.lose != arm:
            events.append(self._run(doer, policy, now, found.deployment_id, arm))
        if found.mirror and self.lose != "candidate":
            assert found.candidate_policy_id is not None and found.candidate_version is not None
            shadow = (found.candidate_policy_id, found.candidate_version)
            events.append(self._run(doer, shadow, now, found.deployment_id, "candidate", True))
        return events

    def _run(
        self,
        doer: str,
        policy: tuple[str, int],
        now: datetime,
        deployment_id: str | None = None,
        arm: str | None = None,
        shadow: bool = False,
    ) -> RunCompleted:
        return self.orchestrator.bundle(
            doer,
            occurred_at=now,
            policy=policy,
            deployment_id=deployment_id,
            arm=arm,
            shadow=shadow,
            quality=self.quality.get(policy, 0.8),
        )
