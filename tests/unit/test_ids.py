"""Golden values of every deterministic id: a change here re-keys every id ever issued.

The expected strings were computed with the derivations as they stood in
learning/, storage/ and agents/ before they moved to ``models.ids``; keep them.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from learning.signing import canonical_json
from models import ids

CAUSE = uuid.UUID("11111111-2222-3333-4444-555555555555")


def test_namespaces_are_pinned() -> None:
    assert str(ids.POLICY_EVENT_NAMESPACE) == "5b0c1f4e-8a53-4f43-9d5e-3f1c1b2a7c10"
    assert str(ids.CANARY_DECISION_NAMESPACE) == "0c5e7d62-3f1a-4c1e-9a77-52a4c1d0e8b1"
    assert str(ids.EXPERIMENT_EVENT_NAMESPACE) == "6620687e-c9df-5ae0-ac73-87219b3198ab"
    assert str(ids.REPLAY_TASK_NAMESPACE) == "e14165f1-9e09-5d2a-b5fa-5b1453dd54a3"
    assert str(ids.REPLAY_NAMESPACE) == "e988cc8e-52fd-5fb2-bdb4-9a94eecb6a28"
    assert str(ids.CURATION_NAMESPACE) == "6a5979fc-ce91-5fd3-a0d5-3a6ed16e9f99"
    assert ids.SIMULATION_NAMESPACE == uuid.NAMESPACE_URL
    assert str(ids.DEAD_LETTER_NAMESPACE) == "755a0775-9fa7-5949-97db-8530068aa0ed"


def test_caused_event_ids_are_pinned() -> None:
    assert str(ids.caused_event_id("policy-change", CAUSE)) == (
        "109b3375-26b0-5fda-a18b-7422001d75c6"
    )
    assert str(ids.caused_event_id("alert", CAUSE)) == "bba69a0d-8a35-58a4-9fc4-b1e56418b8bf"


def test_experiment_event_ids_are_pinned() -> None:
    assert str(ids.experiment_event_id("experiment", "exp-1", 3)) == (
        "72689cef-6258-54e5-be13-fce0c4770189"
    )
    assert str(ids.experiment_event_id("replay-task", "run-1")) == (
        "a0b055d5-01be-5bde-b44d-e30ec189b384"
    )
    assert str(ids.experiment_event_id("deploy", "exp-1")) == (
        "2a88d991-116c-53b3-abd9-8314d5f8c193"
    )


def test_canary_decision_id_is_pinned() -> None:
    got = ids.canary_decision_id("shadow-0123456789abcdef", "step_up", 2, 150)
    assert str(got) == "42ec8d9f-fc9e-5a31-921a-f461806685d4"


def test_unreadable_letter_ids_are_pinned_and_one_per_position() -> None:
    got = ids.unreadable_letter_id("learning.dlq", 2, 17)
    assert str(got) == "ebf3d8ce-0151-5279-85da-566f5592267d"
    assert ids.unreadable_letter_id("learning.dlq", 2, 18) != got
    assert ids.unreadable_letter_id("learning.dlq", 1, 17) != got


def test_deployment_ids_are_pinned() -> None:
    assert ids.deployment_id(CAUSE, "canary") == "canary-1111111122223333"
    assert ids.deployment_id(CAUSE, "shadow") == "shadow-1111111122223333"


def test_replay_task_ids_are_pinned() -> None:
    assert ids.replay_task_id("8f187fb4-2336-5564-8c3b-ba986c0996de", "sample-1", 7) == (
        "22e2ac70-474d-5790-9c84-38f735d56472"
    )
    # Quotes, backslashes, control characters and non-ASCII go through JCS escaping.
    assert ids.replay_task_id('p"\\\n\x01\x7fé😀', "s\u2028", -3) == (
        "346eee6f-4bed-54a8-af90-b70ca20da76e"
    )


def test_replay_ids_are_pinned_and_take_seeds_as_a_set() -> None:
    assert ids.replay_id("sha256:aa", "m" * 64, [3, 1, 2, 3]) == (
        "8f187fb4-2336-5564-8c3b-ba986c0996de"
    )
    assert ids.replay_id("sha256:aa", "m" * 64, [1, 2, 3]) == (
        "8f187fb4-2336-5564-8c3b-ba986c0996de"
    )
    assert ids.replay_id('p"\\\té', "m", [0]) == "6aa7c2a1-e92b-50dc-abd7-db2cb39abd3c"


def test_bundle_event_ids_are_pinned() -> None:
    assert str(ids.replay_bundle_event_id("run-1")) == "1a627e51-9a16-5955-8cfb-2ad6ffaab806"
    assert str(ids.simulated_bundle_event_id("run-1")) == ("f91c81f3-7aff-5e7c-a506-231e5fd0b299")
    assert str(ids.crl_event_id(CAUSE, "v3")) == "ca6e0f8c-9954-59ce-9b43-0ce70f747225"


def test_curation_ids_are_pinned() -> None:
    sample = ids.sample_id("acme", "PRDWriter", "run-1", "a-1")
    assert sample == "6c6a8942-0585-5067-9739-cd446b19cbc2"
    assert str(ids.sample_event_id(sample)) == "99207213-03ea-5888-8ce5-bfdb7654d170"
    assert str(ids.contamination_alert_id("PRDWriter/plan", "2026-12-03")) == (
        "fd22ce84-4c44-51bc-a885-f244048d7520"
    )


def test_a_lone_surrogate_has_no_replay_task_id() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        ids.replay_task_id("p\ud800", "s", 1)


@given(
    st.lists(st.text(), min_size=3, max_size=3),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
)
def test_replay_names_are_the_canonical_json_that_signing_writes(
    texts: list[str], seed: int
) -> None:
    policy_hash, manifest_hash, sample = texts
    for text in texts:
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            return  # no canonical form; both refuse it
    name = canonical_json(["replay-task", policy_hash, sample, seed]).decode()
    assert ids.replay_task_id(policy_hash, sample, seed) == str(
        uuid.uuid5(ids.REPLAY_TASK_NAMESPACE, name)
    )
    name = canonical_json(["replay", policy_hash, manifest_hash, [seed]]).decode()
    assert ids.replay_id(policy_hash, manifest_hash, [seed]) == str(
        uuid.uuid5(ids.REPLAY_NAMESPACE, name)
    )


def test_regression_alert_id_is_pinned_and_one_per_service_key_and_day() -> None:
    first = ids.regression_alert_id("learnops", "PRDWriter", "2026-12-03")
    assert str(first) == "a8280ed8-5b95-5024-a53d-8c91c08f4ae5"
    assert ids.regression_alert_id("learnops", "PRDWriter", "2026-12-04") != first
    assert ids.regression_alert_id("learnops", "PRDWriter/draft", "2026-12-03") != first
    assert ids.regression_alert_id("learnops-eu", "PRDWriter", "2026-12-03") != first
