"""A doer ready for experiments: signed policies of known quality, an active control, a golden set.

Used by `learnops demo experiments` and the integration tests, with the runs
of a regression that raises an experiment request. The artifacts
and sample texts are fixed, so the local executor's results — a pure function
of policy, sample and seed — are the same on every run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from learning.curation import content_hash
from learning.signing import PublicKey, SigningKey, signed_artifact
from learnops.client.router import Router
from learnops.demo.canary_scenario import CanaryScenario
from learnops.demo.operators import demo_signed
from learnops.simulation.orchestrator import Orchestrator
from models.base import Event
from models.commands import (
    CanarySettings,
    CreateExperiment,
    PromotePolicy,
    RegisterPolicy,
    StartCanary,
)
from models.events import CurationLabels, RunCompleted, SampleCurated
from storage import audit as store
from storage import experiments as experiments_store
from storage.datasets import freeze, insert_samples
from storage.signing_keys import signing_keys

#: The tenant whose samples the demo freezes (the simulated orchestrator's tenant).
DEMO_TENANT = "acme"

SAMPLES = [f"Sample {i}: write a PRD for feature {i} with acceptance criteria." for i in range(12)]


def artifact(name: str, quality: float) -> dict[str, Any]:
    """A policy artifact whose ``quality`` steers the local executor (learning.replay)."""
    return {"prompts": {"system": name}, "quality": quality}


# Fixed artifacts: on SAMPLES under the 16 seeds below the local executor gives the
# better one a mean CRL about 55 % below the control's (it passes: the paired 95 %
# lower bound is well above 0) and the worse one a higher mean CRL than either (it
# fails). 16 seeds on these 12 samples are what a 10 % improvement needs to pass in
# about 95 % of replays (3 seeds: about a third; docs/experiments.md).
CONTROL = artifact("control", 0.5)
BETTER = artifact("better", 0.85)
WORSE = artifact("worse", 0.2)
SEEDS = list(range(42, 58))


@dataclass
class ExperimentDoer:
    """A prepared doer: its policy id, golden dataset and sample ids."""

    name: str
    policy_id: str
    golden: str
    manifest_hash: str
    sample_ids: list[str]


async def pinned_keys(settings: Any, pool: Any, *signers: SigningKey) -> list[PublicKey] | None:
    """The keys a demo Router pins; None without a worker key.

    The worker's, the section's policy signers', and every key of the store's
    keyring that is not revoked, as an orchestrator pins the keyring it trusts:
    the Router reads every doer's changes from the compacted topic, and the
    earlier demo sections' doers are signed by their own sections' keys (pinning
    only this section's signer logged a refusal for each of them). A worker
    without ``LEARNOPS_WORKER_SIGNING_KEY_FILE`` publishes unsigned changes, which
    a pinned Router would refuse, so the demo then follows them unverified.
    """
    worker = settings.worker_key()
    if worker is None:
        return None
    keyring = [PublicKey(k.public_key) for k in await signing_keys(pool) if k.revoked_at is None]
    return [worker.public_key, *(signer.public_key for signer in signers), *keyring]


async def demo_router(settings: Any, pool: Any, *signers: SigningKey) -> Router:
    """A Router pinned to :func:`pinned_keys`, the worker's key alone signing changes;
    without a worker key, one that follows unsigned changes (it logs that it is
    unpinned), as that worker publishes them."""
    pinned = await pinned_keys(settings, pool, *signers)
    worker = settings.worker_key()
    return Router(
        **settings.kafka_connection(),
        trusted_keys=pinned,
        worker_keys=None if pinned is None or worker is None else [worker.public_key],
        allow_unverified=pinned is None,
    )


async def submit(pool: Any, producer: Any, event: Event, timeout: float = 60.0) -> store.Outcome:
    """Send a policy command and wait until the policy store has handled it."""
    event = await demo_signed(pool, event)
    await producer.send_and_wait(
        "learning.commands", key=event.doer.encode(), value=event.to_json()
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = await store.outcome_of(pool, event.event_id)
        if outcome is not None:
            return outcome
        await asyncio.sleep(0.2)
    # Not TimeoutError: that is an OSError, which the CLI reports as a connection problem.
    raise RuntimeError(f"no worker handled {type(event).__name__} for {event.doer} in {timeout:g}s")


async def register(
    pool: Any,
    producer: Any,
    key: SigningKey,
    doer: str,
    version: int,
    body: dict[str, Any],
    *,
    actor: str = "experiments-demo",
    reason: str | None = None,
) -> str:
    """Register ``body`` signed as version ``version`` of the doer's policy; the policy id."""
    policy_id = doer.lower()
    registered = await submit(
        pool,
        producer,
        RegisterPolicy(
            doer=doer,
            actor=actor,
            reason=reason or f"revision {version}",
            policy_id=policy_id,
            version=version,
            **signed_artifact(body, key, doer=doer, policy_id=policy_id, version=version),
        ),
    )
    assert registered.applied, registered.verdict
    return policy_id


async def prepare(
    pool: Any,
    producer: Any,
    key: SigningKey,
    doer: str,
    versions: dict[int, dict[str, Any]],
    *,
    actor: str = "experiments-demo",
) -> ExperimentDoer:
    """Register every version signed, make the lowest active, and freeze a golden dataset."""
    policy_id = doer.lower()
    for version, body in sorted(versions.items()):
        await register(pool, producer, key, doer, version, body, actor=actor)
    promoted = await submit(
        pool,
        producer,
        PromotePolicy(
            doer=doer,
            actor=actor,
            reason="first policy",
            policy_id=policy_id,
            version=min(versions),
            force=True,
        ),
    )
    assert promoted.applied, promoted.verdict
    golden, sample_ids = await freeze_golden(pool, doer, min(versions), actor=actor)
    return ExperimentDoer(doer, policy_id, golden.name, golden.manifest_hash, sample_ids)


async def freeze_golden(
    pool: Any, doer: str, version: int, *, actor: str, texts: list[str] = SAMPLES
) -> tuple[Any, list[str]]:
    """Store ``texts`` as the doer's accepted draft samples and freeze them; the golden dataset.

    The samples are the doer's policy ``version``'s, of the demo's tenant; the
    golden dataset is named ``golden-<policy id>``. Also the sample ids.
    """
    policy_id = doer.lower()
    dataset = f"{DEMO_TENANT}/{doer}/draft"
    samples = [
        SampleCurated(
            doer=doer,
            sample_id=f"{doer}-s{i:02d}",
            run_id=f"{doer}-run{i}",
            phase="draft",
            policy_id=policy_id,
            policy_version=version,
            artifact_id=f"a{i}",
            kind="prd",
            origin="human",
            accepted=True,
            content=text,
            content_hash=content_hash(text),
            labels=CurationLabels(specificity=0.5, origin="human", synthetic_confidence=0.0),
            dataset=dataset,
            tenant_id=DEMO_TENANT,
        )
        for i, text in enumerate(texts)
    ]
    await insert_samples(pool, samples)
    golden = await freeze(pool, DEMO_TENANT, dataset, f"golden-{policy_id}", actor=actor)
    return golden, [s.sample_id for s in samples]


async def wait_experiment(
    pool: Any, experiment_id: str, statuses: set[str], timeout: float = 90.0
) -> Any:
    """The experiment's row once its status is one of ``statuses`` (or the last row seen)."""
    deadline = time.monotonic() + timeout
    row = await experiments_store.get_experiment(pool, experiment_id)
    while (row is None or row["status"] not in statuses) and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        row = await experiments_store.get_experiment(pool, experiment_id)
    return row


def regression_runs(
    doer: str,
    policy: tuple[str, int],
    now: datetime,
    *,
    run_prefix: str,
    baseline_per_day: int = 10,
    today: int = 30,
) -> list[RunCompleted]:
    """A week of good runs of the doer under ``policy``, then today's bad ones: a CRL regression.

    Every gate passes in every run, so the regression (grounding, contradictions,
    cost, latency) is the only learning trigger they give: one experiment request.
    """
    orchestrator = Orchestrator(seed=20261125, doers=(doer,), run_prefix=run_prefix)
    start = now - timedelta(minutes=10)
    if start.date() != now.date():  # keep today's runs on today
        start = now.replace(hour=0, minute=0, second=1, microsecond=0)
    runs = []
    for day in range(1, 8):
        for k in range(baseline_per_day):
            when = now - timedelta(days=day, seconds=k)
            runs.append(orchestrator.bundle(doer, occurred_at=when, policy=policy, quality=0.95))
    for i in range(today):
        when = start + timedelta(seconds=i)
        runs.append(orchestrator.bundle(doer, occurred_at=when, policy=policy, quality=0.1))
    return [_all_gates_pass(run) for run in runs]


def _all_gates_pass(run: RunCompleted) -> RunCompleted:
    gates = run.gates
    passed = sorted({*gates.passed, *gates.failed})
    passing = gates.model_copy(update={"passed": passed, "failed": []})
    return run.model_copy(update={"gates": passing})


async def wait_request(
    pool: Any, doer: str, reason: str = "crl_regression", timeout: float = 90.0
) -> Any:
    """The doer's open experiment request for ``reason`` once it is published, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await pool.fetchrow(
            "SELECT * FROM experiment_requests WHERE doer = $1 AND reason = $2 "
            "AND status = 'open' AND published_at IS NOT NULL",
            doer,
            reason,
        )
        if row is not None:
            return row
        await asyncio.sleep(0.3)
    return None


def create_experiment(
    prepared: ExperimentDoer,
    version: int,
    *,
    actor: str,
    reason: str,
    hypothesis: str,
    request_id: UUID | None = None,
    canary: CanarySettings | None = None,
) -> CreateExperiment:
    """The command creating an experiment of candidate ``version`` on the prepared golden set."""
    return CreateExperiment(
        doer=prepared.name,
        actor=actor,
        reason=reason,
        experiment_id=f"exp-{uuid4().hex[:10]}",
        hypothesis=hypothesis,
        policy_id=prepared.policy_id,
        version=version,
        dataset=prepared.golden,
        seeds=SEEDS,
        request_id=request_id,
        plan={"canary": canary.model_dump(mode="json")} if canary is not None else {},
    )


async def canary_until_decided(
    settings: Any,
    pool: Any,
    producer: Any,
    key: SigningKey,
    prepared: ExperimentDoer,
    version: int,
    canary: CanarySettings,
    *,
    actor: str,
    run_prefix: str,
    timeout: float = 240.0,
    orchestrator: Orchestrator | None = None,
    quality: tuple[float, float] = (0.8, 0.95),
    steps: tuple[float, ...] = (0.1, 0.5),
) -> tuple[store.Outcome, CanaryScenario, list[Any]]:
    """Move the candidate's shadow on to a canary of ``steps``; run live traffic until it decides.

    By default the control serves at quality 0.8 and the candidate at 0.95
    (lower CRL), so the canary stage's own decision is a promotion;
    ``orchestrator`` may draw the bundles its own way (the bandit demo's
    cheaper model). Gives the start_canary outcome, the scenario (its
    deployment id) and the deployment's decisions.
    """
    async with await demo_router(settings, pool, key) as router:
        await router.wait_for(prepared.name, lambda c: c.status == "shadow", timeout=timeout)
        started = await submit(
            pool,
            producer,
            StartCanary(
                doer=prepared.name,
                actor=actor,
                reason="the shadow ran clean",
                policy_id=prepared.policy_id,
                version=version,
                steps=list(steps),
                canary=canary,
            ),
        )
        if not started.applied:
            return started, CanaryScenario(pool, producer, router, prepared.name, key, {}), []
        live = await router.wait_for(prepared.name, lambda c: c.status == "canary")
        assert live.deployment is not None
        scenario = CanaryScenario(
            pool,
            producer,
            router,
            prepared.name,
            key,
            {live.version: quality[0], version: quality[1]},
            actor=actor,
            orchestrator=orchestrator or Orchestrator(seed=version, run_prefix=run_prefix),
        )
        scenario.deployment_id = live.deployment.deployment_id
        decisions = await scenario.run_until(scenario.simulator(), timeout=timeout)
    return started, scenario, decisions
