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
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from agents.faust_internals.introspection import committed_offsets
from agents.health import DECISION_SECONDS, DECISIONS
from agents.stage import Stage
from agents.tables import SEPARATOR, SOURCE_OFFSETS, doer_of
from learning.deployments import DeploymentState, Verdict, event_time
from learning.signing import DECISION_KIND, SigningKey, sign_event
from models.events import Alert, CRLComputed, DecisionMade, PolicyChange, TaskRouted
from models.ids import caused_event_id
from storage.canary import deployment, insert_decisions, insert_routings
from storage.claims import Claim, owned_claims
from storage.pool import durably

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.canary")

BATCH = 1000  # at most this many events per batch
SILENCE_CHECK_S = 1.0  # how often the timer looks for silent deployments
# After a start or a rebalance the timer judges silence only once the worker has
# read what was waiting on its inputs then (a worker down for a while), or after this.
CATCH_UP_MAX_S = 30.0
CLAIMS = "canary"  # this stage's name in fold_claims


def _item(value: TaskRouted | CRLComputed) -> str:
    """A routing's or a run's id among the stage's fold claims."""
    if isinstance(value, TaskRouted):
        return f"task/{value.event_id}"
    return f"run/{value.run_id}"


class Batch:
    """One batch's deployment states, loaded once and written once, and what it emits."""

    def __init__(self, stage: CanaryStage) -> None:
        self.stage = stage
        self.states: dict[str, DeploymentState] = {}
        self.unknown: set[str] = set()
        # Per state key, the source offsets folded into it (agents.tables.SOURCE_OFFSETS).
        self.marks: dict[str, dict[str, int]] = {}
        self.owned: set[Claim] = set()
        self.routings: list[TaskRouted] = []
        # Each verdict, with the Kafka timestamp (s) of the result judged (None: the timer's).
        self.verdicts: list[tuple[DeploymentState, Verdict, float | None]] = []
        self.partitions: dict[str, int] = {}

    def arrived(self, doer: str, event: Any) -> None:
        """Note the partition an event of this doer arrived on."""
        self.stage.partitions.seen(doer, event.message.partition)
        self.partitions[doer] = event.message.partition

    async def state(self, doer: str, deployment_id: str) -> DeploymentState | None:
        """The deployment's state: this batch's, the table's, or new from the policy store."""
        key = f"{doer}{SEPARATOR}{deployment_id}"
        if key in self.states:
            return self.states[key]
        if key in self.unknown:
            return None
        stored = self.stage.states.get(key)
        if stored:
            found = self.adopt(key, stored)
        else:
            pool = self.stage.app.pool
            record = await durably(partial(deployment, pool, deployment_id), what="deployment")
            if record is None or record.doer != doer:
                self.unknown.add(key)
                return None
            found = DeploymentState(
                doer,
                record.routing,
                "shadow" if record.mode == "shadow" else "canary",
                ended=record.ended,
                paused=record.routing.paused,
            )
        self.states[key] = found
        return found

    def adopt(self, key: str, stored: dict[str, Any]) -> DeploymentState:
        """Take a stored state (and the source marks written with it) into this batch."""
        self.marks[key] = dict(stored.get(SOURCE_OFFSETS) or {})
        state = self.states[key] = DeploymentState.from_dict(stored)
        return state

    def counts(self, state: DeploymentState, item: str, event: Any) -> bool:
        """Whether the record counts for the state: it owns ``item``, and the state lacks it.

        The record owns the item when it first delivered it (storage.claims), and a
        state skips records at or below its mark for their topic and partition.
        """
        message = event.message
        if (item, message.partition, message.offset) not in self.owned:
            return False
        key = f"{state.doer}{SEPARATOR}{state.routing.deployment_id}"
        marks = self.marks.setdefault(key, {})
        source = f"{message.topic}#{message.partition}"
        if message.offset <= marks.get(source, -1):
            return False
        marks[source] = message.offset
        return True

    async def flush(self) -> None:
        """Store routings and decisions, emit, then write states and marks.

        In this order a crash part-way leaves the table behind, never ahead: the
        redelivered batch is judged again from the older state and gives the same
        decisions with the same ids, which PostgreSQL and the policy store take once.
        """
        stage = self.stage
        pool = stage.app.pool
        made = [_decision(state, verdict, stage.key) for state, verdict, _ in self.verdicts]
        # Both before anything is emitted; at once, on two connections: a round trip to
        # PostgreSQL is most of a decision's latency on a loaded host.
        await asyncio.gather(
            durably(partial(insert_routings, pool, self.routings), what="routings"),
            durably(partial(insert_decisions, pool, made), what="decisions"),
        )
        for (state, verdict, judged), decision in zip(self.verdicts, made, strict=True):
            await stage.topics.decisions.send(decision)
            DECISIONS.labels(decision.action).inc()
            if judged is not None:
                DECISION_SECONDS.observe(max(0.0, time.time() - judged))
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
                await stage.topics.alerts.send(alert)
        for key, state in self.states.items():
            stage.states[key] = {**state.to_dict(), SOURCE_OFFSETS: self.marks.get(key, {})}
        for doer, partition in self.partitions.items():
            if stage.doers[doer] != partition + 1:
                stage.doers[doer] = partition + 1


