"""Skill-card rules on constructed statistics, just above and just below each threshold."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from learning.crl import LatencyObjectives, WeightBook, score_bundle
from learning.moments import Moments
from learning.signing import canonical_json
from learning.skills import (
    DailySkillStats,
    DoerStats,
    RefreshPacing,
    RefreshSchedule,
    SkillConfig,
    SkillRules,
    TriggerConfig,
    best_models,
    doer_stats,
    gate_triggers,
    regression_trigger,
    skill_card,
    skill_card_event,
)
from models.events import CRLComputed
from tests.unit.sample_bundles import make_bundle


def moments(mean: float, std: float, n: int) -> Moments:
    """Statistics of n values with this mean and sample standard deviation."""
    return Moments(count=n, mean=mean, m2=std * std * (n - 1))


def stats(**overrides: Any) -> DoerStats:
    """A doer with 100 runs and nothing remarkable, changed by ``overrides``."""
    base: dict[str, Any] = {
        "doer": "PRDWriter",
        "runs": 100,
        "gate_pass_rate": 0.8,
        "contradiction_rate": 0.05,
        "latency_p95_ms": 6000.0,
        "latency_objective_ms": 8000.0,
        "timeouts": 0,
    }
    base.update(overrides)
    return DoerStats(**base)


# --------------------------------------------------------------------------- strengths


@pytest.mark.parametrize(
    ("rate", "is_strength"), [(0.95, True), (0.901, True), (0.9, True), (0.899, False)]
)
def test_gate_pass_rate_at_or_above_threshold_is_a_strength(rate: float, is_strength: bool) -> None:
    card = skill_card(stats(gate_pass_rate=rate))
    assert bool(card.strengths) is is_strength
    if is_strength:
        (finding,) = card.strengths
        assert finding.rule == "gate_pass_rate"
        assert finding.measured == rate
        assert finding.threshold == 0.9
        assert finding.comparison == "≥"
        assert "≥ 90.0%" in finding.text


def test_strength_threshold_is_configurable() -> None:
    assert skill_card(stats(gate_pass_rate=0.85), SkillRules(strength_gate_pass_rate=0.8)).strengths


# --------------------------------------------------------------------------- weaknesses


@pytest.mark.parametrize(
    ("rate", "is_weakness"), [(0.2, True), (0.101, True), (0.1, False), (0.099, False)]
)
def test_contradiction_rate_above_threshold_is_a_weakness(rate: float, is_weakness: bool) -> None:
    card = skill_card(stats(contradiction_rate=rate))
    assert bool(card.weaknesses) is is_weakness
    if is_weakness:
        (finding,) = card.weaknesses
        assert (finding.rule, finding.measured, finding.threshold) == (
            "contradiction_rate",
            rate,
            0.1,
        )
        assert finding.comparison == ">"


# --------------------------------------------------------------------------- failure modes


@pytest.mark.parametrize(("failed", "is_mode"), [(21, True), (20, False), (19, False)])
def test_gate_failing_in_more_than_a_fifth_of_runs_is_a_failure_mode(
    failed: int, is_mode: bool
) -> None:
    card = skill_card(stats(runs=100, gate_failures={"lint": failed}))
    assert bool(card.failure_modes) is is_mode
    if is_mode:
        (finding,) = card.failure_modes
        assert finding.subject == "lint"
        assert finding.measured == pytest.approx(0.21)
        assert finding.threshold == 0.2
        assert finding.text == "gate 'lint' fails in 21.0% of runs (> 20.0%)"


def test_failure_modes_are_sorted_by_share_then_gate_name() -> None:
    card = skill_card(
        stats(runs=100, gate_failures={"tests": 30, "lint": 50, "api": 30, "docs": 5})
    )
    assert [f.subject for f in card.failure_modes] == ["lint", "api", "tests"]


# --------------------------------------------------------------------------- resource issues


@pytest.mark.parametrize(("p95", "is_issue"), [(8001.0, True), (8000.0, False), (7999.0, False)])
def test_latency_p95_over_objective_is_a_resource_issue(p95: float, is_issue: bool) -> None:
    card = skill_card(stats(latency_p95_ms=p95, latency_objective_ms=8000.0))
    assert bool(card.resource_issues) is is_issue
    if is_issue:
        (finding,) = card.resource_issues
        assert (finding.rule, finding.measured, finding.threshold) == ("latency_p95", p95, 8000.0)
        assert "latency p95 8,001 ms > 8,000 ms" in finding.text


def test_latency_allowance_scales_the_objective() -> None:
    rules = SkillRules(latency_over_objective=1.2)
    assert not skill_card(stats(latency_p95_ms=9600.0), rules).resource_issues
    (finding,) = skill_card(stats(latency_p95_ms=9601.0), rules).resource_issues
    assert finding.threshold == pytest.approx(9600.0)


def test_unknown_latency_raises_no_issue() -> None:
    assert not skill_card(stats(latency_p95_ms=None)).resource_issues
    assert not skill_card(stats(latency_objective_ms=None)).resource_issues


@pytest.mark.parametrize(("timeouts", "is_issue"), [(1, True), (0, False)])
def test_any_timeout_is_a_resource_issue(timeouts: int, is_issue: bool) -> None:
    card = skill_card(stats(timeouts=timeouts))
    assert bool(card.resource_issues) is is_issue
    if is_issue:
        (finding,) = card.resource_issues
        assert (finding.rule, finding.measured, finding.threshold) == ("timeouts", 1.0, 0.0)


def test_timeout_allowance_is_configurable() -> None:
    rules = SkillRules(max_timeouts=2)
    assert not skill_card(stats(timeouts=2), rules).resource_issues
    assert skill_card(stats(timeouts=3), rules).resource_issues


def test_latency_and_timeouts_are_both_reported_latency_first() -> None:
    card = skill_card(stats(latency_p95_ms=9000.0, timeouts=4))
    assert [f.rule for f in card.resource_issues] == ["latency_p95", "timeouts"]


# --------------------------------------------------------------------------- few runs


def test_few_runs_give_no_strengths_weaknesses_or_failure_modes_but_resource_issues() -> None:
    few = stats(
        runs=9,
        gate_pass_rate=1.0,
        contradiction_rate=0.5,
        gate_failures={"lint": 5},
        timeouts=1,
    )
    card = skill_card(few)
    assert card.strengths == card.weaknesses == card.failure_modes == ()
    assert [f.rule for f in card.resource_issues] == ["timeouts"]
    assert "9 runs, fewer than 10" in card.notes[0]
    enough = skill_card(few, SkillRules(min_runs=9))
    assert enough.strengths and enough.weaknesses and enough.failure_modes


# --------------------------------------------------------------------------- CRL and deltas


def test_mean_crl_and_deltas_against_the_baselines() -> None:
    card = skill_card(
        stats(
            crl_today=moments(0.30, 0.1, 50),
            crl_7d=moments(0.40, 0.1, 300),
            crl_30d=moments(0.25, 0.1, 1500),
        )
    )
    assert card.mean_crl == pytest.approx(0.30)
    assert card.delta_7d == pytest.approx(-0.10)  # better than last week
    assert card.delta_30d == pytest.approx(0.05)  # worse than the month


def test_missing_windows_give_no_mean_or_delta() -> None:
    card = skill_card(stats(crl_7d=moments(0.4, 0.1, 10)))
    assert card.mean_crl is None and card.delta_7d is None and card.delta_30d is None
    card = skill_card(stats(crl_today=moments(0.3, 0.1, 10)))
    assert card.mean_crl == pytest.approx(0.3)
    assert card.delta_7d is None and card.delta_30d is None


# --------------------------------------------------------------------------- best models


def test_best_models_are_ranked_by_mean_crl_with_rank_sets_and_gaps() -> None:
    by_model = {
        "gpt-large": moments(0.30, 0.10, 100),
        "claude-mid": moments(0.25, 0.20, 400),
        "small-fast": moments(0.45, 0.05, 30),
    }
    ranking, unranked = best_models(by_model)
    assert unranked == 0
    assert [m.model for m in ranking] == ["claude-mid", "gpt-large", "small-fast"]
    assert [m.rank for m in ranking] == [1, 2, 3]
    first = ranking[0]
    assert (first.n, first.mean_crl, first.std_error) == (400, 0.25, pytest.approx(0.01))
    # Gap 0.05 with standard error √(0.01² + 0.01²); Welch dof ≈ 165; Bonferroni over 3 pairs.
    se = math.hypot(0.01, 0.01)
    dof = se**4 / (0.01**4 / 399 + 0.01**4 / 99)
    half = scipy_stats.t.ppf(1 - 0.05 / 6, dof) * se
    assert (first.next_gap_low, first.next_gap_high) == (
        pytest.approx(0.05 - half),
        pytest.approx(0.05 + half),
    )
    assert first.distinct_from_next is True
    assert [(m.rank_low, m.rank_high) for m in ranking] == [(1, 1), (2, 2), (3, 3)]
    last = ranking[-1]
    assert (last.distinct_from_next, last.next_gap_low, last.next_gap_high) == (None, None, None)


def test_models_that_cannot_be_told_apart_share_their_rank_set() -> None:
    ranking, _ = best_models(
        {"a": moments(0.30, 0.2, 30), "b": moments(0.31, 0.2, 30), "c": moments(0.9, 0.1, 30)}
    )
    assert [m.model for m in ranking] == ["a", "b", "c"]
    assert ranking[0].distinct_from_next is False
    assert ranking[1].distinct_from_next is True
    assert [(m.rank_low, m.rank_high) for m in ranking] == [(1, 2), (1, 2), (3, 3)]


def test_the_rank_set_counts_every_ranked_model_not_only_the_listed_ones() -> None:
    by_model = {f"m{i}": moments(0.30, 0.2, 30) for i in range(5)}
    ranking, _ = best_models(by_model)  # three listed out of five alike
    assert len(ranking) == 3
    assert {(m.rank_low, m.rank_high) for m in ranking} == {(1, 5)}


@given(
    st.tuples(st.floats(0.0, 2.0), st.floats(0.01, 1.0), st.integers(30, 500)),
    st.tuples(st.floats(0.0, 2.0), st.floats(0.01, 1.0), st.integers(30, 500)),
    st.sampled_from([0.9, 0.95, 0.99]),
)
@settings(max_examples=60, deadline=None)
def test_distinct_from_next_is_welch_s_test_at_the_bonferroni_level(
    a: tuple[float, float, int], b: tuple[float, float, int], confidence: float
) -> None:
    """Two models, one pair: "distinct" is Welch's two-sided test rejecting at 1 − confidence."""
    ranking, _ = best_models(
        {"a": moments(*a), "b": moments(*b)}, SkillRules(confidence=confidence)
    )
    (mean_a, sd_a, n_a), (mean_b, sd_b, n_b) = a, b
    welch = scipy_stats.ttest_ind_from_stats(mean_a, sd_a, n_a, mean_b, sd_b, n_b, equal_var=False)
    p = welch.pvalue
    assume(abs(p - (1 - confidence)) > 1e-9)
    assert ranking[0].distinct_from_next is bool(p < 1 - confidence)


