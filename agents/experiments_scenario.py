"""A doer ready for experiments: signed policies of known quality, an active control, a golden set.

Used by `learnops demo experiments` and the integration tests. The artifacts
and sample texts are fixed, so the local executor's results — a pure function
of policy, sample and seed — are the same on every run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from learning.curation import content_hash
from learning.signing import SigningKey, content_digest, sign
from models.base import Event
from models.commands import PromotePolicy, RegisterPolicy
from models.events import CurationLabels, SampleCurated
from storage import experiments as experiments_store
from storage import policies as store
from storage.datasets import freeze, insert_samples

SAMPLES = [f"Sample {i}: write a PRD for feature {i} with acceptance criteria." for i in range(12)]


def artifact(name: str, quality: float) -> dict[str, Any]:
    """A policy artifact whose ``quality`` steers the local executor (learning.replay)."""
    return {"prompts": {"system": name}, "quality": quality}


@dataclass
class ExperimentDoer:
    """A prepared doer: its policy id, golden dataset and sample ids."""

    name: str
    policy_id: str
    golden: str
    manifest_hash: str
    sample_ids: list[str]


async def submit(pool: Any, producer: Any, event: Event, timeout: float = 60.0) -> store.Outcome:
    """Send a policy command and wait until the policy store has handled it."""
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
        signature = sign(body, key)
        registered = await submit(
            pool,
            producer,
            RegisterPolicy(
                doer=doer,
                actor=actor,
                reason=f"revision {version}",
                policy_id=policy_id,
                version=version,
                artifact=body,
                content_hash=content_digest(body),
                signature=signature.value_b64,
                signature_key_id=signature.key_id,
            ),
        )
        assert registered.applied, registered.verdict
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
    dataset = f"{doer}/draft"
    samples = [
        SampleCurated(
            doer=doer,
            sample_id=f"{doer}-s{i:02d}",
            run_id=f"{doer}-run{i}",
            phase="draft",
            policy_id=policy_id,
            policy_version=min(versions),
            artifact_id=f"a{i}",
            kind="prd",
            origin="human",
            accepted=True,
            content=text,
            content_hash=content_hash(text),
            labels=CurationLabels(specificity=0.5, origin="human", synthetic_confidence=0.0),
            dataset=dataset,
        )
        for i, text in enumerate(SAMPLES)
    ]
    await insert_samples(pool, samples)
    golden = await freeze(pool, dataset, f"golden-{policy_id}", actor=actor)
    return ExperimentDoer(
        doer, policy_id, golden.name, golden.manifest_hash, [s.sample_id for s in samples]
    )


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
