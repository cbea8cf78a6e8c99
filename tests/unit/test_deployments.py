"""The canary stage's per-deployment rules, without Kafka: steps, promotion, rollback, pauses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from learning.canary import DEFAULT_STEPS, CanaryConfig
from learning.crl import compute_crl
from learning.deployments import MISSING_GRACE_S, DeploymentState, silence
from learning.routing import assign, route
from learning.srm import SequentialSRM
from models.commands import CanarySettings
from models.crl import CRLTerms
from models.events import CRLComputed, DeploymentRouting, PolicyChange

START = datetime(2026, 11, 1, tzinfo=UTC)
SETTINGS = CanarySettings(min_sample_size=50, report_every=100)


def routing(step: int = 0, **changes: Any) -> DeploymentRouting:
    steps = [0.1, 0.5]
    fields: dict[str, Any] = {
        "deployment_id": "canary-abc",
        "salt": "s1",
        "candidate_policy_id": "p",
        "candidate_version": 2,
        "allocation": steps[step],
        "step": step,
        "control_policy_id": "p",
        "control_version": 1,
        "steps": steps,
        "started_at": START,
        "canary": SETTINGS,
    }
    return DeploymentRouting(**{**fields, **changes})


def result(arm: str, loss: float, n: int, **changes: Any) -> CRLComputed:
    terms = CRLTerms(
        gate_pass_rate=1.0,
        contradiction_rate=0.0,
        grounding_score=1.0,
        cost_over_budget_pct=loss,
        latency_p95_norm=0.0,
        security_criticals=0,
        api_breakages=0,
        db_migration_fail=0,
        rag_coverage=1.0,
    )
    crl = compute_crl(terms)
    fields: dict[str, Any] = {
        "doer": "Doer",
        "source_event_id": uuid.uuid4(),
        "run_occurred_at": START + timedelta(seconds=n),
        "run_id": f"r-{arm}-{n}",
        "phase": "draft",
        "policy_id": "p",
        "policy_version": 2 if arm == "candidate" else 1,
        "tenant_id": "t",
        "deployment_id": "canary-abc",
        "arm": arm,
        "terms": terms,
        "loss": crl.loss,
        "contributions": crl.contributions,
        "weights_version": "default-v1",
        "security_criticals": 0,
    }
    return CRLComputed(**{**fields, **changes})


def feed(state: DeploymentState, candidate_mean: float, n: int, seed: int = 1) -> list[Any]:
    """n results per arm at the step's split; every verdict judged on the way."""
    rng = np.random.default_rng(seed)
    verdicts = []
    share = state.routing.allocation
    for i in range(n):
        arm = "candidate" if rng.random() < share else "control"
        mean = candidate_mean if arm == "candidate" else 0.3
        state.route(arm, state.step)
        state.observe(result(arm, max(0.0, float(rng.normal(mean, 0.15))), seed * 10**6 + i))
        verdict = state.judge(START + timedelta(seconds=i))
        if verdict is not None:
            verdicts.append(verdict)
    return verdicts


def test_a_better_candidate_steps_up_then_is_promoted() -> None:
    state = DeploymentState("Doer", routing(), "canary")
    verdicts = feed(state, 0.2, 3000)
    step_ups = [v for v in verdicts if v.action == "step_up"]
    assert step_ups and step_ups[0].step == 1
    # The share the step gives the candidate, not a change of it ("+50.0 %" before).
    assert step_ups[0].reason.startswith("step 0 → 1 (50 % of the traffic)"), step_ups[0].reason
    assert not any(v.action == "promote" for v in verdicts)  # not before the step is applied
    state.follow(routing(step=1), "canary")
    assert state.step_runs == {"control": 0, "candidate": 0} and state.pending_step is None
    verdicts = feed(state, 0.2, 3000, seed=2)
    final = [v for v in verdicts if v.action == "promote"]
    assert len(final) == 1 and state.final == "promote"
    report = final[0].report
    assert report.candidate_mean < report.control_mean and report.delta_pct is not None
    assert report.ci_high is not None and report.ci_high < 0
    assert report.step == 1 and report.recommendation == "promote"
    assert {g.name for g in report.guardrails} >= {"security", "cost", "sample_ratio"}
    assert state.judge(START) is None  # nothing after a final move


def test_a_worse_candidate_is_rolled_back() -> None:
    state = DeploymentState("Doer", routing(), "canary")
    verdicts = feed(state, 0.45, 4000)
    assert [v.action for v in verdicts if v.action != "report"] == ["rollback"]
    assert verdicts[-1].report.delta > 0