def test_models_that_always_scored_one_loss_have_a_known_gap() -> None:
    ranking, _ = best_models({"zero": moments(0.0, 0.0, 40), "one": moments(1.0, 0.0, 40)})
    assert (ranking[0].next_gap_low, ranking[0].next_gap_high) == (1.0, 1.0)
    assert ranking[0].distinct_from_next is True
    alike, _ = best_models({"a": moments(0.0, 0.0, 40), "b": moments(0.0, 0.0, 40)})
    assert alike[0].distinct_from_next is False
    assert (alike[0].rank_low, alike[0].rank_high) == (1, 2)


@pytest.mark.parametrize(("n", "ranked"), [(30, True), (29, False)])
def test_a_model_needs_thirty_runs_to_be_ranked(n: int, ranked: bool) -> None:
    ranking, unranked = best_models({"m": moments(0.1, 0.05, n)})
    assert bool(ranking) is ranked
    assert unranked == (0 if ranked else 1)


def test_a_too_small_model_is_not_ranked_however_good_it_looks() -> None:
    card = skill_card(
        stats(
            crl_by_model={
                "lucky": moments(0.01, 0.0, 5),
                "steady": moments(0.30, 0.1, 200),
            }
        )
    )
    assert [m.model for m in card.best_models] == ["steady"]
    assert "1 model(s) with fewer than 30 runs not ranked" in card.notes


