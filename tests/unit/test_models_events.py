"""The event contract: round trips, strictness, and readable reasons for every rejection."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar
from uuid import uuid4

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from models.base import Event, describe_validation_error, sha256_hex
from models.commands import (
    POLICY_COMMANDS,
    ArchivePolicy,
    RegisterPolicy,
    RollbackPolicy,
    StartCanary,
)
from models.crl import DEFAULT_CRL_WEIGHTS, CRLResult, CRLTerms, CRLWeights
from models.events import (
    UNKNOWN_DOER,
    Alert,
    CRLComputed,
    DeadLetter,
    DecisionMade,
    DecisionReport,
    DeploymentRouting,
    ExperimentChanged,
    Guardrail,
    PolicyChange,
    ReplayTask,
    RunCompleted,
    SampleCurated,
    SkillCard,
    TaskRouted,
)
from tests.unit.sample_bundles import bundle_dict, make_bundle

HASH = sha256_hex("policy")


def reason(model: Any, data: Any) -> str:
    """The describe_validation_error text of validating ``data`` (dict or JSON bytes)."""
    with pytest.raises(ValidationError) as caught:
        if isinstance(data, bytes):
            model.model_validate_json(data)
        else:
            model.model_validate(data)
    return describe_validation_error(caught.value)


def terms(**overrides: Any) -> CRLTerms:
    values: dict[str, Any] = {
        "gate_pass_rate": 1.0,
        "contradiction_rate": 0.0,
        "grounding_score": 1.0,
        "cost_over_budget_pct": 0.0,
        "latency_p95_norm": 0.0,
        "security_criticals": 0,
        "api_breakages": 0,
        "db_migration_fail": 0,
        "rag_coverage": 1.0,
    }
    return CRLTerms(**{**values, **overrides})


def one_of_each_event() -> list[Event]:
    report = DecisionReport(
        control_mean=1.0,
        candidate_mean=0.9,
        control_count=100,
        candidate_count=100,
        delta=-0.1,
        delta_pct=-0.1,
        p_value=0.01,
        ci_low=-0.2,
        ci_high=-0.01,
        guardrails=[
            Guardrail(name="p95", value=2.0, threshold=3.0, statistic="p95_crl", passed=True)
        ],
    )
    return [
        make_bundle(),
        make_bundle(deployment_id="dep-1", arm="candidate", shadow=True, replay_id="rp-1"),
        TaskRouted(
            occurred_at=datetime(2026, 3, 1, tzinfo=UTC),
            doer="PRDWriter",
            task_id="t1",
            deployment_id="dep-1",
            arm="control",
            policy_id="p",
            policy_version=1,
            step=0,
            allocation=0.05,
        ),
        CRLComputed(
            doer="PRDWriter",
            source_event_id=uuid4(),
            run_occurred_at=datetime(2026, 3, 1, tzinfo=UTC),
            run_id="r",
            phase="prd",
            policy_id="p",
            policy_version=1,
            tenant_id="acme",
            terms=terms(security_criticals=1),
            loss=5.0,
            contributions={"security_criticals": 5.0},
            weights_version="default-v1",
            security_criticals=1,
        ),
        PolicyChange(
            doer="PRDWriter",
            change="canary_started",
            status="canary",
            policy_id="p",
            version=1,
            content_hash=HASH,
            signature_key_id="k1",
            deployment=DeploymentRouting(
                deployment_id="dep-1",
                salt="s",
                candidate_policy_id="p",
                candidate_version=2,
                allocation=0.05,
            ),
        ),
        DecisionMade(
            doer="PRDWriter",
            deployment_id="dep-1",
            candidate_policy_id="p",
            candidate_version=2,
            action="step_up",
            reason="guardrails pass",
            step=1,
            report=report,
        ),
        SampleCurated(
            doer="PRDWriter",
            sample_id="s1",
            run_id="r",
            phase="prd",
            policy_id="p",
            policy_version=1,
            artifact_id="a1",
            kind="prd",
            origin="hybrid",
            accepted=True,
            content="mail [EMAIL]",
            redactions={"EMAIL": 1},
        ),
        DeadLetter.capture(
            value=b"\xff not json",
            key=b"PRDWriter",
            topic="learning.run-completed",
            partition=0,
            offset=7,
            reason="invalid JSON",
            stage="intake",
            error_type="json",
        ),
        Alert(
            doer="PRDWriter",
            kind="crl_regression",
            severity="warning",
            message="mean CRL rose",
            value=2.4,
            baseline=2.0,
            threshold=2.2,
            evidence={"runs": 30, "days": ["2026-03-01"]},
        ),
        ExperimentChanged(doer="PRDWriter", experiment_id="e1", status="created"),
        ReplayTask(
            doer="PRDWriter",
            replay_id="rp",
            task_id="t",
            sample_id="s",
            seed=3,
            phase="prd",
            policy_id="p",
            policy_version=2,
        ),
        SkillCard(doer="PRDWriter", as_of=datetime(2026, 3, 1).date(), crl_mean_7d=1.2),
        ArchivePolicy(doer="PRDWriter", actor="ops", reason="old", policy_id="p", version=1),
    ]


@pytest.mark.parametrize("event", one_of_each_event(), ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_json(event: Event) -> None:
    assert type(event).from_json(event.to_json()) == event


def test_policy_commands_decode_to_the_model_named_by_command() -> None:
    command = StartCanary(doer="d", actor="ops", reason="try", policy_id="p", version=2)
    decoded = POLICY_COMMANDS.validate_json(command.to_json())
    assert isinstance(decoded, StartCanary)
    assert decoded == command


def test_unknown_command_names_the_expected_ones() -> None:
    with pytest.raises(ValidationError) as caught:
        POLICY_COMMANDS.validate_python({"command": "explode", "doer": "d", "actor": "a"})
    text = describe_validation_error(caught.value)
    # The tag sent is payload and is not echoed; the rule is.
    assert "explode" not in text
    assert text.startswith("command must be one of register, ")
    assert "approve_step" in text


def test_a_command_without_its_command_field_says_so() -> None:
    # pydantic's "Unable to extract tag using discriminator 'command'" reached the DLQ.
    with pytest.raises(ValidationError) as caught:
        POLICY_COMMANDS.validate_json(b'{"type": "promote", "doer": "d"}')
    assert describe_validation_error(caught.value) == (
        "command is required: it names which kind this is"
    )


def test_register_policy_requires_a_signature_and_hash() -> None:
    text = reason(
        RegisterPolicy,
        {"doer": "d", "actor": "a", "reason": "r", "policy_id": "p", "version": 1, "artifact": {}},
    )
    assert "content_hash: is required" in text
    assert "signature: is required" in text


def test_register_policy_carries_provenance_and_a_whole_parent() -> None:
    base = {
        "doer": "d",
        "actor": "a",
        "reason": "r",
        "policy_id": "p",
        "version": 2,
        "artifact": {"tools": ["search"]},
        "content_hash": "0" * 64,
        "signature": "c2ln",
        "signature_key_id": "0123456789abcdef",
    }
    command = RegisterPolicy.model_validate(
        {
            **base,
            "parent_policy_id": "p",
            "parent_version": 1,
            "dataset_ids": ["golden-1"],
            "experiment_id": "exp-1",
        }
    )
    assert POLICY_COMMANDS.validate_json(command.to_json()) == command
    assert "parent_policy_id and parent_version go together" in reason(
        RegisterPolicy, {**base, "parent_policy_id": "p"}
    )


def test_rollback_names_a_whole_candidate_or_none() -> None:
    assert RollbackPolicy(doer="d", actor="a", reason="r").policy_id is None
    assert "policy_id and version go together" in reason(
        RollbackPolicy, {"doer": "d", "actor": "a", "reason": "r", "policy_id": "p"}
    )


def test_to_json_is_compact_utf8_with_utc_timestamps() -> None:
    data = orjson.loads(make_bundle().to_json())
    assert data["occurred_at"] == "2026-03-01T12:00:00Z"
    assert data["schema_version"] == 1


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_floats_are_rejected_with_a_reason(bad: str) -> None:
    raw = orjson.dumps(bundle_dict()).replace(
        b'"grounding_score":0.8', f'"grounding_score":{bad}'.encode()
    )
    text = reason(RunCompleted, raw)
    assert text.startswith("qav.grounding_score: ")
    assert "is not a finite number" in text


def test_non_finite_free_metrics_are_rejected() -> None:
    text = reason(RunCompleted, bundle_dict(metrics={"tokens": math.nan}))
    assert text == "metrics.tokens: nan is not a finite number"


@pytest.mark.parametrize(
    ("qav", "expected"),
    [
        (
            {"grounding_score": 1.4, "contradictions": 0, "claims": 0},
            "qav.grounding_score: 1.4 is above 1",
        ),
        (
            {"grounding_score": -0.1, "contradictions": 0, "claims": 0},
            "qav.grounding_score: -0.1 is below 0",
        ),
        (
            {"grounding_score": 0.5, "contradictions": 0, "claims": 0, "rag_coverage": 2},
            "qav.rag_coverage: 2 is above 1",
        ),
        (
            {"grounding_score": 0.5, "contradictions": -1, "claims": 0},
            "qav.contradictions: -1 is below 0",
        ),
        (
            {"grounding_score": 0.5, "contradictions": 3, "claims": 2},
            "qav: contradictions 3 exceed claims 2",
        ),
    ],
)
def test_out_of_range_values_get_a_readable_reason(qav: dict[str, Any], expected: str) -> None:
    assert reason(RunCompleted, bundle_dict(qav=qav)) == expected


def test_all_errors_are_joined_on_one_line() -> None:
    data = bundle_dict(api_breakages=-1, run_id=None)
    data["costs"]["budget"] = 0
    text = reason(RunCompleted, data)
    assert "\n" not in text
    assert text.split("; ") == [
        "run_id: is required",
        "costs.budget: 0 is not above 0",
        "api_breakages: -1 is below 0",
    ]


def test_reason_locates_list_items_by_index() -> None:
    artifacts = [{"artifact_id": "a", "kind": "k", "content": "x", "origin": "robot"}]
    text = reason(RunCompleted, bundle_dict(artifacts=artifacts))
    assert text.startswith("artifacts[0].origin: Input should be")
    assert "robot" not in text  # payload text is never echoed (it may be PII)


def test_unknown_schema_version_is_rejected_naming_supported_versions() -> None:
    text = reason(RunCompleted, bundle_dict(schema_version=2))
    assert text == "schema_version: version 2 is not supported by RunCompleted (supported: 1)"


def test_a_subclass_can_support_more_schema_versions() -> None:
    class Ping(Event):
        SCHEMA_VERSIONS: ClassVar[frozenset[int]] = frozenset({1, 2})

    assert Ping(doer="d", schema_version=2).schema_version == 2
    assert "supported: 1, 2" in reason(Ping, {"doer": "d", "schema_version": 3})


def test_extra_fields_are_rejected() -> None:
    assert reason(RunCompleted, bundle_dict(colour="blue")) == "colour: is not a known field"
    nested = bundle_dict()
    nested["gates"]["skipped"] = ["x"]
    assert reason(RunCompleted, nested) == "gates.skipped: is not a known field"


def test_a_gate_both_passed_and_failed_is_rejected() -> None:
    gates = {"passed": ["lint", "tests"], "failed": ["tests"]}
    assert (
        reason(RunCompleted, bundle_dict(gates=gates))
        == "gates: gate tests is both passed and failed"
    )


def test_a_gate_listed_twice_is_rejected() -> None:
    gates = {"passed": ["lint", "lint"], "failed": []}
    assert "listed twice in passed" in reason(RunCompleted, bundle_dict(gates=gates))


def test_naive_timestamps_are_rejected() -> None:
    text = reason(RunCompleted, bundle_dict(occurred_at="2026-03-01T12:00:00"))
    assert text.startswith("occurred_at: Input should have timezone info")


def test_aware_timestamps_are_normalised_to_utc() -> None:
    bundle = make_bundle(occurred_at="2026-03-01T01:00:00+02:00")
    assert bundle.occurred_at == datetime(2026, 2, 28, 23, 0, tzinfo=UTC)
    assert bundle.occurred_at.utcoffset() == timedelta(0)
    other = make_bundle(occurred_at=datetime(2026, 3, 1, 1, tzinfo=timezone(timedelta(hours=2))))
    assert other.occurred_at.tzinfo == UTC


def test_the_bundle_timestamp_is_required() -> None:
    assert reason(RunCompleted, bundle_dict(occurred_at=None)) == "occurred_at: is required"


@pytest.mark.parametrize("doer", ["", " PRDWriter", "PRDWriter\n"])
def test_doer_must_be_a_clean_non_empty_key(doer: str) -> None:
    text = reason(RunCompleted, bundle_dict(doer=doer))
    assert text.startswith("doer: ")
    assert "is empty" in text or "space character" in text


def test_events_are_immutable() -> None:
    bundle = make_bundle()
    with pytest.raises(ValidationError):
        bundle.run_id = "other"  # type: ignore[misc]


def test_artifact_needs_content_or_hash_and_they_must_agree() -> None:
    bare = {"artifact_id": "a", "kind": "k", "origin": "human"}
    assert reason(RunCompleted, bundle_dict(artifacts=[bare])) == (
        "artifacts[0]: needs content or content_hash (or both)"
    )
    wrong = {**bare, "content": "x", "content_hash": sha256_hex("y")}
    assert "is not the sha256 of content" in reason(RunCompleted, bundle_dict(artifacts=[wrong]))
    right = {**bare, "content": "x", "content_hash": sha256_hex("x")}
    assert make_bundle(artifacts=[right]).artifacts[0].content_hash == sha256_hex("x")
    short = {**bare, "content_hash": "abc"}
    assert "is not a sha256 digest" in reason(RunCompleted, bundle_dict(artifacts=[short]))


def test_arm_and_deployment_go_together_and_shadow_is_a_candidate() -> None:
    assert "give both or neither" in reason(RunCompleted, bundle_dict(arm="control"))
    text = reason(RunCompleted, bundle_dict(deployment_id="d", arm="control", shadow=True))
    assert "arm must be 'candidate'" in text
    # Without a deployment a shadow run is a bandit probe, which names the option it ran.
    text = reason(RunCompleted, bundle_dict(shadow=True))
    assert "a bandit probe: options must name exactly the one option it ran, not 0" in text
    two = {"router.model": "model-c-small", "rag.top_k": "8"}
    assert "not 2" in reason(RunCompleted, bundle_dict(shadow=True, options=two))
    probe = make_bundle(shadow=True, options={"router.model": "model-c-small"})
    assert probe.shadow and probe.deployment_id is None


def test_crl_terms_reject_rates_out_of_range_and_non_finite_values() -> None:
    assert "gate_pass_rate: 1.4 is above 1" in reason(
        CRLTerms, {**terms().model_dump(), "gate_pass_rate": 1.4}
    )
    assert "is not a finite number" in reason(
        CRLTerms, {**terms().model_dump(), "latency_p95_norm": math.inf}
    )
    assert "db_migration_fail: 2 is above 1" in reason(
        CRLTerms, {**terms().model_dump(), "db_migration_fail": 2}
    )
    # cost over budget is a fraction over, not a rate: it may exceed 1.
    assert terms(cost_over_budget_pct=3.0).cost_over_budget_pct == 3.0


def test_crl_weights_are_non_negative_and_versioned() -> None:
    data = DEFAULT_CRL_WEIGHTS.model_dump()
    assert "ws: -1 is below 0" in reason(CRLWeights, {**data, "ws": -1})
    assert reason(CRLWeights, {k: v for k, v in data.items() if k != "version"}) == (
        "version: is required"
    )
    assert CRLResult(loss=0, contributions={}, weights_version="v").loss == 0


def test_crl_computed_loss_must_equal_its_contributions() -> None:
    event = one_of_each_event()[3]
    data = event.model_dump()
    assert "is not the sum of contributions" in reason(CRLComputed, {**data, "loss": 4.0})
    assert "unknown terms: speed" in reason(CRLComputed, {**data, "contributions": {"speed": 5.0}})


def test_policy_change_carries_routing_exactly_while_a_deployment_is_live() -> None:
    live = one_of_each_event()[4].model_dump()
    assert "deployment is required" in reason(PolicyChange, {**live, "deployment": None})
    assert "deployment is required" in reason(PolicyChange, {**live, "status": "active"})


def test_decision_report_interval_is_ordered() -> None:
    report = one_of_each_event()[5].model_dump()["report"]
    text = reason(DecisionReport, {**report, "ci_low": 1.0, "ci_high": 0.0})
    assert text == "ci_low 1 is above ci_high 0"


def test_a_reject_sample_needs_its_reason() -> None:
    sample = one_of_each_event()[6].model_dump()
    assert "reject_reason is required" in reason(SampleCurated, {**sample, "accepted": False})


class TestDeadLetter:
    def test_keeps_the_original_bytes_verbatim(self) -> None:
        letter = DeadLetter.capture(
            value=b"\x00\xffraw",
            key=b"PRDWriter",
            topic="learning.run-completed",
            partition=1,
            offset=9,
            reason="bad",
            stage="intake",
            error_type="json",
        )
        again = DeadLetter.from_json(letter.to_json())
        assert again.value == b"\x00\xffraw"
        assert again.key == b"PRDWriter"
        assert again.doer == "PRDWriter"

    @pytest.mark.parametrize("key", [None, b"", b"\xff\xfe", b" padded ", b"x" * 300])
    def test_an_unusable_key_gives_the_unknown_doer(self, key: bytes | None) -> None:
        letter = DeadLetter.capture(
            value=b"{}",
            key=key,
            topic="t",
            partition=0,
            offset=0,
            reason="bad",
            stage="s",
            error_type="e",
        )
        assert letter.doer == UNKNOWN_DOER

    @pytest.mark.parametrize("doer", [" bad key ", "A/x", "PRD\u200bWriter"])
    def test_an_unusable_doer_does_not_stop_the_dead_letter(self, doer: str) -> None:
        letter = DeadLetter(
            doer=doer,
            value_b64="",
            topic="t",
            partition=0,
            offset=0,
            reason="r",
            stage="s",
            error_type="e",
        )
        assert letter.doer == UNKNOWN_DOER

    def test_value_must_be_base64(self) -> None:
        data = {"value_b64": "not base64!", "topic": "t", "partition": 0, "offset": 0}
        data |= {"reason": "r", "stage": "s", "error_type": "e"}
        assert reason(DeadLetter, data) == "value_b64: is not valid base64"
        assert base64.b64decode(DeadLetter.model_validate({**data, "value_b64": "eA=="}).value_b64)


@given(
    st.floats(min_value=0, max_value=1),
    st.integers(min_value=0, max_value=10_000),
    st.dictionaries(
        # Any text PostgreSQL can store: no NUL, no unpaired surrogate.
        st.text(st.characters(exclude_characters="\x00", codec="utf-8"), min_size=1, max_size=8),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
)
def test_valid_bundles_round_trip(grounding: float, claims: int, metrics: dict[str, float]) -> None:
    qav = {"grounding_score": grounding, "contradictions": claims // 2, "claims": claims}
    bundle = make_bundle(qav=qav, metrics=metrics)
    assert RunCompleted.from_json(bundle.to_json()) == bundle


def test_invalid_json_reason_does_not_echo_the_payload() -> None:
    text = reason(RunCompleted, b'{"doer": "alice@example.com", ')
    assert text.startswith("Invalid JSON")
    assert "alice" not in text


def _orjson_bytes(event: Event) -> bytes:
    """The wire bytes as learnops wrote them before to_json used pydantic's serializer."""
    return orjson.dumps(event.model_dump(mode="json"))