def _decision(state: DeploymentState, verdict: Verdict, key: SigningKey | None) -> DecisionMade:
    """The decision of a verdict, signed with the worker's key when it has one."""
    routing = state.routing
    decision = DecisionMade(
        event_id=verdict.event_id,
        doer=state.doer,
        deployment_id=routing.deployment_id,
        candidate_policy_id=routing.candidate_policy_id,
        candidate_version=routing.candidate_version,
        action=verdict.action,
        reason=verdict.reason,
        step=verdict.step,
        report=verdict.report,
        # As decided, not as the state stands when the batch is sent: a resume
        # followed later in the same batch must not vouch for an older pause.
        resumes=verdict.resumes,
    )
    return decision if key is None else signed_decision(decision, key)


def signed_decision(decision: DecisionMade, key: SigningKey) -> DecisionMade:
    """The decision with the worker's signature over every other field."""
    signature = sign_event(DECISION_KIND, decision.model_dump(mode="json"), key)
    return decision.model_copy(update={"signature": signature})


def _alert(state: DeploymentState, verdict: Verdict, decision: DecisionMade) -> Alert | None:
    """The alert of a pause (sample ratio mismatch, missing data) or an approval request."""
    common: dict[str, Any] = {
        "event_id": caused_event_id("alert", verdict.event_id),
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
                "log_bayes_factor": srm.statistic,
            },
            **common,
        )
    if verdict.action == "rollback":
        report = decision.report
        return Alert(
            kind="canary_rollback",
            severity="critical",
            value=report.delta_pct,
            baseline=report.control_mean,
            threshold=state.config().max_crl_increase,
            evidence={
                "step": state.step,
                "reason": verdict.reason,
                **report.model_dump(mode="json"),
            },
            **common,
        )
    report = verdict.report
    if (
        verdict.action == "report"
        and state.routing.require_approval
        and report.recommendation == "step_up"
        and report.step is not None
    ):
        # Judged by this verdict, not by the state at the batch's end: the ask (its step
        # the one asked for) and each report while it waits (its step the one it is at).
        step = report.step + 1
        asking = f"awaiting approval of step {step}"
        if not verdict.reason.startswith(asking):  # a later report while it waits
            common["message"] = f"{decision.deployment_id}: {asking}; {verdict.reason}"
        return Alert(kind="approval_needed", severity="info", evidence={"step": step}, **common)
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


class CatchUp:
    """Whether the worker has caught up since it last settled (no recovery, no rebalance).

    Caught up: every input partition it owns has committed the end offset it had
    when the worker settled, so the events that waited there (a worker down for
    a while, a partition taken over) were read before any silence is judged; or
    it has been settled for ``CATCH_UP_MAX_S``, the fixed grace this replaces: a
    commit that stands still (a batch held behind an event Faust skips did it,
    docs/canary.md) must not hold the guard off.
    """

    def __init__(self) -> None:
        self.since: float | None = None
        self.ends: dict[Any, int] = {}
        self.logged = False

    def unsettled(self) -> None:
        """The worker recovers or rebalances: catch up again once it settles."""
        self.since = None
        self.ends = {}
        self.logged = False

    @property
    def settled(self) -> bool:
        """Whether the end offsets to reach are known."""
        return self.since is not None

    def settle(self, now: float, ends: dict[Any, int]) -> None:
        """The worker settled at ``now``; ``ends`` are its input partitions' end offsets."""
        self.since = now
        self.ends = dict(ends)

    def ready(self, now: float, committed: dict[Any, int]) -> bool:
        """Whether every end offset is committed, or the worker settled long enough ago."""
        if self.since is None:
            return False
        if now - self.since >= CATCH_UP_MAX_S:
            if not self.logged and (behind := self.behind(committed)):
                self.logged = True
                log.warning("canary_catch_up gave up on (partition: read, end): %s", behind)
            return True
        return not self.behind(committed)

    def behind(self, committed: dict[Any, int]) -> dict[str, tuple[int, int]]:
        """The partitions not yet read up to their end offset: (read, end) by name."""
        return {
            f"{tp.topic}#{tp.partition}": (committed.get(tp, -1), end)
            for tp, end in self.ends.items()
            if committed.get(tp, -1) < end
        }