def test_a_biased_split_pauses_with_the_srm_guardrail_failing() -> None:
    state = DeploymentState("Doer", routing(), "canary")
    for i in range(400):
        state.route("candidate" if i % 4 == 0 else "control", 0)  # 25 % at a 10 % step
    state.observe(result("control", 0.3, 1))
    verdict = state.judge(START)
    assert verdict is not None and verdict.action == "pause" and verdict.srm is not None
    srm = next(g for g in verdict.report.guardrails if g.name == "sample_ratio")
    assert not srm.passed and srm.value < 0.001
    assert state.paused and state.judge(START) is None


def test_one_routing_to_the_small_arm_is_no_mismatch_and_the_test_spans_the_steps() -> None:
    """The naive chi-square gave p ≈ 1e-5 for one routing at a 5-10 % step and paused."""
    state = DeploymentState("Doer", routing(), "canary")
    state.route("candidate", 0)
    srm = state.srm(state.config())
    assert srm is not None and not srm.mismatch and srm.p_value > 0.99
    for i in range(99):
        state.route("candidate" if i % 10 == 0 else "control", 0)
    state.follow(routing(step=1), "canary")
    for i in range(100):
        state.route("candidate" if i % 2 else "control", 1)
    expected = SequentialSRM()
    for i in range(100):
        expected.add("candidate" if i == 0 or (i - 1) % 10 == 0 else "control", 0.1)
    for i in range(100):
        expected.add("candidate" if i % 2 else "control", 0.5)
    assert state.srm_test == expected  # one test over both steps, not reset at the step-up
    assert DeploymentState.from_dict(state.to_dict()).srm_test == expected


def test_a_candidate_shipping_security_criticals_is_rolled_back_on_its_events() -> None:
    """The control never has one, the candidate in 1 % of its runs (issue 16: median 1,941
    candidate runs with the test on the means); with the default steps and dwell the event
    test rolls back at the third (here at the 5 % step, 110 candidate runs)."""
    steps = list(DEFAULT_STEPS)
    settings = CanarySettings(min_sample_size=200, report_every=100)

    def at(step: int) -> DeploymentRouting:
        return routing(step, steps=steps, allocation=steps[step], canary=settings)

    state = DeploymentState("Doer", at(0), "canary")
    rng = np.random.default_rng(4)
    criticals = candidate_runs = 0
    for n in range(200_000):
        arm = "candidate" if rng.random() < state.routing.allocation else "control"
        candidate_runs += arm == "candidate"
        state.route(arm, state.step)
        found = result(arm, 0.3, n)
        if arm == "candidate" and rng.random() < 0.01:
            criticals += 1
            terms = found.terms.model_copy(update={"security_criticals": 1})
            found = found.model_copy(update={"terms": terms, "security_criticals": 1})
        state.observe(found)
        verdict = state.judge(START)
        if verdict is not None and verdict.action == "step_up":  # by dwell: the store applies it
            state.follow(at(verdict.step), "canary")
        elif verdict is not None and verdict.action != "report":
            break
    assert verdict is not None and verdict.action == "rollback", verdict
    security = next(g for g in verdict.report.guardrails if g.name == "security")
    assert not security.passed and "candidate 3, control 0" in security.reason
    assert criticals == 3 and candidate_runs < 300
    assert DeploymentState.from_dict(state.to_dict()).events == state.events


def test_bundles_missing_from_one_arm_pause_the_canary() -> None:
    state = DeploymentState("Doer", routing(step=1), "canary")
    for i in range(300):
        arm = "candidate" if i % 2 else "control"
        state.route(arm, 1)
        if arm == "control":
            state.observe(result("control", 0.3, i))
    # A shortfall is only missing data once it has lasted MISSING_GRACE_S.
    assert not pauses(state.judge(START))
    assert not pauses(state.judge(START + timedelta(seconds=MISSING_GRACE_S - 1)))
    restored = DeploymentState.from_dict(state.to_dict())  # the clock survives a restart
    verdict = restored.judge(START + timedelta(seconds=MISSING_GRACE_S))
    assert verdict is not None and verdict.action == "pause" and verdict.missing_arm == "candidate"


