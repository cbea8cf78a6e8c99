"""The canary stage: CRL results and routed tasks of live deployments → decisions.

Reads learning.crl-computed, learning.task-routed and learning.policy-changes
(all keyed by doer, so one doer's deployment lives in one worker). Per batch:
decode → fold into the deployment's state (``learning.deployments``: arm
statistics, guardrail metrics, routed counts) → judge after every counted
result → write the states to the table once → store the batch's routings and
decisions in PostgreSQL with one statement each → emit the decisions on
learning.decisions and alerts on learning.alerts. The policy agent applies the
decisions (step up, promote, roll back, pause); their effect comes back on
learning.policy-changes, which this stage follows.

A deployment is only followed once the policy store knows it (a look-up by id
in PostgreSQL), so a deployment of another database is never acted on; a
result or routing naming an unknown deployment is a dead letter. Redelivered
results and routings are counted once (``canary-seen``).

A timer pauses the deployments of this worker's partitions that have heard
nothing for longer than their ``max_silence_s`` (``DeploymentState.judge_silence``);
the time of the last event is kept in the table, so a restart does not reset it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

from agents.app import app
from agents.codecs import decode
from agents.dlq import dead_letter, guarded, guarded_batch
from agents.streams import batches
from agents.tables import SEPARATOR, DoerPartitions, doer_of, doer_table
from learning.deployments import DeploymentState, Verdict, event_time
from models.events import Alert, CRLComputed, DecisionMade, PolicyChange, TaskRouted
from storage.canary import deployment, insert_decisions, insert_routings
from storage.policies import derived_event_id
from storage.pool import durably

log = logging.getLogger("learnops.canary")

CRL = "learning.crl-computed"
ROUTED = "learning.task-routed"
CHANGES = "learning.policy-changes"
BATCH = 1000  # at most this many events per batch
SILENCE_CHECK_S = 1.0  # how often the timer looks for silent deployments
# After a start or a rebalance the timer waits this long before judging silence,
# so that events waiting on the topics (a worker down for a while) are read first.
CATCH_UP_S = 30.0

canary_inputs = app.topic(CRL, ROUTED, CHANGES, key_type=bytes, value_type=bytes)
decisions = app.topic("learning.decisions", key_type=bytes, value_type=bytes)
alerts = app.topic("learning.alerts", key_type=bytes, value_type=bytes)

partitions = DoerPartitions()
states = doer_table(
    app, "canary-deployments", partitions, default=dict, help_="Canary state per doer/deployment"
)
live = doer_table(app, "canary-live", partitions, default=str, help_="Live deployment per doer")
seen = doer_table(
    app, "canary-seen", partitions, default=bool, help_="Counted runs and routings per doer"
)
# The partition each doer's events arrive on, plus one (0: never seen): the silence
# timer judges the deployments of the partitions this worker owns.
doers = doer_table(app, "canary-doers", partitions, default=int, help_="Doer → source partition")
# The agent and the timer both load, judge and write deployment states.
judging = asyncio.Lock()


class Batch:
    """One batch's deployment states, loaded once and written once, and what it emits."""

    def __init__(self) -> None:
        self.states: dict[str, DeploymentState] = {}
        self.unknown: set[str] = set()
        self.seen: set[str] = set()
        self.routings: list[TaskRouted] = []
        self.verdicts: list[tuple[DeploymentState, Verdict]] = []
        self.partitions: dict[str, int] = {}

    def arrived(self, doer: str, event: Any) -> None:
        """Note the partition an event of this doer arrived on."""
        partitions.seen(doer, event.message.partition)
        self.partitions[doer] = event.message.partition

    async def state(self, doer: str, deployment_id: str) -> DeploymentState | None:
        """The deployment's state: this batch's, the table's, or new from the policy store."""
        key = f"{doer}{SEPARATOR}{deployment_id}"
        if key in self.states:
            return self.states[key]
        if key in self.unknown:
            return None
        stored = states.get(key)
        if stored:
            found = DeploymentState.from_dict(stored)
        else:
            record = await durably(partial(deployment, app.pool, deployment_id), what="deployment")
            if record is None or record.doer != doer:
                self.unknown.add(key)
                return None
            found = DeploymentState(
                doer,
                record.routing,
                "shadow" if record.mode == "shadow" else "canary",
                ended=record.ended,
            )
        self.states[key] = found
        return found

    def first_time(self, key: str) -> bool:
        """Whether a run or routing is counted for the first time (and mark it counted)."""
        if key in self.seen or seen.get(key):
            return False
        self.seen.add(key)
        return True

    async def flush(self) -> None:
        """Store routings and decisions, emit, then write states and marks.

        In this order a crash part-way leaves the table behind, never ahead: the
        redelivered batch is judged again from the older state and gives the same
        decisions with the same ids, which PostgreSQL and the policy store take once.
        """
        made = [_decision(state, verdict) for state, verdict in self.verdicts]
        if self.routings:
            await durably(partial(insert_routings, app.pool, self.routings), what="routings")
        if made:
            await durably(partial(insert_decisions, app.pool, made), what="decisions")
        for (state, verdict), decision in zip(self.verdicts, made, strict=True):
            await decisions.send(key=decision.doer.encode(), value=decision.to_json())
            log.info(
                "canary_decision doer=%s deployment=%s action=%s step=%d control=%d candidate=%d "
                "delta_pct=%s p=%.3g",
                decision.doer,
                decision.deployment_id,
                decision.action,
                decision.step,
                decision.report.control_count,
                decision.report.candidate_count,
                decision.report.delta_pct,
                decision.report.p_value,
            )
            alert = _alert(state, verdict, decision)
            if alert is not None:
                await alerts.send(key=alert.doer.encode(), value=alert.to_json())
        for key, state in self.states.items():
            states[key] = state.to_dict()
        for key in self.seen:
            seen[key] = True
        for doer, partition in self.partitions.items():
            if doers[doer] != partition + 1:
                doers[doer] = partition + 1


