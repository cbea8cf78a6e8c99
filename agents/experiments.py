"""The experiments stage: experiment and replay commands → offline replays → verdicts → deployments.

Reads learning.commands (``create_experiment``, ``run_replay``; the policy
agent takes the rest; each is acted on only once its signed envelope verifies,
agents/command_auth.py, and is then recorded in ``applied_commands``),
learning.crl-computed (replay bundles only: the CRL stage scores them like any
run) and learning.policy-changes (where the
experiment's candidate went). State lives in PostgreSQL (storage.experiments),
so this stage keeps no Faust table; every step is idempotent.

- A replay publishes one task per (sample, seed) on learning.replay-tasks;
  the orchestrator's sandbox (or the local executor, learnops/client/replay_executor.py)
  answers each with a learning bundle tagged with the replay id.
- When a replay's last task is scored it completes; once its control is
  finished too, learning.replay gives the verdict. A timer marks replays past
  their deadline ``incomplete`` with the missing tasks.
- An experiment created with a ``request_id`` answers that experiment request
  (from a learning trigger, agents/triggers.py): the link is stored and the
  request closed in the transaction that creates the experiment; a request
  that does not exist or belongs to another doer sends the command to the DLQ.
- An experiment whose replay passes sends start_shadow (or start_canary) to the
  policy agent and then follows its candidate's status in the policy store;
  one that fails ends ``failed`` with the numbers. Every move is published on
  learning.experiments.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from agents.command_auth import authorised, envelope_verdict, record_applied, source_of
from agents.stage import Stage
from agents.worker_key import worker_signed
from learning.experiments import (
    ENDED_STATUSES,
    FailureRate,
    FailureRateRule,
    follow_policy,
    split_versioned,
)
from learning.replay import decide_non_inferiority, replay_id
from models.base import describe_validation_error
from models.commands import (
    POLICY_COMMANDS,
    CanarySettings,
    CreateExperiment,
    RunReplay,
    StartCanary,
    StartShadow,
)
from models.events import Alert, CRLComputed
from models.ids import experiment_event_id
from storage import experiments as store
from storage.pool import durably
from storage.skills import request_row

T = TypeVar("T")

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.experiments")

OURS = {"create_experiment", "run_replay"}


def _field(value: Any, name: str) -> Any:
    """A top-level field of a JSON object, or None (anything else is judged by full decoding)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return data.get(name) if isinstance(data, dict) else None


# --------------------------------------------------------------------------- commands


def _unanswerable(command: CreateExperiment, request: Any) -> str | None:
    """Why the command cannot answer the request it names, or None when it can."""
    if request is None:
        return (
            f"no experiment request {command.request_id} "
            "(`learnops experiment requests` lists the open ones)"
        )
    if request["doer"] != command.doer:
        return (
            f"experiment request {command.request_id} is for {request['doer']}, not {command.doer}"
        )
    return None


class _Request:
    """Who asked for a replay an experiment starts: the experiment's create command."""

    def __init__(self, event_id: Any, actor: str) -> None:
        self.event_id = event_id
        self.actor = actor


# --------------------------------------------------------------------------- results


#: What :meth:`ExperimentsStage._no_worse` says while a replay it needs is running again.
_NOT_YET: dict[str, Any] = {"not yet": True}


def _default_canary() -> dict[str, Any]:
    # A shadow that passes moves on to canary by itself when the canary stage supports it.
    return {"advance_shadow": True} if "advance_shadow" in CanarySettings.model_fields else {}


# --------------------------------------------------------------------------- deployments


