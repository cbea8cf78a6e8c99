"""Planning policy moves for one doer, and checking stored artifacts against the keyring."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learning.canary import DEFAULT_STEPS
from learning.lifecycle import PolicyStatus
from learning.promotion import (
    IDENTITY_RULE,
    LEGACY_SIGNATURE_FORMAT,
    TARGETS,
    DeploymentStart,
    DeploymentSteps,
    DoerState,
    LiveDeployment,
    Move,
    MoveRequest,
    PolicyVersion,
    Refused,
    SignedIdentity,
    StoredLine,
    audited_deployment,
    check_approval,
    check_operator_pause,
    check_pause,
    check_registration,
    check_resume,
    check_step_up,
    check_steps,
    decision_action,
    default_target,
    plan,
    requested_status,
    routing_salt,
    same_artifact,
    start_deployment,
    unsigned,
    verify_artifact,
)
from learning.signing import (
    TrustedKeys,
    canonical_json,
    content_digest,
    generate_key,
    policy_payload,
    sign,
)
from models import ids
from models.policy_change import CanarySettings

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
    asked = MoveRequest("promote", candidate, reason="better", deployment_id="dep-1")
    move = plan(state, replace(asked, decided=True))
    assert move.ok, move.verdict
    assert not move.forced
    assert (move.from_status, move.to_status) == ("canary", "active")
    assert move.archive == ACTIVE
    assert (move.end_deployment, move.end_outcome) == ("dep-1", "promoted")
    assert move.change == "promoted"
    assert move.needs_signature


def test_a_persons_promote_of_a_canary_overrides_its_evidence_so_it_is_a_forced_move() -> None:
    """Unforced, one owner could take a draft live through shadow and canary in three
    commands, with no run counted and no second owner (the forced promote's signature
    check keys on the command's force, so forcing here brings the second owner in)."""
    candidate = version(2, "canary")
    state = DoerState(DOER, ACTIVE, candidate, live(candidate, "canary"))
    asked = MoveRequest("promote", candidate, reason="looks fine", deployment_id="dep-1")
    for request in (asked, replace(asked, force=True, reason="  ")):
        refused = plan(state, request)
        assert not refused.ok
        assert "overrides the canary and needs force, a reason and a second owner" in (
            refused.verdict
        )
        assert "learnops policy promote prd@2 --force --reason R --approver-key" in (
            refused.verdict
        )
    forced = plan(state, replace(asked, force=True))
    assert forced.ok and forced.forced, forced.verdict
    assert forced.verdict.endswith("(forced ahead of the canary's decision)")
    assert (forced.end_deployment, forced.end_outcome, forced.archive) == (
        "dep-1",
        "promoted",
        ACTIVE,
    )


def test_a_paused_deployment_moves_on_by_decision_only_after_a_resume_by_command_any_time() -> None:
    for mode, action in (("canary", "promote"), ("shadow", "start_canary")):
        candidate = version(2, mode)
        paused = replace(live(candidate, mode), paused=True)
        state = DoerState(DOER, ACTIVE, candidate, paused)
        asked = MoveRequest(action, candidate, reason="better", deployment_id="dep-1")
        held = plan(state, replace(asked, decided=True))
        assert not held.ok
        assert held.verdict == (
            "dep-1 is paused; a canary decision moves it on only after a resume "
            "(`learnops policy resume`)"
        )
        # an operator's own command is theirs to give (a canary's promote, forced)
        assert plan(state, replace(asked, force=mode == "canary")).ok
        assert plan(replace(state, deployment=live(candidate, mode)), replace(asked, decided=True))
        rollback = MoveRequest("rollback", candidate, reason="worse", deployment_id="dep-1")
        assert plan(state, replace(rollback, decided=True)).ok  # stopping is never held


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
    # A canary straight from draft says the same first, not "needs force", which a new
    # operator followed only to be refused for the missing active policy.
    for forced in (False, True):
        canary = plan(empty, MoveRequest("start_canary", draft, force=forced, reason="r"))
        assert not canary.ok and "no active policy to compare" in canary.verdict, canary.verdict
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
    assert ids.deployment_id(a, "canary") == ids.deployment_id(a, "canary")
    assert ids.deployment_id(a, "canary").startswith("canary-")
    assert routing_salt(a) == routing_salt(a) != routing_salt(b)
    assert len(routing_salt(a)) == 16


# --------------------------------------------------------------------------- provenance

ARTIFACT = {"prompts": {"system": "You write PRDs. ✍️"}, "temperature": 0.2, "tools": ["search"]}


WHO = SignedIdentity("PRDWriter", "prdwriter", 3)


def signed(
    artifact: object = ARTIFACT, identity: SignedIdentity = WHO
) -> tuple[TrustedKeys, dict[str, Any], bytes]:
    """A keyring, the stored fields of ``artifact`` signed for ``identity``, its canonical bytes."""
    key = generate_key()
    keyring = TrustedKeys()
    keyring.add(key.public_key, added_at=T0)
    digest = content_digest(artifact)
    payload = policy_payload(
        doer=identity.doer,
        policy_id=identity.policy_id,
        version=identity.version,
        content_hash=digest,
    )
    signature = sign(payload, key)
    fields = {
        "identity": identity,
        "content_hash": digest,
        "signature": signature.value_b64,
        "key_id": signature.key_id,
    }
    return keyring, fields, canonical_json(artifact)


@pytest.mark.parametrize(
    "claimed",
    [
        SignedIdentity("Coder", "prdwriter", 3),  # another doer
        SignedIdentity("PRDWriter", "coder", 3),  # another policy id
        SignedIdentity("PRDWriter", "prdwriter", 4),  # the version changed after signing
    ],
)
def test_a_signature_made_for_one_identity_is_refused_for_another_naming_the_rule(
    claimed: SignedIdentity,
) -> None:
    keyring, fields, canonical = signed()
    result = verify_artifact(
        canonical, keyring=keyring, signed_at=T0, **{**fields, "identity": claimed}
    )
    assert not result.ok
    assert IDENTITY_RULE in result.reason and str(claimed) in result.reason


def test_a_format_1_signature_verifies_only_as_format_1_and_says_its_identity_is_not_signed() -> (
    None
):
    key = generate_key()
    keyring = TrustedKeys()
    keyring.add(key.public_key, added_at=T0)
    legacy = sign(ARTIFACT, key)  # over the artifact alone, as before format 2
    fields = {
        "identity": WHO,
        "content_hash": content_digest(ARTIFACT),
        "signature": legacy.value_b64,
        "key_id": legacy.key_id,
    }
    canonical = canonical_json(ARTIFACT)
    stored = verify_artifact(
        canonical, keyring=keyring, signed_at=T0, signature_format=LEGACY_SIGNATURE_FORMAT, **fields
    )
    assert stored.ok and "format 1" in stored.reason and str(WHO) in stored.reason
    registered = verify_artifact(canonical, keyring=keyring, signed_at=T0, **fields)
    assert not registered.ok and "over the artifact alone (format 1)" in registered.reason
    keyring.revoke(legacy.key_id, at=T0)
    revoked = verify_artifact(
        canonical, keyring=keyring, signed_at=T0, signature_format=LEGACY_SIGNATURE_FORMAT, **fields
    )
    assert not revoked.ok and "revoked" in revoked.reason


def test_an_unknown_signature_format_is_refused() -> None:
    keyring, fields, canonical = signed()
    result = verify_artifact(canonical, keyring=keyring, signed_at=T0, signature_format=3, **fields)
    assert not result.ok and "unknown signature format 3" in result.reason


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


# --------------------------------------------------------------------------- what an event asks


def test_each_event_asks_for_its_status_and_a_registration_for_draft() -> None:
    assert requested_status("register") == "draft"
    for action, status in TARGETS.items():
        assert requested_status(action) == status.value


@pytest.mark.parametrize(
    ("action", "mode", "expected"),
    [
        ("promote", "canary", "promote"),
        ("rollback", "shadow", "rollback"),
        ("step_up", "shadow", "start_canary"),  # the shadow passed: on to canary
        ("step_up", "canary", None),  # a canary's traffic step, not a status change
        ("pause", "canary", None),
        ("report", "shadow", None),
        ("continue", "canary", None),
    ],
)
def test_a_decision_moves_a_policy_only_to_promote_roll_back_or_advance_a_shadow(
    action: str, mode: str, expected: str | None
) -> None:
    assert decision_action(action, mode) == expected


def test_an_event_naming_no_version_is_about_the_live_candidate() -> None:
    candidate = version(2, "canary")
    assert default_target(DoerState(DOER, ACTIVE, candidate)) == candidate
    assert default_target(DoerState(DOER, ACTIVE)) == (
        f"{DOER} has no shadow or canary policy to roll back"
    )


def test_a_policy_id_belongs_to_one_doer_and_a_version_is_registered_once() -> None:
    def check(line: StoredLine | None, **extra: Any) -> Refused | None:
        return check_registration("prd", 3, DOER, line=line, **extra)

    assert check(None) is None
    assert check(StoredLine(DOER, taken=False, same_content=False)) is None
    other = check(StoredLine("Reviewer", taken=False, same_content=False))
    assert other == Refused(f"policy prd belongs to doer 'Reviewer', not '{DOER}'", "conflict")
    same = check(StoredLine(DOER, taken=True, same_content=True))
    assert same is not None and same.refusal == "conflict" and "the same content" in same.verdict
    changed = check(StoredLine(DOER, taken=True, same_content=False))
    assert changed is not None and "different content" in changed.verdict
    orphan = check(None, parent="prd@2", parent_registered=False)
    assert orphan == Refused("parent prd@2 is not registered", "unknown")
    assert check(None, parent="prd@2", parent_registered=True) is None


def test_an_unsigned_version_is_refused_with_the_move_it_was_denied() -> None:
    assert unsigned("prd@2", "bad key") == Refused(
        "prd@2: signature check failed: bad key", "signature"
    )
    refused = unsigned(version(2, "draft"), "bad key", "canary")
    assert refused.verdict == "prd@2: signature check failed: bad key; not moved to canary"


# --------------------------------------------------------------------------- starting deployments

EVENT = uuid.UUID("11111111-2222-3333-4444-555555555555")


def allowed(action: str, target: PolicyVersion) -> Move:
    """The move a canary's decision (a promote) or an operator's command (the rest) asks."""
    candidate = target if target.status in ("shadow", "canary") else None
    deployment = live(target, target.status) if candidate else None
    request = MoveRequest(action, target, decided=action == "promote")
    move = plan(DoerState(DOER, ACTIVE, candidate, deployment), request)
    assert move.ok, move.verdict
    return move


def test_a_canary_starts_at_its_first_step_with_the_default_steps_unless_given() -> None:
    target = version(2, "shadow")
    move = allowed("start_canary", target)
    start = start_deployment(move, target, EVENT)
    assert isinstance(start, DeploymentStart)
    assert (start.mode, start.steps, start.allocation) == (
        "canary",
        DEFAULT_STEPS,
        DEFAULT_STEPS[0],
    )
    assert start.deployment_id == ids.deployment_id(EVENT, "canary")
    assert start.salt == routing_salt(EVENT)
    given_steps = start_deployment(move, target, EVENT, steps=[0.2, 1.0])
    assert isinstance(given_steps, DeploymentStart)
    assert (given_steps.steps, given_steps.allocation) == ((0.2, 1.0), 0.2)


def test_a_canary_with_unusable_steps_is_refused_before_it_starts() -> None:
    target = version(2, "shadow")
    refused = start_deployment(allowed("start_canary", target), target, EVENT, steps=[0.5, 0.2])
    assert refused == Refused("prd@2: traffic steps [0.5, 0.2] must rise strictly", "lifecycle")


def test_a_shadow_mirrors_its_fraction_or_all_traffic_and_has_no_steps() -> None:
    target = version(2, "draft")
    move = allowed("start_shadow", target)
    half = start_deployment(move, target, EVENT, mirror_fraction=0.5)
    every = start_deployment(move, target, EVENT)
    assert isinstance(half, DeploymentStart) and isinstance(every, DeploymentStart)
    assert (half.mode, half.steps, half.allocation, every.allocation) == ("shadow", (), 0.5, 1.0)


def test_a_move_that_starts_nothing_names_the_deployment_it_ends_or_the_one_asked_about() -> None:
    candidate = version(2, "canary")
    move = allowed("promote", candidate)
    assert start_deployment(move, candidate, EVENT) is None
    assert audited_deployment(move, None, "named") == "dep-1"
    archive = plan(DoerState(DOER, ACTIVE), MoveRequest("archive", version(3, "draft")))
    assert audited_deployment(archive, None, "named") == "named"
    target = version(3, "draft")
    start = start_deployment(allowed("start_shadow", target), target, EVENT)
    assert isinstance(start, DeploymentStart)
    assert audited_deployment(allowed("start_shadow", target), start, None) == start.deployment_id


# --------------------------------------------------------------------- steps, approvals, pauses

deployments = st.builds(
    DeploymentSteps,
    deployment_id=st.just("canary-1"),
    doer=st.sampled_from([DOER, "Reviewer"]),
    mode=st.sampled_from(["shadow", "canary"]),
    step=st.integers(min_value=0, max_value=5),
    steps=st.lists(st.floats(0.01, 1.0), min_size=0, max_size=6).map(tuple),
    ended=st.booleans(),
    paused=st.booleans(),
    require_approval=st.booleans(),
)


@given(deployments, st.sampled_from([DOER, "Reviewer"]), st.integers(min_value=-2, max_value=8))
def test_a_step_up_moves_the_doers_own_canary_without_approval_to_its_next_step_only(
    deployment: DeploymentSteps, doer: str, step: int
) -> None:
    serving = not deployment.ended and not deployment.paused and deployment.mode == "canary"
    expected = (
        serving
        and deployment.doer == doer
        and not deployment.require_approval
        and step == deployment.step + 1
        and step < len(deployment.steps)
    )
    assert (check_step_up(deployment, doer, step) is None) == expected
    if expected:  # idempotent: once there, the same decision again changes nothing
        assert check_step_up(replace(deployment, step=step), doer, step) is not None


@given(
    deployments,
    st.sampled_from([DOER, "Reviewer"]),
    st.integers(min_value=-2, max_value=8),
    st.booleans(),
)
def test_an_approval_moves_the_doers_own_canary_to_its_next_step_only(
    deployment: DeploymentSteps, doer: str, step: int, asked: bool
) -> None:
    serving = not deployment.ended and not deployment.paused and deployment.mode == "canary"
    expected = (
        serving
        and deployment.doer == doer
        and step == deployment.step + 1
        and step < len(deployment.steps)
        # A gated canary moves only to the step it asked for; another, a step early.
        and (asked or not deployment.require_approval)
    )
    assert (check_approval(deployment, doer, step, asked) is None) == expected
    if expected:  # approving twice changes nothing
        assert check_approval(replace(deployment, step=step), doer, step, asked) is not None


@given(deployments)
def test_a_live_deployment_is_paused_once(deployment: DeploymentSteps) -> None:
    expected = not deployment.ended and not deployment.paused
    assert (check_pause(deployment) is None) == expected
    assert check_pause(replace(deployment, paused=True)) is not None
    paused = replace(deployment, paused=True)
    assert check_step_up(paused, deployment.doer, deployment.step + 1) is not None


@given(deployments, st.sampled_from([DOER, "Reviewer"]))
def test_an_operator_pauses_a_live_deployment_of_the_doer_and_resumes_a_paused_one(
    deployment: DeploymentSteps, doer: str
) -> None:
    live_and_own = not deployment.ended and deployment.doer == doer
    paused = check_operator_pause(deployment, doer) is None
    resumed = check_resume(deployment, doer) is None
    assert paused == (live_and_own and not deployment.paused)
    assert resumed == (live_and_own and deployment.paused)
    assert not (paused and resumed)  # exactly one of the two applies to a live own deployment
    if paused:  # once paused, a second pause changes nothing and a resume applies
        held = replace(deployment, paused=True)
        assert check_operator_pause(held, doer) is not None
        assert check_resume(held, doer) is None
        assert check_step_up(held, doer, deployment.step + 1) is not None


def test_refusals_of_pauses_and_resumes_say_why() -> None:
    canary = DeploymentSteps("canary-1", DOER, "canary", 1, (0.1, 0.5, 1.0), False, False)
    assert check_resume(canary, DOER) == "canary-1 is not paused"
    held = replace(canary, paused=True)
    assert check_operator_pause(held, DOER) == "canary-1 is paused already"
    assert check_resume(held, "Reviewer") == f"canary-1 belongs to doer '{DOER}', not 'Reviewer'"
    assert check_resume(replace(held, ended=True), DOER) == "canary-1 has ended"
    assert check_operator_pause(replace(canary, ended=True), DOER) == "canary-1 has ended"


def test_refusals_of_steps_say_why() -> None:
    canary = DeploymentSteps("canary-1", DOER, "canary", 1, (0.1, 0.5, 1.0), False, False)
    assert check_step_up(canary, DOER, 1) == "canary-1 is at step 1 already"
    assert check_step_up(canary, DOER, 3) == "canary-1 has no step 3 (its steps are 0 to 2)"
    assert check_step_up(replace(canary, mode="shadow"), DOER, 2) == (
        "canary-1 is a shadow, which has no traffic steps"
    )
    jump = replace(canary, step=0)
    assert check_step_up(jump, DOER, 2) == (
        "canary-1 is at step 0; a step-up moves to step 1 only, not 2"
    )
    assert check_step_up(canary, "Reviewer", 2) == (
        f"canary-1 belongs to doer '{DOER}', not 'Reviewer'"
    )
    assert check_step_up(replace(canary, require_approval=True), DOER, 2) == (
        "canary-1 requires an operator's approval for each step; "
        "a canary decision cannot step it up"
    )
    assert check_approval(canary, DOER, 0) == ("canary-1 is at step 1; only step 2 can be approved")
    assert check_approval(canary, "Reviewer", 2) == (
        f"canary-1 belongs to doer '{DOER}', not 'Reviewer'"
    )
    assert check_pause(replace(canary, ended=True)) == "canary-1 has ended"


# --------------------------------------------------------------------------- canary limits

#: A canary that is a promotion in disguise: judged so that a clearly worse candidate
#: passes after a few runs (a review's example; with steps [1.0], all traffic at once).
DISGUISED = CanarySettings(
    mode="non_inferiority",
    alpha=0.999999,
    non_inferiority_margin=1000,
    max_crl_increase=1000,
    min_sample_size=2,
    harm_alpha=None,
    guardrails=False,
)


def test_the_packaged_limits_refuse_a_canary_that_is_a_promotion_in_disguise() -> None:
    from agents.config import load_learning_config

    limits = load_learning_config().canary_limits
    assert len(limits.problems(DISGUISED, [1.0])) == 7
    verdict = limits.refusal(DISGUISED, [1.0])
    assert verdict is not None and verdict.startswith("the canary it asks for is looser")
    # The defaults, the service's steps, and what the demo and the tests ask for pass.
    assert limits.problems(CanarySettings(), None) == []
    assert limits.problems(CanarySettings(), list(DEFAULT_STEPS)) == []
    demo = CanarySettings(
        mode="non_inferiority",
        non_inferiority_margin=0.25,
        max_crl_increase=0.25,
        min_sample_size=50,
    )
    assert limits.problems(demo, [0.5]) == []
    assert limits.problems(CanarySettings(harm_alpha=0.2), None) == ["harm_alpha 0.2 is above 0.1"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"limits": {"max_alpha": 0}}, "canary.limits.max_alpha 0 must be in (0, 1]"),
        ({"limits": {"min_sample_size": 1}}, "canary.limits.min_sample_size 1 must be"),
        ({"limits": {"max_alfa": 0.1}}, "canary.limits: unknown settings max_alfa"),
        ({"limit": {}}, "canary: unknown settings limit"),
    ],
)
def test_canary_limits_in_the_configuration_are_checked_at_start(
    section: dict[str, Any], message: str, tmp_path: Any
) -> None:
    import yaml

    from agents.config import load_learning_config
    from agents.settings import SettingsError

    path = tmp_path / "learning.yaml"
    path.write_text(yaml.safe_dump({"canary": section}))
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_learning_config(path)
