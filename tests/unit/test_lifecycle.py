"""Every policy status change: allowed, forced with a reason, or refused."""

from __future__ import annotations

import itertools

import pytest

from learning.lifecycle import (
    DEPLOYED,
    FORWARD,
    ROLLBACK_FROM,
    TERMINAL,
    PolicyStatus,
    allowed_targets,
    check_transition,
)

STATUSES = [s.value for s in PolicyStatus]

# The whole table, written out: what the module must do for each pair.
SINGLE_STEPS = {
    ("draft", "shadow"),
    ("shadow", "canary"),
    ("canary", "active"),
    ("active", "archived"),
    ("shadow", "rolled_back"),
    ("canary", "rolled_back"),
    ("draft", "archived"),
}
FORCED_SKIPS = {
    ("draft", "canary"): ("shadow",),
    ("draft", "active"): ("shadow", "canary"),
    ("shadow", "active"): ("canary",),
}
ALL_PAIRS = list(itertools.product(STATUSES, STATUSES))


def test_the_statuses_and_their_groups() -> None:
    assert STATUSES == ["draft", "shadow", "canary", "active", "archived", "rolled_back"]
    assert [s.value for s in FORWARD] == ["draft", "shadow", "canary", "active", "archived"]
    assert {s.value for s in ROLLBACK_FROM} == {"shadow", "canary"}
    assert {s.value for s in TERMINAL} == {"archived", "rolled_back"}
    assert {s.value for s in DEPLOYED} == {"shadow", "canary", "active"}


@pytest.mark.parametrize(("source", "target"), sorted(SINGLE_STEPS))
@pytest.mark.parametrize("force", [False, True])
def test_single_steps_are_allowed_with_or_without_force(
    source: str, target: str, force: bool
) -> None:
    check = check_transition(source, target, force=force, reason=None)
    assert check.ok and check
    assert check.skipped_steps == ()
    assert not check.forced
    assert check.reason == f"{source} → {target}"


def test_a_single_step_keeps_the_operators_reason() -> None:
    check = check_transition("canary", "rolled_back", reason="p95 latency doubled")
    assert check.ok
    assert check.reason == "canary → rolled_back: p95 latency doubled"


@pytest.mark.parametrize(("source", "target"), sorted(FORCED_SKIPS))
def test_skipping_steps_without_force_is_refused_and_names_the_skipped_steps(
    source: str, target: str
) -> None:
    check = check_transition(source, target, reason="hotfix")
    assert not check.ok
    assert check.skipped_steps == FORCED_SKIPS[source, target]
    assert "needs force and a reason" in check.reason and "--force --reason" in check.reason
    assert ", ".join(FORCED_SKIPS[source, target]) in check.reason
    # Only a promotion takes a second owner (`policy canary` has no --approver-key).
    assert ("--approver-key" in check.reason) is (target == "active"), check.reason


@pytest.mark.parametrize(("source", "target"), sorted(FORCED_SKIPS))
@pytest.mark.parametrize("reason", [None, "", "   \n"])
def test_skipping_steps_with_force_but_no_reason_is_refused(
    source: str, target: str, reason: str | None
) -> None:
    check = check_transition(source, target, force=True, reason=reason)
    assert not check.ok
    assert check.forced
    assert check.skipped_steps == FORCED_SKIPS[source, target]
    assert "force needs a non-empty reason" in check.reason


@pytest.mark.parametrize(("source", "target"), sorted(FORCED_SKIPS))
def test_skipping_steps_with_force_and_a_reason_is_allowed_and_recorded(
    source: str, target: str
) -> None:
    check = check_transition(source, target, force=True, reason="  incident INC-42  ")
    assert check.ok
    assert check.forced
    assert check.skipped_steps == FORCED_SKIPS[source, target]
    skipped = ", ".join(FORCED_SKIPS[source, target])
    assert check.reason == f"forced {source} → {target}, skipping {skipped}: incident INC-42"


REFUSED = [pair for pair in ALL_PAIRS if pair not in SINGLE_STEPS and pair not in FORCED_SKIPS]


@pytest.mark.parametrize(("source", "target"), REFUSED)
def test_every_other_change_is_refused_even_with_force_and_a_reason(
    source: str, target: str
) -> None:
    check = check_transition(source, target, force=True, reason="I insist")
    assert not check.ok
    assert check.skipped_steps == ()
    assert check.reason
    assert not check_transition(source, target).ok


def test_the_table_covers_every_pair() -> None:
    assert len(SINGLE_STEPS) + len(FORCED_SKIPS) + len(REFUSED) == len(STATUSES) ** 2


@pytest.mark.parametrize(
    ("source", "target", "words"),
    [
        ("canary", "canary", "already canary"),
        ("archived", "active", "archived is final"),
        ("rolled_back", "draft", "register the artifact again"),
        ("active", "rolled_back", "only a shadow or canary policy can be rolled back"),
        ("canary", "archived", "leaves by rollback"),
        ("active", "canary", "never move backwards"),
        ("canary", "draft", "never move backwards"),
    ],
)
def test_refusals_say_why(source: str, target: str, words: str) -> None:
    assert words in check_transition(source, target, force=True, reason="x").reason


@pytest.mark.parametrize(("source", "target"), [("draft", "live"), ("pending", "shadow")])
def test_unknown_statuses_are_refused_with_the_known_ones_listed(source: str, target: str) -> None:
    check = check_transition(source, target, force=True, reason="x")
    assert not check.ok
    assert "unknown status" in check.reason
    assert "draft, shadow, canary, active, archived, rolled_back" in check.reason


def test_enum_members_and_plain_strings_are_interchangeable() -> None:
    assert check_transition(PolicyStatus.DRAFT, PolicyStatus.SHADOW) == check_transition(
        "draft", "shadow"
    )


def test_allowed_targets_lists_the_reachable_statuses() -> None:
    assert allowed_targets("draft") == ["shadow", "archived"]
    assert allowed_targets("draft", force=True) == ["shadow", "canary", "active", "archived"]
    assert allowed_targets("shadow") == ["canary", "rolled_back"]
    assert allowed_targets("canary") == ["active", "rolled_back"]
    assert allowed_targets("active", force=True) == ["archived"]
    assert allowed_targets("archived", force=True) == []
    assert allowed_targets("rolled_back", force=True) == []
