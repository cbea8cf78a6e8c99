"""The Composite Run Loss: the formula, its properties, and the terms of a bundle."""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from learning.crl import (
    BundleError,
    CRLConfigError,
    LatencyObjectives,
    WeightBook,
    compute_crl,
    score_bundle,
    terms_from_bundle,
)
from models.crl import DEFAULT_CRL_WEIGHTS, CRLTerms, CRLWeights
from tests.unit.sample_bundles import make_bundle

PERFECT: dict[str, Any] = {
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
OBJECTIVES = LatencyObjectives(default_ms=60_000.0, per_doer={"Fast": 1_000.0})

unit = st.floats(min_value=0, max_value=1)
excess = st.floats(min_value=0, max_value=1e6)
count = st.integers(min_value=0, max_value=10_000)
weight = st.floats(min_value=0, max_value=1e3)

terms_strategy = st.builds(
    CRLTerms,
    gate_pass_rate=unit,
    contradiction_rate=unit,
    grounding_score=unit,
    cost_over_budget_pct=excess,
    latency_p95_norm=excess,
    security_criticals=count,
    api_breakages=count,
    db_migration_fail=st.integers(min_value=0, max_value=1),
    rag_coverage=unit,
)
weights_strategy = st.builds(
    CRLWeights,
    version=st.just("w"),
    wq=weight,
    wg=weight,
    wr=weight,
    wc=weight,
    wt=weight,
    ws=weight,
    wa=weight,
    wd=weight,
    wrag=weight,
)


@given(terms_strategy, weights_strategy)
def test_loss_is_the_sum_of_contributions(terms: CRLTerms, weights: CRLWeights) -> None:
    result = compute_crl(terms, weights)
    assert set(result.contributions) == set(CRLTerms.model_fields)
    assert math.isclose(
        result.loss, sum(result.contributions.values()), rel_tol=1e-12, abs_tol=1e-12
    )
    assert result.loss >= 0
    assert result.weights_version == "w"


# For each term: the direction in which the run gets worse.
WORSE = {
    "gate_pass_rate": -1,
    "contradiction_rate": +1,
    "grounding_score": -1,
    "cost_over_budget_pct": +1,
    "latency_p95_norm": +1,
    "security_criticals": +1,
    "api_breakages": +1,
    "db_migration_fail": +1,
    "rag_coverage": -1,
}


@pytest.mark.parametrize("term", sorted(WORSE))
@given(terms=terms_strategy, weights=weights_strategy, step=st.floats(min_value=0, max_value=1))
def test_loss_never_decreases_when_a_term_gets_worse(
    term: str, terms: CRLTerms, weights: CRLWeights, step: float
) -> None:
    value = getattr(terms, term)
    if isinstance(value, int):
        upper = 1 if term == "db_migration_fail" else value + 1 + int(step * 10)
        worse_value: float = upper
    elif WORSE[term] > 0:
        worse_value = value + step if term.endswith(("pct", "norm")) else min(1.0, value + step)
    else:
        worse_value = max(0.0, value - step)
    worse = terms.model_copy(update={term: worse_value})
    assert compute_crl(worse, weights).loss >= compute_crl(terms, weights).loss


@given(weights_strategy)
def test_a_perfect_run_has_zero_loss(weights: CRLWeights) -> None:
    result = compute_crl(CRLTerms(**PERFECT), weights)
    assert result.loss == 0
    assert all(c == 0 for c in result.contributions.values())


def test_formula_matches_a_hand_computation() -> None:
    terms = CRLTerms(
        gate_pass_rate=0.75,
        contradiction_rate=0.1,
        grounding_score=0.8,
        cost_over_budget_pct=0.5,
        latency_p95_norm=0.5,
        security_criticals=1,
        api_breakages=2,
        db_migration_fail=1,
        rag_coverage=0.9,
    )
    # Default weights wq=3 wg=2 wr=3 wc=1 wt=1 ws=5 wa=3 wd=4 wrag=1:
    # 3·0.25 + 2·0.1 + 3·0.2 + 1·0.5 + 1·0.5 + 5·1 + 3·2 + 4·1 + 1·0.1
    # = 0.75 + 0.2 + 0.6 + 0.5 + 0.5 + 5 + 6 + 4 + 0.1 = 17.65
    result = compute_crl(terms)
    assert result.loss == pytest.approx(17.65)
    assert result.contributions["gate_pass_rate"] == pytest.approx(0.75)
    assert result.contributions["grounding_score"] == pytest.approx(0.6)
    assert result.contributions["api_breakages"] == pytest.approx(6.0)
    assert result.contributions["rag_coverage"] == pytest.approx(0.1)
    assert result.weights_version == DEFAULT_CRL_WEIGHTS.version


class TestTermsFromBundle:
    def test_every_term_of_the_sample_bundle(self) -> None:
        # gates 3 passed, 1 failed; qav 1 of 10 contradicted, grounding 0.8, rag 0.9;
        # spent 1.5 of 1.0; p95 90 s against 60 s; 1 critical; 2 breakages; migration failed.
        terms = terms_from_bundle(make_bundle(), OBJECTIVES)
        assert terms == CRLTerms(
            gate_pass_rate=0.75,
            contradiction_rate=0.1,
            grounding_score=0.8,
            cost_over_budget_pct=0.5,
            latency_p95_norm=0.5,
            security_criticals=1,
            api_breakages=2,
            db_migration_fail=1,
            rag_coverage=0.9,
        )

    def test_no_gates_is_a_bundle_error(self) -> None:
        with pytest.raises(BundleError, match="no gate passed or failed") as caught:
            terms_from_bundle(make_bundle(gates={"passed": [], "failed": []}), OBJECTIVES)
        assert caught.value.reason == str(caught.value)

    def test_all_gates_failing_gives_zero_pass_rate(self) -> None:
        bundle = make_bundle(gates={"passed": [], "failed": ["a", "b"]})
        assert terms_from_bundle(bundle, OBJECTIVES).gate_pass_rate == 0.0

    def test_no_claims_means_no_contradictions(self) -> None:
        bundle = make_bundle(qav={"grounding_score": 1.0, "contradictions": 0, "claims": 0})
        assert terms_from_bundle(bundle, OBJECTIVES).contradiction_rate == 0.0

    def test_missing_rag_coverage_is_no_gap(self) -> None:
        bundle = make_bundle(qav={"grounding_score": 1.0, "contradictions": 0, "claims": 4})
        assert terms_from_bundle(bundle, OBJECTIVES).rag_coverage == 1.0

    @pytest.mark.parametrize(
        ("missing", "words"),
        [
            ("qav", "grounding_score"),
            ("costs", "cost_over_budget_pct"),
            ("latency", "latency_p95_norm"),
        ],
    )
    def test_missing_measurements_are_bundle_errors_naming_the_term(
        self, missing: str, words: str
    ) -> None:
        with pytest.raises(BundleError, match=words):
            terms_from_bundle(make_bundle(**{missing: None}), OBJECTIVES)

    def test_under_budget_costs_nothing(self) -> None:
        bundle = make_bundle(costs={"spent": 0.4, "budget": 1.0})
        assert terms_from_bundle(bundle, OBJECTIVES).cost_over_budget_pct == 0.0

    def test_cost_over_budget_is_not_capped(self) -> None:
        bundle = make_bundle(costs={"spent": 4.0, "budget": 1.0})
        assert terms_from_bundle(bundle, OBJECTIVES).cost_over_budget_pct == 3.0

    def test_latency_uses_the_doers_objective(self) -> None:
        fast = make_bundle(doer="Fast", latency={"p95_ms": 3_000.0})
        assert terms_from_bundle(fast, OBJECTIVES).latency_p95_norm == pytest.approx(2.0)
        on_time = make_bundle(latency={"p95_ms": 59_000.0})
        assert terms_from_bundle(on_time, OBJECTIVES).latency_p95_norm == 0.0

    @pytest.mark.parametrize(("state", "fail"), [("ok", 0), ("not_applicable", 0), ("failed", 1)])
    def test_db_migration_fail(self, state: str, fail: int) -> None:
        bundle = make_bundle(db_migration=state)
        assert terms_from_bundle(bundle, OBJECTIVES).db_migration_fail == fail

    def test_an_overflowing_ratio_is_a_bundle_error_not_infinity(self) -> None:
        bundle = make_bundle(costs={"spent": 1e308, "budget": 1e-308})
        with pytest.raises(BundleError, match="cost_over_budget_pct"):
            terms_from_bundle(bundle, OBJECTIVES)


class TestWeightBook:
    def test_per_doer_overrides_inherit_from_the_default_set(self) -> None:
        book = WeightBook.from_dict(
            {
                "default": {"version": "org-1", "wc": 2.0},
                "per_doer": {"PRDWriter": {"version": "prd-1", "wrag": 0.0}},
            }
        )
        prd = book.for_doer("PRDWriter")
        assert (prd.version, prd.wc, prd.wrag, prd.ws) == (
            "prd-1",
            2.0,
            0.0,
            DEFAULT_CRL_WEIGHTS.ws,
        )
        other = book.for_doer("Other")
        assert (other.version, other.wc, other.wrag) == ("org-1", 2.0, DEFAULT_CRL_WEIGHTS.wrag)

    def test_empty_configuration_is_the_default_weights(self) -> None:
        assert WeightBook.from_dict({}).for_doer("x") == DEFAULT_CRL_WEIGHTS

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            ({"per_doer": {"d": {"ws": 1.0}}}, "per_doer.d: must be a mapping with a version"),
            ({"default": {"version": "v", "ws": -1}}, "ws: -1 is below 0"),
            ({"default": {"version": "v", "wq": "heavy"}}, "wq: must be a number, not text"),
            ({"weights": {}}, "unknown keys"),
        ],
    )
    def test_bad_configuration_says_where(self, data: dict[str, Any], message: str) -> None:
        with pytest.raises(CRLConfigError, match=message):
            WeightBook.from_dict(data)