def test_best_models_list_is_limited_and_ties_break_deterministically() -> None:
    by_model = {name: moments(0.3, 0.1, 100) for name in ["d", "b", "c", "a"]}
    by_model["tight"] = moments(0.3, 0.01, 100)
    ranking, _ = best_models(by_model)
    assert [m.model for m in ranking] == ["tight", "a", "b"]  # smaller standard error, then name
    assert len(best_models(by_model, SkillRules(best_models_limit=10))[0]) == 5


def test_a_higher_confidence_widens_the_gap_interval() -> None:
    m = {"x": moments(0.5, 0.1, 100), "y": moments(0.53, 0.1, 100)}
    (r95, _), _ = best_models(m)
    (r99, _), _ = best_models(m, SkillRules(confidence=0.99))
    assert r95.next_gap_low is not None and r95.next_gap_high is not None
    assert r99.next_gap_low is not None and r99.next_gap_high is not None
    assert r99.next_gap_low < r95.next_gap_low and r99.next_gap_high > r95.next_gap_high
    assert r95.distinct_from_next is True and r99.distinct_from_next is False


# --------------------------------------------------------------------------- the card


def test_a_full_card_has_every_section_and_serialises_to_canonical_json() -> None:
    card = skill_card(
        stats(
            gate_pass_rate=0.93,
            contradiction_rate=0.12,
            gate_failures={"security_scan": 25, "lint": 3},
            latency_p95_ms=9000.0,
            timeouts=2,
            crl_today=moments(0.3, 0.1, 100),
            crl_7d=moments(0.35, 0.1, 700),
            crl_30d=moments(0.32, 0.1, 3000),
            crl_by_model={"m1": moments(0.3, 0.1, 60), "m2": moments(0.4, 0.1, 40)},
        )
    )
    assert card.doer == "PRDWriter" and card.runs == 100 and card.gate_pass_rate == 0.93
    assert [f.rule for f in card.strengths] == ["gate_pass_rate"]
    assert [f.rule for f in card.weaknesses] == ["contradiction_rate"]
    assert [f.subject for f in card.failure_modes] == ["security_scan"]
    assert [f.rule for f in card.resource_issues] == ["latency_p95", "timeouts"]
    assert [m.model for m in card.best_models] == ["m1", "m2"]
    data = card.to_dict()
    assert canonical_json(data)
    assert data["failure_modes"][0] == {
        "rule": "gate_fail_share",
        "subject": "security_scan",
        "measured": 0.25,
        "threshold": 0.2,
        "comparison": ">",
        "text": "gate 'security_scan' fails in 25.0% of runs (> 20.0%)",
    }


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"gate_pass_rate": 1.4}, "gate_pass_rate 1.4 is outside"),
        ({"contradiction_rate": -0.1}, "contradiction_rate -0.1 is outside"),
        ({"gate_pass_rate": math.nan}, "not a finite number"),
        ({"runs": -1}, "runs -1 must be a non-negative integer"),
        ({"runs": 10, "gate_failures": {"lint": 11}}, "failed in 11 runs, more than the 10"),
        ({"timeouts": 1.5}, "timeouts"),
        ({"latency_p95_ms": 0.0}, "latency_p95_ms 0.0 must be a positive number"),
    ],
)
def test_impossible_statistics_are_refused_with_a_reason(
    overrides: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        stats(**overrides)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strength_gate_pass_rate": 1.1},
        {"latency_over_objective": 0.0},
        {"max_timeouts": -1},
        {"best_models_min_runs": 1},
        {"confidence": 1.0},
    ],
)
def test_impossible_rules_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SkillRules(**kwargs)