class CanaryStage(Stage):
    """CRL results, routings and policy changes of live deployments → decisions and alerts."""

    name = "canary"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)
        # None: decisions go out unsigned (the app logs canary_unsigned when it starts).
        self.key = app.settings.worker_key()
        self.states = self.table(
            "canary-deployments", default=dict, help_="Canary state per doer/deployment"
        )
        self.live = self.table("canary-live", default=str, help_="Live deployment per doer")
        # The partition each doer's events arrive on, plus one (0: never seen): the
        # silence timer judges the deployments of the partitions this worker owns.
        self.doers = self.table(
            "canary-doers", default=int, help_="Doer → source partition", holds_partition=True
        )
        # The agent and the timer both load, judge and write deployment states.
        self.judging = asyncio.Lock()
        self.catch_up = CatchUp()
        topics = self.topics
        self.inputs = (
            topics.crl_computed.name,
            topics.task_routed.name,
            topics.policy_changes.name,
        )

        async def canary(stream: Any) -> None:
            """Fold each batch into the deployments, judge, store and emit; ack after all of it."""
            async for events in self.batches(stream, BATCH):
                async with self.judging, self.guarded_batch(events):
                    await self.process(events)

        source = topics.source(topics.crl_computed, topics.task_routed, topics.policy_changes)
        app.agent(source, name=self.name)(canary)
        self.every(SILENCE_CHECK_S, self.pause_silent_deployments)
        # A deployment lives days, not months: its runs' claims go after 90 days.
        self.expire_claims_every(CLAIMS, 3600.0, timedelta(days=90))

    async def process(self, events: list[Any]) -> None:
        """One batch: decode, claim its runs and routings, take each into its state, flush."""
        batch = Batch(self)
        decoded: list[tuple[Any, Any]] = []
        for event in events:
            async with self.guarded(event):
                item = await self._decode(event)
                if item is not None:
                    decoded.append((event, item))
        claims = [
            (_item(value), event.message.partition, event.message.offset)
            for event, value in decoded
            if not isinstance(value, PolicyChange)
        ]
        batch.owned = await durably(
            partial(owned_claims, self.app.pool, CLAIMS, claims), what="fold_claims"
        )
        for event, value in decoded:
            async with self.guarded(event):
                await self._take(event, value, batch)
        await batch.flush()

    async def _decode(self, event: Any) -> PolicyChange | TaskRouted | CRLComputed | None:
        """The event of one of the three inputs; None when bad (dead-lettered) or not ours."""
        topic = event.message.topic
        if topic == self.topics.policy_changes.name:
            return await self.signed_change(event)
        if topic == self.topics.task_routed.name:
            return await self.decode(event, TaskRouted)
        result = await self.decode(event, CRLComputed)
        if result is None or result.deployment_id is None or result.replay_id is not None:
            return None  # not a deployment's run, or a replay: never counted
        return result

    async def _follow(self, change: PolicyChange, batch: Batch) -> None:
        """Follow the doer's live deployment: new, stepped, paused, or ended."""
        doer = change.doer
        current = self.live.get(doer) or ""
        now = change.deployment.deployment_id if change.deployment else ""
        if current and current != now:
            # The store ends a doer's live deployment before any change can name another
            # one (or none); a change that does while it is still live is an older one
            # delivered again (a restart before its offset was committed). Taking it
            # would end the live deployment for good: its results would count no more.
            pool = self.app.pool
            record = await durably(partial(deployment, pool, current), what="deployment")
            if record is not None and not record.ended:
                log.info(
                    "stale_policy_change doer=%s change=%s live=%s", doer, change.change, current
                )
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
            self.live[doer] = now

    async def _take(
        self, event: Any, value: PolicyChange | TaskRouted | CRLComputed, batch: Batch
    ) -> None:
        batch.arrived(value.doer, event)
        if isinstance(value, PolicyChange):
            await self._follow(value, batch)
            return
        if value.deployment_id is None:
            return
        state = await self._deployment_of(event, batch, value.doer, value.deployment_id)
        if state is None:
            return
        state.heard(datetime.now(UTC))
        if isinstance(value, TaskRouted):
            batch.routings.append(value)  # stored idempotently by event id, counted once
            if batch.counts(state, _item(value), event):
                state.route(value.arm, value.step)
            return
        if batch.counts(state, _item(value), event) and state.observe(value):
            verdict = state.judge(event_time(value))
            if verdict is not None:
                batch.verdicts.append((state, verdict, event.message.timestamp))

    async def _deployment_of(
        self, event: Any, batch: Batch, doer: str, deployment_id: str
    ) -> DeploymentState | None:
        state = await batch.state(doer, deployment_id)
        if state is None:
            await self.dead_letter(
                event,
                error_type="unknown_deployment",
                reason=f"deployment {deployment_id} of {doer} is not in the policy store",
                doer=doer,
            )
        return state

    def _owned_inputs(self) -> list[Any]:
        """The input partitions (topic and partition) this worker actively owns."""
        return [tp for tp in self.app.assignor.assigned_actives() if tp.topic in self.inputs]

    def _owned_partitions(self) -> set[int]:
        """The input partition numbers this worker owns (inputs are co-partitioned by doer)."""
        return {tp.partition for tp in self._owned_inputs()}

    async def pause_silent_deployments(self) -> None:
        """The timer: judge silence in the partitions this worker owns, once it has settled."""
        app = self.app
        if not app.pool_open:  # the worker has not opened its pool yet
            return
        if app.in_recovery or app.rebalancing:
            self.catch_up.unsettled()
            return
        if self.catch_up.settled and not set(self.catch_up.ends) <= set(self._owned_inputs()):
            # A rebalance came and went between two ticks: partitions it settled on were
            # revoked (asking their position fails), and it must settle on its new ones.
            self.catch_up.unsettled()
        if not self.catch_up.settled:
            ends = await self._input_ends()
            if ends is None:
                return
            self.catch_up.settle(time.monotonic(), ends)
        reached = await self._reached()
        if reached is None or not self.catch_up.ready(time.monotonic(), reached):
            return
        await self.pause_silent(datetime.now(UTC), self._owned_partitions())

    async def _reached(self) -> dict[Any, int] | None:
        """How far each partition to catch up on is read: its commit, or its position before one.

        A partition this group never committed on (an empty one, or one it has not
        been given a record of yet) has nothing committed to compare. None when a
        partition is no longer assigned (a rebalance since the catch-up settled: an
        operator trial saw a traceback at every start of two workers); it settles
        again on the partitions it has at the next tick.
        """
        from aiokafka.errors import IllegalStateError

        committed = committed_offsets(self.app)
        reached: dict[Any, int] = {}
        for tp in self.catch_up.ends:
            offset = committed.get(tp)
            if offset is None:
                try:
                    offset = await self.app.consumer.position(tp)
                except IllegalStateError:
                    self.catch_up.unsettled()
                    return None
            if offset is not None:
                reached[tp] = offset
        return reached

    async def _input_ends(self) -> dict[Any, int] | None:
        """The end offsets of the input partitions this worker owns; None if Kafka does not say."""
        owned = self._owned_inputs()
        if not owned:
            return {}
        try:
            ends = await self.app.consumer.highwaters(*owned)
        except Exception as exc:  # noqa: BLE001 - asked again on the next tick
            log.warning("canary_catch_up end offsets unknown (%s)", type(exc).__name__)
            return None
        return {tp: end for tp, end in ends.items() if end is not None}

    async def pause_silent(self, now: datetime, owned: set[int]) -> None:
        """Pause the deployments of ``owned`` partitions silent for longer than max_silence_s."""
        async with self.judging:
            batch = Batch(self)
            for key, value in list(self.states.items()):
                doer = doer_of(key)
                partition = (self.doers.get(doer) or 0) - 1
                if partition not in owned or value.get("ended") or value.get("paused"):
                    continue
                state = DeploymentState.from_dict(value)
                verdict = state.judge_silence(now)
                if verdict is None:
                    continue
                self.partitions.seen(doer, partition)  # so the table write finds its partition
                batch.adopt(key, value)
                batch.states[key] = state
                batch.verdicts.append((state, verdict, None))
            await batch.flush()
