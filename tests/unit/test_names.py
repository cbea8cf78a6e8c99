"""Names (doer, phase, policy id): one documented character set, and the rule a bad one breaks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from learning.samples import dataset_name
from models.base import NAME_RULE, describe_validation_error, identifier_problem, name_problem
from models.commands import StartShadow
from models.datasets import tenant_of
from models.events import Alert


@pytest.mark.parametrize("name", ["PRDWriter", "a", "doer-1.v2_x", "0abc", "A" * 128])
def test_names_of_the_documented_set_are_accepted(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("A/x", "a '/', which separates a dataset's doer and phase at position 2"),
        ("PRD\u200bWriter", "an invisible or space character (U+200B) at position 4"),
        ("PRDWriter\u2060", "an invisible or space character (U+2060) at position 10"),
        ("PRDWr\u0456ter", "a non-ASCII character (U+0456; look-alikes"),  # Cyrillic і
        ("Cafe\u0301", "a non-ASCII character (U+0301"),  # decomposed é
        ("Caf\u00e9", "a non-ASCII character (U+00E9"),  # composed é
        (" PRDWriter", "an invisible or space character (U+0020) at position 1"),
        ("a b", "an invisible or space character (U+0020) at position 2"),
        ("a:b", "the character U+003A at position 2"),
        (".hidden", "must start with a letter or digit"),
        ("", "is empty"),
        ("A" * 129, "is 129 characters long; a name has at most 128"),
    ],
)
def test_a_broken_name_names_the_rule_and_never_the_text(name: str, rule: str) -> None:
    problem = name_problem(name)
    assert problem is not None and rule in problem
    if len(name) > 1 and name.strip():
        assert name not in problem


_PART = st.text(alphabet="ab/.-", max_size=6)


@given(st.tuples(_PART, _PART, _PART), st.tuples(_PART, _PART, _PART))
def test_two_different_tenant_doer_phase_triples_never_share_a_dataset_name(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    try:
        first = dataset_name(*a)
        second = dataset_name(*b)
    except ValueError:
        return
    assert (first == second) == (a == b)
    assert tenant_of(first) == a[0]


def test_the_ambiguous_dataset_names_are_refused() -> None:
    with pytest.raises(ValueError, match="the tenant of a dataset name has a '/'"):
        dataset_name("t/A", "x", "y")
    with pytest.raises(ValueError, match="the doer of a dataset name has a '/'"):
        dataset_name("t", "A/x", "y")
    with pytest.raises(ValueError, match="the phase of a dataset name has a '/'"):
        dataset_name("t", "A", "x/y")
    assert dataset_name("t", "A", "x") == "t/A/x"
    assert tenant_of("A/x") == "default"  # a dataset named before tenants were kept apart


def test_an_event_with_a_broken_doer_is_refused_with_the_rule() -> None:
    with pytest.raises(ValidationError) as caught:
        Alert(doer="PRD\u200bWriter", kind="k", severity="info", message="m")
    reason = describe_validation_error(caught.value)
    assert "doer" in reason and "U+200B" in reason and NAME_RULE in reason


@pytest.mark.parametrize(
    "value",
    ["canary-3f2a9c", "alice@example.com", "José", "security scan", "run:42/a"],
)
def test_identifiers_of_printable_nfc_text_are_accepted(value: str) -> None:
    assert identifier_problem(value) is None
    assert StartShadow(doer="D", actor=value, reason="r", policy_id="p", version=1).actor == value


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("canary-\u200b3f2a", "invisible or control character (U+200B) at position 8"),
        ("alice\u00a0smith", "invisible or control character (U+00A0) at position 6"),
        ("run\t1", "invisible or control character (U+0009) at position 4"),
        ("Jose\u0301", "not in Unicode NFC form"),
        (" alice", "leading or trailing whitespace"),
    ],
)
def test_an_identifier_that_could_look_like_another_is_refused_naming_the_rule(
    value: str, rule: str
) -> None:
    problem = identifier_problem(value)
    assert problem is not None and rule in problem
    with pytest.raises(ValidationError) as refused:
        StartShadow(doer="D", actor=value, reason="r", policy_id="p", version=1)
    message = describe_validation_error(refused.value)
    assert rule in message and value not in message
