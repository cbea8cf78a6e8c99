"""The local executor, replay bundles, task ids across seed sets and the replay configuration."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from learning.crl import LatencyObjectives, WeightBook, score_bundle
from learning.replay import (
    Executor,
    LocalExecutor,
    ReplayConfig,
    ReplayRule,
    ReplayTask,
    deterministic_output,
    fold_task_losses,
    replay_bundle,
    replay_id,
    task_id,
)
from learning.signing import canonical_json, content_digest
from learnops.client.replay_executor import run_task
from models.bundle import RunCompleted
from models.events import ReplayTask as ReplayTaskEvent

POLICY = {"prompts": {"system": "write short PRDs"}, "quality": 0.7}
SAMPLE = "Sample: a PRD for exporting invoices as CSV."
P_HASH = content_digest(POLICY)
M_HASH = "ab" * 32
WHEN = datetime(2026, 11, 1, tzinfo=UTC)


def task(seed: int, policy: dict[str, Any] = POLICY, sample: str = SAMPLE) -> ReplayTask:
    return ReplayTask(
        task_id=task_id(replay_id(content_digest(policy), M_HASH, [seed]), "s1", seed),
        replay_id=replay_id(content_digest(policy), M_HASH, [seed]),
        policy_hash=content_digest(policy),
        manifest_hash=M_HASH,
        sample_id="s1",
        seed=seed,
        policy=policy,
        sample=sample,
    )


def bundle_of(output: dict[str, Any], run_id: str = "replay:t:1") -> Any:
    return replay_bundle(
        output,
        doer="PRDWriter",
        phase="draft",
        policy_id="prd",
        policy_version=2,
        replay_id="r1",
        run_id=run_id,
        occurred_at=WHEN,
        tenant_id="acme",
    )


async def test_the_local_executor_is_an_executor_and_a_pure_function() -> None:
    executor = LocalExecutor()
    assert isinstance(executor, Executor)
    first = await executor.execute(task(42))
    again = await LocalExecutor().execute(task(42))
    assert canonical_json(first) == canonical_json(again)
    assert first == deterministic_output(POLICY, SAMPLE, 42)
    assert canonical_json(await executor.execute(task(43))) != canonical_json(first)
    other = {**POLICY, "quality": 0.3}
    assert canonical_json(await executor.execute(task(42, other))) != canonical_json(first)


async def test_the_local_executor_refuses_a_policy_without_a_usable_quality() -> None:
    with pytest.raises(ValueError, match="quality"):
        await LocalExecutor().execute(task(1, {"quality": 1.5}))


def test_a_replay_bundle_is_tagged_scored_and_the_same_every_time() -> None:
    output = deterministic_output(POLICY, SAMPLE, 42)
    bundle = bundle_of(output)
    assert bundle.replay_id == "r1" and bundle.run_id == "replay:t:1"
    assert bundle.deployment_id is None and not bundle.shadow
    assert bundle.to_json() == bundle_of(deterministic_output(POLICY, SAMPLE, 42)).to_json()
    assert bundle_of(output, "replay:t:2").event_id != bundle.event_id
    scored = score_bundle(bundle, WeightBook.from_dict({}), LatencyObjectives.from_dict({}))
    # The CRL stage sees the terms the executor produced (latency against the same objective).
    for name, value in output["terms"].items():
        assert getattr(scored.terms, name) == pytest.approx(value, abs=1e-6)
    assert scored.replay_id == "r1"


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=6, max_size=6))
def test_folding_task_losses_ignores_arrival_order(losses: list[float]) -> None:
    rows = [(seed, f"s{i}", losses[2 * (seed - 1) + i]) for seed in (1, 2, 3) for i in (0, 1)]
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert fold_task_losses(shuffled) == fold_task_losses(rows)
    assert {s: r.runs for s, r in fold_task_losses(rows).items()} == {1: 2, 2: 2, 3: 2}


def test_different_seed_sets_give_different_task_and_replay_ids() -> None:
    samples = ["s1", "s2", "s3"]
    a, b = replay_id(P_HASH, M_HASH, [42, 43, 44]), replay_id(P_HASH, M_HASH, [44, 45, 46])
    ids_a = {task_id(a, s, seed) for s in samples for seed in (42, 43, 44)}
    ids_b = {task_id(b, s, seed) for s in samples for seed in (44, 45, 46)}
    assert len(ids_a) == len(ids_b) == 9
    assert ids_a.isdisjoint(ids_b)  # seed 44 too: each replay has its own tasks
    assert replay_id(P_HASH, M_HASH, [42, 43, 44]) != replay_id(P_HASH, M_HASH, [45, 46, 47])
    # The same inputs give the same ids, whatever the order of the seeds.
    assert replay_id(P_HASH, M_HASH, [44, 42, 43]) == replay_id(P_HASH, M_HASH, [42, 43, 44])


def test_replay_config_reads_its_section_and_refuses_unknown_keys() -> None:
    config = ReplayConfig.from_dict(
        {"seeds": [1, 2, 3, 4], "timeout_s": 30, "rule": {"alpha": 0.01, "min_seeds": 4}}
    )
    assert config.seeds == (1, 2, 3, 4) and config.timeout_s == 30
    assert config.rule == ReplayRule(alpha=0.01, min_seeds=4)
    assert ReplayConfig.from_dict({}) == ReplayConfig()
    with pytest.raises(ValueError, match="unknown settings tiemout_s"):
        ReplayConfig.from_dict({"tiemout_s": 3})
    with pytest.raises(ValueError, match=r"replay.rule: unknown settings stability"):
        ReplayConfig.from_dict({"rule": {"stability": 0.9}})
    with pytest.raises(ValueError, match="timeout_s"):
        ReplayConfig(timeout_s=0)
    with pytest.raises(ValueError, match="at least one seed"):
        ReplayConfig(seeds=())


def test_replay_config_refuses_what_no_replay_could_pass_and_the_old_stability_rule() -> None:
    with pytest.raises(
        ValueError, match=r"2 distinct seed\(s\), fewer than replay\.rule\.min_seeds 3"
    ):
        ReplayConfig(seeds=(1, 2, 2))
    with pytest.raises(ValueError, match="min_stability is no longer judged"):
        ReplayConfig.from_dict({"rule": {"min_stability": 0.9}})


@pytest.mark.parametrize(("tenant", "expected"), [("globex", "globex"), (None, "default")])
async def test_a_replay_tasks_bundle_is_a_run_of_the_golden_datasets_tenant(
    tenant: str | None, expected: str
) -> None:
    artifact = canonical_json(POLICY)

    async def fetch_blob(digest: str) -> bytes | None:
        return artifact if digest == P_HASH else None

    runnable = task(42)
    names = ("replay_id", "task_id", "sample_id", "seed", "policy_hash", "manifest_hash")
    event = ReplayTaskEvent.model_validate(
        {name: getattr(runnable, name) for name in names}
        | {"doer": "PRDWriter", "occurred_at": WHEN, "phase": "draft", "policy_id": "prd"}
        | {"policy_version": 2, "input": SAMPLE, "run_id": "replay:t1:1", "tenant_id": tenant}
    )
    bundle = RunCompleted.model_validate_json(await run_task(LocalExecutor(), fetch_blob, event))
    # The golden dataset's tenant, or (a task published before tasks named theirs) the tenant
    # migration 023 gave pre-tenant samples; never a made-up tenant a real one could be called.
    assert (bundle.tenant_id, bundle.replay_id) == (expected, runnable.replay_id)


def test_a_doer_the_pattern_does_not_match_in_full_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """'^Walk' matches no doer in full: a new operator's executor dropped every task of
    WalkPRD with nothing said. Skipped still (another executor may serve it), said once."""
    import asyncio
    import re
    from types import SimpleNamespace

    from learnops.client import replay_executor
    from models.events import ReplayTask

    task = ReplayTask(
        doer="WalkPRD",
        replay_id="r1",
        task_id="t1",
        sample_id="s1",
        seed=1,
        phase="draft",
        policy_id="walkprd",
        policy_version=1,
    )
    record = SimpleNamespace(value=task.to_json(), key=b"WalkPRD", offset=3)
    pattern = re.compile("^Walk")
    with caplog.at_level("INFO", logger=replay_executor.log.name):
        for _ in range(2):
            handled = asyncio.run(
                replay_executor._handle(None, None, None, record, pattern)  # type: ignore[arg-type]
            )
            assert handled is None
    skipped = [r.getMessage() for r in caplog.records if "replay_task_skipped" in r.getMessage()]
    assert len(skipped) == 1 and "doer=WalkPRD" in skipped[0], skipped
    assert "'^Walk'" in skipped[0]
