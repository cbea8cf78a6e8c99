"""From bundles to curated samples: names, labels, planted trouble, redelivery, restart, alerts."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from learning.contamination import ContaminationAlertRule, ContaminationGuard, GuardConfig
from learning.curation import contains_pii
from learning.samples import (
    CurationConfig,
    CurationError,
    DoerCuration,
    dataset_name,
    labels_for,
    redact_fully,
)
from learnops.simulation.orchestrator import NoteMix, Orchestrator
from models.base import sha256_hex
from models.events import Artifact, RunCompleted, SampleCurated
from models.ids import sample_event_id, sample_id
from tests.unit.sample_bundles import make_bundle

NOW = datetime(2026, 11, 2, tzinfo=UTC)


def _scenario(
    n: int = 240, mix: NoteMix | None = None, seed: int = 5
) -> tuple[Orchestrator, list[RunCompleted]]:
    orchestrator = Orchestrator(seed=seed, doers=("Alpha", "Beta"), run_prefix=f"s{seed}")
    bundles = [
        orchestrator.bundle(
            orchestrator.doers[i % 2],
            phase="draft" if i % 3 else "review",
            notes=mix or NoteMix(),
        )
        for i in range(n)
    ]
    return orchestrator, bundles


def _curate_all(
    bundles: list[RunCompleted], config: CurationConfig | None = None
) -> tuple[dict[str, DoerCuration], list[Any]]:
    states: dict[str, DoerCuration] = {}
    out = []
    for bundle in bundles:
        state = states.setdefault(bundle.doer, DoerCuration(bundle.doer, config))
        out.append((bundle, state.curate(bundle, now=NOW)))
    return states, out


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _without_time(event: SampleCurated) -> dict[str, Any]:
    return event.model_dump(exclude={"occurred_at"})


# ------------------------------------------------------------------ names and labels


def test_dataset_is_tenant_doer_and_phase_and_ids_are_stable() -> None:
    assert dataset_name("acme", "PRDWriter", "draft") == "acme/PRDWriter/draft"
    first = sample_id("acme", "PRDWriter", "run-1", "a1")
    assert first == sample_id("acme", "PRDWriter", "run-1", "a1")
    others = {
        sample_id("acme", "PRDWriter", "run-1", "a2"),
        sample_id("acme", "Other", "run-1", "a1"),
        sample_id("globex", "PRDWriter", "run-1", "a1"),
    }
    assert len({first} | others) == 4
    assert sample_event_id(first) == sample_event_id(first)


def test_labels_come_from_the_bundles_qav_results_and_gates() -> None:
    bundle = make_bundle()  # grounding 0.8, 1 contradiction in 10 claims, 3 of 4 gates passed
    artifact = bundle.artifacts[0]
    labels = labels_for(bundle, artifact, "Uses `orders.v2` and API 3.1.", matches_our_output=False)
    assert labels.grounding == 0.8
    assert labels.contradiction == pytest.approx(0.1)
    assert labels.correctness == pytest.approx(0.75)
    assert labels.origin == "ai-generated"
    assert labels.synthetic_confidence == 0.9  # not produced by a policy the bundle names
    assert 0 < labels.specificity <= 1


def test_without_qav_or_gates_the_labels_say_unknown_not_zero() -> None:
    bundle = make_bundle(qav=None, gates={"passed": [], "failed": []})
    labels = labels_for(bundle, bundle.artifacts[0], "text", matches_our_output=False)
    assert (labels.grounding, labels.contradiction, labels.correctness) == (None, None, None)


def test_ours_is_never_human_and_a_copy_of_ours_looks_synthetic() -> None:
    bundle = make_bundle()
    ours = Artifact(artifact_id="a", kind="doc", content="x", origin="human", policy_id="p")
    theirs = Artifact(artifact_id="b", kind="doc", content="x", origin="human")
    mine = labels_for(bundle, ours, "x", matches_our_output=False)
    copied = labels_for(bundle, theirs, "x", matches_our_output=True)
    assert (mine.origin, mine.synthetic_confidence) == ("hybrid", 0.5)
    assert (copied.origin, copied.synthetic_confidence) == ("human", 0.8)


def test_redaction_runs_until_a_last_scan_finds_nothing() -> None:
    result = redact_fully("mail jane.doe@example.com or call +44 20 7946 0958 today")
    assert result.counts == {"EMAIL": 1, "PHONE": 1}
    assert not contains_pii(result.text)
    assert redact_fully(result.text) == type(result)(result.text, {})


def test_curation_config_reads_the_yaml_section_and_refuses_typos() -> None:
    config = CurationConfig.from_dict(
        {
            "near_duplicate_threshold": 0.9,
            "alert": {"max_contamination_rate": 0.3, "min_samples": 5},
        }
    )
    assert config.guard.near_duplicate_threshold == 0.9
    assert config.alert == ContaminationAlertRule(max_rate=0.3, min_count=5)
    with pytest.raises(ValueError, match="near_dup_threshold"):
        CurationConfig.from_dict({"near_dup_threshold": 0.9})
    with pytest.raises(ValueError, match="max_rate"):
        CurationConfig.from_dict({"alert": {"max_rate": 0.3}})


# ------------------------------------------------------------------ curating bundles


def test_planted_duplicates_near_duplicates_and_self_loops_get_their_reasons() -> None:
    orchestrator, bundles = _scenario()
    _, curated = _curate_all(bundles)
    seen: Counter[tuple[str, str]] = Counter()
    for bundle, curation in curated:
        by_artifact = {s.event.artifact_id: s.event for s in curation.samples}
        for artifact in bundle.artifacts:
            planted = orchestrator.planted.get(artifact.artifact_id)
            if planted is None:
                continue
            event = by_artifact[artifact.artifact_id]
            verdict = (event.reject_reason or "accepted").split(":", 1)[0]
            want = "accepted" if planted.kind == "fresh" else planted.kind
            assert verdict == want, (planted, event.reject_reason)
            if planted.source is not None and planted.kind != "near_duplicate":
                source = sample_id(bundle.tenant_id, bundle.doer, *planted.source)
                assert source in [*event.near_duplicate_of, event.self_loop_of]
            seen[(planted.kind, verdict)] += 1
    assert {kind for kind, _ in seen} == {"fresh", "exact_duplicate", "near_duplicate", "self_loop"}


def test_no_emitted_string_holds_pii_nor_any_planted_value() -> None:
    orchestrator, bundles = _scenario(120)
    _, curated = _curate_all(bundles)
    planted_values = {v for p in orchestrator.planted.values() for _, v in p.pii}
    assert planted_values, "the scenario must carry PII for this test to mean anything"
    assert any(contains_pii(a.content or "") for b in bundles for a in b.artifacts)
    for _, curation in curated:
        for sample in curation.samples:
            record = orjson.loads(sample.event.to_json())
            for text in _strings(record):
                assert not contains_pii(text), text
                assert not any(value in text for value in planted_values), text
            assert sample.event.content is not None
            assert not any(value in sample.event.content for value in planted_values)


def test_every_artifact_with_content_gives_one_sample_accepted_or_with_a_reason() -> None:
    _, bundles = _scenario(60)
    _, curated = _curate_all(bundles)
    for bundle, curation in curated:
        with_content = [a for a in bundle.artifacts if a.content]
        assert [s.event.artifact_id for s in curation.samples] == [
            a.artifact_id for a in with_content
        ]
        for sample in curation.samples:
            event = sample.event
            assert event.dataset == dataset_name(bundle.tenant_id, bundle.doer, bundle.phase)
            assert event.accepted == (event.reject_reason is None)
            assert sample.record is not None and sample.record["hash"] == event.content_hash


def test_a_redelivered_bundle_gets_the_same_samples_and_changes_nothing() -> None:
    _, bundles = _scenario(80)
    states, curated = _curate_all(bundles)
    records = {
        (b.doer, s.event.sample_id): s.record for b, c in curated for s in c.samples if s.record
    }
    before = {d: s.stats()[f"acme/{d}/draft"].to_dict() for d, s in states.items()}
    for bundle, first in curated[-10:]:
        again = states[bundle.doer].curate(
            bundle,
            now=NOW + timedelta(hours=1),
            previous=lambda s, d=bundle.doer: records.get((d, s)),
        )
        assert [_without_time(s.event) for s in again.samples] == [
            _without_time(s.event) for s in first.samples
        ]
        assert all(s.record is None for s in again.samples)
    assert {d: s.stats()[f"acme/{d}/draft"].to_dict() for d, s in states.items()} == before


def test_a_restored_doer_curates_the_rest_exactly_as_one_that_never_stopped() -> None:
    _, bundles = _scenario(200)
    config = CurationConfig(guard=GuardConfig(diversity_window=40))
    cut = 120
    running, first = _curate_all(bundles[:cut], config)
    samples = {d: [] for d in running}  # type: dict[str, list[dict[str, Any]]]
    own = {d: [] for d in running}  # type: dict[str, list[tuple[str, dict[str, Any]]]]
    for bundle, curation in first:
        samples[bundle.doer] += [s.record for s in curation.samples if s.record]
        own[bundle.doer] += list(curation.own_outputs.items())
    # Records come back from a table in any order.
    restored = {}
    for doer in running:
        state = DoerCuration(doer, config)
        state.restore(reversed(samples[doer]), reversed(own[doer]))
        restored[doer] = state
    assert {d: s.stats() for d, s in restored.items()} == {d: s.stats() for d, s in running.items()}
    for bundle in bundles[cut:]:
        a = running[bundle.doer].curate(bundle, now=NOW)
        b = restored[bundle.doer].curate(bundle, now=NOW)
        assert [_without_time(s.event) for s in a.samples] == [
            _without_time(s.event) for s in b.samples
        ]
        assert [s.record for s in a.samples] == [s.record for s in b.samples]


def test_replay_and_shadow_bundles_give_no_samples_but_are_remembered_as_ours() -> None:
    bundle = Orchestrator(seed=1, doers=("Gamma",)).bundle("Gamma", phase="draft")
    document = bundle.artifacts[0]
    replay = bundle.model_copy(update={"replay_id": "rp-1", "run_id": "replayed-1"})
    state = DoerCuration("Gamma")
    result = state.curate(replay, now=NOW)
    assert (result.samples, result.skipped) == ([], "replay")
    assert sample_id("acme", "Gamma", "replayed-1", document.artifact_id) in result.own_outputs

    shadow = make_bundle(
        doer="Gamma", run_id="sh-1", shadow=True, arm="candidate", deployment_id="dep-1"
    )
    assert state.curate(shadow, now=NOW).skipped == "shadow"

    pasted = make_bundle(
        doer="Gamma",
        run_id="later-1",
        artifacts=[
            {"artifact_id": "n1", "kind": "note", "content": document.content, "origin": "human"}
        ],
    )
    [sample] = state.curate(pasted, now=NOW).samples
    assert sample.event.reject_reason == "self_loop"
    assert sample.event.self_loop_of == sample_id(
        "acme", "Gamma", "replayed-1", document.artifact_id
    )
    assert sample.event.labels is not None and sample.event.labels.synthetic_confidence == 0.8


def test_our_artifact_known_by_hash_only_is_caught_when_its_text_comes_back() -> None:
    text = "Generated migration plan: add index on orders.customer_id, then backfill in batches."
    hashed = {
        "artifact_id": "plan",
        "kind": "plan",
        "content_hash": sha256_hex(text),
        "origin": "ai-generated",
        "policy_id": "p",
    }
    state = DoerCuration("PRDWriter")
    first = state.curate(make_bundle(run_id="r1", artifacts=[hashed]), now=NOW)
    assert first.samples == [] and next(iter(first.own_outputs.values()))["sig"] is None
    note = {"artifact_id": "n", "kind": "note", "content": text, "origin": "human"}
    [sample] = state.curate(make_bundle(run_id="r2", artifacts=[note]), now=NOW).samples
    assert sample.event.reject_reason == "self_loop"


def test_content_under_a_reused_artifact_id_is_refused_before_anything_changes() -> None:
    state = DoerCuration("PRDWriter")
    bundle = make_bundle()
    records = {s.event.sample_id: s.record for s in state.curate(bundle, now=NOW).samples}
    changed = make_bundle(
        artifacts=[{"artifact_id": "a1", "kind": "prd", "content": "# Other", "origin": "human"}]
    )
    before = state.stats()["acme/PRDWriter/prd"].to_dict()
    with pytest.raises(CurationError, match="other content"):
        state.curate(changed, now=NOW, previous=records.get)
    assert state.stats()["acme/PRDWriter/prd"].to_dict() == before
    twice = make_bundle(
        artifacts=[
            {"artifact_id": "x", "kind": "prd", "content": "one", "origin": "human"},
            {"artifact_id": "x", "kind": "prd", "content": "two", "origin": "human"},
        ]
    )
    with pytest.raises(CurationError, match="share one artifact id"):
        state.curate(twice, now=NOW)


def test_pii_in_the_orchestrators_ids_does_not_pass_either() -> None:
    """The contract refuses an address in a run's ids (below); a bundle that got past it
    (built without validation) still has it redacted in its samples."""
    artifact = {
        "artifact_id": "jane.doe@example.com/notes",
        "kind": "note",
        "content": "nothing personal here at all",
        "origin": "human",
    }
    with pytest.raises(ValidationError, match=r"artifacts\.0\.artifact_id holds an email"):
        make_bundle(artifacts=[artifact])
    valid = make_bundle(artifacts=[{**artifact, "artifact_id": "notes"}])
    bundle = valid.model_copy(
        update={
            "artifacts": [
                valid.artifacts[0].model_copy(update={"artifact_id": artifact["artifact_id"]})
            ]
        }
    )
    [sample] = DoerCuration("PRDWriter").curate(bundle, now=NOW).samples
    assert sample.event.artifact_id == "[EMAIL]/notes"
    assert sample.event.redactions == {"EMAIL": 1}
    assert sample.event.sample_id == sample_id(
        "acme", "PRDWriter", "run-1", "jane.doe@example.com/notes"
    )


def test_blank_artifacts_are_not_samples() -> None:
    bundle = make_bundle(
        artifacts=[{"artifact_id": "b", "kind": "note", "content": "  \n", "origin": "human"}]
    )
    assert DoerCuration("PRDWriter").curate(bundle, now=NOW).samples == []


# ------------------------------------------------------------------ the contamination alert


def test_contamination_alerts_once_per_dataset_and_day_and_a_restore_remembers_it() -> None:
    mix = NoteMix(duplicate=0.5, near_duplicate=0.2, self_loop=0.2)
    _, bundles = _scenario(240, mix)
    config = CurationConfig(alert=ContaminationAlertRule(max_rate=0.2, min_count=30))
    start = datetime(2026, 11, 1, tzinfo=UTC)
    # The first 160 bundles on one day, the rest on the next.
    dated = [
        b.model_copy(update={"occurred_at": start + timedelta(days=i // 160, seconds=i)})
        for i, b in enumerate(bundles)
    ]
    _, uninterrupted = _curate_all(dated, config)
    alerts = [s.alert for _, c in uninterrupted for s in c.samples if s.alert]
    by_day = Counter((a.evidence["dataset"], a.evidence["day"]) for a in alerts)
    assert set(by_day.values()) == {1}, "at most one per dataset and day"
    assert {day for _, day in by_day} == {"2026-11-01", "2026-11-02"}
    assert len({dataset for dataset, _ in by_day}) == 4
    for alert in alerts:
        assert alert.kind == "contamination" and alert.value is not None
        assert alert.threshold == 0.2 < alert.value
        assert alert.evidence["checked"] >= 30

    # Stop mid-day, restore, go on: the same alerts, none raised twice.
    cut = 100
    states, first = _curate_all(dated[:cut], config)
    restored = {}
    for doer in states:
        restored[doer] = DoerCuration(doer, config)
        restored[doer].restore(
            [s.record for b, c in first if b.doer == doer for s in c.samples if s.record]
        )
    rest = [restored[b.doer].curate(b, now=NOW) for b in dated[cut:]]
    resumed = [s.alert for _, c in first for s in c.samples if s.alert]
    resumed += [s.alert for c in rest for s in c.samples if s.alert]
    assert [a.event_id for a in resumed] == [a.event_id for a in alerts]


def test_sample_events_validate_against_the_wire_model() -> None:
    _, bundles = _scenario(20)
    _, curated = _curate_all(bundles)
    for _, curation in curated:
        for sample in curation.samples:
            assert SampleCurated.from_json(sample.event.to_json()) == sample.event


def test_records_older_than_memory_days_are_expiring_and_a_rebuilt_state_forgets_them() -> None:
    _, bundles = _scenario(60, NoteMix(duplicate=0.3), seed=11)
    bundles = [b for b in bundles if b.doer == "Alpha"]
    config = CurationConfig(guard=GuardConfig(memory_days=2))
    state = DoerCuration("Alpha", config)
    old, recent = bundles[:10], bundles[10:]
    kept: list[dict[str, Any]] = []
    old_ids = set()
    for bundle in old:
        curation = state.curate(bundle, now=NOW)
        kept += [s.record for s in curation.samples if s.record]
        old_ids |= {("sample", s.event.sample_id) for s in curation.samples}
    later = NOW + timedelta(days=2)
    for bundle in recent:
        kept += [s.record for s in state.curate(bundle, now=later).samples if s.record]
    assert all(r["day"] in (NOW.date().isoformat(), later.date().isoformat()) for r in kept)
    # Two days after NOW nothing has expired; the day after, exactly NOW's records.
    assert state.expiring(later.date()) == []
    expired = state.expiring(later.date() + timedelta(days=1))
    assert set(expired) == old_ids and old_ids
    # The state rebuilt from the other records forgets the old samples...
    fresh = DoerCuration("Alpha", config)
    fresh.restore(r for r in kept if ("sample", r["sample_id"]) not in old_ids)
    assert not old_ids & set(fresh.kept)
    # ...so an old sample sent again is new to it, while the running state calls it a duplicate.
    again = old[0].model_copy(update={"run_id": "resent-1"})
    assert state.curate(again, now=later).samples[0].event.reject_reason == "exact_duplicate"
    verdict = fresh.curate(again, now=later).samples[0].event
    assert verdict.accepted, verdict.reject_reason
    # Sequence numbers go on past every kept record (a restore keeps the order).
    seqs = [r["seq"] for r in kept if ("sample", r["sample_id"]) not in old_ids]
    record = fresh.curate(recent[0].model_copy(update={"run_id": "new-1"}), now=later)
    assert all(s.record["seq"] > max(seqs) for s in record.samples if s.record)


def test_memory_days_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="memory_days 0 is below 1"):
        GuardConfig(memory_days=0)


@pytest.mark.parametrize("phase", ["10.0.0.1", "123-45-6789", "4111111111111111"])
def test_a_phase_that_reads_as_pii_is_the_bundles_problem_not_an_internal_error(
    phase: str,
) -> None:
    """Redacted to a placeholder that is no name, such a phase used to raise a plain
    ValueError: a dead letter as an internal error, twenty of which halt the stage."""
    bundle = make_bundle(doer="Gamma", run_id=f"pii-phase-{phase}", phase=phase)
    with pytest.raises(CurationError, match="no dataset for the sample's phase"):
        DoerCuration("Gamma").curate(bundle, now=NOW)


def test_the_model_name_is_stored_redacted() -> None:
    """Refused by the contract (an address in a run's names); redacted in samples if a
    bundle got past it."""
    named = "gpt-4o (key for jane.doe@example.com)"
    with pytest.raises(ValidationError, match="model holds an email address"):
        make_bundle(doer="Gamma", run_id="model-pii", model=named)
    bundle = make_bundle(doer="Gamma", run_id="model-pii").model_copy(update={"model": named})
    samples = DoerCuration("Gamma").curate(bundle, now=NOW).samples
    assert samples, "the bundle gives samples"
    for sample in samples:
        assert sample.event.model is not None
        assert "jane.doe@example.com" not in sample.event.model
        assert sample.event.model.startswith("gpt-4o (key for [")


@pytest.mark.parametrize(
    "hidden",
    [
        "jane.doe\u200b@example.com",  # a zero-width space
        "jane.doe\u00ad@example.com",  # a soft hyphen
        "jane.doe\uff20example.com",  # a fullwidth at sign
        "jane\u200d.doe@example.com",  # a zero-width joiner
    ],
)
def test_invisible_and_fullwidth_characters_do_not_hide_an_address(hidden: str) -> None:
    redacted = redact_fully(f"Contact {hidden} about the draft.")
    assert "example.com" not in redacted.text and redacted.counts, redacted


@pytest.mark.parametrize("mark", ["\u200b", "\u00ad", "\u200d"])
def test_a_copy_with_invisible_characters_inside_words_is_still_a_duplicate(mark: str) -> None:
    """Inside words they split the guard's tokens, so such a copy read as new text."""
    text = (
        "The migration plan moves the orders table to the new cluster in three steps, "
        "first copying the historical partitions, then dual writing for a week, "
        "and finally switching reads once the row counts match on both sides."
    )
    hidden = " ".join(w[:2] + mark + w[2:] if len(w) > 3 else w for w in text.split(" "))
    guard = ContaminationGuard(GuardConfig())
    assert guard.check("first", redact_fully(text).text, ai_generated_by_us=False).accepted
    copy = guard.check("copy", redact_fully(hidden).text, ai_generated_by_us=False)
    assert not copy.accepted, copy


def test_a_bundle_redelivered_after_the_redaction_rules_changed_gets_its_stored_verdict() -> None:
    """A review: a bundle curated before an upgrade that redacts more, redelivered after
    it (a crash before the commit, a rebalance in a rolling deploy), had a new redacted
    hash and was dead-lettered as a reused artifact id. The raw hash tells them apart."""
    text = "Reach me at bob.lee@example.org--old about the rollout."
    bundle = make_bundle(
        doer="Upgraded",
        artifacts=[{"artifact_id": "n", "kind": "note", "content": text, "origin": "human"}],
    )
    state = DoerCuration("Upgraded")
    [first] = state.curate(bundle, now=NOW).samples
    assert first.record is not None and first.record["raw"]
    before = {**first.record, "hash": "0" * 64}  # as the rules before the upgrade hashed it
    [again] = state.curate(bundle, now=NOW, previous=lambda _: before).samples
    assert again.record is None and again.event.sample_id == first.event.sample_id
    legacy = {k: v for k, v in before.items() if k != "raw"}  # stored before "raw" was kept
    assert state.curate(bundle, now=NOW, previous=lambda _: legacy).samples[0].record is None
    reused = {**before, "raw": "f" * 64}  # another artifact's bytes under the same id
    with pytest.raises(CurationError, match="artifact ids must not be reused"):
        state.curate(bundle, now=NOW, previous=lambda _: reused)
