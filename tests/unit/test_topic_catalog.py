"""topics.yaml is complete, co-partitioned and validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.topics import TopicCatalogError, load_catalog

REPO = Path(__file__).resolve().parents[2]
DESIGN_TOPICS = {
    "learning.run-completed",
    "learning.task-routed",
    "learning.crl-computed",
    "learning.samples",
    "learning.commands",
    "learning.policy-changes",
    "learning.decisions",
    "learning.dlq",
    "learning.alerts",
}


def test_catalogue_has_every_design_topic_keyed_by_doer_and_co_partitioned() -> None:
    catalog = load_catalog(REPO / "topics.yaml")
    assert set(catalog.topics) >= DESIGN_TOPICS
    keys = {name: spec.key for name, spec in catalog.topics.items()}
    # One card per tenant and doer stays on the compacted skill-card topic.
    assert keys.pop("learning.skill-cards") == "tenant/doer"
    assert set(keys.values()) == {"doer"}
    assert catalog.partitions >= 1
    assert catalog["learning.policy-changes"].configs["cleanup.policy"] == "compact"


def test_every_value_model_exists() -> None:
    import importlib

    for spec in load_catalog(REPO / "topics.yaml").topics.values():
        module, _, name = spec.value.rpartition(".")
        assert hasattr(importlib.import_module(module), name), spec.value


def test_replication_factor_can_be_overridden() -> None:
    catalog = load_catalog(REPO / "topics.yaml", replication_factor=3)
    assert {s.replication_factor for s in catalog.topics.values()} == {3}


def test_a_malformed_file_is_refused_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "topics.yaml"
    bad.write_text("topics:\n  t:\n    key: doer\n    partitions: 0\n    value: x\n")
    with pytest.raises(TopicCatalogError, match=r"topics\.yaml is malformed"):
        load_catalog(bad)


def test_mixed_partition_counts_are_refused(tmp_path: Path) -> None:
    mixed = tmp_path / "topics.yaml"
    mixed.write_text(
        "topics:\n"
        "  a: {key: doer, value: x, partitions: 2}\n"
        "  b: {key: doer, value: x, partitions: 3}\n"
    )
    with pytest.raises(TopicCatalogError, match="co-partitioned"):
        _ = load_catalog(mixed).partitions


def test_a_text_topics_records_are_bounded_by_retention_and_segment_unless_never_deleted() -> None:
    from agents.topics import KAFKA_DEFAULT_RETENTION_MS, TopicState, expiry

    day = 86_400_000
    states = {
        "a": TopicState("a", 4, {"retention.ms": str(7 * day), "segment.ms": str(day)}),
        "b": TopicState("b", 4, {"cleanup.policy": "compact"}),
        "c": TopicState("c", 4, {"retention.ms": "-1", "segment.ms": str(day)}),
        "d": TopicState("d", 4, {}),
    }
    found = {e.topic: e for e in expiry(states, ("a", "b", "c", "d", "e"))}
    assert found["a"].bound_ms == 8 * day and not found["a"].assumed
    assert found["b"].bound_ms is None  # compacted: a record stays until a newer one of its key
    assert found["c"].bound_ms is None  # retention -1: kept for ever
    assert found["d"].bound_ms == 2 * KAFKA_DEFAULT_RETENTION_MS and found["d"].assumed
    assert not found["e"].exists and found["e"].assumed
    # What the catalogue declares for the text topics: retention plus one day.
    catalog = load_catalog(REPO / "topics.yaml")
    declared = {n: TopicState(n, s.partitions, s.configs) for n, s in catalog.topics.items()}
    bounds = {e.topic: e.bound_ms for e in expiry(declared)}
    assert bounds == {
        "learning.run-completed": 8 * day,
        "learning.samples": 8 * day,
        "learning.dlq": 31 * day,
        "learning.replay-tasks": 8 * day,
    }


def test_a_skill_card_under_any_other_key_is_told_the_cards_rule() -> None:
    from models.events import SkillCard
    from models.keys import key_problem

    card = SkillCard(tenant_id="acme", doer="PRDWriter", as_of="2026-12-01")
    assert key_problem(b"acme/PRDWriter", card) is None
    for key in (b"PRDWriter", b"SomeoneElse", b"globex/PRDWriter"):
        problem = key_problem(key, card)
        assert problem is not None and "keyed by its tenant and doer" in problem, key
