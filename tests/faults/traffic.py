"""What a fault script publishes: bundles of plain doers, and routed tasks of two live canaries.

Every event published is remembered (run ids, routing event ids), so the
ledger can say what was lost and what was counted twice. A round that the
broker refuses (a restart in progress) is sent again with the same events: a
publisher's duplicate, which the system must store and count once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from learning.command_signing import sign_command
from learning.signing import SigningKey, generate_key, signed_artifact
from learnops.client.router import Router
from learnops.demo.canary_scenario import CanaryScenario
from learnops.demo.experiments_scenario import BETTER, CONTROL, SAMPLES, WORSE, freeze_golden
from learnops.simulation.orchestrator import Orchestrator
from models.base import Event
from models.commands import CanarySettings, CreateExperiment, PromotePolicy, RegisterPolicy
from models.events import RunCompleted, TaskRouted
from storage import policy_commands as commands_store
from storage import signing_keys as keys_store

log = logging.getLogger("faults.traffic")

#: A canary that never decides (its sample size is out of reach) and reports every 50 results:
#: its arm counts must equal the routings stored, run for run.
PATIENT = CanarySettings(min_sample_size=100_000, report_every=50)
#: A canary that steps up once and promotes: neither may happen twice.
QUICK = CanarySettings(min_sample_size=50, report_every=100)
#: The bandit doer's declared options: each of its live runs names one, and its book must
#: count every stored run once per option.
BANDIT_PHASE, BANDIT_PARAMETER = "draft", "router.model"
BANDIT_OPTIONS = ("model-a-large", "model-c-small")


#: The experiments doer's golden dataset: few samples, so each experiment's replays are short.
EXPERIMENT_SAMPLES = SAMPLES[:4]


@dataclass
class Published:
    """Every event sent, by id (a resend adds nothing here)."""

    runs: dict[str, RunCompleted] = field(default_factory=dict)
    routings: dict[str, TaskRouted] = field(default_factory=dict)
    experiments: dict[str, CreateExperiment] = field(default_factory=dict)
    resent_rounds: int = 0

    def note(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, RunCompleted):
                self.runs[event.run_id] = event
            elif isinstance(event, TaskRouted):
                self.routings[str(event.event_id)] = event
            elif isinstance(event, CreateExperiment):
                self.experiments[event.experiment_id] = event


def topic_of(event: Event) -> str:
    """Where the orchestrator (or an operator) publishes an event of this kind."""
    if isinstance(event, TaskRouted):
        return "learning.task-routed"
    if isinstance(event, CreateExperiment):
        return "learning.commands"
    return "learning.run-completed"


def covering(prefix: str, per_partition: int, partitions: int = 4) -> list[str]:
    """Plain doer names whose keys hash (the producer's murmur2) onto every partition."""
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while any(len(names) < per_partition for names in chosen.values()):
        name = f"{prefix}Plain{i}"
        part = DefaultPartitioner()(name.encode(), list(range(partitions)), list(range(partitions)))
        if len(chosen[part]) < per_partition:
            chosen[part].append(name)
        i += 1
    return [name for names in chosen.values() for name in names]


@dataclass
class Traffic:
    """Plain doers' bundles and two canaries' routed tasks, for one run of a fault script."""

    pool: Any
    producer: Any
    router: Router
    prefix: str = field(default_factory=lambda: f"F{uuid.uuid4().hex[:6]}")
    plain_doers: int = 4
    canaries: bool = True
    published: Published = field(default_factory=Published)
    scenarios: list[CanaryScenario] = field(default_factory=list)

    #: Doers whose keys land on every partition, this many per partition (0: no such care).
    per_partition: int = 0
    #: The partition count ``per_partition`` covers (a multiple of the topics' count covers it too).
    partitions: int = 4
    #: Bundles per round of a doer whose policy declares options (0: none, no bandit doer).
    bandit_runs: int = 2
    #: Rounds between two experiments of the experiments doer (0: none, no such doer), and
    #: the operator key (owner of every doer) that signs them.
    experiment_every: int = 0
    operator_key: SigningKey | None = None

    def __post_init__(self) -> None:
        if self.per_partition:
            self.doers = covering(self.prefix, self.per_partition, self.partitions)
        else:
            self.doers = [f"{self.prefix}Plain{i}" for i in range(self.plain_doers)]
        self.orchestrator = Orchestrator(
            seed=int(uuid.uuid4().int % 10_000),
            doers=tuple(self.doers),
            run_prefix=f"{self.prefix}-plain",
        )
        self.bandit_doer: str | None = None
        self._bandit_runs = 0
        self.experiment_doer: str | None = None
        self._rounds = 0

    @property
    def all_doers(self) -> list[str]:
        """Every doer this traffic publishes for."""
        bandit = [self.bandit_doer] if self.bandit_doer else []
        return self.doers + bandit + [s.doer for s in self.scenarios]

    async def _apply(self, command: RegisterPolicy | PromotePolicy) -> None:
        """Apply a policy command to the store directly (no worker needed); raise if refused."""
        outcome = await commands_store.apply_command(self.pool, command)
        if outcome is None or not outcome.applied:
            raise RuntimeError(
                f"{command.command} {command.doer}@{command.version} refused: {outcome}"
            )

    async def _register(
        self, key: SigningKey, doer: str, version: int, body: dict[str, Any], reason: str
    ) -> None:
        """Register ``body`` as version ``version`` of the doer's policy, signed with ``key``."""
        policy_id = doer.lower()
        await self._apply(
            RegisterPolicy(
                doer=doer,
                actor="faults",
                reason=reason,
                policy_id=policy_id,
                version=version,
                **signed_artifact(body, key, doer=doer, policy_id=policy_id, version=version),
            )
        )

    async def _register_bandit_doer(self, key: SigningKey) -> None:
        """A doer whose signed policy declares two models for its draft phase (store-level)."""
        doer = f"{self.prefix}Bandit"
        body = {
            "prompts": {"system": "Draft."},
            "tunables": {BANDIT_PHASE: {BANDIT_PARAMETER: list(BANDIT_OPTIONS)}},
        }
        await self._register(key, doer, 1, body, "two models to choose from")
        self.bandit_doer = doer
        self.bandit_orchestrator = Orchestrator(
            seed=int(uuid.uuid4().int % 10_000), doers=(doer,), run_prefix=f"{self.prefix}-bandit"
        )
        self.bandit_policy = (doer.lower(), 1)

    async def _register_experiment_doer(self, key: SigningKey) -> None:
        """A doer with a control (v1, active), a better (v2) and a worse (v3) candidate."""
        doer = f"{self.prefix}Exp"
        for version, body in ((1, CONTROL), (2, BETTER), (3, WORSE)):
            await self._register(key, doer, version, body, f"revision {version}")
        await self._apply(
            PromotePolicy(
                doer=doer,
                actor="faults",
                reason="control",
                policy_id=doer.lower(),
                version=1,
                force=True,
            )
        )
        golden, _ = await freeze_golden(
            self.pool, doer, 1, actor="faults", texts=EXPERIMENT_SAMPLES
        )
        self.experiment_doer = doer
        self.experiment_golden = f"{golden.name}@{golden.version}"

    def experiment(self) -> CreateExperiment:
        """The next experiment: the better candidate every fourth time, else the worse one.

        Seeds of its own, so each starts replays of its own (the same seeds would be
        answered from the first replay's record). The first better one goes to shadow;
        the next ones are refused by the policy store (a shadow is live) and fail.
        """
        assert self.experiment_doer is not None and self.operator_key is not None
        n = len(self.published.experiments)
        command = CreateExperiment(
            doer=self.experiment_doer,
            actor="faults",
            reason="a fault run's experiment",
            experiment_id=f"{self.prefix}-exp{n}",
            hypothesis="the candidate beats the control",
            policy_id=self.experiment_doer.lower(),
            version=2 if n % 4 == 0 else 3,
            experiment_type="prompt_synthesis",
            dataset=self.experiment_golden,
            seeds=[3 * n, 3 * n + 1, 3 * n + 2],
        )
        return sign_command(command, self.operator_key, now=datetime.now(UTC))

    async def setup(self, key: SigningKey | None = None) -> None:
        """Register and promote signed policies, and start a patient and a quick canary.

        Needs a running worker (the policy stage applies the commands).
        """
        if not self.canaries:
            return
        if key is None:
            key = generate_key()
            await keys_store.add_signing_key(self.pool, key.public_key, created_by="faults")
        if self.bandit_runs:
            await self._register_bandit_doer(key)
        if self.experiment_every:
            await self._register_experiment_doer(key)
        for name, quality, settings, steps in (
            ("Patient", 0.8, PATIENT, [0.5]),
            ("Quick", 0.95, QUICK, [0.1, 0.5]),
        ):
            scenario = CanaryScenario(
                self.pool,
                self.producer,
                self.router,
                f"{self.prefix}{name}",
                key,
                {1: 0.8, 2: quality},
            )
            await scenario.setup()
            await scenario.start_canary(2, settings, steps)
            scenario.simulation = scenario.simulator()  # type: ignore[attr-defined]
            self.scenarios.append(scenario)

    @property
    def patient(self) -> CanaryScenario | None:
        """The canary that never decides, if any."""
        return self.scenarios[0] if self.scenarios else None

    @property
    def quick(self) -> CanaryScenario | None:
        """The canary that steps up and promotes, if any."""
        return self.scenarios[1] if len(self.scenarios) > 1 else None

    def round(self, bundles: int, tasks: int) -> list[Event]:
        """One round: ``bundles`` plain bundles (today and yesterday) and ``tasks`` per canary."""
        now = datetime.now(UTC)
        events: list[Event] = []
        for i in range(bundles):
            at = now - timedelta(days=1) if i % 5 == 0 else now
            events.append(self.orchestrator.bundle(occurred_at=at))
        if self.bandit_doer is not None and bundles:
            for _ in range(self.bandit_runs):
                option = BANDIT_OPTIONS[self._bandit_runs % len(BANDIT_OPTIONS)]
                self._bandit_runs += 1
                # At live times, as the plain doers' (the orchestrator's own clock starts
                # weeks back, where the daily aggregates' 30-day expiry takes days away).
                run = self.bandit_orchestrator.bundle(
                    self.bandit_doer, occurred_at=now, policy=self.bandit_policy, phase=BANDIT_PHASE
                )
                events.append(run.model_copy(update={"options": {BANDIT_PARAMETER: option}}))
        for scenario in self.scenarios:
            simulation = scenario.simulation  # type: ignore[attr-defined]
            for _ in range(tasks):
                events.extend(simulation.task(scenario.doer))
            scenario.published_tasks += tasks
        self._rounds += 1
        if self.experiment_doer is not None and self._rounds % self.experiment_every == 0:
            events.append(self.experiment())
        return events

    async def send(self, events: list[Event], *, attempts: int = 30) -> None:
        """Send a round keyed by doer (routings first); again, whole, if the broker refuses it."""
        events = sorted(events, key=lambda e: 0 if isinstance(e, TaskRouted) else 1)
        for attempt in range(attempts):
            try:
                futures = []
                for event in events:
                    futures.append(
                        await self.producer.send(
                            topic_of(event), key=event.doer.encode(), value=event.to_json()
                        )
                    )
                await asyncio.gather(*futures)
                self.published.note(events)
                return
            except KafkaError as exc:
                self.published.resent_rounds += 1
                log.warning("round refused (%s); sending it again", type(exc).__name__)
                self.published.note(events)  # some may have landed: they count as published
                await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
        raise RuntimeError(f"the broker refused a round {attempts} times")

    async def flow(
        self, stop: asyncio.Event, *, bundles: int = 20, tasks: int = 5, every: float = 0.5
    ) -> None:
        """Publish a round every ``every`` seconds until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            await self.send(self.round(bundles, tasks))
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))