def _decision(state: DeploymentState, verdict: Verdict) -> DecisionMade:
    routing = state.routing
    return DecisionMade(
        event_id=verdict.event_id,
        doer=state.doer,
        deployment_id=routing.deployment_id,
        candidate_policy_id=routing.candidate_policy_id,
        candidate_version=routing.candidate_version,
        action=verdict.action,
        reason=verdict.reason,
        step=verdict.step,
        report=verdict.report,
    )


def _alert(state: DeploymentState, verdict: Verdict, decision: DecisionMade) -> Alert | None:
    """The alert of a pause (sample ratio mismatch, missing data) or an approval request."""
    common: dict[str, Any] = {
        "event_id": derived_event_id("alert", verdict.event_id),
        "doer": decision.doer,
        "deployment_id": decision.deployment_id,
        "policy_id": decision.candidate_policy_id,
        "policy_version": decision.candidate_version,
        "message": f"{decision.deployment_id}: {verdict.reason}",
    }
    missing = _missing(state, verdict)
    if verdict.action == "pause" and missing is not None:
        return Alert(kind="missing_data", severity="critical", **missing, **common)
    if verdict.action == "pause" and verdict.srm is not None:
        srm = verdict.srm
        return Alert(
            kind="sample_ratio_mismatch",
            severity="critical",
            value=srm.p_value,
            threshold=state.config().srm_p_threshold,
            evidence={
                "step": state.step,
                "allocation": state.routing.allocation,
                "observed": dict(srm.observed),
                "expected": dict(srm.expected),
                "chi_square": srm.statistic,
            },
            **common,
        )
    if verdict.action == "report" and state.awaiting_approval is not None:
        return Alert(
            kind="approval_needed",
            severity="info",
            evidence={"step": state.awaiting_approval},
            **common,
        )
    return None


def _missing(state: DeploymentState, verdict: Verdict) -> dict[str, Any] | None:
    """The alert fields of the missing data a verdict found (an arm's, a silence), or None."""
    arm, silence = verdict.missing_arm, verdict.silence
    if arm is not None:
        return {
            "value": float(state.step_runs[arm]),
            "baseline": float(state.routed[arm]),
            "evidence": {"arm": arm, "step": state.step, "routed": dict(state.routed)},
        }
    if silence is not None:
        return {
            "value": silence.silent_s,
            "threshold": silence.max_silence_s,
            "evidence": {"step": state.step, "last_event_at": silence.since.isoformat()},
        }
    return None


