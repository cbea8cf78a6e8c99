"""Canary rules, statistics, guardrails, SRM, steps and the operator report."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from learning.canary import (
    DEFAULT_GUARDRAILS,
    ArmStats,
    CanaryConfig,
    Decision,
    Guardrail,
    StepState,
    advance,
    contrast_interval,
    evaluate,
    evaluate_guardrails,
    next_step,
    report,
    srm_check,
)

CONFIG = CanaryConfig(min_sample_size=100)
finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)


def arm(mean: float, sd: float, n: int, seed: int) -> ArmStats:
    """An arm whose sample mean and sd are exactly ``mean`` and ``sd``."""
    x = np.random.default_rng(seed).normal(size=n)
    x = (x - x.mean()) / x.std(ddof=1)
    return ArmStats.from_values(mean + sd * x)


# ------------------------------------------------------------------- ArmStats


@given(st.lists(finite, max_size=50), st.lists(finite, max_size=50))
def test_merged_arms_equal_one_arm_of_all_values(left: list[float], right: list[float]) -> None:
    a, b = ArmStats.from_values(left), ArmStats.from_values(right)
    a.merge(b)
    whole = ArmStats.from_values(left + right)
    assert a.count == whole.count
    assert a.mean == pytest.approx(whole.mean, rel=1e-9, abs=1e-9)
    assert a.variance == pytest.approx(whole.variance, rel=1e-7, abs=1e-7)


def test_arm_round_trips_through_a_json_table_value() -> None:
    a = ArmStats()
    for x in (0.1, 0.4, 0.25):
        a.add(x)
    a.add_many([0.3, 0.2])
    back = ArmStats.from_dict(json.loads(json.dumps(a.to_dict())))
    assert isinstance(back, ArmStats)
    assert back == a
    assert back.variance == pytest.approx(np.var([0.1, 0.4, 0.25, 0.3, 0.2], ddof=1))


def test_arm_rejects_nan() -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        ArmStats().add(math.nan)


# ----------------------------------------------------------------- the formula


def mixture_ratio(shift: float, v: float, tau: float) -> float:
    """Λ = ∫ N(θ; 0, τ²) · exp(θ·shift/V − θ²/(2V)) dθ, numerically (Johari et al. 2022)."""

    def integrand(theta: float) -> float:
        return float(
            stats.norm.pdf(theta, 0, tau) * math.exp(theta * shift / v - theta**2 / (2 * v))
        )

    value, _ = integrate.quad(integrand, -20 * tau, 20 * tau, epsabs=0, epsrel=1e-11)
    return float(value)


def test_mixture_ratio_closed_form_matches_numerical_integration() -> None:
    control, candidate = arm(0.30, 0.15, 400, 1), arm(0.28, 0.14, 300, 2)
    v = candidate.variance / 300 + control.variance / 400
    pooled = (399 * control.variance + 299 * candidate.variance) / 698
    tau = CONFIG.mixing_sd * math.sqrt(pooled)
    est = candidate.mean - control.mean
    _, low, high, p = contrast_interval(
        400, control.mean, control.variance, 300, candidate.mean, candidate.variance,
        ratio=1.0, alpha=0.05,
    )  # fmt: skip
    assert float(p) == pytest.approx(min(1.0, 1 / mixture_ratio(est, v, tau)), rel=1e-7)
    # At each end of the interval the ratio against that value is exactly 1/alpha.
    for bound in (float(low), float(high)):
        assert mixture_ratio(est - bound, v, tau) == pytest.approx(1 / 0.05, rel=1e-6)


def test_mixture_p_value_of_a_clear_difference_is_small() -> None:
    control, candidate = arm(0.30, 0.15, 3_000, 1), arm(0.27, 0.15, 3_000, 2)
    v = candidate.variance / 3_000 + control.variance / 3_000
    tau = CONFIG.mixing_sd * 0.15
    _, _, _, p = contrast_interval(
        3_000, 0.30, control.variance, 3_000, 0.27, candidate.variance, ratio=1.0, alpha=0.05
    )
    assert float(p) == pytest.approx(1 / mixture_ratio(-0.03, v, tau), rel=1e-7)
    assert float(p) < 1e-3


@settings(max_examples=60)
@given(
    mean_c=st.floats(0.05, 2.0),
    mean_t=st.floats(0.05, 2.0),
    sd_c=st.floats(0.01, 1.0),
    sd_t=st.floats(0.01, 1.0),
    n_c=st.integers(2, 100_000),
    n_t=st.integers(2, 100_000),
)
def test_interval_excludes_zero_exactly_when_p_is_at_most_alpha(
    mean_c: float, mean_t: float, sd_c: float, sd_t: float, n_c: int, n_t: int
) -> None:
    est, low, high, p = contrast_interval(
        n_c, mean_c, sd_c**2, n_t, mean_t, sd_t**2, ratio=1.0, alpha=0.05
    )
    assert float(low) <= float(est) <= float(high)
    assert 0.0 <= float(p) <= 1.0
    excludes = float(low) > 0 or float(high) < 0
    if abs(float(p) - 0.05) > 1e-9:
        assert excludes == (float(p) <= 0.05)


@settings(max_examples=300)
@given(
    n_c=st.integers(0, 200_000),
    n_t=st.integers(0, 200_000),
    mean_c=st.one_of(st.just(0.0), st.floats(0.0, 1e3)),
    mean_t=st.one_of(st.just(0.0), st.just(-0.0), st.floats(0.0, 1e3)),
    var_c=st.one_of(st.just(0.0), st.floats(0.0, 1e4)),
    var_t=st.one_of(st.just(0.0), st.floats(0.0, 1e4)),
    ratio=st.sampled_from([1.0, 0.98, 1.1, 1.25]),
    alpha=st.sampled_from([0.05, 0.005, 0.2]),
    mixing_sd=st.sampled_from([0.1, 0.5, 0.0]),
    guard=st.booleans(),
)
def test_one_look_in_math_gives_the_arrays_answer(
    n_c: int, n_t: int, mean_c: float, mean_t: float, var_c: float, var_t: float,
    ratio: float, alpha: float, mixing_sd: float, guard: bool,
) -> None:  # fmt: skip
    # A look of scalars is computed with math (the canary stage's per-result path), a
    # look of arrays with numpy (the simulations): both must give the same numbers.
    options = {"ratio": ratio, "alpha": alpha, "mixing_sd": mixing_sd, "variance_guard": guard}
    scalar = contrast_interval(n_c, mean_c, var_c, n_t, mean_t, var_t, **options)
    arrays = contrast_interval(
        *(np.array([x], dtype=np.float64) for x in (n_c, mean_c, var_c, n_t, mean_t, var_t)),
        **options,
    )
    for one, many in zip(scalar, arrays, strict=True):
        assert float(one) == pytest.approx(float(many[0]), rel=1e-12, abs=1e-300, nan_ok=True)
        assert math.copysign(1.0, float(one)) == math.copysign(1.0, float(many[0]))  # ±0 too


def test_a_look_of_scalars_takes_the_math_path() -> None:
    # The comparison above would pass if scalars went through numpy too.
    control, candidate = arm(0.30, 0.15, 400, 1), arm(0.28, 0.14, 300, 2)
    stats_ = (400, control.mean, control.variance, 300, candidate.mean, candidate.variance)
    assert all(type(x) is float for x in contrast_interval(*stats_, ratio=1.0, alpha=0.05))
    constant = contrast_interval(400, 0.0, 0.0, 300, 0.0, 0.0, ratio=1.0, alpha=0.05)
    assert all(type(x) is float for x in constant) and constant[3] == 1.0


def test_interval_narrows_as_runs_accumulate() -> None:
    widths = []
    for n in (100, 1_000, 10_000, 100_000):
        _, low, high, _ = contrast_interval(n, 0.3, 0.0225, n, 0.3, 0.0225, ratio=1.0, alpha=0.05)
        widths.append(float(high - low))
    assert widths == sorted(widths, reverse=True)


# ------------------------------------------------------------------ evaluate


def test_continue_until_both_arms_have_the_minimum_sample() -> None:
    d = evaluate(arm(0.3, 0.01, 500, 1), arm(0.1, 0.01, 99, 2), CONFIG)
    assert d.action == "continue"
    assert "min_sample_size=100" in d.reason
    assert "candidate 99" in d.reason


def test_no_runs_give_an_unbounded_interval_and_p_one() -> None:
    d = evaluate(ArmStats(), ArmStats(), CONFIG)
    assert d.action == "continue"
    assert (d.ci_low, d.ci_high, d.p_value) == (-math.inf, math.inf, 1.0)
    assert d.delta_pct is None


def test_clearly_worse_candidate_is_rolled_back_with_the_bound_in_the_reason() -> None:
    d = evaluate(arm(0.30, 0.15, 2_000, 1), arm(0.36, 0.15, 2_000, 2), CONFIG)
    assert d.action == "rollback"
    assert d.delta == pytest.approx(0.06)
    assert d.delta_pct == pytest.approx(0.20)
    assert d.ci_low > 0.05 * 0.30
    assert "max_crl_increase=+5.0 %" in d.reason
    assert "candidate − 1.05·control is above 0" in d.reason


def test_slightly_worse_within_the_limit_is_not_rolled_back_by_the_margin_rule() -> None:
    # 3 % worse with a very tight interval: worse, but by less than 5 %.
    config = replace(CONFIG, harm_alpha=None)
    d = evaluate(arm(0.30, 0.05, 50_000, 1), arm(0.309, 0.05, 50_000, 2), config)
    assert d.ci_low > 0
    assert d.action == "continue"


def test_harm_rule_rolls_back_a_candidate_shown_worse_at_all() -> None:
    # The same 3 % worse candidate: within max_crl_increase, but shown worse than
    # the control, so it can never be promoted; the harm rule ends it.
    d = evaluate(arm(0.30, 0.05, 50_000, 1), arm(0.309, 0.05, 50_000, 2), CONFIG)
    assert d.action == "rollback"
    assert "harm rule at harm_alpha=0.025" in d.reason
    assert "candidate − 1·control is above 0" in d.reason


def test_harm_rule_in_non_inferiority_mode_uses_the_margin() -> None:
    ni = replace(CONFIG, mode="non_inferiority", non_inferiority_margin=0.05)
    # 3 % worse is inside the 5 % margin: not harm.
    inside = evaluate(arm(0.30, 0.05, 50_000, 1), arm(0.309, 0.05, 50_000, 2), ni)
    assert inside.action == "promote"
    ni2 = replace(CONFIG, mode="non_inferiority", non_inferiority_margin=0.02)
    beyond = evaluate(arm(0.30, 0.05, 50_000, 1), arm(0.309, 0.05, 50_000, 2), ni2)
    assert beyond.action == "rollback"
    assert "by more than the margin +2.0 %" in beyond.reason


def test_clearly_better_candidate_is_promoted() -> None:
    d = evaluate(arm(0.30, 0.15, 2_000, 1), arm(0.26, 0.15, 2_000, 2), CONFIG)
    assert d.action == "promote"
    assert d.ci_high < 0
    assert d.p_value < 0.05
    assert "upper bound" in d.reason


def test_min_improvement_is_relative_to_the_control_mean() -> None:
    control, candidate = arm(0.30, 0.05, 20_000, 1), arm(0.29, 0.05, 20_000, 2)
    assert evaluate(control, candidate, CONFIG).action == "promote"  # 3.3 % better
    strict = CanaryConfig(min_sample_size=100, min_improvement=0.05)
    assert evaluate(control, candidate, strict).action == "continue"


def test_non_inferiority_promotes_a_candidate_within_the_margin() -> None:
    control, candidate = arm(0.30, 0.10, 20_000, 1), arm(0.303, 0.10, 20_000, 2)
    assert evaluate(control, candidate, CONFIG).action == "continue"
    ni = CanaryConfig(min_sample_size=100, mode="non_inferiority", non_inferiority_margin=0.05)
    d = evaluate(control, candidate, ni)
    assert d.action == "promote"
    assert "non-inferior within margin +5.0 %" in d.reason


@pytest.mark.parametrize("mode", ["superiority", "non_inferiority"])
def test_max_duration_without_a_win_rolls_back(mode: str) -> None:
    config = CanaryConfig(min_sample_size=100, mode=mode, max_duration=timedelta(hours=1))  # type: ignore[arg-type]
    control, candidate = arm(0.30, 0.15, 300, 1), arm(0.30, 0.15, 300, 2)
    assert evaluate(control, candidate, config, elapsed=3_599).action == "continue"
    d = evaluate(control, candidate, config, elapsed=timedelta(hours=1))
    assert d.action == "rollback"
    assert "max_duration 3600 s passed without showing" in d.reason


def test_max_duration_before_the_minimum_sample_rolls_back() -> None:
    config = CanaryConfig(min_sample_size=100, max_duration=60)
    d = evaluate(arm(0.3, 0.1, 10, 1), arm(0.3, 0.1, 10, 2), config, elapsed=61)
    assert d.action == "rollback"
    assert "fewer than min_sample_size" in d.reason


def test_max_duration_does_not_block_a_win_seen_at_the_same_look() -> None:
    config = CanaryConfig(min_sample_size=100, max_duration=60)
    d = evaluate(arm(0.30, 0.15, 2_000, 1), arm(0.26, 0.15, 2_000, 2), config, elapsed=100)
    assert d.action == "promote"


def test_p_value_is_a_running_minimum_when_the_previous_one_is_passed() -> None:
    control, candidate = arm(0.30, 0.15, 500, 1), arm(0.30, 0.15, 500, 2)
    fresh = evaluate(control, candidate, CONFIG)
    assert fresh.p_value == 1.0
    assert evaluate(control, candidate, CONFIG, previous_p_value=0.2).p_value == 0.2


def test_identical_constant_arms_neither_promote_nor_roll_back() -> None:
    zeros = ArmStats.from_values(np.zeros(500))
    d = evaluate(zeros, ArmStats.from_values(np.zeros(500)), CONFIG)
    assert (d.action, d.ci_low, d.ci_high, d.p_value, d.delta_pct) == ("continue", 0, 0, 1, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"min_sample_size": 1}, "min_sample_size"),
        ({"steps": (0.1, 0.05)}, "strictly increasing"),
        ({"steps": (0.0, 0.5)}, r"\(0, 1\]"),
        ({"non_inferiority_margin": 0.1, "max_crl_increase": 0.05}, "both non-inferior"),
        ({"mode": "best"}, "mode"),
        ({"mixing_sd": 0.0}, "mixing_sd"),
        ({"max_duration": timedelta(0)}, "max_duration"),
    ],
)
def test_config_rejects_inconsistent_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CanaryConfig(**kwargs)  # type: ignore[arg-type]


def test_config_takes_max_duration_as_timedelta() -> None:
    assert CanaryConfig(max_duration=timedelta(days=1)).max_duration_s == 86_400.0
    assert CanaryConfig(max_duration=None).max_duration_s is None


# --------------------------------------------------------------------- SRM


def test_srm_check_accepts_a_split_that_matches_the_allocation() -> None:
    result = srm_check({"control": 9_480, "candidate": 520}, 0.05)
    assert not result.mismatch
    assert result.expected == {"control": 9_500.0, "candidate": 500.0}
    assert result.observed == {"control": 9_480, "candidate": 520}
    assert result.p_value == pytest.approx(stats.chisquare([9_480, 520], [9_500, 500]).pvalue)


def test_srm_check_flags_a_broken_split() -> None:
    result = srm_check({"control": 9_300, "candidate": 700}, 0.05)
    assert result.mismatch
    assert result.p_value < 0.001


def test_srm_check_with_no_routings_is_not_a_mismatch() -> None:
    assert not srm_check({}, 0.1).mismatch


def test_srm_check_rejects_a_degenerate_allocation() -> None:
    with pytest.raises(ValueError, match="strictly between"):
        srm_check({"control": 1}, 1.0)


# ---------------------------------------------------------------- guardrails


def count_arm(events: int, n: int) -> ArmStats:
    return ArmStats.from_values(np.r_[np.ones(events), np.zeros(n - events)])


def test_critical_guardrail_fails_when_candidate_has_more_security_criticals() -> None:
    control = {"security_criticals": count_arm(5, 2_000)}
    candidate = {"security_criticals": count_arm(60, 2_000)}
    [result] = evaluate_guardrails(control, candidate, DEFAULT_GUARDRAILS[:1], 0.05)
    assert not result.passed
    assert result.critical
    assert result.statistic > 0
    assert result.measured == pytest.approx(55 / 2_000)
    assert "lower confidence bound" in result.reason


def test_guardrail_passes_without_evidence_of_harm_and_waits_for_data() -> None:
    control = {"security_criticals": count_arm(5, 2_000)}
    candidate = {"security_criticals": count_arm(6, 2_000)}
    [ok] = evaluate_guardrails(control, candidate, DEFAULT_GUARDRAILS[:1], 0.05)
    assert ok.passed and ok.statistic <= 0
    [waiting] = evaluate_guardrails({}, {}, DEFAULT_GUARDRAILS[:1], 0.05)
    assert waiting.passed and "waiting" in waiting.reason


def test_relative_guardrail_on_a_higher_is_better_metric() -> None:
    rail = Guardrail(
        "grounding", "grounding_score", direction="higher_is_better", kind="relative", threshold=0.1
    )
    control = {"grounding_score": arm(0.80, 0.1, 3_000, 1)}
    slightly = {"grounding_score": arm(0.78, 0.1, 3_000, 2)}  # 2.5 % lower: fine
    much = {"grounding_score": arm(0.60, 0.1, 3_000, 3)}  # 25 % lower: fails
    assert evaluate_guardrails(control, slightly, [rail])[0].passed
    assert not evaluate_guardrails(control, much, [rail])[0].passed


def test_ceiling_guardrail_is_zero_tolerance_at_threshold_zero() -> None:
    rail = Guardrail("no-breakage", "api_breakages", kind="ceiling", threshold=0.0, critical=True)
    [clean] = evaluate_guardrails({}, {"api_breakages": count_arm(0, 3)}, [rail])
    [broken] = evaluate_guardrails({}, {"api_breakages": count_arm(1, 3)}, [rail])
    assert clean.passed
    assert not broken.passed and "above the ceiling 0" in broken.reason


# ------------------------------------------------------------------- steps


def promote_decision() -> Decision:
    return evaluate(arm(0.30, 0.15, 2_000, 1), arm(0.26, 0.15, 2_000, 2), CONFIG)


def test_next_step_walks_the_steps_and_ends_with_none() -> None:
    steps = CONFIG.steps
    assert [next_step(i, steps) for i in range(len(steps))] == [1, 2, 3, None]
    with pytest.raises(ValueError, match="outside"):
        next_step(4, steps)


def test_promote_evidence_steps_up_once_the_step_has_its_minimum_sample() -> None:
    d = promote_decision()
    early = advance(StepState(0, 500, 40), d, CONFIG)
    assert early.action == "continue" and "waiting for 100 runs per arm at step 0" in early.reason
    up = advance(StepState(0, 2_000, 100), d, CONFIG)
    assert (up.action, up.step_index, up.allocation) == ("step_up", 1, 0.10)


def test_promote_evidence_at_the_last_step_promotes() -> None:
    last = len(CONFIG.steps) - 1
    result = advance(StepState(last, 300, 300), promote_decision(), CONFIG)
    assert (result.action, result.step_index, result.allocation) == ("promote", last, 1.0)


def test_failing_critical_guardrail_rolls_back_even_with_promote_evidence() -> None:
    control = {"security_criticals": count_arm(5, 2_000)}
    candidate = {"security_criticals": count_arm(60, 2_000)}
    rails = evaluate_guardrails(control, candidate, DEFAULT_GUARDRAILS[:1], 0.05)
    result = advance(StepState(3, 300, 300), promote_decision(), CONFIG, guardrails=rails)
    assert (result.action, result.allocation) == ("rollback", 0.0)
    assert "critical guardrail failed: security" in result.reason


def test_failing_non_critical_guardrail_holds_promotion() -> None:
    rail = Guardrail("cost", "cost", kind="relative", threshold=0.1)
    rails = evaluate_guardrails(
        {"cost": arm(0.2, 0.05, 2_000, 1)}, {"cost": arm(0.3, 0.05, 2_000, 2)}, [rail]
    )
    result = advance(StepState(3, 300, 300), promote_decision(), CONFIG, guardrails=rails)
    assert result.action == "continue" and "promotion held: guardrail cost" in result.reason


def test_sample_ratio_mismatch_pauses_instead_of_promoting() -> None:
    srm = srm_check({"control": 9_300, "candidate": 700}, 0.05)
    result = advance(StepState(0, 9_300, 700), promote_decision(), CONFIG, srm=srm)
    assert result.action == "pause" and "sample ratio mismatch" in result.reason


def test_rollback_decision_rolls_back() -> None:
    d = evaluate(arm(0.30, 0.15, 2_000, 1), arm(0.36, 0.15, 2_000, 2), CONFIG)
    assert advance(StepState(1, 0, 0), d, CONFIG).action == "rollback"


# ------------------------------------------------------------------ report


def test_report_has_the_operator_figures_and_is_json_ready() -> None:
    control, candidate = arm(0.30, 0.15, 2_000, 1), arm(0.26, 0.15, 2_000, 2)
    decision = evaluate(control, candidate, CONFIG)
    state = StepState(1, 1_000, 150)
    step = advance(state, decision, CONFIG)
    rails = evaluate_guardrails({}, {}, DEFAULT_GUARDRAILS, 0.05)
    srm = srm_check({"control": 1_350, "candidate": 150}, 0.10)
    out = report(
        control, candidate, CONFIG, decision=decision, state=state, step=step,
        guardrails=rails, srm=srm,
    )  # fmt: skip
    json.dumps(out, allow_nan=False)
    assert out["control_mean"] == pytest.approx(0.30)
    assert out["candidate_mean"] == pytest.approx(0.26)
    assert out["delta_pct"] == pytest.approx(-0.04 / 0.30)
    assert out["ci_low"] < out["ci_high"] < 0
    assert out["control_count"] == out["candidate_count"] == 2_000
    assert (out["step_index"], out["allocation"]) == (1, 0.10)
    assert (out["decision"], out["recommendation"]) == ("promote", "step_up")
    assert [g["name"] for g in out["guardrails"]] == [g.name for g in DEFAULT_GUARDRAILS]
    assert out["srm"]["mismatch"] is False


def test_report_before_any_run_has_no_infinite_numbers() -> None:
    out = report(ArmStats(), ArmStats(), CONFIG)
    json.dumps(out, allow_nan=False)
    assert (out["ci_low"], out["ci_high"], out["recommendation"]) == (None, None, "continue")