class TestLatencyObjectives:
    def test_from_dict(self) -> None:
        objectives = LatencyObjectives.from_dict({"per_doer": {"A": 500}})
        assert (objectives.for_doer("A"), objectives.for_doer("B")) == (500, 60_000.0)

    @pytest.mark.parametrize("ms", [0, -1, math.inf, math.nan, "fast"])
    def test_objectives_must_be_positive_numbers(self, ms: Any) -> None:
        with pytest.raises(CRLConfigError, match="is not a positive number"):
            LatencyObjectives(default_ms=1.0, per_doer={"A": ms})


def test_score_bundle_carries_what_downstream_needs() -> None:
    bundle = make_bundle(deployment_id="dep-1", arm="candidate", model="m-large")
    book = WeightBook(
        per_doer={"PRDWriter": DEFAULT_CRL_WEIGHTS.model_copy(update={"version": "p"})}
    )
    event = score_bundle(bundle, book, OBJECTIVES)
    assert event.source_event_id == bundle.event_id
    assert event.run_occurred_at == bundle.occurred_at
    assert (event.doer, event.deployment_id, event.arm, event.model) == (
        "PRDWriter",
        "dep-1",
        "candidate",
        "m-large",
    )
    assert event.loss == pytest.approx(17.65)
    assert event.weights_version == "p"
    assert event.gate_failures == ["review"]
    assert event.security_criticals == 1


