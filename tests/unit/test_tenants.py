"""One doer's curation keeps tenants apart: datasets, deduplication and the self-loop memory."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from learning.samples import DoerCuration
from models.events import RunCompleted
from tests.unit.sample_bundles import bundle_dict, make_bundle

NOW = datetime(2026, 11, 2, tzinfo=UTC)
TEXT = (
    "The quarterly export must retry failed uploads three times with exponential backoff "
    "and report every dropped row to the audit log before the job is marked complete."
)
NEAR = TEXT.replace("complete.", "complete!")


def _note(tenant: str, run_id: str, text: str, *, ours: bool = False) -> RunCompleted:
    artifact = {"artifact_id": "n1", "kind": "note", "content": text, "origin": "human"}
    if ours:
        artifact.update(origin="ai-generated", policy_id="prd-policy")
    return make_bundle(tenant_id=tenant, run_id=run_id, artifacts=[artifact])


def test_the_same_text_from_two_tenants_is_accepted_for_each_in_its_own_dataset() -> None:
    state = DoerCuration("PRDWriter")
    [a] = state.curate(_note("acme", "run-1", TEXT), now=NOW).samples
    [b] = state.curate(_note("globex", "run-1", TEXT), now=NOW).samples
    assert (a.event.accepted, b.event.accepted) == (True, True)
    assert (a.event.dataset, b.event.dataset) == ("acme/PRDWriter/prd", "globex/PRDWriter/prd")
    assert (a.event.tenant_id, b.event.tenant_id) == ("acme", "globex")
    # Same run and artifact ids, two tenants: two samples, neither a redelivery of the other.
    assert a.event.sample_id != b.event.sample_id
    assert a.record is not None and b.record is not None


def test_a_near_duplicate_is_rejected_within_a_tenant_and_never_against_another() -> None:
    state = DoerCuration("PRDWriter")
    [first] = state.curate(_note("acme", "run-1", TEXT), now=NOW).samples
    [other] = state.curate(_note("globex", "run-2", NEAR), now=NOW).samples
    [same] = state.curate(_note("acme", "run-3", NEAR), now=NOW).samples
    assert other.event.accepted and other.event.near_duplicate_of == []
    assert same.event.reject_reason == f"near_duplicate:{first.event.sample_id}"
    assert same.event.near_duplicate_of == [first.event.sample_id]


def test_our_output_for_one_tenant_is_no_self_loop_for_another() -> None:
    state = DoerCuration("PRDWriter")
    replay = _note("acme", "gen-1", TEXT, ours=True).model_copy(update={"replay_id": "rp-1"})
    state.curate(replay, now=NOW)
    [pasted_elsewhere] = state.curate(_note("globex", "run-1", TEXT), now=NOW).samples
    [pasted_here] = state.curate(_note("acme", "run-2", TEXT), now=NOW).samples
    assert pasted_elsewhere.event.accepted and pasted_elsewhere.event.self_loop_of is None
    assert pasted_here.event.reject_reason == "self_loop"


def test_a_restored_state_keeps_the_tenants_apart() -> None:
    running = DoerCuration("PRDWriter")
    own = running.curate(
        _note("acme", "gen-1", TEXT, ours=True).model_copy(update={"replay_id": "rp-1"}), now=NOW
    ).own_outputs
    records = [
        s.record
        for b in (_note("acme", "run-1", NEAR), _note("globex", "run-2", TEXT))
        for s in running.curate(b, now=NOW).samples
        if s.record is not None
    ]
    restored = DoerCuration("PRDWriter")
    restored.restore(records, own.items())
    assert restored.stats() == running.stats()
    [again] = restored.curate(_note("globex", "run-3", NEAR), now=NOW).samples
    assert again.event.near_duplicate_of == [records[1]["sample_id"]]
    assert again.event.reject_reason == f"near_duplicate:{records[1]['sample_id']}"


@pytest.mark.parametrize("tenant", ["acme corp", "acme/eu", "", "ａcme", "-acme"])
def test_a_tenant_id_that_is_not_a_name_is_refused(tenant: str) -> None:
    with pytest.raises(ValidationError, match="tenant_id"):
        RunCompleted.model_validate(bundle_dict(tenant_id=tenant))