@pytest.mark.parametrize("event", one_of_each_event(), ids=lambda e: type(e).__name__)
def test_the_wire_bytes_are_orjsons_compact_form(event: Event) -> None:
    assert event.to_json() == _orjson_bytes(event)


def test_simulated_bundles_and_their_crl_results_keep_their_wire_bytes() -> None:
    from agents.config import load_learning_config
    from learning.crl import score_bundle
    from learnops.simulation.orchestrator import Orchestrator

    config = load_learning_config()
    orchestrator = Orchestrator(seed=5, run_prefix="wire", start=datetime(2026, 3, 1, tzinfo=UTC))
    checked = 0
    for bundle in orchestrator.bundles(300):
        result = score_bundle(bundle, config.weights, config.objectives)
        assert bundle.to_json() == _orjson_bytes(bundle)
        assert result.to_json() == _orjson_bytes(result)
        assert result.terms.to_json() == orjson.dumps(result.terms.model_dump(mode="json"))
        checked += 1
    assert checked == 300


_JSON_LEAF = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
    | st.booleans()
    | st.none()
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(
    value=st.floats(allow_nan=False, allow_infinity=False),
    message=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    evidence=st.dictionaries(st.text(max_size=8).filter(lambda k: "\x00" not in k), _JSON),
)
def test_floats_text_and_free_json_serialize_as_orjson_did(
    value: float, message: str, evidence: dict[str, Any]
) -> None:
    alert = Alert(
        doer="PRDWriter",
        kind="crl_regression",
        severity="warning",
        message=message or "m",
        value=value,
        evidence=evidence,
    )
    assert alert.to_json() == _orjson_bytes(alert)


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30])
def test_free_json_integers_beyond_64_bits_are_refused_where_they_enter(number: int) -> None:
    # orjson writes the jsonb columns and cannot write them: refused with a reason on
    # the way in, not at the INSERT of a whole batch.
    raw = (
        orjson.dumps(
            {"doer": "PRDWriter", "kind": "crl_regression", "severity": "info", "message": "m"}
        )[:-1]
        + f',"evidence":{{"n":[{number}]}}}}'.encode()
    )
    assert (
        reason(Alert, raw)
        == "evidence: holds an integer beyond 64 bits, which cannot be stored as JSON here"
    )
    for edge in (2**64 - 1, -(2**63)):
        alert = Alert(
            doer="D", kind="crl_regression", severity="info", message="m", evidence={"n": edge}
        )
        assert alert.to_json() == _orjson_bytes(alert)