def test_results_that_catch_up_within_the_grace_period_pause_nothing() -> None:
    state = DeploymentState("Doer", routing(step=1), "canary")
    for i in range(300):  # a burst of routings, results not there yet for the candidate
        arm = "candidate" if i % 2 else "control"
        state.route(arm, 1)
        if arm == "control":
            state.observe(result("control", 0.3, i))
    assert not pauses(state.judge(START))
    for i in range(150):  # then they arrive
        state.observe(result("candidate", 0.3, 1000 + i))
    assert not pauses(state.judge(START + timedelta(seconds=MISSING_GRACE_S + 5)))
    assert state.missing_since is None


def pauses(verdict: Any) -> bool:
    return verdict is not None and verdict.action == "pause"


def silent(max_silence_s: float | None = 600.0, **changes: Any) -> DeploymentState:
    """A canary with traffic until START + 10 s, then nothing."""
    settings = SETTINGS.model_copy(update={"max_silence_s": max_silence_s})
    state = DeploymentState("Doer", routing(canary=settings, **changes), "canary")
    for i in range(20):
        state.route("control", 0)
        state.observe(result("control", 0.3, i))
        state.heard(START + timedelta(seconds=i / 2))
    return state


def test_silence_pauses_only_past_max_silence_s() -> None:
    last = START + timedelta(seconds=10)
    assert silence(last, last + timedelta(seconds=600), 600.0) is None
    found = silence(last, last + timedelta(seconds=600.5), 600.0)
    assert found is not None and (found.silent_s, found.max_silence_s) == (600.5, 600.0)
    assert silence(last, last + timedelta(days=30), None) is None  # None: never pauses


def test_a_silent_canary_is_paused_once_with_the_silence_in_its_report() -> None:
    state = silent()
    last = START + timedelta(seconds=9.5)
    assert state.judge_silence(last + timedelta(seconds=599)) is None
    assert not state.paused
    verdict = state.judge_silence(last + timedelta(seconds=601))
    assert verdict is not None and verdict.action == "pause"
    assert "missing data" in verdict.reason and "601 s" in verdict.reason
    assert verdict.silence is not None and verdict.missing_arm is None
    row = next(g for g in verdict.report.guardrails if g.name == "silence")
    assert (row.value, row.threshold, row.passed) == (601.0, 600.0, False)
    assert verdict.report.control_count == 20
    assert state.paused  # once per silence: a later tick finds it paused
    assert state.judge_silence(last + timedelta(seconds=1200)) is None


def test_an_event_restarts_the_silence_and_survives_the_table_round_trip() -> None:
    state = silent()
    state.heard(START + timedelta(seconds=500))
    state.heard(START + timedelta(seconds=400))  # late and out of order: the latest stays
    again = DeploymentState.from_dict(state.to_dict())
    assert again.last_event_at == START + timedelta(seconds=500)
    assert again.judge_silence(START + timedelta(seconds=1099)) is None
    assert again.judge_silence(START + timedelta(seconds=1101)) is not None


def test_a_deployment_that_never_heard_anything_counts_from_its_start() -> None:
    settings = SETTINGS.model_copy(update={"max_silence_s": 60.0})
    state = DeploymentState("Doer", routing(canary=settings), "canary")
    assert state.judge_silence(START + timedelta(seconds=59)) is None
    verdict = state.judge_silence(START + timedelta(seconds=61))
    assert verdict is not None and verdict.silence is not None
    assert verdict.silence.since == START


def test_an_ended_paused_or_decided_deployment_is_never_paused_for_silence() -> None:
    later = START + timedelta(days=1)
    ended = silent()
    ended.ended = True
    assert ended.judge_silence(later) is None
    paused = silent(paused=True)
    paused.follow(paused.routing, "canary")
    assert paused.paused and paused.judge_silence(later) is None
    decided = silent()
    decided.final = "rollback"
    assert decided.judge_silence(later) is None
    assert silent(max_silence_s=None).judge_silence(later) is None


def test_replays_and_shadow_runs_do_not_count_in_a_canary() -> None:
    state = DeploymentState("Doer", routing(), "canary")
    assert not state.observe(result("candidate", 0.3, 1, replay_id="rep-1"))
    assert not state.observe(result("candidate", 0.3, 2, shadow=True))
    assert not state.observe(result("candidate", 0.3, 3, deployment_id="other"))
    assert state.observe(result("candidate", 0.3, 4))
    assert state.arms["candidate"].count == 1 and state.results == 1