# --------------------------------------------------------------------------- daily statistics

OBJECTIVES = LatencyObjectives(default_ms=8000.0)
TODAY = date(2026, 3, 10)


def scored(
    *,
    day: date = TODAY,
    failed: tuple[str, ...] = (),
    passed: tuple[str, ...] | None = None,
    contradictions: int = 0,
    p95_ms: float = 5000.0,
    timeouts: int = 0,
    model: str | None = "m1",
    run: int = 1,
) -> CRLComputed:
    """A scored run with the figures a skill card reads (gates lint and tests by default)."""
    if passed is None:
        passed = tuple(g for g in ("lint", "tests") if g not in failed)
    bundle = make_bundle(
        run_id=f"run-{run}",
        occurred_at=datetime(day.year, day.month, day.day, 12, tzinfo=UTC).isoformat(),
        gates={"passed": list(passed), "failed": list(failed)},
        qav={"grounding_score": 0.9, "contradictions": contradictions, "claims": 10},
        latency={"p95_ms": p95_ms, "timeouts": timeouts},
        model=model,
        security={"criticals": 0},
        api_breakages=0,
        db_migration="not_applicable",
    )
    return score_bundle(bundle, WeightBook(), OBJECTIVES)


def test_daily_statistics_fold_the_figures_a_card_reads() -> None:
    day = DailySkillStats()
    day.add(scored(failed=("lint",), passed=("tests",), contradictions=2, p95_ms=9000.0, run=1))
    day.add(scored(timeouts=2, model="m2", run=2))
    assert day.runs == 2
    assert day.gate_pass_rate_sum == pytest.approx(0.5 + 1.0)
    assert day.contradiction_rate_sum == pytest.approx(0.2)
    assert day.gate_failures == {"lint": 1}
    assert day.timeouts == 2
    assert day.crl.count == 2
    assert day.latency.count == 2 and day.latency.max == 9000.0
    assert sorted(day.by_model) == ["m1", "m2"] and day.by_model["m1"].count == 1


