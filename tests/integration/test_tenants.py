"""Two tenants through the session's worker, real Kafka and real PostgreSQL: nothing crosses.

Tenants A and B send one doer bundles with the same run and artifact ids, the
same text and near duplicates of it. Each tenant's samples are stored, in its
own dataset, deduplicated only against its own; the CLI reads of one tenant
show none of the other's samples; a golden dataset frozen for A holds only A's
samples and its name cannot be taken by B; the replay tasks built from it
carry A's tenant and A's text only.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from learning.signing import SigningKey
from learnops.demo.experiments_scenario import CONTROL, register
from models.events import RunCompleted
from storage import datasets as store
from storage import experiments as experiments_store
from tests.integration.kafka_io import eventually, publish
from tests.services import WorkerProcess, run_learnops
from tests.unit.sample_bundles import bundle_dict

TOPIC = "learning.run-completed"
SHARED = (
    "The quarterly export must retry failed uploads three times with exponential backoff "
    "and report every dropped row to the audit log before the job is marked complete."
)
NEAR = SHARED.replace("complete.", "complete!")


def _bundle(tenant: str, doer: str, run_id: str, text: str) -> RunCompleted:
    data = bundle_dict(
        tenant_id=tenant,
        doer=doer,
        run_id=run_id,
        phase="draft",
        policy_id=doer.lower(),
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"learnops-test:{tenant}:{run_id}")),
        artifacts=[{"artifact_id": "note", "kind": "note", "content": text, "origin": "human"}],
    )
    return RunCompleted.model_validate(data)


_ROWS = (
    "SELECT sample_id, tenant_id, dataset, run_id, content, accepted, reject_reason,"
    " near_duplicate_of FROM dataset_samples WHERE doer = $1 ORDER BY tenant_id, run_id"
)


@pytest.fixture(scope="module")
async def two_tenants(worker: WorkerProcess, producer: Any, db: Any) -> dict[str, Any]:
    """Publish both tenants' bundles once; their stored samples, once all six are in."""
    tag = uuid.uuid4().hex[:8]
    doer, a, b = f"Ten{tag}", f"ta{tag}", f"tb{tag}"
    secret_a, secret_b = f"Only tenant A writes {tag} here.", f"Only tenant B writes {tag} here."
    bundles = [
        _bundle(a, doer, "run-1", SHARED),
        _bundle(b, doer, "run-1", SHARED),  # same run, artifact and text as A's
        _bundle(a, doer, "run-2", NEAR),
        _bundle(b, doer, "run-2", NEAR),
        _bundle(a, doer, "run-3", secret_a),
        _bundle(b, doer, "run-3", secret_b),
    ]
    await publish(producer, TOPIC, [(x.doer.encode(), x.to_json()) for x in bundles])
    rows = await eventually(lambda: db.fetch(_ROWS, doer), lambda r: len(r) == 6, timeout=90)
    return {
        "doer": doer,
        "a": a,
        "b": b,
        "secrets": {a: secret_a, b: secret_b},
        "rows": {t: [r for r in rows if r["tenant_id"] == t] for t in (a, b)},
    }


def test_the_same_text_from_two_tenants_is_stored_for_each(two_tenants: dict[str, Any]) -> None:
    doer = two_tenants["doer"]
    for tenant in (two_tenants["a"], two_tenants["b"]):
        rows = {r["run_id"]: r for r in two_tenants["rows"][tenant]}
        assert sorted(rows) == ["run-1", "run-2", "run-3"]
        assert {r["dataset"] for r in rows.values()} == {f"{tenant}/{doer}/draft"}
        assert rows["run-1"]["accepted"], rows["run-1"]
        assert rows["run-3"]["accepted"], rows["run-3"]


def test_a_near_duplicate_is_rejected_against_its_own_tenant_only(
    two_tenants: dict[str, Any],
) -> None:
    for tenant in (two_tenants["a"], two_tenants["b"]):
        rows = {r["run_id"]: r for r in two_tenants["rows"][tenant]}
        first = rows["run-1"]["sample_id"]
        assert rows["run-2"]["reject_reason"] == f"near_duplicate:{first}"
        assert rows["run-2"]["near_duplicate_of"] == [first]
    ids = {t: {r["sample_id"] for r in rows} for t, rows in two_tenants["rows"].items()}
    assert not ids[two_tenants["a"]] & ids[two_tenants["b"]]


