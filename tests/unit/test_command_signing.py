"""Signed command envelopes: what verifies, and every way a command is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from learning.command_signing import (
    Grant,
    OperatorKey,
    approve_command,
    authorise,
    role_on,
    sign_command,
    sign_payload,
)
from learning.signing import generate_key
from models.bandit import BanditControl
from models.commands import (
    POLICY_COMMANDS,
    CreateExperiment,
    PromotePolicy,
    RunReplay,
    StartCanary,
)

NOW = datetime(2026, 12, 4, 7, 0, tzinfo=UTC)
SKEW = timedelta(seconds=30)
ALICE, BOB, VIC = generate_key(), generate_key(), generate_key()
KEYS = {
    ALICE.key_id: OperatorKey(ALICE.key_id, "alice", ALICE.public_key),
    BOB.key_id: OperatorKey(BOB.key_id, "bob", BOB.public_key),
    VIC.key_id: OperatorKey(VIC.key_id, "vic", VIC.public_key),
}
GRANTS = [
    Grant(ALICE.key_id, "PRD*", "owner"),
    Grant(BOB.key_id, "*", "operator"),
    Grant(BOB.key_id, "PRDWriter", "owner"),
    Grant(VIC.key_id, "*", "viewer"),
]


def promote(**extra: Any) -> PromotePolicy:
    return PromotePolicy(
        doer="PRDWriter", actor="someone", reason="r", policy_id="p", version=2, **extra
    )


def wire(command: Any) -> dict[str, Any]:
    """The command as the policy stage sees it: through its JSON bytes."""
    parsed = POLICY_COMMANDS.validate_json(command.to_json())
    dumped: dict[str, Any] = parsed.model_dump(mode="json")
    return dumped


def check(command: Any, *, now: datetime = NOW, keys: Any = None) -> Any:
    return authorise(wire(command), keys or KEYS, GRANTS, now=now, clock_skew=SKEW)


def test_a_signed_command_verifies_through_its_wire_form_and_names_its_signer() -> None:
    verdict = check(sign_command(promote(), ALICE, now=NOW))
    assert verdict.allowed, verdict.reason
    assert verdict.operator == "alice"
    assert verdict.key_id == ALICE.key_id


def test_an_unsigned_command_is_refused() -> None:
    assert check(promote()).refusal == "unsigned"


@pytest.mark.parametrize(
    "change",
    [
        {"version": 3},
        {"doer": "PRDWriterX"},
        {"actor": "root"},
        {"force": True},
        {"event_id": uuid4()},
    ],
)
def test_changing_any_field_after_signing_breaks_the_signature(change: dict[str, Any]) -> None:
    signed = sign_command(promote(), ALICE, now=NOW)
    forged = signed.model_copy(update=change)
    verdict = check(forged)
    assert not verdict.allowed
    assert verdict.refusal == "signature", verdict.reason


def test_a_command_signed_by_an_unregistered_key_is_refused() -> None:
    verdict = check(sign_command(promote(), generate_key(), now=NOW))
    assert verdict.refusal == "unknown_key"


def test_a_revoked_key_signs_nothing() -> None:
    keys = {**KEYS, ALICE.key_id: OperatorKey(ALICE.key_id, "alice", ALICE.public_key, True)}
    verdict = check(sign_command(promote(), ALICE, now=NOW), keys=keys)
    assert verdict.refusal == "revoked_key"


def test_an_expired_command_is_refused_past_the_clock_skew() -> None:
    signed = sign_command(promote(), ALICE, now=NOW, ttl=timedelta(minutes=10))
    assert check(signed, now=NOW + timedelta(minutes=10, seconds=29)).allowed
    late = check(signed, now=NOW + timedelta(minutes=10, seconds=31))
    assert late.refusal == "expired"
    assert "expired at" in late.reason


def test_a_command_valid_for_longer_than_a_day_is_refused() -> None:
    """A signature valid for years would be a standing order for whoever copied it."""
    assert check(sign_command(promote(), ALICE, now=NOW, ttl=timedelta(days=1))).allowed
    standing = check(sign_command(promote(), ALICE, now=NOW, ttl=timedelta(days=3650)))
    assert standing.refusal == "expired" and "longer than 1 day" in standing.reason


def test_a_command_issued_in_the_future_is_refused() -> None:
    assert check(sign_command(promote(), ALICE, now=NOW + timedelta(minutes=5))).refusal == (
        "expired"
    )


def test_a_viewer_may_not_start_a_canary_and_an_operator_may_not_promote() -> None:
    canary = StartCanary(doer="PRDWriter", actor="v", reason="r", policy_id="p", version=2)
    viewer = check(sign_command(canary, VIC, now=NOW))
    assert viewer.refusal == "role"
    assert "needs the operator role" in viewer.reason
    assert check(sign_command(canary, BOB, now=NOW)).allowed
    other = promote().model_copy(update={"doer": "Coder"})
    operator = check(sign_command(other, BOB, now=NOW))
    assert operator.refusal == "role"
    assert "holds operator" in operator.reason


def test_roles_come_from_matching_patterns_highest_first() -> None:
    assert role_on(GRANTS, BOB.key_id, "PRDWriter") == "owner"
    assert role_on(GRANTS, BOB.key_id, "Coder") == "operator"
    assert role_on(GRANTS, ALICE.key_id, "Coder") is None
    assert role_on(GRANTS, ALICE.key_id, "prdwriter") is None  # patterns are case-sensitive


def test_a_forced_promotion_needs_a_second_owner_of_another_operator() -> None:
    forced = promote(force=True)
    alone = check(sign_command(forced, ALICE, now=NOW))
    assert alone.refusal == "second_approver"
    assert check(sign_command(forced, ALICE, now=NOW, approver=ALICE)).refusal == (
        "second_approver"
    )
    viewer = check(sign_command(forced, ALICE, now=NOW, approver=VIC))
    assert viewer.refusal == "second_approver"
    assert "not owner" in viewer.reason
    both = check(approve_command(sign_command(forced, ALICE, now=NOW), BOB))
    assert both.allowed, both.reason
    assert (both.operator, both.approver) == ("alice", "bob")


def test_an_approval_signed_over_another_command_does_not_count() -> None:
    first = sign_command(promote(force=True), ALICE, now=NOW, approver=BOB)
    second = sign_command(promote(force=True, deployment_id="d1"), ALICE, now=NOW)
    spliced = second.model_copy(update={"approver_signature": first.approver_signature})
    verdict = check(spliced)
    assert verdict.refusal == "signature"
    assert "second approver" in verdict.reason


ASKED = {"doer": "PRDWriter", "actor": "a", "reason": "r"}
CANDIDATE = {**ASKED, "policy_id": "p", "version": 2}


@pytest.mark.parametrize(
    "command",
    [
        CreateExperiment(**CANDIDATE, experiment_id="exp-1", hypothesis="h", dataset="g"),
        RunReplay(**CANDIDATE, dataset="g", seeds=[1]),
        BanditControl(**ASKED, command="freeze_bandit"),
    ],
    ids=["create_experiment", "run_replay", "freeze_bandit"],
)
def test_experiment_replay_and_bandit_commands_need_the_operator_role(command: Any) -> None:
    def signed_by(key: Any) -> Any:
        body = sign_command(command, key, now=NOW).model_dump(mode="json")
        return authorise(body, KEYS, GRANTS, now=NOW, clock_skew=SKEW)

    refused = signed_by(VIC)
    assert refused.refusal == "role" and "needs the operator role" in refused.reason
    allowed = signed_by(BOB)
    assert allowed.allowed and allowed.operator == "bob", allowed.reason


def test_an_action_no_role_covers_is_refused_even_when_signed_by_an_owner() -> None:
    command = sign_command(promote(), ALICE, now=NOW).model_dump(mode="json")
    command["command"] = "launch_missiles"
    command["operator_signature"] = sign_payload(command, ALICE)
    verdict = authorise(command, KEYS, GRANTS, now=NOW, clock_skew=SKEW)
    assert verdict.refusal == "role" and "not a command" in verdict.reason


def test_an_experiment_plan_and_a_replay_timeout_are_checked_when_the_command_is_read() -> None:
    """Checked then, not when the replay passes (the plan's canary settings become the
    deployment command's) or when the deadline is computed (a timeout of 1e12 s overflows)."""
    from pydantic import ValidationError

    experiment = {**CANDIDATE, "experiment_id": "exp-1", "hypothesis": "h", "dataset": "g"}
    with pytest.raises(ValidationError, match=r"plan\.canary is not canary settings: alpha"):
        CreateExperiment(**experiment, plan={"canary": {"alpha": 5}})
    planned = CreateExperiment(**experiment, plan={"canary": {"alpha": 0.01}, "note": "x"})
    assert planned.plan["canary"] == {"alpha": 0.01}
    with pytest.raises(ValidationError, match="timeout_s"):
        RunReplay(**CANDIDATE, dataset="g", seeds=[1], timeout_s=1e12)
    assert RunReplay(**CANDIDATE, dataset="g", seeds=[1], timeout_s=3600).timeout_s == 3600