def test_a_passing_shadow_is_reported_and_never_promoted() -> None:
    shadow = routing(allocation=1.0, steps=[])
    state = DeploymentState("Doer", shadow, "shadow")
    rng = np.random.default_rng(3)
    actions = []
    for i in range(1500):
        for arm, mean in (("control", 0.3), ("candidate", 0.2)):
            loss = max(0.0, float(rng.normal(mean, 0.15)))
            state.observe(result(arm, loss, i, shadow=arm == "candidate"))
            verdict = state.judge(START)
            if verdict is not None:
                actions.append((verdict.action, verdict.report.recommendation))
    assert ("report", "promote") in actions
    assert all(action == "report" for action, _ in actions)


def test_a_passing_shadow_with_advance_moves_to_canary() -> None:
    settings = SETTINGS.model_copy(update={"advance_shadow": True})
    state = DeploymentState("Doer", routing(allocation=1.0, steps=[], canary=settings), "shadow")
    rng = np.random.default_rng(4)
    moves = []
    for i in range(1500):
        for arm, mean in (("control", 0.3), ("candidate", 0.2)):
            loss = max(0.0, float(rng.normal(mean, 0.15)))
            state.observe(result(arm, loss, i, shadow=arm == "candidate"))
            verdict = state.judge(START)
            if verdict is not None and verdict.action != "report":
                moves.append((verdict.action, verdict.report.deployment_mode))
    assert moves == [("step_up", "shadow")]  # asked once; the policy store moves it


def test_approval_is_asked_once_instead_of_stepping_up() -> None:
    state = DeploymentState("Doer", routing(require_approval=True), "canary")
    verdicts = feed(state, 0.2, 3000)
    asked = [v for v in verdicts if v.report.recommendation == "step_up"]
    assert asked and asked[0].action == "report" and "approval" in asked[0].reason
    assert "(50 % of the traffic)" in asked[0].reason, asked[0].reason
    assert not any(v.action == "step_up" for v in verdicts)
    assert state.awaiting_approval == 1


def test_every_approval_alert_while_it_waits_says_which_step_waits() -> None:
    # The first report asks; later ones while it waits are about the evidence, and the
    # operator reading the alert must still see that an approval is what is awaited.
    from agents.canary import _alert as canary_alert
    from agents.canary import _decision as canary_decision

    state = DeploymentState("Doer", routing(require_approval=True), "canary")
    reports = [v for v in feed(state, 0.2, 6000) if v.action == "report"]
    first_ask = next(i for i, v in enumerate(reports) if v.reason.startswith("awaiting"))
    alerts = [canary_alert(state, v, canary_decision(state, v, None)) for v in reports]
    # Reports before the ask are no request (judged by each verdict, not by the state
    # the batch ends in); the ask and every report after it are.
    assert not any(a is not None and a.kind == "approval_needed" for a in alerts[:first_ask])
    asking = [a for a in alerts[first_ask:] if a is not None and a.kind == "approval_needed"]
    assert len(asking) == len(reports) - first_ask >= 2, [v.reason for v in reports]
    assert all("awaiting approval of step 1" in a.message for a in asking)
    assert all(a.evidence == {"step": 1} for a in asking)


def test_the_state_survives_the_table_round_trip() -> None:
    state = DeploymentState("Doer", routing(), "canary")
    feed(state, 0.25, 500)
    again = DeploymentState.from_dict(state.to_dict())
    assert again == state


def test_a_max_duration_without_a_win_rolls_back() -> None:
    settings = SETTINGS.model_copy(update={"max_duration_s": 60.0})
    state = DeploymentState("Doer", routing(canary=settings), "canary")
    state.observe(result("control", 0.3, 1))
    verdict = state.judge(START + timedelta(minutes=2))
    assert verdict is not None and verdict.action == "rollback" and "max_duration" in verdict.reason


def test_routes_follow_the_live_state_and_nest_as_the_allocation_grows() -> None:
    base = {
        "doer": "Doer",
        "policy_id": "p",
        "version": 1,
        "content_hash": "0" * 64,
        "signature_key_id": "k",
    }
    active = PolicyChange(change="promoted", status="active", **base)
    assert route(active, "t1").deployment_id is None and route(active, "t1").policy_id == "p"
    tasks = [f"task-{i}" for i in range(2000)]
    small = PolicyChange(change="canary_started", status="canary", deployment=routing(), **base)
    large = small.model_copy(update={"deployment": routing(step=1)})
    in_small = {t for t in tasks if route(small, t).arm == "candidate"}
    in_large = {t for t in tasks if route(large, t).arm == "candidate"}
    assert in_small <= in_large and 150 < len(in_small) < 250 and 900 < len(in_large) < 1100
    assert all(route(large, t).version == 2 for t in in_large)
    shadow = small.model_copy(update={"status": "shadow"})
    found = route(shadow, tasks[0])
    assert found.version == 1 and found.mirror == (assign(tasks[0], routing()) == "candidate")