def _cli_json(settings_env: dict[str, str], *args: str) -> Any:
    result = run_learnops(settings_env, *args, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


async def test_a_tenants_reads_show_nothing_of_the_other(
    two_tenants: dict[str, Any], settings_env: dict[str, str]
) -> None:
    doer, a, b = two_tenants["doer"], two_tenants["a"], two_tenants["b"]
    samples = await asyncio.to_thread(
        _cli_json, settings_env, "dataset", "samples", f"{doer}/draft", "--tenant", a
    )
    assert {s["sample_id"] for s in samples} == {r["sample_id"] for r in two_tenants["rows"][a]}
    shown = json.dumps(samples)
    assert two_tenants["secrets"][a] in shown and two_tenants["secrets"][b] not in shown
    # B's full dataset name asked for as tenant A: refused, nothing shown.
    refused = await asyncio.to_thread(
        run_learnops, settings_env, "dataset", "samples", f"{b}/{doer}/draft", "--tenant", a
    )
    assert refused.returncode == 2 and f"not --tenant {a!r}" in refused.stderr
    assert two_tenants["secrets"][b] not in refused.stdout + refused.stderr
    listed = await asyncio.to_thread(_cli_json, settings_env, "dataset", "list", "--tenant", a)
    assert [d["dataset"] for d in listed["datasets"]] == [f"{a}/{doer}/draft"]
    # The name as the list gives it carries its tenant: the same samples without --tenant.
    named = await asyncio.to_thread(
        _cli_json, settings_env, "dataset", "samples", f"{a}/{doer}/draft"
    )
    assert {s["sample_id"] for s in named} == {s["sample_id"] for s in samples}
    for args in ((f"{doer}/draft", "--tenant", b), (f"{b}/{doer}/draft",)):
        summary = await asyncio.to_thread(_cli_json, settings_env, "dataset", "show", *args)
        assert (summary["dataset"]["tenant_id"], summary["dataset"]["checked"]) == (b, 3)


async def test_samples_text_is_never_shown_without_a_tenant(settings_env: dict[str, str]) -> None:
    result = await asyncio.to_thread(run_learnops, settings_env, "dataset", "samples", "x/draft")
    assert result.returncode == 2 and "--tenant" in result.stderr


async def test_golden_datasets_and_replay_tasks_hold_one_tenants_samples(
    two_tenants: dict[str, Any], db: Any, producer: Any, signing_key: SigningKey
) -> None:
    doer, a, b = two_tenants["doer"], two_tenants["a"], two_tenants["b"]
    golden_name = f"golden-{a}"
    frozen = await store.freeze(db, a, f"{doer}/draft", golden_name, actor="tests")
    accepted_a = {r["sample_id"]: r for r in two_tenants["rows"][a] if r["accepted"]}
    assert (frozen.tenant_id, frozen.sample_count) == (a, len(accepted_a))
    copied = await db.fetch(
        "SELECT sample_id, content FROM golden_dataset_samples WHERE golden_name = $1",
        golden_name,
    )
    assert {r["sample_id"] for r in copied} == set(accepted_a)
    # B can neither read A's golden dataset nor freeze its own samples under A's name.
    assert await store.golden(db, b, golden_name) is None
    assert [g.name for g in await store.list_golden(db, b)] == []
    with pytest.raises(store.GoldenError, match="taken by another tenant"):
        await store.freeze(db, b, f"{doer}/draft", golden_name, actor="tests")

    policy_id = await register(db, producer, signing_key, doer, 1, CONTROL, actor="tests")
    policy = await experiments_store.find_policy_row(db, policy_id, 1)
    golden = await experiments_store.find_golden(db, golden_name)
    assert golden is not None and golden.tenant_id == a and golden.phase == "draft"
    started = await experiments_store.start_replay(
        db,
        policy=policy,
        golden=golden,
        seeds=[1],
        requested_by=uuid.uuid4(),
        actor="tests",
        timeout_s=60,
        force=False,
    )
    assert {t.tenant_id for t in started.tasks} == {a}
    assert {t.sample_id for t in started.tasks} == set(accepted_a)
    assert {t.input for t in started.tasks} == {r["content"] for r in accepted_a.values()}
    assert two_tenants["secrets"][b] not in {t.input for t in started.tasks}
    # An experiment naming only doer/phase gets A's golden dataset while A alone has one;
    # once B freezes one too, the lookup names the ambiguity instead of picking either.
    only = await experiments_store.find_golden(db, None, dataset=f"{doer}/draft")
    assert only is not None and only.tenant_id == a
    await store.freeze(db, b, f"{doer}/draft", f"golden-{b}", actor="tests")
    with pytest.raises(ValueError, match="frozen for 2 tenants"):
        await experiments_store.find_golden(db, None, dataset=f"{doer}/draft")
    named = await experiments_store.find_golden(db, None, dataset=f"{b}/{doer}/draft")
    assert named is not None and named.tenant_id == b
    # Naming nothing finds nothing: an experiment row without a golden dataset (created,
    # then killed before it was failed) once got the newest of any tenant on redelivery.
    assert await experiments_store.find_golden(db, None) is None
    assert await experiments_store.find_golden(db, None, 1) is None
