"""Planning policy moves for one doer, and checking stored artifacts against the keyring."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learning.lifecycle import PolicyStatus
from learning.promotion import (
    TARGETS,
    DoerState,
    LiveDeployment,
    MoveRequest,
    PolicyVersion,
    check_steps,
    deployment_id_for,
    plan,
    routing_salt,
    same_artifact,
    verify_artifact,
)
from learning.signing import TrustedKeys, canonical_json, content_digest, generate_key, sign

DOER = "PRDWriter"
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def version(n: int, status: str, doer: str = DOER) -> PolicyVersion:
    return PolicyVersion("prd", n, doer, status)


ACTIVE = version(1, "active")


def live(policy: PolicyVersion, mode: str, deployment_id: str = "dep-1") -> LiveDeployment:
    return LiveDeployment(deployment_id, policy.policy_id, policy.version, mode)


# --------------------------------------------------------------------------- plan


def test_promoting_a_canary_archives_the_previous_active_and_ends_its_deployment() -> None:
    candidate = version(2, "canary")
    state = DoerState(DOER, ACTIVE, candidate, live(candidate, "canary"))
    move = plan(state, MoveRequest("promote", candidate, reason="better", deployment_id="dep-1"))
    assert move.ok, move.verdict
    assert (move.from_status, move.to_status) == ("canary", "active")
    assert move.archive == ACTIVE
    assert (move.end_deployment, move.end_outcome) == ("dep-1", "promoted")
    assert move.change == "promoted"
    assert move.needs_signature


def test_skipping_to_active_needs_force_and_a_reason_and_records_the_skip() -> None:
    draft = version(2, "draft")
    state = DoerState(DOER, ACTIVE)
    refused = plan(state, MoveRequest("promote", draft))
    assert not refused.ok and "skips shadow, canary" in refused.verdict
    no_reason = plan(state, MoveRequest("promote", draft, force=True))
    assert not no_reason.ok and "non-empty reason" in no_reason.verdict
    forced = plan(state, MoveRequest("promote", draft, force=True, reason="hotfix for outage"))
    assert forced.ok and forced.forced
    assert "hotfix for outage" in forced.verdict and "skipping shadow, canary" in forced.verdict
    assert forced.archive == ACTIVE


def test_a_doers_first_policy_becomes_active_only_by_a_forced_promotion() -> None:
    draft = version(1, "draft")
    empty = DoerState(DOER)
    shadow = plan(empty, MoveRequest("start_shadow", draft))
    assert not shadow.ok and "no active policy to compare" in shadow.verdict
    first = plan(empty, MoveRequest("promote", draft, force=True, reason="first policy"))
    assert first.ok and first.archive is None


def test_one_candidate_at_a_time() -> None:
    busy = version(2, "shadow")
    state = DoerState(DOER, ACTIVE, busy, live(busy, "shadow"))
    other = version(3, "draft")
    shadow = plan(state, MoveRequest("start_shadow", other))
    assert not shadow.ok and "prd@2 is already in shadow" in shadow.verdict
    promote = plan(state, MoveRequest("promote", other, force=True, reason="urgent"))
    assert not promote.ok and "roll it back or promote it" in promote.verdict


def test_shadow_to_canary_ends_the_shadow_deployment_and_starts_a_canary() -> None:
    candidate = version(2, "shadow")
    state = DoerState(DOER, ACTIVE, candidate, live(candidate, "shadow", "shadow-1"))
    move = plan(state, MoveRequest("start_canary", candidate))
    assert move.ok
    assert (move.end_deployment, move.end_outcome, move.start_mode) == (
        "shadow-1",
        "advanced",
        "canary",
    )
    assert move.change == "canary_started"


def test_a_decision_about_a_deployment_that_is_not_live_is_refused() -> None:
    candidate = version(2, "canary")
    state = DoerState(DOER, ACTIVE, candidate, live(candidate, "canary", "dep-new"))
    stale = plan(state, MoveRequest("promote", candidate, deployment_id="dep-old"))
    assert not stale.ok
    assert "dep-old is not live" in stale.verdict and "dep-new" in stale.verdict


def test_rollback_ends_the_deployment_and_an_active_policy_cannot_be_rolled_back() -> None:
    candidate = version(2, "canary")
    state = DoerState(DOER, ACTIVE, candidate, live(candidate, "canary"))
    move = plan(state, MoveRequest("rollback", candidate, reason="worse"))
    assert move.ok and move.to_status == "rolled_back"
    assert (move.end_deployment, move.end_outcome, move.change) == (
        "dep-1",
        "rolled_back",
        "rolled_back",
    )
    assert not move.needs_signature
    active = plan(state, MoveRequest("rollback", ACTIVE, force=True, reason="x"))
    assert not active.ok and "only a shadow or canary policy can be rolled back" in active.verdict


def test_archiving_a_draft_changes_nothing_served() -> None:
    move = plan(DoerState(DOER, ACTIVE), MoveRequest("archive", version(2, "draft")))
    assert move.ok and move.change is None and not move.needs_signature


def test_the_active_policy_is_archived_only_by_promoting_another() -> None:
    move = plan(DoerState(DOER, ACTIVE), MoveRequest("archive", ACTIVE, reason="retire"))
    assert not move.ok and "archived only when another version is promoted" in move.verdict


def test_a_version_of_another_doer_is_refused() -> None:
    theirs = version(2, "draft", doer="Reviewer")
    move = plan(DoerState(DOER, ACTIVE), MoveRequest("start_shadow", theirs))
    assert not move.ok and "belongs to doer 'Reviewer'" in move.verdict


def test_an_unknown_action_is_refused_with_the_known_ones() -> None:
    move = plan(DoerState(DOER, ACTIVE), MoveRequest("explode", version(2, "draft")))
    assert not move.ok and "start_shadow" in move.verdict


STATUSES = [s.value for s in PolicyStatus]


@st.composite
def doer_histories(draw: st.DrawFn) -> tuple[DoerState, dict[int, str], list[MoveRequest]]:
    """A doer with a few versions and a random sequence of requests (some forced)."""
    count = draw(st.integers(2, 5))
    statuses = {n: "draft" for n in range(1, count + 1)}
    requests = [
        MoveRequest(
            draw(st.sampled_from(sorted(TARGETS))),
            version(draw(st.integers(1, count)), "?"),
            force=draw(st.booleans()),
            reason=draw(st.sampled_from(["", "because"])),
        )
        for _ in range(draw(st.integers(1, 25)))
    ]
    return DoerState(DOER), statuses, requests


@settings(max_examples=300, deadline=None)
@given(doer_histories())
def test_any_sequence_of_planned_moves_keeps_the_doer_consistent(
    history: tuple[DoerState, dict[int, str], list[MoveRequest]],
) -> None:
    """Applying only what plan allows never leaves two active or two candidate versions."""
    state, statuses, requests = history
    deployment: LiveDeployment | None = None
    for i, request in enumerate(requests):
        target = version(request.target.version, statuses[request.target.version])
        move = plan(state, replace(request, target=target))
        if not move.ok:
            continue
        if move.archive is not None:
            statuses[move.archive.version] = "archived"
        if move.end_deployment is not None:
            assert deployment is not None and deployment.deployment_id == move.end_deployment
            deployment = None
        statuses[target.version] = move.to_status
        if move.start_mode is not None:
            assert deployment is None
            deployment = LiveDeployment(f"d{i}", "prd", target.version, move.start_mode)
        active = [n for n, s in statuses.items() if s == "active"]
        candidates = [n for n, s in statuses.items() if s in ("shadow", "canary")]
        assert len(active) <= 1 and len(candidates) <= 1
        if candidates:
            assert active, "a candidate always has an active policy to compare against"
            assert deployment is not None and deployment.version == candidates[0]
            assert deployment.mode == statuses[candidates[0]]
        else:
            assert deployment is None
        state = DoerState(
            DOER,
            version(active[0], "active") if active else None,
            version(candidates[0], statuses[candidates[0]]) if candidates else None,
            deployment,
        )


# --------------------------------------------------------------------------- steps and ids


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ((), "at least one"),
        ((0.0, 0.5), "above 0"),
        ((0.5, 1.5), "at most 1"),
        ((0.1, 0.1), "rise strictly"),
        ((0.5, 0.2), "rise strictly"),
    ],
)
def test_unusable_canary_steps_are_named(steps: tuple[float, ...], problem: str) -> None:
    reason = check_steps(steps)
    assert reason is not None and problem in reason


def test_usable_canary_steps_pass() -> None:
    assert check_steps((0.05, 0.25, 1.0)) is None


def test_deployment_ids_and_salts_are_stable_per_event_and_differ_between_events() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert deployment_id_for(a, "canary") == deployment_id_for(a, "canary")
    assert deployment_id_for(a, "canary").startswith("canary-")
    assert routing_salt(a) == routing_salt(a) != routing_salt(b)
    assert len(routing_salt(a)) == 16


# --------------------------------------------------------------------------- provenance

ARTIFACT = {"prompts": {"system": "You write PRDs. ✍️"}, "temperature": 0.2, "tools": ["search"]}


def signed(artifact: object = ARTIFACT) -> tuple[TrustedKeys, dict[str, str], bytes]:
    key = generate_key()
    keyring = TrustedKeys()
    keyring.add(key.public_key, added_at=T0)
    signature = sign(artifact, key)
    fields = {
        "content_hash": content_digest(artifact),
        "signature": signature.value_b64,
        "key_id": signature.key_id,
    }
    return keyring, fields, canonical_json(artifact)


def test_stored_bytes_signed_by_a_trusted_key_verify() -> None:
    keyring, fields, canonical = signed()
    result = verify_artifact(canonical, keyring=keyring, signed_at=T0, **fields)
    assert result.ok, result.reason


def test_a_tampered_artifact_is_refused_by_its_hash_and_by_its_signature() -> None:
    keyring, fields, _ = signed()
    tampered = canonical_json({**ARTIFACT, "temperature": 0.9})
    by_hash = verify_artifact(tampered, keyring=keyring, signed_at=T0, **fields)
    assert not by_hash.ok and "content hash" in by_hash.reason
    rehashed = {**fields, "content_hash": content_digest({**ARTIFACT, "temperature": 0.9})}
    by_signature = verify_artifact(tampered, keyring=keyring, signed_at=T0, **rehashed)
    assert not by_signature.ok and "does not match" in by_signature.reason


def test_bytes_that_are_not_canonical_are_refused_even_when_hashed_and_signed_alike() -> None:
    keyring, fields, _ = signed()
    spaced = b'{"prompts": {"system": "x"}}'
    result = verify_artifact(spaced, keyring=keyring, signed_at=T0, **fields)
    assert not result.ok and "not in canonical form" in result.reason


def test_an_unknown_key_a_revoked_key_and_a_malformed_signature_are_refused() -> None:
    keyring, fields, canonical = signed()
    stranger = verify_artifact(canonical, keyring=TrustedKeys(), signed_at=T0, **fields)
    assert not stranger.ok and "unknown key id" in stranger.reason
    keyring.revoke(fields["key_id"], at=T0)
    revoked = verify_artifact(canonical, keyring=keyring, signed_at=T0, **fields)
    assert not revoked.ok and "revoked" in revoked.reason
    keyring2, fields2, canonical2 = signed()
    broken = verify_artifact(
        canonical2, keyring=keyring2, signed_at=T0, **{**fields2, "signature": "not base64!"}
    )
    assert not broken.ok and "malformed signature" in broken.reason


def test_a_retired_key_vouches_for_what_was_recorded_before_its_retirement_only() -> None:
    keyring, fields, canonical = signed()
    keyring.retire(fields["key_id"], T0 + dt.timedelta(days=1))
    before = verify_artifact(canonical, keyring=keyring, signed_at=T0, **fields)
    assert before.ok and "retired" in before.reason
    after = verify_artifact(
        canonical, keyring=keyring, signed_at=T0 + dt.timedelta(days=2), **fields
    )
    assert not after.ok and "was retired" in after.reason


def test_the_queryable_copy_must_be_the_signed_json_with_true_not_one() -> None:
    canonical = canonical_json({"enabled": True, "n": 1.0})
    assert same_artifact({"n": 1, "enabled": True}, canonical)
    assert not same_artifact({"n": 1, "enabled": 1}, canonical)
    assert not same_artifact({"n": float("nan"), "enabled": True}, canonical)
