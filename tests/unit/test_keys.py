"""A record's Kafka key must be its doer: missing, empty, non-UTF-8 or other keys are named."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from learnops.simulation.orchestrator import Orchestrator, bad_inputs
from models.events import RunCompleted
from models.keys import key_problem
from tests.unit.sample_bundles import make_bundle

# Names: models.base.NAME_RULE.
doers = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,39}\Z")


def test_the_doer_as_key_is_fine() -> None:
    assert key_problem(b"PRDWriter", make_bundle(doer="PRDWriter")) is None


def test_a_missing_key_is_refused() -> None:
    assert key_problem(None, make_bundle()) == (
        "the record has no key; every record is keyed by its doer (UTF-8)"
    )


def test_an_empty_key_is_refused() -> None:
    assert key_problem(b"", make_bundle()) == (
        "the record's key is empty; every record is keyed by its doer (UTF-8)"
    )


def test_a_key_that_is_not_utf8_is_refused() -> None:
    assert key_problem(b"\xff\xfe", make_bundle()) == (
        "the record's key (2 bytes) is not UTF-8 text; every record is keyed by its doer (UTF-8)"
    )


def test_another_doer_s_key_is_refused_without_quoting_it() -> None:
    reason = key_problem(b"alice@example.com", make_bundle(doer="PRDWriter"))
    assert reason == (
        "the record's key (17 bytes) is not the event's doer; "
        "every record is keyed by its doer (UTF-8)"
    )
    assert "alice" not in reason


def test_the_simulator_s_wrong_keys_are_refused() -> None:
    wrong = [b for b in bad_inputs(Orchestrator(seed=3), 20) if b.fault == "key"]
    assert wrong
    for bad in wrong:
        assert key_problem(bad.key, RunCompleted.from_json(bad.value)) is not None


@given(doers)
def test_every_doer_is_its_own_key(doer: str) -> None:
    assume(doer == doer.strip())
    assert key_problem(doer.encode(), make_bundle(doer=doer)) is None


@given(doers, st.binary(max_size=64))
def test_any_other_key_is_refused(doer: str, key: bytes) -> None:
    assume(doer == doer.strip())
    assume(key != doer.encode())
    reason = key_problem(key, make_bundle(doer=doer))
    assert reason is not None and reason.endswith("every record is keyed by its doer (UTF-8)")