def test_daily_statistics_merge_exactly_and_survive_a_table_round_trip() -> None:
    runs = [scored(failed=("lint",) if i % 3 else (), p95_ms=1000.0 + i, run=i) for i in range(30)]
    whole, first, second = DailySkillStats(), DailySkillStats(), DailySkillStats()
    for i, r in enumerate(runs):
        whole.add(r)
        (first if i < 11 else second).add(r)
    first.merge(DailySkillStats.from_dict(second.to_dict()))
    assert first.runs == whole.runs and first.gate_failures == whole.gate_failures
    assert first.crl.mean == pytest.approx(whole.crl.mean)
    assert first.crl.moments.m2 == pytest.approx(whole.crl.moments.m2)
    assert first.latency == whole.latency
    assert first.by_model["m1"].count == 30
    assert DailySkillStats.from_dict(whole.to_dict()).to_dict() == whole.to_dict()


def test_doer_stats_take_today_against_the_days_before() -> None:
    days: dict[date, DailySkillStats] = {}
    for offset, (n, fail_every) in {0: (20, 2), 1: (10, 0), 8: (5, 0), 40: (7, 0)}.items():
        day = TODAY - timedelta(days=offset)
        stats_of_day = DailySkillStats()
        for i in range(n):
            failed = ("lint",) if fail_every and i % fail_every == 0 else ()
            stats_of_day.add(scored(day=day, failed=failed, timeouts=1 if i == 0 else 0, run=i))
        days[day] = stats_of_day
    got = doer_stats("PRDWriter", days, TODAY, 8000.0)
    assert got.runs == 20 and got.gate_failures == {"lint": 10} and got.timeouts == 1
    assert got.gate_pass_rate == pytest.approx((10 * 0.5 + 10 * 1.0) / 20)
    assert got.crl_today.count == 20
    assert got.crl_7d.count == 10  # yesterday only: 8 days ago is outside the week before today
    assert got.crl_30d.count == 15  # yesterday and 8 days ago; 40 days ago is too old
    assert got.crl_by_model["m1"].count == 35  # best models use the 30 days ending today
    assert got.latency_p95_ms == pytest.approx(5000.0, rel=0.01)
    assert got.latency_objective_ms == 8000.0


