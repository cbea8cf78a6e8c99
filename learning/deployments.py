"""One shadow or canary deployment as the canary stage follows it: its statistics and its next move.

The canary agent keeps one :class:`DeploymentState` per deployment in a Faust
table (``to_dict``/``from_dict``), feeds it every CRL result of the
deployment's runs (:meth:`DeploymentState.observe`) and every routed task
(:meth:`DeploymentState.route`), and asks :meth:`DeploymentState.judge` what to
do after each result. Everything here is pure, so the rules are tested without
Kafka. The statistics are :mod:`learning.canary`'s (mSPRT, always valid).

Rules on top of :func:`learning.canary.advance`:

* replay runs never count; in a canary, shadow runs are ignored; in a shadow,
  the shadow (candidate) runs are compared with the deployment's control runs;
* a shadow never changes what is live: its "promote" is reported (and, with
  ``advance_shadow``, becomes a ``step_up`` into a canary); its "rollback"
  ends the shadow;
* a canary that needs approval before a step reports ``step_up`` as its
  recommendation and waits for ``approve_step``;
* pause on a sample ratio mismatch of this step's routed counts (canary only:
  a shadow mirrors, it does not split) and on missing data: an arm whose
  routed tasks at this step are at least ``missing_min_routed`` while fewer
  than ``missing_ratio`` of them have a CRL result, when the other arm has
  results for more than half of its tasks (its bundles are being lost), for
  ``missing_grace_s`` in a row (results trail routings; a burst is no loss);
* pause on silence too: a deployment that has heard nothing (no routed task,
  no CRL result) for longer than ``max_silence_s`` since its last event (or its
  start, before any) is paused for missing data (:func:`silence`,
  :meth:`DeploymentState.judge_silence`, asked by the stage's timer);
* after a final move (promote, rollback) or a pause, nothing more is decided.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from learning.canary import (
    DEFAULT_GUARDRAILS,
    ArmStats,
    CanaryConfig,
    Decision,
    GuardrailResult,
    SRMResult,
    StepState,
    advance,
    evaluate,
    evaluate_guardrails,
)
from learning.event_guardrails import DEFAULT_ALPHA as EVENT_ALPHA
from learning.event_guardrails import EventGuardrail
from learning.moments import Moments
from learning.srm import SequentialSRM
from models import ids
from models.commands import CanarySettings
from models.events import CRLComputed, DecisionReport, DeploymentRouting, Guardrail

ARMS = ("control", "candidate")
Move = Literal["step_up", "promote", "rollback", "pause", "report"]
# Missing data: see the module notes.
MISSING_MIN_ROUTED = 100
MISSING_RATIO = 0.1
# ...for at least this long (the default of CanarySettings.missing_grace_s): results
# trail their routings by a batch or two of the CRL stage, and under load a burst
# of routings alone looks like a lost arm.
MISSING_GRACE_S = 30.0


#: The count guardrails judged on their events (learning.event_guardrails), not their means:
#: each at EVENT_ALPHA (0.005), so a healthy candidate is rolled back by either at most 1 %.
EVENT_METRICS = ("security_criticals", "api_breakages")


def config_of(settings: CanarySettings, steps: list[float]) -> CanaryConfig:
    """The statistics' configuration of a deployment's settings and traffic steps."""
    return CanaryConfig(
        alpha=settings.alpha,
        min_sample_size=settings.min_sample_size,
        max_crl_increase=settings.max_crl_increase,
        min_improvement=settings.min_improvement,
        max_duration=settings.max_duration_s,
        steps=tuple(steps) if steps else CanaryConfig.steps,
        mode=settings.mode,
        non_inferiority_margin=settings.non_inferiority_margin,
        harm_alpha=settings.harm_alpha,
        step_up=settings.step_up,
    )


@dataclass(frozen=True)
class Silence:
    """How long a deployment has heard nothing, past its limit."""

    since: datetime  # its last event (or its start, before any)
    silent_s: float
    max_silence_s: float


def silence(last_event_at: datetime, now: datetime, max_silence_s: float | None) -> Silence | None:
    """The silence since ``last_event_at`` when it is longer than ``max_silence_s``, else None."""
    if max_silence_s is None:
        return None
    silent_s = (now - last_event_at).total_seconds()
    if silent_s <= max_silence_s:
        return None
    return Silence(since=last_event_at, silent_s=silent_s, max_silence_s=max_silence_s)


@dataclass(frozen=True)
class Verdict:
    """A move to publish on learning.decisions, with its reason and report."""

    action: Move
    reason: str
    step: int
    report: DecisionReport
    event_id: uuid.UUID
    srm: SRMResult | None = None
    missing_arm: str | None = None
    silence: Silence | None = None
    # The operator resumes of the view it was decided on: sent with the decision, so a
    # pause decided before a resume is refused after it, whenever the decision is sent.
    resumes: int = 0


@dataclass
class DeploymentState:
    """What the canary stage knows of one deployment (a Faust table value via ``to_dict``)."""

    doer: str
    routing: DeploymentRouting
    mode: Literal["shadow", "canary"]
    arms: dict[str, ArmStats] = field(default_factory=lambda: {a: ArmStats() for a in ARMS})
    metrics: dict[str, dict[str, Moments]] = field(default_factory=lambda: {a: {} for a in ARMS})
    step_runs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ARMS, 0))
    routed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ARMS, 0))
    p_value: float | None = None
    results: int = 0  # CRL results counted
    reported_at: int = 0  # ``results`` at the last report
    pending_step: int | None = None  # a step-up sent, not yet applied
    awaiting_approval: int | None = None  # the step an approval was asked for
    final: str | None = None  # promote | rollback, once decided
    recommended: str | None = None  # the last report's recommendation
    paused: bool = False
    ended: bool = False
    last_event_at: datetime | None = None  # when the stage last heard of it (routing, result)
    missing_since: datetime | None = None  # when an arm's results first fell short
    # Every routing of the canary, per allocation in force: the sequential SRM test.
    srm_test: SequentialSRM = field(default_factory=SequentialSRM)
    # The count guardrails' event tests, fed by the canary's results.
    events: dict[str, EventGuardrail] = field(
        default_factory=lambda: {m: EventGuardrail() for m in EVENT_METRICS}
    )

    # ------------------------------------------------------------------ inputs

    @property
    def deployment_id(self) -> str:
        return self.routing.deployment_id

    @property
    def settings(self) -> CanarySettings:
        return self.routing.canary or CanarySettings()

    @property
    def step(self) -> int:
        return self.routing.step

    def config(self) -> CanaryConfig:
        """The deployment's statistics configuration (a shadow: one step at its mirror share).

        A shadow passes on evidence only: stepping up by dwell is a canary's way
        of bringing a candidate to more traffic, and a shadow's "step up" is its pass.
        """
        if self.mode == "canary":
            return config_of(self.settings, self.routing.steps)
        return replace(config_of(self.settings, [self.routing.allocation]), step_up="evidence")

    def arm_of(self, result: CRLComputed) -> str | None:
        """The arm a result counts toward, or None when it does not count here."""
        if result.deployment_id != self.deployment_id or result.replay_id is not None:
            return None
        if result.arm == "candidate" and result.shadow != (self.mode == "shadow"):
            return None  # a shadow run in a canary, or a served candidate run in a shadow
        return result.arm

    def observe(self, result: CRLComputed) -> bool:
        """Count one CRL result; whether it counted."""
        arm = self.arm_of(result)
        if arm is None or self.ended:
            return False
        self.arms[arm].add(result.loss)
        for metric, value in result.terms.model_dump().items():
            self.metrics[arm].setdefault(metric, Moments()).add(float(value))
        self.step_runs[arm] += 1
        self.results += 1
        if self.mode == "canary":
            # The share in force now stands for the run's: a result of the step
            # before, arriving after a step-up, is taken at the new share.
            for metric in EVENT_METRICS:
                events = int(getattr(result.terms, metric))
                self.events[metric].add(arm, events, self.routing.allocation)
        return True

    def route(self, arm: str, step: int) -> bool:
        """Count one routed task of the current step; whether it counted."""
        if self.ended or step != self.step or arm not in ARMS:
            return False
        self.routed[arm] += 1
        if self.mode == "canary":
            self.srm_test.add(arm, self.routing.allocation)
        return True

    def heard(self, at: datetime) -> None:
        """Note an event of the deployment (a routed task or a CRL result) received at ``at``."""
        if self.last_event_at is None or at > self.last_event_at:
            self.last_event_at = at

    def follow(self, routing: DeploymentRouting, mode: Literal["shadow", "canary"]) -> None:
        """Take the store's latest view of the deployment (a step change resets per-step counts).

        Views are ordered by (step, resumes): both only grow in the store, so a
        view below the one held is an older one read again after a restart and
        changes nothing. Within one (step, resumes) a pause is final, since an
        older view of the same step has none; only an operator's resume (one
        more ``resumes``) lifts it (:meth:`_resumed`).
        """
        held = (self.step, self.routing.resumes)
        if (routing.step, routing.resumes) < held:  # an older view (read again after a restart)
            return
        resumed = routing.resumes > self.routing.resumes
        if routing.step > self.step or resumed:
            self.step_runs = dict.fromkeys(ARMS, 0)
            self.routed = dict.fromkeys(ARMS, 0)
        if self.pending_step is not None and routing.step >= self.pending_step:
            self.pending_step = None
        if self.awaiting_approval is not None and routing.step >= self.awaiting_approval:
            self.awaiting_approval = None
        self.routing = routing
        self.mode = mode
        if resumed:
            self._resumed(routing)
        else:
            # A pause is final here; an older view of the same step, delivered again, has none.
            self.paused = self.paused or routing.paused

    def _resumed(self, routing: DeploymentRouting) -> None:
        """An operator resumed the deployment: judge it again, its per-step checks afresh.

        What stopped it is not carried over: the step's routed and result counts
        (reset by :meth:`follow`) and the missing-arm clock, which a missing-data
        pause left behind, and the sample-ratio test, whose evidence came from
        the routing that an SRM pause reported as broken (a fresh always-valid
        test holds its level from here). The arms' evidence stays: results are
        counted while paused, and a canary's comparison is over all its steps.
        Silence counts from the resume (:meth:`judge_silence`).
        """
        self.paused = routing.paused  # paused again already if the view says so
        # A promote decided while paused was refused by the store (a decision moves
        # a paused deployment on only after a resume): judge again. A rollback is
        # never held, so it stands.
        if self.final == "promote":
            self.final = None
        self.missing_since = None
        self.srm_test = SequentialSRM()
        self.pending_step = None
        self.awaiting_approval = None

    # ---------------------------------------------------------------- judging

    def srm(self, config: CanaryConfig) -> SRMResult | None:
        """The sample-ratio-mismatch check (canary with a split only).

        The always-valid p-value of the sequential test over every routing of
        the canary, all steps (``learning.srm``): checked after every routing,
        a healthy split pauses with probability at most ``srm_p_threshold``
        over the whole canary. The observed and expected counts reported are
        this step's.
        """
        allocation = self.routing.allocation
        if self.mode != "canary" or not 0.0 < allocation < 1.0:
            return None
        total = sum(self.routed.values())
        p_value = self.srm_test.p_value
        return SRMResult(
            p_value=p_value,
            statistic=self.srm_test.max_log_bf,
            mismatch=p_value < config.srm_p_threshold,
            expected={"control": total * (1.0 - allocation), "candidate": total * allocation},
            observed={arm: int(self.routed.get(arm, 0)) for arm in ARMS},
        )

    def missing_arm(self) -> str | None:
        """An arm whose bundles are not arriving (module notes), or None."""
        if self.mode != "canary":
            return None

        def share(arm: str) -> float:
            return self.step_runs[arm] / self.routed[arm] if self.routed[arm] else 1.0

        for arm, other in (("candidate", "control"), ("control", "candidate")):
            if (
                self.routed[arm] >= MISSING_MIN_ROUTED
                and share(arm) < MISSING_RATIO
                and share(other) > 0.5
            ):
                return arm
        return None

    def guardrails(self, config: CanaryConfig) -> list[GuardrailResult]:
        """The default guardrails on CRL terms, each at alpha / their number.

        Security criticals and API breakages (``EVENT_METRICS``) are judged in a
        canary by the sequential event test instead (at ``EVENT_ALPHA``): a count
        that is nearly always 0 has almost no variance until its first event,
        so a test on the means learns too slowly (issue 16).
        """
        if not self.settings.guardrails:
            return []
        results = evaluate_guardrails(
            self.metrics["control"],
            self.metrics["candidate"],
            DEFAULT_GUARDRAILS,
            config.alpha / len(DEFAULT_GUARDRAILS),
            min_sample_size=config.min_sample_size,
            mixing_sd=config.mixing_sd,
        )
        if self.mode != "canary":
            return results
        return [self._event_result(r) if r.metric in EVENT_METRICS else r for r in results]

    def _event_result(self, means: GuardrailResult) -> GuardrailResult:
        test = self.events[means.metric]
        harmful = test.harmful(EVENT_ALPHA)
        trials = test.trials
        return replace(
            means,
            passed=not harmful,
            statistic=test.max_log_mixture,
            reason=(
                f"runs with {means.metric}: candidate {trials['candidate']}, control "
                f"{trials['control']}; always-valid p {test.p_value:.3g} "
                f"{'≤' if harmful else '>'} {EVENT_ALPHA:g} that the candidate has no more"
            ),
        )

    def judge(self, now: datetime) -> Verdict | None:
        """The move to publish after the latest result, or None (keep watching).

        ``now`` is the event time of that result; the maximum duration counts
        from the deployment's start.
        """
        if self.ended or self.final is not None or self.paused:
            return None
        config = self.config()
        decision = self._evaluate(config, now)
        self.p_value = decision.p_value
        guardrails = self.guardrails(config)
        srm = self.srm(config)
        missing = self.missing_arm()
        since = None if missing is None else min(self.missing_since or now, now)
        self.missing_since = since
        if (
            missing is not None
            and since is not None
            and (now - since).total_seconds() >= self.settings.missing_grace_s
        ):
            reason = (
                f"missing data: {self.routed[missing]} {missing} tasks routed at step "
                f"{self.step} but only {self.step_runs[missing]} CRL results arrived"
            )
            return self._verdict("pause", reason, decision, guardrails, srm, missing=missing)
        step_state = StepState(
            step_index=min(self.step, len(config.steps) - 1),
            control_runs_in_step=self.step_runs["control"],
            candidate_runs_in_step=self.step_runs["candidate"],
        )
        step = advance(step_state, decision, config, guardrails=guardrails, srm=srm)
        action, reason = step.action, step.reason
        if self.mode == "shadow":
            return self._shadow(action, reason, decision, guardrails)
        if action == "pause":
            return self._verdict("pause", reason, decision, guardrails, srm)
        if action in ("promote", "rollback"):
            return self._verdict(action, reason, decision, guardrails, srm)
        if action == "step_up":
            if self.pending_step is not None or self.awaiting_approval is not None:
                return self._report_due(decision, guardrails, srm, "step_up")
            if self.routing.require_approval:
                self.awaiting_approval = step.step_index
                return self._verdict(
                    "report",
                    f"awaiting approval of step {step.step_index}: {reason}",
                    decision,
                    guardrails,
                    srm,
                    recommendation="step_up",
                    target_step=step.step_index,
                )
            return self._verdict(
                "step_up", reason, decision, guardrails, srm, target_step=step.step_index
            )
        return self._report_due(decision, guardrails, srm, "continue")

    def judge_silence(self, now: datetime) -> Verdict | None:
        """A pause when the deployment has heard nothing for longer than ``max_silence_s``.

        The silence counts from the last routed task or CRL result, the start or
        an operator's resume, whichever is latest; never for a deployment that
        ended, was decided or paused.
        """
        if self.ended or self.final is not None or self.paused:
            return None
        since = max(
            (
                t
                for t in (self.last_event_at, self.routing.started_at, self.routing.resumed_at)
                if t is not None
            ),
            default=None,
        )
        found = silence(since, now, self.settings.max_silence_s) if since is not None else None
        if found is None:
            return None
        config = self.config()
        decision = self._evaluate(config, now)
        reason = (
            f"missing data: no routed task or CRL result for {found.silent_s:.0f} s "
            f"(max_silence_s {found.max_silence_s:g}) since {found.since.isoformat()}"
        )
        return self._verdict(
            "pause",
            reason,
            decision,
            self.guardrails(config),
            self.srm(config),
            silence=found,
        )

    def _evaluate(self, config: CanaryConfig, now: datetime) -> Decision:
        """The arms compared as of ``now`` (the maximum duration counts from the start)."""
        started = self.routing.started_at
        elapsed = (now - started).total_seconds() if started else None
        return evaluate(
            self.arms["control"],
            self.arms["candidate"],
            config,
            elapsed=elapsed,
            previous_p_value=self.p_value,
        )

    def _shadow(
        self, action: str, reason: str, decision: Decision, guardrails: list[GuardrailResult]
    ) -> Verdict | None:
        if action == "rollback":
            return self._verdict("rollback", f"shadow failed: {reason}", decision, guardrails)
        if action in ("promote", "step_up"):
            if self.settings.advance_shadow:
                if self.pending_step is not None:  # asked already; the store moves it
                    return None
                return self._verdict(
                    "step_up",
                    f"shadow passed, moving to canary: {decision.reason}",
                    decision,
                    guardrails,
                    target_step=0,
                )
            if self.recommended != "promote" or self._due():
                return self._verdict(
                    "report",
                    f"shadow passed (never changes what is live; start_canary to go on): "
                    f"{decision.reason}",
                    decision,
                    guardrails,
                    recommendation="promote",
                )
            return None
        return self._report_due(decision, guardrails, None, "continue")

    def _due(self) -> bool:
        return self.results - self.reported_at >= self.settings.report_every

    def _report_due(
        self,
        decision: Decision,
        guardrails: list[GuardrailResult],
        srm: SRMResult | None,
        recommendation: str,
    ) -> Verdict | None:
        if not self._due():
            return None
        return self._verdict(
            "report", decision.reason, decision, guardrails, srm, recommendation=recommendation
        )

    def _verdict(
        self,
        action: Move,
        reason: str,
        decision: Decision,
        guardrails: list[GuardrailResult],
        srm: SRMResult | None = None,
        *,
        missing: str | None = None,
        silence: Silence | None = None,
        recommendation: str | None = None,
        target_step: int | None = None,
    ) -> Verdict:
        step = self.step if target_step is None else target_step
        if action in ("promote", "rollback"):
            self.final = action
        elif action == "pause":
            self.paused = True
        elif action == "step_up":
            self.pending_step = step
        self.reported_at = self.results
        self.recommended = recommendation or action
        report = self.report(decision, guardrails, srm, recommendation or action, silence)
        return Verdict(
            action=action,
            reason=reason,
            step=step,
            report=report,
            # Stable ids: a replay of the same inputs decides the same event again.
            event_id=ids.canary_decision_id(
                self.deployment_id, action, step, self.results, self.routing.resumes
            ),
            srm=srm,
            missing_arm=missing,
            silence=silence,
            resumes=self.routing.resumes,
        )

    def report(
        self,
        decision: Decision,
        guardrails: list[GuardrailResult],
        srm: SRMResult | None,
        recommendation: str,
        silence: Silence | None = None,
    ) -> DecisionReport:
        """Both arms' CRL, the difference and its always-valid uncertainty, and every guardrail."""
        rows = [
            Guardrail(
                name=g.name,
                value=g.measured,
                threshold=g.threshold,
                statistic="mean_difference",
                passed=g.passed,
                bound=_finite(g.statistic),
                critical=g.critical,
                reason=g.reason,
            )
            for g in guardrails
        ]
        if srm is not None:
            rows.append(
                Guardrail(
                    name="sample_ratio",
                    value=srm.p_value,
                    threshold=self.config().srm_p_threshold,
                    statistic="srm_p_value",
                    passed=not srm.mismatch,
                    bound=srm.statistic,
                    critical=False,
                    reason=f"routed {srm.observed}, expected "
                    f"{ {k: round(v, 1) for k, v in srm.expected.items()} }",
                )
            )
        if silence is not None:
            rows.append(
                Guardrail(
                    name="silence",
                    value=silence.silent_s,
                    threshold=silence.max_silence_s,
                    statistic="seconds_since_last_event",
                    passed=False,
                    critical=False,
                    reason=f"no routed task or CRL result since {silence.since.isoformat()}",
                )
            )
        return DecisionReport(
            control_mean=max(0.0, decision.control_mean),
            candidate_mean=max(0.0, decision.candidate_mean),
            control_count=decision.control_count,
            candidate_count=decision.candidate_count,
            delta=decision.delta,
            delta_pct=_finite(decision.delta_pct),
            p_value=min(1.0, max(0.0, decision.p_value)),
            ci_low=_finite(decision.ci_low),
            ci_high=_finite(decision.ci_high),
            guardrails=rows,
            deployment_mode=self.mode,
            decision_mode=self.settings.mode,
            step=self.step,
            allocation=self.routing.allocation,
            confidence=1.0 - self.settings.alpha,
            recommendation=recommendation,
        )

    # ----------------------------------------------------------- serialising

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for a Faust table value."""
        return {
            "doer": self.doer,
            "routing": self.routing.model_dump(mode="json"),
            "mode": self.mode,
            "arms": {a: s.to_dict() for a, s in self.arms.items()},
            "metrics": {
                a: {m: s.to_dict() for m, s in ms.items()} for a, ms in self.metrics.items()
            },
            "step_runs": dict(self.step_runs),
            "routed": dict(self.routed),
            "p_value": self.p_value,
            "results": self.results,
            "reported_at": self.reported_at,
            "pending_step": self.pending_step,
            "awaiting_approval": self.awaiting_approval,
            "final": self.final,
            "recommended": self.recommended,
            "paused": self.paused,
            "ended": self.ended,
            "last_event_at": self.last_event_at.isoformat() if self.last_event_at else None,
            "missing_since": self.missing_since.isoformat() if self.missing_since else None,
            "srm": self.srm_test.to_dict(),
            "events": {m: t.to_dict() for m, t in self.events.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentState:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            doer=data["doer"],
            routing=DeploymentRouting.model_validate(data["routing"]),
            mode=data["mode"],
            arms={a: ArmStats.from_dict(s) for a, s in data["arms"].items()},
            metrics={
                a: {m: Moments.from_dict(s) for m, s in ms.items()}
                for a, ms in data["metrics"].items()
            },
            step_runs=dict(data["step_runs"]),
            routed=dict(data["routed"]),
            p_value=data["p_value"],
            results=data["results"],
            reported_at=data["reported_at"],
            pending_step=data["pending_step"],
            awaiting_approval=data["awaiting_approval"],
            final=data["final"],
            recommended=data["recommended"],
            paused=data["paused"],
            ended=data["ended"],
            # States written before the silence rule have no last event time.
            last_event_at=datetime.fromisoformat(data["last_event_at"])
            if data.get("last_event_at")
            else None,
            missing_since=datetime.fromisoformat(data["missing_since"])
            if data.get("missing_since")
            else None,
            # States written before the sequential SRM start its count afresh.
            srm_test=SequentialSRM.from_dict(data.get("srm") or {}),
            events={
                m: EventGuardrail.from_dict((data.get("events") or {}).get(m) or {})
                for m in EVENT_METRICS
            },
        )


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def event_time(result: CRLComputed) -> datetime:
    """The time a result speaks for: its run's, in UTC."""
    return result.run_occurred_at.astimezone(UTC)