async def _follow(change: PolicyChange, batch: Batch) -> None:
    """Follow the doer's live deployment: new, stepped, paused, or ended."""
    doer = change.doer
    current = live.get(doer) or ""
    now = change.deployment.deployment_id if change.deployment else ""
    if current and current != now:
        # The store ends a doer's live deployment before any change can name another
        # one (or none); a change that does while it is still live is an older one
        # delivered again (a restart before its offset was committed). Taking it
        # would end the live deployment for good: its results would count no more.
        record = await durably(partial(deployment, app.pool, current), what="deployment")
        if record is not None and not record.ended:
            log.info("stale_policy_change doer=%s change=%s live=%s", doer, change.change, current)
            return
        ended = await batch.state(doer, current)
        if ended is not None:
            ended.ended = True
    if change.deployment is not None:
        state = await batch.state(doer, now)
        if state is None:
            return
        state.follow(change.deployment, "shadow" if change.status == "shadow" else "canary")
    if current != now:
        live[doer] = now


async def _take(event: Any, batch: Batch) -> None:
    topic = event.message.topic
    if topic == CHANGES:
        change = await decode(event, PolicyChange, stage="canary")
        if change is not None:
            batch.arrived(change.doer, event)
            await _follow(change, batch)
        return
    if topic == ROUTED:
        routed = await decode(event, TaskRouted, stage="canary")
        if routed is None:
            return
        batch.arrived(routed.doer, event)
        state = await _deployment_of(event, batch, routed.doer, routed.deployment_id)
        if state is None:
            return
        state.heard(datetime.now(UTC))
        batch.routings.append(routed)  # stored idempotently by event id, counted once
        if batch.first_time(f"{routed.doer}/task/{routed.event_id}"):
            state.route(routed.arm, routed.step)
        return
    result = await decode(event, CRLComputed, stage="canary")
    if result is None or result.deployment_id is None or result.replay_id is not None:
        return  # not a deployment's run, or a replay: never counted
    batch.arrived(result.doer, event)
    state = await _deployment_of(event, batch, result.doer, result.deployment_id)
    if state is None:
        return
    state.heard(datetime.now(UTC))
    if not batch.first_time(f"{result.doer}/run/{result.run_id}"):
        return
    if state.observe(result):
        verdict = state.judge(event_time(result))
        if verdict is not None:
            batch.verdicts.append((state, verdict))


async def _deployment_of(
    event: Any, batch: Batch, doer: str, deployment_id: str
) -> DeploymentState | None:
    state = await batch.state(doer, deployment_id)
    if state is None:
        await dead_letter(
            event,
            stage="canary",
            error_type="unknown_deployment",
            reason=f"deployment {deployment_id} of {doer} is not in the policy store",
            doer=doer,
        )
    return state


@app.agent(canary_inputs, name="canary")
async def canary(stream: Any) -> None:
    """Fold each batch into the deployments' states, judge, store and emit; ack after all of it."""
    async for events in batches(stream, BATCH):
        async with judging, guarded_batch(events, stage="canary"):
            batch = Batch()
            for event in events:
                async with guarded(event, stage="canary"):
                    await _take(event, batch)
            await batch.flush()


class CatchUp:
    """Whether the worker has run undisturbed (no recovery, no rebalance) for ``CATCH_UP_S``."""

    def __init__(self) -> None:
        self.since: float | None = None

    def ready(self, settled: bool, now: float) -> bool:
        """Note whether the worker is settled now; whether it has been for long enough."""
        if not settled:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= CATCH_UP_S


catch_up = CatchUp()


def _owned_partitions() -> set[int]:
    """The input partitions this worker actively owns (the inputs are co-partitioned by doer)."""
    inputs = (CRL, ROUTED, CHANGES)
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic in inputs}


@app.timer(interval=SILENCE_CHECK_S)
async def pause_silent_deployments() -> None:
    """Pause this worker's deployments that have heard nothing for longer than max_silence_s."""
    if "canary" not in app.agents:  # a worker without the stage (LEARNOPS_STAGES)
        return
    try:
        app.pool  # noqa: B018
    except RuntimeError:  # the worker has not opened its pool yet
        return
    if not catch_up.ready(not (app.in_recovery or app.rebalancing), time.monotonic()):
        return
    async with judging:
        owned = _owned_partitions()
        now = datetime.now(UTC)
        batch = Batch()
        for key, value in list(states.items()):
            doer = doer_of(key)
            partition = (doers.get(doer) or 0) - 1
            if partition not in owned or value.get("ended") or value.get("paused"):
                continue
            state = DeploymentState.from_dict(value)
            verdict = state.judge_silence(now)
            if verdict is None:
                continue
            partitions.seen(doer, partition)  # so the table write finds the doer's partition
            batch.states[key] = state
            batch.verdicts.append((state, verdict))
        await batch.flush()
