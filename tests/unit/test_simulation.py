"""The simulated orchestrator: options never change the default draws; notes carry real PII."""

from __future__ import annotations

from learning.curation import redact
from learnops.simulation.orchestrator import NoteMix, Orchestrator


def test_human_notes_and_a_fixed_phase_leave_the_default_bundle_alone() -> None:
    plain = Orchestrator(seed=11, run_prefix="p")
    noted = Orchestrator(seed=11, run_prefix="p")
    for i in range(50):
        a = plain.bundle("PRDWriter")
        b = noted.bundle("PRDWriter", notes=NoteMix(), phase=a.phase if i % 2 else None)
        assert b.model_copy(update={"artifacts": b.artifacts[:2]}) == a
        assert [x.kind for x in b.artifacts] == ["document", "diff", "note"]
        assert b.artifacts[2].origin == "human"


def test_every_planted_pii_value_is_found_by_redaction_with_its_kind() -> None:
    orchestrator = Orchestrator(seed=4, run_prefix="n")
    bundles = [orchestrator.bundle("PRDWriter", notes=NoteMix(pii=1.0)) for _ in range(150)]
    notes = {a.artifact_id: a.content or "" for b in bundles for a in b.artifacts}
    planted = 0
    for artifact_id, note in orchestrator.planted.items():
        result = redact(notes[artifact_id])
        for kind, value in note.pii:
            planted += 1
            assert value not in result.text, (kind, value)
            assert f"[{kind}]" in result.text, (kind, value)
    assert planted > 300


def test_planted_kinds_follow_the_mix() -> None:
    orchestrator = Orchestrator(seed=4, run_prefix="m")
    mix = NoteMix(duplicate=0.3, near_duplicate=0.2, self_loop=0.2)
    for _ in range(400):
        orchestrator.bundle("PRDWriter", phase="draft", notes=mix)
    kinds = [p.kind for p in orchestrator.planted.values()]
    shares = {k: kinds.count(k) / len(kinds) for k in set(kinds)}
    assert abs(shares["exact_duplicate"] - 0.3) < 0.06
    assert abs(shares["near_duplicate"] - 0.2) < 0.06
    assert abs(shares["self_loop"] - 0.2) < 0.06
    assert all(p.source is not None for p in orchestrator.planted.values() if p.kind != "fresh")
