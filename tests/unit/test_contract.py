"""The contract refuses first what PostgreSQL would refuse later, and coerces nothing."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from learning.routing import route
from learnops.simulation.canary import CanaryOrchestrator
from learnops.simulation.orchestrator import NoteMix, Orchestrator, bad_inputs
from models.base import (
    INT4_MAX,
    INT8_MAX,
    describe_validation_error,
    duplicate_key_problem,
    sha256_hex,
)
from models.commands import POLICY_COMMANDS
from models.events import (
    CRLComputed,
    DeadLetter,
    DeploymentRouting,
    PolicyChange,
    RunCompleted,
    SkillCard,
    TaskRouted,
)
from models.registry import TOPIC_EVENTS, adapter, json_schemas
from tests.unit.sample_bundles import bundle_dict


def refusal(data: dict[str, Any], model: Any = RunCompleted) -> str:
    """The reason ``data`` is refused, checked the same on the wire (JSON) and from a dict."""
    reasons = []
    for validate, value in (
        (model.model_validate_json, json.dumps(data)),
        (model.model_validate, data),
    ):
        with pytest.raises(ValidationError) as caught:
            validate(value)
        reasons.append(describe_validation_error(caught.value))
    assert reasons[0] == reasons[1]
    return reasons[0]


# --- what PostgreSQL would refuse -------------------------------------------------------


def test_a_policy_version_of_2_to_the_40_is_refused_with_the_column_limit() -> None:
    assert refusal(bundle_dict(policy_version=2**40)) == (
        "policy_version: 1099511627776 is above 2147483647"
    )


def test_security_criticals_of_2_to_the_33_is_refused() -> None:
    security = {"criticals": 2**33, "highs": 0}
    assert refusal(bundle_dict(security=security)) == (
        "security.criticals: 8589934592 is above 2147483647"
    )


def test_a_nul_in_model_is_refused_without_quoting_the_text() -> None:
    text = refusal(bundle_dict(model="gpt-secret-\x00-name"))
    assert text == "model: contains a NUL character (\\u0000), which PostgreSQL cannot store"
    assert "secret" not in text


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"run_id": "run\x00"}, "run_id"),
        ({"doer": "PRD\x00Writer"}, "doer"),
        ({"metrics": {"tok\x00ens": 1.0}}, "metrics.<key> (key)"),
        ({"gates": {"passed": ["lint\x00"], "failed": []}}, "gates.passed[0]"),
        (
            {
                "artifacts": [
                    {"artifact_id": "a", "kind": "k", "content": "x\x00", "origin": "human"}
                ]
            },
            "artifacts[0].content",
        ),
        (
            {
                "security": {
                    "criticals": 1,
                    "findings": [{"finding_id": "f", "severity": "critical", "title": "\x00"}],
                }
            },
            "security.findings[0].title",
        ),
    ],
)
def test_a_nul_anywhere_in_stored_text_names_the_field(
    overrides: dict[str, Any], where: str
) -> None:
    assert refusal(bundle_dict(**overrides)).startswith(f"{where}: contains a NUL character")


def test_a_nul_in_a_json_object_key_or_nested_value_is_refused() -> None:
    evidence = {"outer": [{"in\x00ner": 1}]}
    command = {
        "command": "request_experiment",
        "doer": "PRDWriter",
        "actor": "ana",
        "reason": "why",
        "hypothesis": "h",
        "evidence": evidence,
    }
    with pytest.raises(ValidationError) as caught:
        POLICY_COMMANDS.validate_json(orjson.dumps(command))
    assert "evidence: contains a NUL character" in describe_validation_error(caught.value)


def test_an_unpaired_surrogate_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        RunCompleted.model_validate(bundle_dict(model="a\ud800b"))
    assert describe_validation_error(caught.value) == (
        "model: contains an unpaired surrogate, which is not valid UTF-8"
    )


@given(st.integers(min_value=INT4_MAX + 1, max_value=2**200))
def test_any_policy_version_past_integer_is_refused(version: int) -> None:
    text = refusal(bundle_dict(policy_version=version))
    assert text.startswith("policy_version: ") and text.endswith(" is above 2147483647")
    assert len(text) < 120  # a huge number is shortened, not echoed whole


@given(st.integers(min_value=1, max_value=INT4_MAX), st.integers(min_value=0, max_value=INT4_MAX))
def test_every_integer_that_fits_is_accepted(version: int, criticals: int) -> None:
    bundle = RunCompleted.model_validate_json(
        orjson.dumps(bundle_dict(policy_version=version, security={"criticals": criticals}))
    )
    assert (bundle.policy_version, bundle.security.criticals) == (version, criticals)


@given(
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=20),
)
def test_text_is_accepted_exactly_when_it_has_no_nul(before: str, after: str) -> None:
    for text in (before + after, before + "\x00" + after):
        data = orjson.dumps(bundle_dict(model=text))
        if "\x00" in text:
            with pytest.raises(ValidationError):
                RunCompleted.model_validate_json(data)
        else:
            assert RunCompleted.model_validate_json(data).model == text


def _integer_nodes(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            found.append((path, schema))
        for key, value in schema.items():
            found.extend(_integer_nodes(value, f"{path}/{key}"))
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found.extend(_integer_nodes(value, f"{path}/{i}"))
    return found


@pytest.mark.parametrize("topic", sorted(TOPIC_EVENTS))
def test_every_integer_of_every_topic_has_a_storable_maximum(topic: str) -> None:
    """Each integer is bounded by the column that holds it (bigint at most); schema_version
    is bounded by its list of supported versions instead."""
    unbounded = [
        path
        for path, node in _integer_nodes(json_schemas()[topic])
        if node.get("maximum", INT8_MAX + 1) > INT8_MAX and not path.endswith("schema_version")
    ]
    assert unbounded == []


def test_a_dead_letter_offset_may_be_any_kafka_offset() -> None:
    letter = DeadLetter.capture(
        value=b"x", key=None, topic="t", partition=0, offset=2**40, reason="r",
        stage="s", error_type="e",
    )  # fmt: skip
    assert DeadLetter.from_json(letter.to_json()).offset == 2**40


def test_a_timestamp_outside_python_s_range_once_in_utc_is_a_validation_error() -> None:
    assert refusal(bundle_dict(occurred_at="0001-01-01T00:00:00+01:00")) == (
        "occurred_at: is outside the years 1 to 9999 once converted to UTC"
    )


# --- no lax coercion ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"schema_version": "1"}, "schema_version: must be an integer, not text"),
        ({"policy_version": "3"}, "policy_version: must be an integer, not text"),
        ({"policy_version": 3.0}, "policy_version: must be an integer, not 3.0"),
        ({"api_breakages": True}, "api_breakages: must be an integer, not a boolean"),
        ({"shadow": 0}, "shadow: must be true or false, not 0"),
        ({"shadow": "false"}, "shadow: must be true or false, not text"),
        ({"metrics": {"tokens": "12"}}, "metrics.tokens: must be a number, not text"),
        ({"run_id": 7}, "run_id: must be text, not 7"),
        ({"gates": {"passed": "lint", "failed": []}}, "gates.passed: must be an array, not text"),
        (
            {"occurred_at": 1_700_000_000},
            "occurred_at: must be an ISO 8601 timestamp as text (e.g. 2026-03-01T12:00:00Z), "
            "not a number",
        ),
        (
            {"occurred_at": "1700000000"},
            "occurred_at: must be an ISO 8601 timestamp as text (e.g. 2026-03-01T12:00:00Z), "
            "not text in another form",
        ),
        (
            {"event_id": 12},
            "event_id: must be a UUID as text (e.g. 123e4567-e89b-12d3-a456-426614174000), "
            "not a number",
        ),
    ],
)
def test_nothing_is_coerced(overrides: dict[str, Any], reason: str) -> None:
    assert refusal(bundle_dict(**overrides)) == reason


def test_a_schema_version_of_1_as_a_number_is_still_read() -> None:
    assert RunCompleted.model_validate_json(orjson.dumps(bundle_dict(schema_version=1)))


def test_a_float_field_takes_an_integer_since_json_does_not_tell_them_apart() -> None:
    costs = {"spent": 2, "budget": 1}
    assert RunCompleted.model_validate_json(orjson.dumps(bundle_dict(costs=costs))).costs


def test_timestamps_dates_and_uuids_are_read_from_text_on_the_wire_and_from_dicts() -> None:
    event_id = uuid4()
    data = bundle_dict(event_id=str(event_id), occurred_at="2026-03-01T13:00:00+01:00")
    for bundle in (RunCompleted.model_validate(data), RunCompleted.from_json(orjson.dumps(data))):
        assert bundle.event_id == event_id
        assert bundle.occurred_at == datetime(2026, 3, 1, 12, tzinfo=UTC)
    card = {"doer": "PRDWriter", "as_of": "2026-03-01", "occurred_at": "2026-03-01T00:00:00Z"}
    assert SkillCard.model_validate(card).as_of == date(2026, 3, 1)
    # Native values, as code builds events, are accepted too.
    assert RunCompleted.model_validate({**data, "event_id": event_id}).event_id == event_id


def test_a_stored_skill_card_reads_back_from_its_json() -> None:
    card = SkillCard(doer="PRDWriter", as_of=date(2026, 3, 1), runs=3)
    assert SkillCard.model_validate(orjson.loads(card.to_json())) == card


# --- every bundle the simulators send still validates ------------------------------------


def test_every_simulated_bundle_round_trips() -> None:
    orchestrator = Orchestrator(seed=5)
    for bundle in orchestrator.bundles(200, notes=NoteMix()):
        assert RunCompleted.from_json(bundle.to_json()) == bundle
        assert RunCompleted.model_validate(orjson.loads(bundle.to_json())) == bundle


def test_the_simulator_s_bad_inputs_are_still_refused() -> None:
    for bad in bad_inputs(Orchestrator(seed=6), 40):
        if bad.fault == "key":
            continue  # a good value under a wrong key: refused by models.keys
        with pytest.raises(ValidationError):
            RunCompleted.from_json(bad.value)


def test_every_event_of_a_simulated_canary_round_trips() -> None:
    change = PolicyChange(
        doer="PRDWriter",
        change="canary_started",
        status="canary",
        policy_id="prd-control",
        version=1,
        content_hash=sha256_hex("control"),
        signature_key_id="k",
        deployment=DeploymentRouting(
            deployment_id="dep-1",
            salt="s",
            candidate_policy_id="prd-candidate",
            candidate_version=2,
            allocation=0.5,
        ),
    )
    sim = CanaryOrchestrator(
        route=lambda doer, task_id: route(change, task_id),
        quality={("prd-control", 1): 0.8, ("prd-candidate", 2): 0.9},
    )
    seen = set()
    for _ in range(100):
        for event in sim.task("PRDWriter"):
            seen.add(type(event))
            assert adapter(_topic_of(event)).validate_json(event.to_json()) == event
    assert seen == {TaskRouted, RunCompleted}


def _topic_of(event: Any) -> str:
    return next(topic for topic, model in TOPIC_EVENTS.items() if model is type(event))


# --- reasons stay short ------------------------------------------------------------------


def test_a_reason_names_at_most_ten_errors() -> None:
    artifacts = [{"artifact_id": "a", "kind": "k", "origin": "nobody"} for _ in range(500)]
    text = refusal(bundle_dict(artifacts=artifacts))
    assert text.count(";") == 10
    assert text.endswith("and 490 more")
    assert len(text) < 2_000


def test_a_long_object_key_in_a_reason_is_shortened() -> None:
    text = refusal(bundle_dict(metrics={"k" * 10_000: "v"}))
    assert len(text) < 100


def test_crl_computed_still_checks_its_uuid_source() -> None:
    # model_dump (python mode) keeps UUID objects; JSON mode gives text: both read back.
    from tests.unit.test_models_events import one_of_each_event

    computed = next(e for e in one_of_each_event() if isinstance(e, CRLComputed))
    assert isinstance(computed.source_event_id, UUID)
    assert CRLComputed.model_validate(computed.model_dump()) == computed
    assert CRLComputed.model_validate(computed.model_dump(mode="json")) == computed


# ------------------------------------------------------------------ no value in a reason

PLANTED = "Hunter2Secret!"


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in [(*path, k), *_paths(v, (*path, k))]]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in [(*path, i), *_paths(v, (*path, i))]]
    return []


def _planted(document: Any, path: tuple[Any, ...], value: Any) -> bytes:
    copy = json.loads(json.dumps(document))
    target = copy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return orjson.dumps(copy)


@pytest.mark.parametrize(
    "planted",
    [
        PLANTED,
        [PLANTED],
        {PLANTED: PLANTED},
        {"note": PLANTED},
        PLANTED + "\x00",
        "2026-13-01T00:00:00" + PLANTED,
    ],
    ids=["text", "array", "object-key", "object", "nul", "timestamp"],
)
def test_a_secret_planted_anywhere_in_a_bad_bundle_is_not_in_the_reason(planted: Any) -> None:
    bundle = bundle_dict()
    for path in _paths(bundle):
        try:
            RunCompleted.model_validate_json(_planted(bundle, path, planted))
        except ValidationError as error:
            reason = describe_validation_error(error)
            assert PLANTED not in reason, (path, reason)


def test_a_secret_as_an_unknown_field_or_command_is_not_in_the_reason() -> None:
    cases = [
        (RunCompleted, orjson.dumps({**bundle_dict(), PLANTED: 1})),
        (RunCompleted, orjson.dumps({**bundle_dict(), "metrics": {PLANTED: "x"}})),
        (RunCompleted, b'{"doer": "' + PLANTED.encode() + b'", oops'),
    ]
    for model, raw in cases:
        with pytest.raises(ValidationError) as caught:
            model.model_validate_json(raw)
        assert PLANTED not in describe_validation_error(caught.value)
    for command in ({"command": PLANTED, "doer": "d"}, {"command": "promote", "version": PLANTED}):
        with pytest.raises(ValidationError) as caught:
            POLICY_COMMANDS.validate_json(orjson.dumps(command))
        assert PLANTED not in describe_validation_error(caught.value)


def test_a_repeated_key_at_any_depth_is_found_without_naming_it() -> None:
    assert duplicate_key_problem(b'{"a": 1, "b": {"c": 2}}') is None
    problem = duplicate_key_problem(b'{"a": 1, "b": {"secret": 2, "secret": 3}}')
    assert problem is not None
    assert problem.startswith("an object repeats a key at line 1 column ")
    assert "secret" not in problem
    assert duplicate_key_problem(b'{"a": ') is None  # invalid JSON is the validator's to name
    bundle = orjson.dumps(bundle_dict())
    assert duplicate_key_problem(bundle) is None
    assert duplicate_key_problem(bundle[:-1] + b', "run_id": "again"}') is not None


@pytest.mark.parametrize(
    ("field", "update"),
    [
        ("run_id", {"run_id": "h2b-meta2-carol.white@acme-corp.com"}),
        ("model", {"model": "ft:gpt-4o:grace.hopper@acme-corp.com"}),
        ("options.reviewer", {"options": {"reviewer": "kate.moss@acme-corp.com"}}),
        ("gates.failed", {"gates": {"passed": [], "failed": ["reviewed_by_dave@acme.io"]}}),
        ("metrics", {"metrics": {"latency_of_bob@corp.com": 1.0}}),
        ("run_id", {"run_id": "run-carol\uff20acme.com"}),  # a fullwidth at sign
        # Glued after more id than a local part holds, and after its address.
        (
            "run_id",
            {"run_id": "run-7f3c2a1b-9d4e-4f6a-8b2c-1e5d3f7a9c0b-20240601T1200-c.w@acme.com"},
        ),
        ("run_id", {"run_id": "n-h2b-carol.white@acme-corp.com-0"}),
        ("replay_id", {"replay_id": "replay-for-jane@example.com"}),
    ],
)
def test_a_bundle_whose_ids_or_names_hold_an_address_is_refused_naming_the_field(
    field: str, update: dict[str, Any]
) -> None:
    """Ids and names are stored and shown in clear (crl_results, skill cards, the console):
    a new operator's run id, model, gate and option holding addresses reached all of them."""
    with pytest.raises(ValidationError) as err:
        RunCompleted.model_validate({**bundle_dict(), **update})
    message = err.value.errors()[0]["msg"]
    assert message.startswith(f"Value error, {field} holds an email address"), message
    assert "@" not in message and "\uff20" not in message  # the reason never quotes it


def test_at_signs_that_are_no_address_pass() -> None:
    """A review listed names a stricter rule must let through: a refused bundle loses its
    CRL result and its evidence, not just a word."""
    for run_id in (
        "prd@2",
        "logo@2x.png",
        "pkg@1.2.3",
        "deploy@sha256:ab12",
        "checkout@prod.eu-west-1",
        "model@vertex.us-central1",
        "build@node.js-20",
        "ckpt@epoch.step1000",
        "git@github.com:acme/app.git",
        "svc@cluster.local",
        "llama3@vllm.internal",
        "pkg@file.tar.gz",
        "claude-3-opus@20240229",
        "@scope/pkg@1.2.3",
    ):
        assert RunCompleted.model_validate({**bundle_dict(), "run_id": run_id}).run_id == run_id