def test_a_day_without_runs_gives_a_card_with_no_figures_but_its_baselines() -> None:
    days = {TODAY - timedelta(days=1): DailySkillStats()}
    days[TODAY - timedelta(days=1)].add(scored(day=TODAY - timedelta(days=1)))
    got = doer_stats("PRDWriter", days, TODAY)
    assert got.runs == 0 and got.gate_pass_rate == 0.0 and got.latency_p95_ms is None
    card = skill_card(got)
    assert card.mean_crl is None and card.delta_7d is None
    assert "0 runs, fewer than 10" in card.notes[0]


# --------------------------------------------------------------------------- the card event


def _event(day_stats: dict[date, DailySkillStats], now: datetime, **kwargs: Any) -> Any:
    content = skill_card(doer_stats("PRDWriter", day_stats, TODAY, 8000.0))
    return skill_card_event(content, day_stats, as_of=TODAY, now=now, **kwargs)


def test_card_event_carries_every_finding_and_a_content_hash_independent_of_time() -> None:
    day = DailySkillStats()
    for i in range(12):
        day.add(scored(failed=("security_scan",) if i < 6 else (), p95_ms=9500.0, run=i))
    days = {TODAY: day}
    now = datetime(2026, 3, 10, 13, tzinfo=UTC)
    first = _event(days, now, policy=("prd-policy", 3))
    later = _event(days, now + timedelta(minutes=5), policy=("prd-policy", 3))
    assert first.content_hash == later.content_hash and first.event_id != later.event_id
    assert first.runs == 12 and first.runs_7d == 12 and first.as_of == TODAY
    assert (first.policy_id, first.policy_version) == ("prd-policy", 3)
    (mode,) = first.findings["failure_modes"]
    assert (mode["subject"], mode["measured"], mode["threshold"]) == ("security_scan", 0.5, 0.2)
    assert [f["rule"] for f in first.findings["resource_issues"]] == ["latency_p95"]
    assert first.gate_failures_30d == {"security_scan": 6}
    other_policy = _event(days, now, policy=("prd-policy", 4))
    assert other_policy.content_hash != first.content_hash
    with_experiment = _event(days, now, experiments=[{"experiment_id": "e1", "status": "created"}])
    assert with_experiment.content_hash != first.content_hash
    assert with_experiment.experiments == [{"experiment_id": "e1", "status": "created"}]


def test_card_event_of_a_doer_without_runs_today_has_no_pass_rate() -> None:
    event = _event({}, datetime(2026, 3, 10, tzinfo=UTC))
    assert event.runs == 0 and event.gate_pass_rate is None and event.mean_crl is None


# --------------------------------------------------------------------------- refreshing


def test_a_burst_of_changes_rebuilds_a_card_once_per_interval() -> None:
    schedule = RefreshSchedule(RefreshPacing(min_interval_s=5.0, max_age_s=300.0))
    schedule.changed("A")
    assert schedule.due(0.0) == ["A"]
    schedule.building("A", 0.0)
    assert schedule.due(1.0) == []
    for _ in range(100):  # a storm of runs within the interval
        schedule.changed("A")
    assert schedule.due(4.9) == []
    assert schedule.due(5.0) == ["A"]
    schedule.building("A", 5.0)
    assert schedule.due(6.0) == [], "changes folded into the last build are not rebuilt again"


def test_runs_folded_while_a_card_is_rebuilt_make_it_due_again() -> None:
    """A card rebuilt from 33 of 80 runs stayed at 33 for max_age_s (seen in a test)."""
    schedule = RefreshSchedule(RefreshPacing(min_interval_s=5.0, max_age_s=300.0))
    schedule.changed("A")
    assert schedule.due(0.0) == ["A"]
    schedule.building("A", 0.0)
    schedule.changed("A")  # the stage folds more runs while the card is built
    assert schedule.due(4.9) == []
    assert schedule.due(5.0) == ["A"]


