"""Workers' signatures of events: what they cover, and each way a forged one is refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agents.canary import signed_decision
from learning.signing import (
    DECISION_KIND,
    TrustedKeys,
    event_payload,
    generate_key,
    sign_event,
    verify_event,
)
from models.events import DecisionMade, DecisionReport

WORKER = generate_key()


def keyring(*keys: Any) -> TrustedKeys:
    ring = TrustedKeys()
    for key in keys:
        ring.add(key.public_key)
    return ring


def decision(**update: Any) -> DecisionMade:
    return DecisionMade(
        doer="PRDWriter",
        occurred_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        deployment_id="canary-0123456789abcdef",
        candidate_policy_id="prdwriter",
        candidate_version=2,
        action="step_up",
        reason="dwell complete",
        step=1,
        report=DecisionReport(
            control_mean=0.41,
            candidate_mean=0.1 + 0.2,  # a float whose shortest form is long
            control_count=200,
            candidate_count=201,
            delta=-0.11,
            p_value=0.03,
        ),
    ).model_copy(update=update)


def test_a_signed_decision_verifies_after_its_trip_through_json_bytes() -> None:
    signed = signed_decision(decision(), WORKER)
    assert signed.signature is not None and signed.signature.startswith(f"ed25519:{WORKER.key_id}:")
    received = DecisionMade.from_json(signed.to_json())
    check = verify_event(DECISION_KIND, received.model_dump(mode="json"), keyring(WORKER))
    assert check.ok and check.key_id == WORKER.key_id


@given(
    field=st.sampled_from(["doer", "deployment_id", "action", "step", "candidate_version"]),
)
def test_changing_any_signed_field_breaks_the_signature(field: str) -> None:
    changed = {
        "doer": "Reviewer",
        "deployment_id": "canary-ffffffffffffffff",
        "action": "promote",
        "step": 3,
        "candidate_version": 1,
    }[field]
    forged = signed_decision(decision(), WORKER).model_copy(update={field: changed})
    check = verify_event(DECISION_KIND, forged.model_dump(mode="json"), keyring(WORKER))
    assert not check.ok and check.reason == "signature does not match the artifact"


def test_unsigned_unknown_and_revoked_keys_are_refused_with_their_reason() -> None:
    ring = keyring(WORKER)
    unsigned = verify_event(DECISION_KIND, decision().model_dump(mode="json"), ring)
    assert (unsigned.ok, unsigned.reason) == (False, "the decision event is not signed")
    stranger = generate_key()
    forged = signed_decision(decision(), stranger).model_dump(mode="json")
    assert verify_event(DECISION_KIND, forged, ring).reason == f"unknown key id {stranger.key_id}"
    ring.revoke(WORKER.key_id)
    honest = signed_decision(decision(), WORKER).model_dump(mode="json")
    assert verify_event(DECISION_KIND, honest, ring).reason == f"key {WORKER.key_id} revoked"


def test_a_signature_of_one_event_kind_does_not_verify_as_another() -> None:
    event = {"doer": "PRDWriter", "sequence": 4}
    signature = sign_event("policy-change", event, WORKER)
    assert verify_event("policy-change", {**event, "signature": signature}, keyring(WORKER))
    assert not verify_event(DECISION_KIND, {**event, "signature": signature}, keyring(WORKER))
    assert event_payload("x", {**event, "signature": "s"}) == event_payload("x", event)


def test_a_decision_made_after_its_key_was_retired_is_refused() -> None:
    """As docs/security.md says: a retired key verifies what it signed before retirement.
    The decision's own time (a signed field) is when it was signed."""
    ring = keyring(WORKER)
    ring.retire(WORKER.key_id, datetime(2026, 2, 1, tzinfo=UTC))
    late = signed_decision(decision(), WORKER).model_dump(mode="json")  # made 2026-03-01
    refused = verify_event(DECISION_KIND, late, ring, signed_at=decision().occurred_at)
    assert not refused.ok and "was retired at 2026-02-01" in refused.reason
    early = decision(occurred_at=datetime(2026, 1, 15, tzinfo=UTC))
    before = signed_decision(early, WORKER).model_dump(mode="json")
    assert verify_event(DECISION_KIND, before, ring, signed_at=early.occurred_at).ok