def test_an_older_view_delivered_again_neither_unpauses_nor_moves_back() -> None:
    state = DeploymentState("Doer", routing(), "canary")
    state.follow(routing(step=1), "canary")
    state.follow(routing(step=1, paused=True), "canary")
    assert state.paused
    state.follow(routing(step=1), "canary")  # the step change, read again after a restart
    state.follow(routing(step=0), "canary")  # the start, read again
    assert state.paused and state.step == 1
    assert state.judge(START + timedelta(seconds=1)) is None


def test_the_contract_defaults_are_the_statistics_defaults() -> None:
    """CanarySettings (models) repeats learning.canary's defaults: they must agree."""
    config = DeploymentState("Doer", routing(canary=CanarySettings()), "canary").config()
    defaults = CanaryConfig(steps=config.steps)
    assert (config.harm_alpha, config.step_up) == (defaults.harm_alpha, defaults.step_up)
    assert (config.alpha, config.min_sample_size, config.max_crl_increase) == (
        defaults.alpha,
        defaults.min_sample_size,
        defaults.max_crl_increase,
    )
    shadow = DeploymentState("Doer", routing(canary=CanarySettings()), "shadow").config()
    assert shadow.step_up == "evidence"
    conservative = CanarySettings(step_up="evidence", harm_alpha=None)
    chosen = DeploymentState("Doer", routing(canary=conservative), "canary").config()
    assert (chosen.step_up, chosen.harm_alpha) == ("evidence", None)


# ------------------------------------------------------------------ an operator's resume


def test_a_resume_lifts_a_pause_and_no_older_view_brings_it_back_or_lifts_the_next() -> None:
    state = DeploymentState("Doer", routing(step=1), "canary")
    state.follow(routing(step=1, paused=True), "canary")
    assert state.paused and state.judge(START) is None
    resumed_at = START + timedelta(hours=1)
    state.follow(routing(step=1, resumes=1, resumed_at=resumed_at), "canary")
    assert not state.paused and state.routing.resumes == 1
    # The pause and the views before it, read again after a restart: older, nothing changes.
    for older in (routing(step=1, paused=True), routing(step=1), routing(step=0)):
        state.follow(older, "canary")
        assert not state.paused and state.routing.resumes == 1
    # Paused again (by the canary or an operator): final until the next resume, as before.
    state.follow(routing(step=1, resumes=1, resumed_at=resumed_at, paused=True), "canary")
    state.follow(routing(step=1, resumes=1, resumed_at=resumed_at), "canary")
    assert state.paused
    restored = DeploymentState.from_dict(state.to_dict())
    assert restored.paused and restored.routing.resumes == 1
    assert restored.routing.resumed_at == resumed_at
    restored.follow(routing(step=1, resumes=2, resumed_at=resumed_at), "canary")
    assert not restored.paused


def test_a_resumed_canary_whose_arm_went_missing_is_judged_afresh_and_pauses_again() -> None:
    state = DeploymentState("Doer", routing(step=1), "canary")

    def lose_the_candidate(offset: int) -> None:
        for i in range(300):
            arm = "candidate" if i % 2 else "control"
            state.route(arm, 1)
            if arm == "control":
                state.observe(result("control", 0.3, offset + i))

    lose_the_candidate(0)
    state.judge(START)
    assert pauses(state.judge(START + timedelta(seconds=MISSING_GRACE_S)))
    state.follow(routing(step=1, paused=True), "canary")
    counted = state.results
    state.follow(routing(step=1, resumes=1, resumed_at=START + timedelta(minutes=5)), "canary")
    # What stopped it starts afresh; the arms' evidence stays.
    assert not state.paused and state.missing_since is None
    assert state.routed == {"control": 0, "candidate": 0}
    assert state.step_runs == {"control": 0, "candidate": 0}
    assert state.results == counted and state.arms["control"].count == 150
    # The orchestrator fixed: both arms' results arrive; nothing pauses it.
    for i in range(200):
        arm = "candidate" if i % 2 else "control"
        state.route(arm, 1)
        state.observe(result(arm, 0.3, 10_000 + i))
    later = START + timedelta(minutes=10)
    assert not pauses(state.judge(later))
    assert not pauses(state.judge(later + timedelta(seconds=MISSING_GRACE_S)))
    # Not fixed after all: judged as before, it pauses again once the grace has passed
    # (under a tenth of the candidate's routings with a result: 100 of 1,150).
    for round_ in range(7):
        lose_the_candidate(20_000 + 1_000 * round_)
    assert not pauses(state.judge(later + timedelta(seconds=MISSING_GRACE_S + 1)))
    verdict = state.judge(later + timedelta(seconds=2 * MISSING_GRACE_S + 1))
    assert verdict is not None and verdict.action == "pause" and verdict.missing_arm == "candidate"