def test_every_known_card_is_rebuilt_when_it_is_old_even_without_changes() -> None:
    schedule = RefreshSchedule(RefreshPacing(min_interval_s=5.0, max_age_s=60.0))
    assert schedule.due(0.0, known=["B", "A"]) == ["A", "B"], "never built: due at once"
    schedule.building("A", 0.0)
    schedule.building("B", 30.0)
    assert schedule.due(59.0, known=["A", "B"]) == []
    assert schedule.due(60.0, known=["A", "B"]) == ["A"]


def test_refresh_pacing_refuses_an_interval_above_the_age() -> None:
    with pytest.raises(ValueError, match="min_interval_s"):
        RefreshPacing(min_interval_s=10.0, max_age_s=5.0)


# --------------------------------------------------------------------------- triggers


@pytest.mark.parametrize(("failed", "triggered"), [(5, True), (4, False)])
def test_a_gate_failing_above_its_share_triggers_an_experiment(
    failed: int, triggered: bool
) -> None:
    # 20 runs, threshold 0.2: 5 failures (25 %) trigger, 4 (exactly 20 %) do not.
    got = gate_triggers(
        stats(runs=20, gate_failures={"lint": failed}), SkillRules(), TriggerConfig()
    )
    assert bool(got) is triggered
    if triggered:
        (trigger,) = got
        assert trigger.reason == "gate_failure:lint"
        assert trigger.evidence == {
            "gate": "lint",
            "failed_runs": 5,
            "runs": 20,
            "share": 0.25,
            "threshold": 0.2,
        }
        assert "failed in 5 of 20 runs (25.0% > 20.0%)" in trigger.message


def test_gate_triggers_need_enough_runs_and_follow_their_own_threshold() -> None:
    few = stats(runs=19, gate_failures={"lint": 19})
    assert gate_triggers(few, SkillRules(), TriggerConfig()) == ()
    many = stats(runs=100, gate_failures={"lint": 25, "tests": 40})
    assert [t.reason for t in gate_triggers(many, SkillRules(), TriggerConfig())] == [
        "gate_failure:lint",
        "gate_failure:tests",
    ]
    strict = TriggerConfig(gate_fail_share=0.3)
    assert [t.reason for t in gate_triggers(many, SkillRules(), strict)] == ["gate_failure:tests"]


def test_a_storm_of_failures_gives_one_dedup_key_per_doer_and_reason() -> None:
    # The dedup is the (doer, reason) pair: every refresh during a storm, and
    # every day's regression alert, names the same request.
    keys = set()
    for runs in range(20, 200, 10):
        for t in gate_triggers(
            stats(runs=runs, gate_failures={"lint": runs}), SkillRules(), TriggerConfig()
        ):
            keys.add((t.doer, t.reason))
    for day in range(1, 10):
        t = regression_trigger("PRDWriter", "crl_regression", "worse", {"day": f"2026-03-0{day}"})
        keys.add((t.doer, t.reason))
    assert keys == {("PRDWriter", "gate_failure:lint"), ("PRDWriter", "crl_regression")}


def test_skill_config_reads_the_yaml_section_and_refuses_unknown_keys() -> None:
    config = SkillConfig.from_dict(
        {
            "rules": {"min_runs": 5},
            "refresh": {"min_interval_s": 1, "max_age_s": 10},
            "triggers": {"min_runs": 3, "regression_kinds": ["crl_regression", "guardrail"]},
        }
    )
    assert config.rules.min_runs == 5 and config.refresh.max_age_s == 10
    assert config.triggers.regression_kinds == ("crl_regression", "guardrail")
    with pytest.raises(ValueError, match="unknown keys"):
        SkillConfig.from_dict({"rule": {}})
    with pytest.raises(TypeError):
        SkillConfig.from_dict({"rules": {"min_run": 5}})


def test_t_quantiles_are_scipys_for_any_degrees_of_freedom() -> None:
    import numpy as np

    from learning.skills import _t_quantile

    dof = np.concatenate(
        [[1.0, 1.5, 2.0, 29.9, 1e6], np.random.default_rng(4).uniform(1, 900, 500)]
    )
    for p in (0.9, 0.975, 0.995):
        assert np.array_equal(_t_quantile(p, dof), scipy_stats.t.ppf(p, dof))