class ExperimentsStage(Stage):
    """Experiment and replay commands → offline replays → verdicts → deployments."""

    name = "experiments"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)
        topics = self.topics

        async def experiments(stream: Any) -> None:
            """Decode → record in PostgreSQL → publish tasks, experiment changes and commands."""
            async for event in self.each(stream):
                async with self.guarded(event):
                    await self.handle(event)

        source = topics.source(topics.commands, topics.crl_computed, topics.policy_changes)
        app.agent(source, name=self.name)(experiments)
        self.every(app.learning.replay.check_interval_s, self.expire_replays)

    async def _read(self, query: Callable[..., Awaitable[T]], *args: Any) -> T:
        """A read of the store, retried while PostgreSQL is unreachable (never dead-lettered)."""
        return await durably(partial(query, self.app.pool, *args), what="experiments")

    async def handle(self, event: Any) -> None:
        """One event of the stage's three topics."""
        topic = event.message.topic
        if topic == self.topics.commands.name:
            await self._command(event)
        elif topic == self.topics.crl_computed.name:
            await self._scored(event)
        else:
            await self._policy_change(event)

    async def _command(self, event: Any) -> None:
        # Commands that are not ours (and undecodable ones) are the policy agent's to
        # store or dead-letter; decoding them here as well would dead-letter them twice.
        if _field(event.message.value, "command") not in OURS:
            return
        command = await self.decode_with(event, POLICY_COMMANDS)
        if not isinstance(command, CreateExperiment | RunReplay):
            return
        verdict = await authorised(self, command, source=source_of(event))
        if verdict is None:
            return  # refused and alerted: nothing is created, replayed or deployed
        # The records name the verified signer, never the self-declared actor.
        command = command.model_copy(update={"actor": verdict.operator})
        if isinstance(command, CreateExperiment):
            took_effect = await self._create_experiment(event, command)
        else:
            took_effect = await self._run_replay(event, command)
        if took_effect:
            # A command dead-lettered for its content (an unknown policy or golden
            # dataset) is not applied: the audit must not say so, and the same command
            # replayed from the DLQ once the cause is fixed must not be refused as a replay.
            await record_applied(self, command, verdict, source_of(event))

    async def _resolve_golden(self, name: str) -> store.Golden | None:
        base, version = split_versioned(name)
        return await durably(
            partial(store.find_golden, self.app.pool, base, version), what="golden"
        )

    async def _run_replay(self, event: Any, command: RunReplay) -> bool:
        """Start the replay the command asks for; whether it did (False: dead-lettered)."""
        policy = await durably(
            partial(store.find_policy_row, self.app.pool, command.policy_id, command.version),
            what="policies",
        )
        try:
            golden = await self._resolve_golden(command.dataset)
        except ValueError as exc:
            golden, problem = None, str(exc)
        else:
            problem = f"no golden dataset {command.dataset}"
        mismatch = golden.mismatch(command.doer) if golden is not None else None
        if mismatch is not None:
            golden, problem = None, mismatch
        if policy is None or policy["doer"] != command.doer or golden is None:
            reason = (
                f"policy {command.policy_id}@{command.version} of {command.doer} is not registered"
                if policy is None or policy["doer"] != command.doer
                else problem
            )
            await self.dead_letter(event, error_type="unknown", reason=reason, doer=command.doer)
            return False
        config = self.app.learning.replay
        control = await durably(
            partial(store.active_policy_row, self.app.pool, command.doer), what="pol"
        )
        timeout = command.timeout_s or config.timeout_s
        starts = []
        control_id = None
        try:
            if control is not None:
                starts.append(
                    await self._start(control, golden, command.seeds, command, timeout, False)
                )
                control_id = starts[-1].replay_id
            starts.append(
                await self._start(
                    policy, golden, command.seeds, command, timeout, command.force, control_id
                )
            )
        except store.ReplayError as exc:  # a golden dataset no replay can run on
            await self.dead_letter(event, error_type="replay", reason=str(exc), doer=command.doer)
            return False
        for start in starts:
            if start.status != "running":  # answered from the record: judge it now
                await self._finished(start.replay_id)
        return True

    async def _start(
        self,
        policy: Any,
        golden: store.Golden,
        seeds: list[int],
        command: Any,
        timeout_s: float,
        force: bool,
        control_replay_id: str | None = None,
        phase: str | None = None,
    ) -> store.ReplayStart:
        """Start (or find) one replay, publish its tasks, and settle what it completes."""
        if control_replay_id is None and policy["status"] == "active":
            # The active policy is its own control; its replay id is known before it exists.
            control_replay_id = replay_id(policy["content_hash"], golden.manifest_hash, seeds)
        start = await durably(
            partial(
                store.start_replay,
                self.app.pool,
                policy=policy,
                golden=golden,
                seeds=seeds,
                requested_by=command.event_id,
                actor=command.actor,
                timeout_s=timeout_s,
                force=force,
                phase=phase,
                control_replay_id=control_replay_id,
            ),
            what="offline_replays",
        )
        for task in start.tasks:
            await self.topics.replay_tasks.send(task)
        if start.status == "running" and not start.from_record:
            await self._resume(start.replay_id, start.attempt)
        log.info(
            "replay replay_id=%s policy=%s@%s dataset=%s@%s seeds=%s tasks=%d from_record=%s",
            start.replay_id,
            policy["policy_id"],
            policy["version"],
            golden.name,
            golden.version,
            ",".join(map(str, sorted(set(seeds)))),
            len(start.tasks),
            start.from_record,
        )
        return start

    async def _create_experiment(self, event: Any, command: CreateExperiment) -> bool:
        """Create (or find) the experiment; whether the command took effect (False: dead letter).

        One created as failed (no golden dataset) took effect: its record says why.
        """
        existing = await durably(
            partial(store.get_experiment, self.app.pool, command.experiment_id), what="experiments"
        )
        if existing is not None:
            if existing["created_by"] == command.event_id:
                # A redelivery: send what the broker has not acknowledged, then carry on.
                await self._publish_pending(command.experiment_id)
                if existing["status"] == "created":
                    await self._begin(command.experiment_id)
                return True
            await self.dead_letter(
                event,
                error_type="conflict",
                reason=f"experiment {command.experiment_id} exists (created by another command)",
                doer=command.doer,
            )
            return False
        planned = CanarySettings.model_validate(command.plan.get("canary") or _default_canary())
        looser = self.app.learning.canary_limits.refusal(planned, None)
        if looser is not None:  # its deployment command would be refused when the replay passes
            await self.dead_letter(
                event,
                error_type="limits",
                reason=f"experiment {command.experiment_id}: {looser}",
                doer=command.doer,
            )
            return False
        request = None
        if command.request_id is not None:
            request = await durably(
                partial(request_row, self.app.pool, command.request_id), what="experiment_requests"
            )
            problem = _unanswerable(command, request)
            if problem is not None:
                await self.dead_letter(
                    event, error_type="unknown", reason=problem, doer=command.doer
                )
                return False
        config = self.app.learning.replay
        phase = command.phase
        golden: store.Golden | None = None
        problem = None
        try:
            if command.dataset is not None:
                golden = await self._resolve_golden(command.dataset)
                problem = None if golden else f"no golden dataset {command.dataset}"
            elif phase is not None:
                golden = await durably(
                    partial(
                        store.find_golden, self.app.pool, None, dataset=f"{command.doer}/{phase}"
                    ),
                    what="golden",
                )
                problem = (
                    None if golden else f"no golden dataset frozen from {command.doer}/{phase}"
                )
            else:
                problem = "the experiment names neither a golden dataset nor a phase"
        except ValueError as exc:
            problem = str(exc)
        mismatch = golden.mismatch(command.doer, phase) if golden is not None else None
        if mismatch is not None:
            golden, problem = None, mismatch
        phase = phase or (golden.phase if golden else "unknown")
        control = await durably(
            partial(store.active_policy_row, self.app.pool, command.doer), what="pol"
        )
        await durably(
            partial(
                store.insert_experiment,
                self.app.pool,
                experiment_id=command.experiment_id,
                created_by=command.event_id,
                experiment_type=command.experiment_type,
                doer=command.doer,
                phase=phase,
                hypothesis=command.hypothesis,
                actor=command.actor,
                reason=command.reason,
                golden=golden,
                seeds=command.seeds or list(config.seeds),
                policy_id=command.policy_id,
                policy_version=command.version,
                control=control,
                deploy=command.deploy,
                plan=dict(command.plan),
                created_at=command.occurred_at,
                request=request,
            ),
            what="experiments",
        )
        if request is not None:
            log.info(
                "experiment_request_answered request=%s doer=%s reason=%s experiment=%s",
                request["request_id"],
                command.doer,
                request["reason"],
                command.experiment_id,
            )
        await self._publish_pending(command.experiment_id)
        if problem is not None:
            await self._move(command.experiment_id, "failed", problem)
            return True
        await self._begin(command.experiment_id)
        return True

    async def _resume(self, rid: str, attempt: int) -> None:
        """Move the experiments that ended incomplete on a replay started again back to replaying.

        Their replay runs again (a new attempt of the candidate or of the
        control), so they are judged again when it finishes; the incomplete
        verdict stays in their history. One whose other replay is incomplete
        too, or whose candidate is now compared with another control, stays.
        """
        for row in await self._read(partial(store.resumable_experiments, rid=rid)):
            await self._move(
                row["experiment_id"],
                "replaying",
                f"replay {rid} started again (attempt {attempt})",
                {"replay_id": rid, "attempt": attempt},
            )

    async def _begin(self, experiment_id: str) -> None:
        """Start an experiment's replays (candidate and control) and move it to ``replaying``."""
        row = await self._read(store.get_experiment, experiment_id)
        policy = await self._read(store.find_policy_row, row["policy_id"], row["policy_version"])
        if policy is None or policy["doer"] != row["doer"]:
            await self._move(
                experiment_id,
                "failed",
                f"candidate {row['policy_id']}@{row['policy_version']} is not a registered policy "
                f"of {row['doer']}",
            )
            return
        if row["control_policy_id"] is None:
            await self._move(
                experiment_id, "failed", f"{row['doer']} has no active policy to compare with"
            )
            return
        if row["dataset_name"] is None:
            # Created without a golden dataset and killed before it was failed: failed now
            # (an open lookup would pick any doer's or tenant's newest golden dataset).
            await self._move(experiment_id, "failed", "the experiment has no golden dataset")
            return
        control = await self._read(
            store.find_policy_row, row["control_policy_id"], row["control_version"]
        )
        golden = await self._read(store.find_golden, row["dataset_name"], row["dataset_version"])
        assert golden is not None and control is not None  # both are foreign keys of the row
        config = self.app.learning.replay
        seeds = list(row["seeds"])
        control_id = replay_id(control["content_hash"], golden.manifest_hash, seeds)
        candidate_id = replay_id(policy["content_hash"], golden.manifest_hash, seeds)
        request = _Request(row["created_by"], row["actor"])
        try:
            starts = [
                await self._start(
                    control, golden, seeds, request, config.timeout_s, False, phase=row["phase"]
                ),
                await self._start(
                    policy,
                    golden,
                    seeds,
                    request,
                    config.timeout_s,
                    False,
                    control_id,
                    phase=row["phase"],
                ),
            ]
        except store.ReplayError as exc:  # a golden dataset no replay can run on
            await self._move(experiment_id, "failed", str(exc))
            return
        await self._move(
            experiment_id,
            "replaying",
            f"replaying {policy['policy_id']}@{policy['version']} and the control "
            f"{control['policy_id']}@{control['version']} on {golden.name}@{golden.version} "
            f"under seeds {','.join(map(str, seeds))}",
            {"replay_id": candidate_id, "control_replay_id": control_id},
            replay_id=candidate_id,
            control_replay_id=control_id,
        )
        for start in starts:
            if start.status != "running":  # answered from the record: judge it now
                await self._finished(start.replay_id)

    async def _scored(self, event: Any) -> None:
        value = event.message.value
        # Most results are live runs (the canary and skill stages' business, not ours):
        # skip the ones the CRL stage wrote without a replay id before parsing them.
        if b'"replay_id":null' in value or _field(value, "replay_id") is None:
            return
        result = await self.decode(event, CRLComputed)
        if result is None:
            return
        completed = await durably(
            partial(store.record_result, self.app.pool, result), what="replays"
        )
        if completed is not None:
            log.info("replay_complete replay_id=%s", completed)
            await self._finished(completed)

    async def _finished(self, replay_id: str) -> None:
        """A replay finished (complete or incomplete): give verdicts, then move its experiments."""
        rule = self.app.learning.replay.rule
        settled = await durably(
            partial(store.settle_verdicts, self.app.pool, replay_id, rule), what="replays"
        )
        for rid in {replay_id, *settled}:
            for row in await self._read(store.experiments_waiting_on, rid):
                await self._judge(row)

    async def _judge(self, row: Any) -> None:
        """Act on the verdict of an experiment's replay, once both replays have finished."""
        replay = await self._read(store.get_replay, row["replay_id"])
        if replay is None or replay["verdict"] is None:
            return
        verdict = replay["verdict"]
        evidence = {
            "replay_id": row["replay_id"],
            "control_replay_id": row["control_replay_id"],
            "verdict": verdict,
        }
        if replay["control_replay_id"] != row["control_replay_id"]:
            # The replay row is shared: a replay run after the doer's active policy changed
            # compared it with the new one's replay. That verdict cannot decide this
            # experiment, and its own comparison would come back only with that control.
            evidence["compared_with"] = replay["control_replay_id"]
            reason = (
                f"its candidate's replay {row['replay_id']} is now compared with "
                f"{replay['control_replay_id']}, not with this experiment's control "
                f"{row['control_replay_id']} (the doer's active policy changed); "
                "create an experiment against the active policy"
            )
            await self._move(row["experiment_id"], "incomplete", reason, evidence, outcome=evidence)
            return
        if verdict.get("incomplete"):
            missing = replay["missing_tasks"]
            if missing is None:
                control = await self._read(store.get_replay, row["control_replay_id"])
                missing = control["missing_tasks"] if control else []
            evidence["missing_tasks"] = missing
            await self._move(
                row["experiment_id"], "incomplete", verdict["reason"], evidence, outcome=evidence
            )
            return
        gate = await self._no_worse(row)
        if gate is _NOT_YET:
            return  # judged when the replay running again completes (_finished)
        if gate is not None:
            # Its shadow and canary judge it "no worse": so does its replay. The replay's own
            # verdict (the worker's rule, "better") stays on the shared row and here beside it.
            evidence["replay_verdict"] = verdict
            evidence["verdict"] = verdict = gate
        if not verdict["passed"]:
            await self._move(
                row["experiment_id"], "failed", verdict["reason"], evidence, outcome=evidence
            )
            return
        await self._deploy(row, evidence)

    async def _no_worse(self, row: Any) -> dict[str, Any] | None:
        """The non-inferiority verdict of an experiment planned "no worse", else None.

        An experiment whose plan judges its shadow and canary in non-inferiority mode
        (a bandit's proposal by default) is a candidate meant to match the control;
        the worker's replay rule asks it to be better, which a match shows about
        alpha of the time. Its replay is judged at the plan's margin instead, from the
        two replays' task losses as they are when both are complete (read together;
        the verdict names the attempts and result blobs it judged). While either is
        running again (a forced attempt) it is ``_NOT_YET``: judged when that completes.
        """
        plan = (row["plan"] or {}).get("canary") or {}
        if plan.get("mode") != "non_inferiority":
            return None
        try:
            margin = CanarySettings.model_validate(plan).non_inferiority_margin
        except ValidationError:
            return None  # the deployment fails it with its reason (_send_deploy)
        pair = await self._read(
            store.complete_pair_losses, row["replay_id"], row["control_replay_id"]
        )
        if pair is None:
            return _NOT_YET
        try:
            decided = decide_non_inferiority(
                pair.candidate, pair.control, self.app.learning.replay.rule, margin
            )
        except ValueError as exc:  # a margin no test can use: said, not raised per event
            return {"passed": False, "incomplete": False, "reason": f"failed: {exc}", "numbers": {}}
        return {
            "passed": decided.passed,
            "incomplete": False,
            "reason": decided.reason,
            "numbers": decided.numbers,
            "rule": "non_inferiority",
            "judged": pair.attempts,
        }

    async def _deploy(self, row: Any, evidence: dict[str, Any]) -> None:
        """Record the deployment command of a passing experiment, then send it."""
        event_id = experiment_event_id("deploy", row["experiment_id"])
        recorded = await durably(
            partial(
                store.record_deploy_command, self.app.pool, row["experiment_id"], event_id, evidence
            ),
            what="experiments",
        )
        if not recorded:
            return  # another call judged it first and sent the command
        await self._send_deploy(row)

    def _deploy_command(self, row: Any) -> StartShadow | StartCanary:
        """The experiment's deployment command, signed with the worker's key.

        It derives from the experiment's row (its event id from the experiment
        id), so a command sent again is the same command, signed afresh.
        """
        event_id = experiment_event_id("deploy", row["experiment_id"])
        reason = f"experiment {row['experiment_id']}: offline replay passed"
        plan = row["plan"] or {}
        canary = CanarySettings.model_validate(plan.get("canary") or _default_canary())
        command: StartShadow | StartCanary
        if row["deploy"] == "canary":
            command = StartCanary(
                event_id=event_id,
                doer=row["doer"],
                actor="experiments",
                reason=f"{reason}; the plan goes straight to canary",
                policy_id=row["policy_id"],
                version=row["policy_version"],
                force=True,
                canary=canary,
            )
        else:
            command = StartShadow(
                event_id=event_id,
                doer=row["doer"],
                actor="experiments",
                reason=reason,
                policy_id=row["policy_id"],
                version=row["policy_version"],
                canary=canary,
            )
        return worker_signed(self.app.settings, command)

    async def _send_deploy(self, row: Any) -> None:
        """Send the candidate to shadow (or canary) through the policy agent; mark it sent.

        An experiment whose plan holds canary settings that are not valid (stored
        before CreateExperiment checked them) fails, saying why, instead of
        failing every later look of the timer.
        """
        try:
            command = self._deploy_command(row)
        except ValidationError as exc:
            problems = describe_validation_error(exc)
            await self._move(
                row["experiment_id"],
                "failed",
                f"its plan's canary settings are not valid ({problems}); nothing was deployed",
            )
            return
        try:
            await (await self.topics.commands.send(command))
        except KafkaError as exc:  # recorded and unsent: the timer sends it again
            log.warning(
                "experiment_deploy_unsent experiment=%s error=%r", row["experiment_id"], exc
            )
            return
        await durably(
            partial(store.mark_deploy_sent, self.app.pool, row["experiment_id"]), what="experiments"
        )
        log.info(
            "experiment_deploy experiment=%s command=%s policy=%s@%s",
            row["experiment_id"],
            command.command,
            row["policy_id"],
            row["policy_version"],
        )

    def _valid_for(self) -> timedelta:
        """How long a command the stage sends can be applied: its TTL and the clock skew."""
        settings = self.app.settings
        return timedelta(
            seconds=settings.learnops_command_ttl_s + settings.learnops_command_clock_skew_s
        )

    async def _unanswered(self, row: Any) -> None:
        """A deployment command the policy store left unanswered for longer than it was valid.

        The policy store records what it applies or refuses for its content; a
        command refused at its envelope leaves no row, and one read after it
        expired is refused so too. Past its validity the command sent can no
        longer be applied, so the stage asks its own command's envelope of this
        database: refused (the worker's key missing, unregistered, revoked,
        without the operator role), the experiment fails with the reason;
        accepted, it is sent again, signed afresh (the policy store applies its
        event id once).
        """
        command = self._deploy_command(row)
        verdict = await envelope_verdict(self, command)
        if not verdict:
            await self._move(
                row["experiment_id"],
                "failed",
                f"the policy stage refuses the deployment command: {verdict.reason}",
                {"refusal": verdict.refusal},
            )
            return
        log.warning("experiment_deploy_resent experiment=%s", row["experiment_id"])
        await self._send_deploy(row)

    async def _policy_change(self, event: Any) -> None:
        change = await self.signed_change(event)
        if change is None:
            return
        for row in await durably(
            partial(store.open_experiments, self.app.pool, change.doer), what="exp"
        ):
            if row["status"] == "replaying" and row["deploy_command_id"] is None:
                continue  # not deployed yet: nothing of the store's to follow
            status = await self._read(store.policy_status, row["policy_id"], row["policy_version"])
            target = follow_policy(row["status"], status or "")
            if target is None:
                continue
            deployment = change.deployment
            updates: dict[str, Any] = {}
            if deployment is not None and (
                deployment.candidate_policy_id,
                deployment.candidate_version,
            ) == (row["policy_id"], row["policy_version"]):
                updates["deployment_id"] = deployment.deployment_id
            await self._move(
                row["experiment_id"],
                target,
                f"candidate {row['policy_id']}@{row['policy_version']} is {status} "
                f"({change.change}: {change.reason or 'no reason given'})",
                {"change": change.change, "policy_status": status, "actor": change.actor},
                **updates,
            )

    async def expire_replays(self, now: datetime | None = None) -> None:
        """End overdue replays as incomplete; fail experiments whose deployment was refused.

        It also takes up what a worker killed between two steps left undone,
        once ``store.SETTLE_AFTER`` has given the path that took the step its
        turn (``now``: the time to judge that by, for tests): a replay that
        ended without a verdict is settled, an experiment whose replay has one
        is judged, transitions never acknowledged by the broker are published,
        and a recorded deployment command never acknowledged is sent. Each step
        is idempotent: a verdict is given once, a move is checked against the
        lifecycle under a row lock, a deployment is recorded once, and what is
        sent again carries the event id it had.
        """
        if not self.app.pool_open:  # the worker has not opened its pool yet
            return
        pool = self.app.pool
        for rid in await store.expire_replays(pool):
            log.warning("replay_incomplete replay_id=%s", rid)
            await self._finished(rid)
        for rid in await store.replays_ended_without_verdict(pool, now):
            log.warning("replay_settled_late replay_id=%s", rid)
            await self._finished(rid)
        for row in await store.judged_but_waiting(pool, now):
            log.warning("experiment_judged_late experiment=%s", row["experiment_id"])
            await self._judge(row)
        for row in await store.resumable_experiments(pool, now=now or datetime.now(UTC)):
            log.warning("experiment_resumed_late experiment=%s", row["experiment_id"])
            await self._move(
                row["experiment_id"],
                "replaying",
                "its replays run again (taken up by the timer)",
                {"replay_id": row["replay_id"], "control_replay_id": row["control_replay_id"]},
            )
        for row in await store.deployments_unsent(pool, now):
            log.warning("experiment_deploy_sent_late experiment=%s", row["experiment_id"])
            await self._send_deploy(row)
        for experiment_id in await store.unpublished_experiments(pool, now):
            log.warning("experiment_published_late experiment=%s", experiment_id)
            await self._publish_pending(experiment_id)
        expired = (now or datetime.now(UTC)) - self._valid_for()
        for row in await store.deployments_unanswered(pool, expired):
            await self._unanswered(row)
        for refused in await store.refused_deployments(pool):
            await self._move(
                refused["experiment_id"],
                "failed",
                f"the policy store refused the deployment: {refused['verdict']}",
                {"refusal": refused["refusal"]},
            )

    async def _move(
        self,
        experiment_id: str,
        to_status: str,
        reason: str,
        evidence: dict[str, Any] | None = None,
        **updates: Any,
    ) -> None:
        change = await durably(
            partial(
                store.move_experiment,
                self.app.pool,
                experiment_id,
                to_status,
                reason,
                evidence,
                **updates,
            ),
            what="experiments",
        )
        if change is not None:
            await self._publish_pending(experiment_id)

    async def _publish_pending(self, experiment_id: str) -> None:
        """Publish the experiment's transitions the broker has not acknowledged, in order.

        Each is marked published once the broker acknowledged it, so a kill
        before that leaves it to the timer (``expire_replays``); one sent twice
        carries the same event id.
        """
        for seq, change in await self._read(store.unpublished_events, experiment_id):
            log.info(
                "experiment experiment=%s status=%s previous=%s reason=%r",
                change.experiment_id,
                change.status,
                change.previous_status,
                change.reason,
            )
            try:
                await (await self.topics.experiments.send(change))
            except KafkaError as exc:  # recorded and unsent: the next move or the timer sends it
                log.warning("experiment_unpublished experiment=%s error=%r", experiment_id, exc)
                return
            await durably(
                partial(store.mark_published, self.app.pool, experiment_id, seq),
                what="experiments",
            )
            if change.status in ENDED_STATUSES:
                await self._check_failure_rate(change.doer)

    async def _check_failure_rate(self, doer: str) -> None:
        """Alert when too many of the doer's recent experiments failed (once a doer and day)."""
        rule = FailureRateRule()
        ended, failed = await durably(
            partial(store.ended_experiments, self.app.pool, doer, rule.window_days),
            what="experiments",
        )
        rate = FailureRate(ended, failed, rule)
        if not rate.too_high:
            return
        day = datetime.now(UTC).date().isoformat()
        alert = Alert(
            event_id=experiment_event_id("failure-rate-alert", doer, day),
            doer=doer,
            kind="experiment_failure_rate",
            severity="warning",
            message=rate.message(),
            value=rate.rate,
            threshold=rule.threshold,
            evidence={"ended": ended, "failed": failed, "window_days": rule.window_days},
        )
        try:
            await self.topics.alerts.send(alert)
        except KafkaError as exc:  # an alert, not a step: the next ended experiment raises it
            log.warning("experiment_failure_rate_unsent doer=%s error=%r", doer, exc)
            return
        log.warning("experiment_failure_rate doer=%s failed=%d ended=%d", doer, failed, ended)