def test_a_resume_after_a_sample_ratio_pause_starts_the_sequential_test_afresh() -> None:
    state = DeploymentState("Doer", routing(), "canary")
    for i in range(400):
        state.route("candidate" if i % 4 == 0 else "control", 0)
    state.observe(result("control", 0.3, 1))
    assert pauses(state.judge(START))
    state.follow(routing(paused=True), "canary")
    state.follow(routing(resumes=1, resumed_at=START + timedelta(minutes=1)), "canary")
    srm = state.srm(state.config())
    assert srm is not None and not srm.mismatch and srm.p_value == 1.0
    for i in range(400):  # the router fixed: 10 % to the candidate at the 10 % step
        state.route("candidate" if i % 10 == 0 else "control", 0)
    state.observe(result("control", 0.3, 2))
    assert not pauses(state.judge(START + timedelta(minutes=2)))


def test_after_a_resume_a_second_silence_pause_is_another_decision_and_a_final_is_dropped() -> None:
    state = silent()
    first = state.judge_silence(START + timedelta(seconds=700))
    assert first is not None and first.action == "pause"
    state.final = "promote"  # decided meanwhile, refused by the store while paused
    state.follow(state.routing.model_copy(update={"paused": True}), "canary")
    resumed_at = START + timedelta(hours=1)
    state.follow(
        state.routing.model_copy(update={"paused": False, "resumes": 1, "resumed_at": resumed_at}),
        "canary",
    )
    assert state.final is None
    second = state.judge_silence(resumed_at + timedelta(seconds=700))
    # The same step and result count (a silence counts no result): the id tells them apart.
    assert second is not None and second.action == "pause" and state.results == 20
    assert second.event_id != first.event_id
    assert (first.resumes, second.resumes) == (0, 1)
    # A rollback is never held by a pause: it stands through a resume.
    state.final = "rollback"
    state.follow(state.routing.model_copy(update={"resumes": 2}), "canary")
    assert state.final == "rollback"


def test_a_pause_sent_after_a_resume_in_its_batch_names_the_resumes_it_was_decided_on() -> None:
    """A batch behind: the pause is decided, then the pause and the resume are followed."""
    from agents.canary import _decision

    state = silent()
    verdict = state.judge_silence(START + timedelta(seconds=700))
    assert verdict is not None and verdict.action == "pause"
    state.follow(state.routing.model_copy(update={"paused": True}), "canary")
    state.follow(state.routing.model_copy(update={"paused": False, "resumes": 1}), "canary")
    assert not state.paused and state.routing.resumes == 1
    # Sent at the batch's end: it still says it was decided before the resume, so the
    # store refuses it instead of pausing the resumed canary again.
    assert _decision(state, verdict, None).resumes == 0


def test_silence_counts_from_the_resume() -> None:
    state = silent()  # heard last at START + 9.5 s, max_silence_s 600
    assert pauses(state.judge_silence(START + timedelta(seconds=700)))
    resumed_at = START + timedelta(hours=2)
    state.follow(state.routing.model_copy(update={"paused": True}), "canary")
    state.follow(
        state.routing.model_copy(update={"paused": False, "resumes": 1, "resumed_at": resumed_at}),
        "canary",
    )
    assert not state.paused
    assert state.judge_silence(resumed_at + timedelta(seconds=599)) is None
    verdict = state.judge_silence(resumed_at + timedelta(seconds=601))
    assert verdict is not None and verdict.silence is not None
    assert verdict.silence.since == resumed_at


def test_a_routing_without_resumes_keeps_the_record_it_was_signed_as() -> None:
    """Records signed before ``resumes`` existed dump, and so verify, as they were."""
    plain = routing().model_dump(mode="json")
    assert "resumes" not in plain and "resumed_at" not in plain
    resumed = routing(resumes=1, resumed_at=START).model_dump(mode="json")
    assert resumed["resumes"] == 1 and resumed["resumed_at"] == "2026-11-01T00:00:00Z"
    assert DeploymentRouting.model_validate_json(routing().to_json()) == routing()
