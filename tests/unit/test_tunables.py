"""A policy's tunable parameters, and the option each run names in its bundle."""

import pytest

from learning.crl import LatencyObjectives, WeightBook, score_bundle
from models.bundle import RunCompleted
from models.events import CRLComputed
from models.tunables import Tunables, tunables_of, undeclared_options
from tests.unit.sample_bundles import bundle_dict, make_bundle
from tests.unit.sample_policies import ARTIFACT


def test_an_artifact_without_tunables_declares_none() -> None:
    assert tunables_of({"prompt": "x"}) == Tunables({})


def test_declared_options_are_looked_up_by_phase_and_parameter() -> None:
    tunables = tunables_of(ARTIFACT)
    assert tunables.options("draft", "rag.top_k") == ["4", "8", "16"]
    assert tunables.options("review", "rag.top_k") is None
    assert tunables.options("draft", "router.temperature") is None


@pytest.mark.parametrize(
    ("declared", "reason"),
    [
        ({"draft": {"router.model": ["only-one"]}}, "tunables.draft.router.model: List should"),
        ({"draft": {"router.model": ["a", "a"]}}, "option a is listed twice"),
        ({"draft": {"rag.top_k": [4, 8]}}, "should be a valid string (options are names: quote"),
        ({"draft": ["a", "b"]}, "tunables.draft: Input should be a valid dictionary"),
        ({"draft": {}}, "tunables.draft: Dictionary should have at least 1 item"),
    ],
)
def test_a_malformed_declaration_is_refused_with_where_and_why(
    declared: object, reason: str
) -> None:
    with pytest.raises(ValueError, match="policy tunables") as err:
        tunables_of({"tunables": declared})
    assert reason in str(err.value)


def test_a_parameter_both_open_and_fixed_or_a_malformed_fixed_one_is_refused() -> None:
    """A run of such a policy could not say which it used: the policy stage refuses it."""
    both = {
        "tunables": {"draft": {"router.model": ["a", "b"]}},
        "fixed": {"draft": {"router.model": "c"}, "review": {"router.model": "a"}},
    }
    with pytest.raises(
        ValueError, match=r"'router\.model' of phase 'draft' is both tunable"
    ) as err:
        tunables_of(both)
    assert "(a, b) and fixed (c)" in str(err.value)
    settled = {**both, "fixed": {"review": {"router.model": "a"}}}
    assert tunables_of(settled).options("draft", "router.model") == ["a", "b"]
    with pytest.raises(ValueError, match=r"policy fixed\.draft\.router\.model: Input should"):
        tunables_of({"fixed": {"draft": {"router.model": ["a"]}}})


def test_a_run_of_declared_options_is_accepted() -> None:
    options = {"router.model": "model-c-small", "rag.top_k": "8"}
    assert undeclared_options(options, "draft", tunables_of(ARTIFACT)) is None
    assert undeclared_options({}, "review", tunables_of(ARTIFACT)) is None


def test_an_undeclared_option_gets_a_reason_that_names_the_declared_ones() -> None:
    reason = undeclared_options({"router.model": "model-z"}, "draft", tunables_of(ARTIFACT))
    assert reason == (
        "option 'model-z' of 'router.model' in phase 'draft' is not one the policy declares "
        "(model-a-large, model-b-medium, model-c-small)"
    )


def test_a_parameter_the_phase_does_not_leave_open_gets_a_reason() -> None:
    reason = undeclared_options({"rag.top_k": "8"}, "review", tunables_of(ARTIFACT))
    assert reason == "parameter 'rag.top_k' is not tunable in phase 'review' of the policy"


def test_a_bundle_without_options_is_still_valid_and_names_none() -> None:
    data = bundle_dict()
    assert "options" not in data
    assert RunCompleted.model_validate(data).options == {}


def test_a_bundle_names_its_options_and_the_crl_event_carries_them() -> None:
    bundle = make_bundle(options={"router.model": "model-c-small"})
    assert RunCompleted.from_json(bundle.to_json()) == bundle
    event = score_bundle(bundle, WeightBook(), LatencyObjectives())
    assert event.options == {"router.model": "model-c-small"}
    assert CRLComputed.model_validate(event.model_dump()) == event


def test_a_sequence_goes_with_an_option_the_bundle_names() -> None:
    named = bundle_dict(
        options={"router.model": "model-c-small"}, allocation_sequences={"router.model": 7}
    )
    assert RunCompleted.model_validate(named).allocation_sequences == {"router.model": 7}
    with pytest.raises(ValueError, match=r"rag\.top_k, which options do not"):
        RunCompleted.model_validate({**named, "allocation_sequences": {"rag.top_k": 1}})
    with pytest.raises(ValueError, match="allocation_sequences"):
        RunCompleted.model_validate({**named, "allocation_sequences": {"router.model": -1}})


def test_a_bundle_option_that_is_not_text_is_refused() -> None:
    with pytest.raises(ValueError, match="options"):
        RunCompleted.model_validate(bundle_dict(options={"rag.top_k": 8}))