def test_scoring_a_redelivered_bundle_gives_the_same_event_id() -> None:
    bundle = make_bundle()
    first = score_bundle(bundle, WeightBook(), OBJECTIVES)
    again = score_bundle(bundle, WeightBook(), OBJECTIVES)
    assert first.event_id == again.event_id
    assert first.event_id != score_bundle(make_bundle(), WeightBook(), OBJECTIVES).event_id


def test_scored_events_pass_full_validation_unchanged() -> None:
    # score_bundle builds its event without validating; the full model must agree.
    from learnops.simulation.orchestrator import Orchestrator
    from models.events import CRLComputed

    book = WeightBook()
    for bundle in Orchestrator(seed=5).bundles(300):
        event = score_bundle(bundle, book, OBJECTIVES)
        validated = CRLComputed.model_validate(event.model_dump())
        assert validated == event
        assert CRLComputed.from_json(event.to_json()) == event


def test_a_baseline_that_table_expiry_may_shorten_is_not_cached() -> None:
    # Faust deletes a day's window by the wall clock once it is HISTORY_DAYS old; a
    # cached baseline over that day would go on counting it (a late run, weeks old).
    from agents.crl import EXPIRY_MARGIN_DAYS, near_expiry
    from agents.tables import HISTORY_DAYS

    today = date(2026, 12, 5)
    oldest_kept = HISTORY_DAYS - EXPIRY_MARGIN_DAYS
    assert not near_expiry(today - timedelta(days=8), today)  # a run of today
    assert not near_expiry(today - timedelta(days=oldest_kept - 1), today)
    assert near_expiry(today - timedelta(days=oldest_kept), today)
    assert near_expiry(today - timedelta(days=HISTORY_DAYS + 3), today)
