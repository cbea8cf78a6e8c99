"""`learnops replay …` and `learnops experiment …`: offline replays and the experiment registry."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

import click
import orjson

from learning.experiments import STATUSES, parse_seeds, split_versioned
from learnops.cli.main import (
    GroupedCommand,
    actor_option,
    as_known,
    closest,
    command,
    database,
    event_id_start,
    fail,
    group,
    json_option,
    limit_option,
    table,
)
from learnops.cli.policy import COMMANDS_TOPIC, _dump, _find, _iso, _send
from storage import experiments as store
from storage.skills import list_requests, request_row

if TYPE_CHECKING:
    from models.commands import CreateExperiment
    from storage.policies import PolicyRecord

TYPES = ("prompt_synthesis", "adapter_training", "tool_tuning", "rag_optimization")


def canary_mode_option(default: str, help_text: str) -> Any:
    """``--canary-mode``: how the experiment's shadow and canary judge the candidate."""
    return click.option(
        "--canary-mode",
        type=click.Choice(("non_inferiority", "superiority")),
        default=default,
        show_default=True,
        help=help_text,
    )


margin_option = click.option(
    "--margin",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Non-inferiority margin, a share of the control's mean CRL (the guard on "
    "the CRL's increase at least as wide) [default: the canary's, 0.02].",
)


def canary_plan(
    ctx: GroupedCommand, mode: str, margin: float | None, *, what: str
) -> dict[str, Any]:
    """The experiment plan's ``canary`` for a mode and margin, checked as the worker will.

    The worker dead-letters an experiment whose canary is looser than its limits, so
    that is said here, before anything is sent (``what``: what is then not done).
    """
    from pydantic import ValidationError

    from models.base import describe_validation_error
    from models.policy_change import CanarySettings

    if margin is not None and mode != "non_inferiority":
        fail(
            "--margin is the non-inferiority margin: give it with --canary-mode "
            f"non_inferiority; {what}"
        )
    canary: dict[str, Any] = {"advance_shadow": True, "mode": mode}
    if margin is not None:  # the guard on the CRL's increase at least as wide
        canary["non_inferiority_margin"] = margin
        canary["max_crl_increase"] = max(margin, CanarySettings().max_crl_increase)
    try:
        settings = CanarySettings.model_validate(canary)
    except ValidationError as exc:
        fail(f"--margin: {describe_validation_error(exc)}; {what}")
    looser = ctx.learning.canary_limits.refusal(settings, None)
    if looser is not None:
        fail(f"{looser}; {what}")
    return canary


@group("Deterministic offline replays of a policy on a golden dataset, against the control.")
def replay() -> None:
    pass


@group("The experiment registry: create, show and list experiments and requests.")
def experiment() -> None:
    pass


_actor = actor_option("Who asks.")


def _seeds(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ValueError as exc:
        fail(str(exc))
        raise


# --------------------------------------------------------------------------- replay


def _side(row: Any) -> dict[str, Any]:
    per_seed = row["per_seed"] or {}
    return {
        "replay_id": row["replay_id"],
        "policy": f"{row['policy_id']}@{row['policy_version']}",
        "status": row["status"],
        "per_seed": {seed: per_seed[seed] for seed in sorted(per_seed, key=int)},
        "mean_crl": row["mean_crl"],
        "std_crl": row["std_crl"],
        "stability": row["stability"],
        "runs": row["runs"],
        "missing_tasks": row["missing_tasks"],
    }


async def replay_report(
    pool: Any, rid: str, comparison_id: int | None = None
) -> dict[str, Any] | None:
    """The replay as `learnops replay show --json` prints it, or None when unknown.

    With ``comparison_id`` (an experiment's), the replay, its control and verdict
    as that experiment's decision recorded them: a replay row shared with later
    experiments holds only the latest comparison.
    """
    row = await store.get_replay(pool, rid, comparison_id=comparison_id)
    if row is None:
        return None
    control = None
    if row["control_replay_id"] is not None:
        control_hash = row.get("control_result_hash") if comparison_id is not None else None
        last = None
        if comparison_id is None and row["verdict"] is not None:
            # The verdict is the last comparison's: show the control as it stood for it,
            # not a later attempt of the control's that the verdict never saw.
            last = await store.latest_comparison(pool, rid)
            if last is not None and last["control_replay_id"] == row["control_replay_id"]:
                control_hash = last["control_result_hash"]
        control_row = await store.get_replay(
            pool, row["control_replay_id"], result_hash=control_hash
        )
        control = _side(control_row) if control_row else None
        if control is not None and control_hash is not None and control_row is not None:
            current = await store.get_replay(pool, row["control_replay_id"])
            if comparison_id is not None:
                compared = row["control_attempt"]
            else:
                compared = last["control_attempt"] if last is not None else control_row["attempt"]
            control["attempt"] = compared
            if current is not None and current["status"] == "running":
                control["running_attempt"] = current["attempt"]
            elif current is not None and current["result_hash"] != control_hash:
                control["replaced_by_attempt"] = current["attempt"]
    return {
        **_side(row),
        "doer": row["doer"],
        "phase": row["phase"],
        "dataset": f"{row['dataset_name']}@{row['dataset_version']}",
        "manifest_hash": row["manifest_hash"],
        "policy_hash": row["policy_hash"],
        "seeds": list(row["seeds"]),
        "attempt": row["attempt"],
        "task_count": row["task_count"],
        "result_hash": row["result_hash"],
        "started_at": _iso(row["started_at"]),
        "completed_at": _iso(row["completed_at"]),
        "control": control,
        "verdict": row["verdict"],
    }


#: Missing tasks a text report lists per side (``--json`` has them all).
SHOWN_MISSING = 10


def _print_replay(self: GroupedCommand, report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        self.say(_dump(report))
        return
    self.say(
        f"replay {report['replay_id']}  {report['policy']} on {report['dataset']}  "
        f"seeds {','.join(map(str, report['seeds']))}  {report['status']} "
        f"(attempt {report['attempt']}, {report['task_count']} tasks)"
    )
    # The doer's active policy is its own control: one replay, nothing to compare.
    own_control = bool(report["control"]) and report["control"]["replay_id"] == report["replay_id"]
    sides = [("candidate", report)] + (
        [("control", report["control"])] if report["control"] and not own_control else []
    )
    if any(side["per_seed"] or side["mean_crl"] is not None for _, side in sides):
        self.say(f"{'':10} {'policy':24} {'seed':>6} {'runs':>5} {'mean CRL':>10}")
    else:
        self.say("no result has come back yet")
    for name, side in sides:
        for seed, figures in side["per_seed"].items():
            self.say(
                f"{name:10} {side['policy']:24} {seed:>6} {figures['runs']:>5} "
                f"{figures['mean_crl']:>10.4f}"
            )
        if side["mean_crl"] is not None:
            self.say(
                f"{name:10} {side['policy']:24} {'all':>6} {side['runs']:>5} "
                f"{side['mean_crl']:>10.4f}  std {side['std_crl']:.4f}  "
                f"seed-mean stability {side['stability']:.3f}"
            )
        if side["missing_tasks"]:
            missing = side["missing_tasks"]
            self.say(f"{name:10} missing {len(missing)} tasks:")
            for task in missing[:SHOWN_MISSING]:
                self.say(
                    f"{'':10}   {task['task_id'] or '(named at the next attempt)'} "
                    f"sample {task['sample_id']} seed {task['seed']}"
                )
            if len(missing) > SHOWN_MISSING:
                self.say(f"{'':10}   … and {len(missing) - SHOWN_MISSING} more (--json lists all)")
    verdict = report["verdict"]
    if own_control:
        self.say(f"verdict: none — {report['policy']} is the doer's active policy, its own control")
    elif verdict is not None:
        self.say(
            f"verdict: {'PASSED' if verdict['passed'] else 'NOT PASSED'} — {verdict['reason']}"
        )
        control = report["control"] or {}
        replaced, running = control.get("replaced_by_attempt"), control.get("running_attempt")
        if replaced is not None:
            self.say(
                f"note: the control {control['policy']} was replayed again since "
                f"this verdict (attempt {replaced}; the figures above are the attempt it was "
                "given on); `--force` compares the candidate with it"
            )
        elif running is not None:
            self.say(
                f"note: the control {control['policy']} is being replayed again (attempt "
                f"{running}); the figures above are the attempt this verdict was given on"
            )


@command(
    replay,
    "run",
    click.option("--policy", "policy_ref", required=True, help="POLICY_ID or POLICY_ID@VERSION."),
    click.option("--dataset", required=True, help="Golden dataset NAME or NAME@VERSION."),
    click.option(
        "--seeds", default=None, help="Comma-separated seeds (default: replay.seeds configured)."
    ),
    click.option("--force", is_flag=True, help="Run again even if a result is recorded."),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Seconds the tasks may take.",
    ),
    click.option(
        "--wait",
        "wait_s",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Seconds to wait here.",
    ),
    _actor,
    json_option,
)
async def replay_run(
    self: GroupedCommand,
    policy_ref: str,
    dataset: str,
    seeds: str | None,
    force: bool,
    timeout: float | None,
    wait_s: float | None,
    actor: str,
    as_json: bool,
) -> None:
    """Replay a policy and the doer's active policy on a golden dataset; print the verdict."""
    from learning.replay import replay_id
    from models.commands import RunReplay

    seed_list = _seeds(seeds) if seeds else list(self.learning.replay.seeds)
    async with database(self) as pool:
        policy = await _find(pool, policy_ref)
        golden = await golden_for(pool, policy.doer, dataset, None)
        rid = replay_id(policy.content_hash, golden.manifest_hash, seed_list)
        recorded = await store.get_replay(pool, rid)
        request = RunReplay(
            doer=policy.doer,
            actor=actor,
            reason="learnops replay run",
            policy_id=policy.policy_id,
            version=policy.version,
            dataset=f"{golden.name}@{golden.version}",
            seeds=seed_list,
            force=force,
            timeout_s=timeout,
        )
        # An incomplete replay is not an answer: the request starts its next attempt
        # (which resumes the experiments that ended incomplete on it).
        restarts = force or recorded is None or recorded["status"] == "incomplete"
        answered = not restarts and _finished(recorded)
        if not answered:
            await _send(self, request)
        budget = wait_s or (timeout or self.learning.replay.timeout_s) + 30.0
        deadline = time.monotonic() + budget
        while True:
            row = await store.get_replay(pool, rid)
            fresh = row is not None and (not restarts or row["requested_by"] == request.event_id)
            if fresh and _finished(row):
                break
            if time.monotonic() > deadline:
                fail(
                    f"replay {rid} not finished after {budget:g}s; is a worker running, and a "
                    f"replay executor serving {policy.doer} (`learnops replay executor`)? "
                    f"(`learnops replay show {rid}` follows it)"
                )
            await asyncio.sleep(0.25)
        report = await replay_report(pool, rid)
        assert report is not None
        report["from_record"] = answered
        _print_replay(self, report, as_json)
        if report["status"] == "incomplete":
            raise SystemExit(1)


def _finished(row: Any) -> bool:
    return bool(row["status"] == "incomplete" or row["verdict"] is not None)


@command(replay, "show", click.argument("replay_id"), json_option)
async def replay_show(self: GroupedCommand, replay_id: str, as_json: bool) -> None:
    """A replay's per-seed results, summary, control and verdict."""
    async with database(self) as pool:
        report = await replay_report(pool, replay_id)
    if report is None:
        fail(f"no replay {replay_id}")
    assert report is not None
    _print_replay(self, report, as_json)


@command(
    replay,
    "executor",
    click.option("--group", default="learnops-replay-executor", show_default=True),
    click.option(
        "--doers",
        default=".*",
        show_default=True,
        help="Regex the doers it serves match in full ('Walk.*', not '^Walk'); another "
        "doer's tasks are left to the executor that serves it (its group commits past them).",
    ),
)
async def replay_executor(self: GroupedCommand, group: str, doers: str) -> None:
    """Run the local deterministic executor: replay tasks in, learning bundles out.

    It logs on stderr when it is ready and each task it answers (or dead-letters).
    """
    import logging

    from learnops.client.replay_executor import serve

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    executor_log = logging.getLogger("learnops.replay_executor")
    executor_log.addHandler(handler)
    executor_log.setLevel(logging.INFO)
    executor_log.propagate = False

    async with database(self) as pool:
        await serve(
            **self.settings.kafka_connection(),
            fetch_blob=lambda digest: store.get_blob(pool, digest),
            group_id=group,
            doers=doers,
        )


# --------------------------------------------------------------------------- experiment


@command(
    experiment,
    "create",
    click.option("--policy", "policy_ref", required=True, help="Candidate POLICY_ID@VERSION."),
    click.option(
        "--hypothesis",
        default=None,
        help="What the candidate should improve (default: the request's hypothesis).",
    ),
    click.option(
        "--request",
        "request_id",
        default=None,
        help="The experiment request it answers (`learnops experiment requests`).",
    ),
    click.option("--type", "experiment_type", type=click.Choice(TYPES), default=TYPES[0]),
    click.option("--id", "experiment_id", default=None, help="Experiment id (default: new)."),
    click.option("--phase", default=None, help="Phase (default: the golden dataset's)."),
    click.option("--dataset", default=None, help="Golden dataset NAME or NAME@VERSION."),
    click.option("--seeds", default=None, help="Comma-separated seeds (default: configured)."),
    click.option("--deploy", type=click.Choice(("shadow", "canary")), default="shadow"),
    canary_mode_option(
        "superiority",
        "How the shadow and canary judge it: 'non_inferiority' (no worse by --margin) for a "
        "candidate that should match the control, e.g. one fixing the option a bandit routes "
        "most tasks to already.",
    ),
    margin_option,
    click.option("--reason", default="learnops experiment create", show_default=True),
    _actor,
    json_option,
)
async def experiment_create(
    self: GroupedCommand,
    policy_ref: str,
    hypothesis: str | None,
    request_id: str | None,
    experiment_type: str,
    experiment_id: str | None,
    phase: str | None,
    dataset: str | None,
    seeds: str | None,
    deploy: str,
    canary_mode: str,
    margin: float | None,
    reason: str,
    actor: str,
    as_json: bool,
) -> None:
    """Create an experiment: replay the candidate against the control, then deploy if it passes.

    With --request it answers that experiment request (a learning trigger's),
    which the experiments stage then closes.
    """
    if dataset is None and phase is None:
        fail(
            "name the golden dataset to replay on: --dataset NAME[@VERSION], or --phase PHASE "
            "for the latest one frozen from the doer's PHASE dataset (nothing sent)"
        )
    # The default plan is as before (the canary's own settings); a mode asked for is checked.
    plan = None
    if canary_mode != "superiority" or margin is not None:
        plan = {"canary": canary_plan(self, canary_mode, margin, what="nothing sent")}
    async with database(self) as pool:
        policy = await _find(pool, policy_ref)
        await golden_for(pool, policy.doer, dataset, phase)
        active = await store.active_policy_row(pool, policy.doer)
        request = await find_request(pool, request_id) if request_id else None
    if active is None:
        fail(
            f"{policy.doer} has no active policy to compare {policy.policy_id}@{policy.version} "
            "with (promote its first policy: `learnops policy promote ID@1 --force …`); "
            "nothing sent"
        )
    if (active["policy_id"], active["version"]) == (policy.policy_id, policy.version):
        fail(
            f"{policy.policy_id}@{policy.version} is {policy.doer}'s active policy: an "
            "experiment compares a candidate with it; nothing sent"
        )
    if request is not None:
        if request["doer"] != policy.doer:
            fail(f"request {request_id} is for {request['doer']}, not {policy.doer}")
        if request["status"] != "open":
            self.say(f"note: request {request_id} is {request['status']} already")
    await send_experiment(
        self,
        policy,
        request,
        hypothesis=hypothesis,
        experiment_type=experiment_type,
        experiment_id=experiment_id,
        phase=phase,
        dataset=dataset,
        seeds=_seeds(seeds) if seeds else None,
        deploy=deploy,
        reason=reason,
        actor=actor,
        as_json=as_json,
        plan=plan,
    )


async def golden_for(pool: Any, doer: str, dataset: str | None, phase: str | None) -> store.Golden:
    """The golden dataset named (NAME[@VERSION]), or the latest frozen from the doer's PHASE
    dataset, as the experiments stage will look it up; one sentence and exit 1 if none."""
    try:
        if dataset is not None:
            name, version = split_versioned(dataset)
            golden = await store.find_golden(pool, name, version)
        else:
            golden = await store.find_golden(pool, None, dataset=f"{doer}/{phase}")
    except ValueError as exc:
        fail(str(exc))
    if golden is None:
        named = dataset or f"frozen from {doer}/{phase}"
        versions = await pool.fetch(
            "SELECT name, max(version) AS latest FROM golden_datasets GROUP BY name"
        )
        latest = {r["name"]: r["latest"] for r in versions}
        base = split_versioned(dataset)[0] if dataset else ""
        hint = (
            f"; {base}'s latest is @{latest[base]}"
            if base in latest
            else closest(base, list(latest))
            if base
            else ""
        )
        fail(f"no golden dataset {named}{hint} (`learnops dataset freeze` makes one); nothing sent")
    mismatch = golden.mismatch(doer, phase)
    if mismatch is not None:
        fail(f"{mismatch}; nothing sent")
    return golden


async def send_experiment(
    ctx: GroupedCommand,
    policy: PolicyRecord,
    request: Any,
    *,
    hypothesis: str | None,
    experiment_type: str,
    experiment_id: str | None,
    phase: str | None,
    dataset: str | None,
    seeds: list[int] | None,
    deploy: str,
    reason: str,
    actor: str,
    as_json: bool,
    plan: dict[str, Any] | None = None,
) -> CreateExperiment:
    """Send the signed CreateExperiment of candidate ``policy``, answering ``request`` if given.

    ``plan``: the experiment's plan (``plan.canary``: the shadow's and canary's settings).
    """
    from models.commands import CreateExperiment

    if request is not None:
        hypothesis = hypothesis or request["hypothesis"]
    if not hypothesis:
        fail("--hypothesis is required without --request")
    event = CreateExperiment.model_validate(
        {
            "doer": policy.doer,
            "actor": actor,
            "reason": reason,
            "experiment_id": experiment_id or f"exp-{uuid.uuid4().hex[:12]}",
            "hypothesis": hypothesis,
            "request_id": str(request["request_id"]) if request is not None else None,
            "policy_id": policy.policy_id,
            "version": policy.version,
            "experiment_type": experiment_type,
            "phase": phase,
            "dataset": dataset,
            "seeds": seeds,
            "deploy": deploy,
            "plan": plan or {},
        }
    )
    await _send(ctx, event)
    if as_json:
        ctx.say(_dump({"experiment_id": event.experiment_id, "event_id": str(event.event_id)}))
    else:
        ctx.say(
            f"sent experiment {event.experiment_id} ({event.event_id}) to {COMMANDS_TOPIC}; "
            f"follow it with `learnops experiment show {event.experiment_id}` (a worker runs "
            "it, a replay executor serving the doer answers its replay tasks)"
        )
    return event


async def experiment_report(pool: Any, experiment_id: str) -> dict[str, Any] | None:
    """An experiment with its history and replays, as `learnops experiment show --json` prints."""
    row = await store.get_experiment(pool, experiment_id)
    if row is None:
        return None
    history = await store.experiment_history(pool, experiment_id)
    replay = (
        await replay_report(pool, row["replay_id"], row["comparison_id"])
        if row["replay_id"]
        else None
    )
    request = await request_row(pool, row["request_id"]) if row["request_id"] else None
    return {
        "experiment_id": row["experiment_id"],
        "type": row["experiment_type"],
        "doer": row["doer"],
        "phase": row["phase"],
        "status": row["status"],
        "hypothesis": row["hypothesis"],
        "candidate": f"{row['policy_id']}@{row['policy_version']}",
        "control": (
            f"{row['control_policy_id']}@{row['control_version']}"
            if row["control_policy_id"]
            else None
        ),
        "dataset": f"{row['dataset_name']}@{row['dataset_version']}"
        if row["dataset_name"]
        else None,
        "seeds": list(row["seeds"]),
        "deploy": row["deploy"],
        "deployment_id": row["deployment_id"],
        "replay": replay,
        "request": _request_report(request) if request is not None else None,
        "outcome": row["outcome"],
        "created_at": _iso(row["created_at"]),
        "concluded_at": _iso(row["concluded_at"]),
        "history": [
            {
                "from": h["from_status"],
                "to": h["to_status"],
                "reason": h["reason"],
                "at": _iso(h["occurred_at"], "milliseconds"),
                "evidence": h["evidence"],
            }
            for h in history
        ],
    }


@command(experiment, "show", click.argument("experiment_id"), json_option)
async def experiment_show(self: GroupedCommand, experiment_id: str, as_json: bool) -> None:
    """An experiment: its candidate and control, replay, status and every transition."""
    async with database(self) as pool:
        report = await experiment_report(pool, experiment_id)
        if report is None:
            rows = await store.list_experiments(pool, doer=None, status=None, limit=100000)
            known = {r["experiment_id"] for r in rows}
            # The start of an id, as skill cards and tables shorten them (6+ characters).
            starting = sorted(k for k in known if k.startswith(experiment_id))
            if len(experiment_id) >= 6 and len(starting) == 1:
                report = await experiment_report(pool, starting[0])
            elif len(experiment_id) >= 6 and await pool.fetchval(
                "SELECT 1 FROM experiment_requests WHERE starts_with(request_id::text, $1)",
                experiment_id.lower(),
            ):
                fail(
                    f"{experiment_id!r} is an experiment request, not an experiment "
                    "(`learnops experiment requests --all` lists them, with the experiment "
                    "that answered each)"
                )
        if report is None:
            fail(
                f"no such experiment {experiment_id!r}{closest(experiment_id, known)} "
                "(`learnops experiment list` shows them)"
            )
    assert report is not None
    if as_json:
        self.say(_dump(report))
        return
    self.say(
        f"experiment {report['experiment_id']} ({report['type']}) — {report['doer']}/"
        f"{report['phase']}: {report['status']}"
    )
    self.say(f"  hypothesis: {report['hypothesis']}")
    asked = report["request"]
    if asked is not None:
        self.say(
            f"  answers request {asked['request_id']} ({asked['reason']}, opened "
            f"{asked['opened_at']}, {asked['status']}): {asked['message']}"
        )
        evidence = orjson.dumps(asked["evidence"], option=orjson.OPT_SORT_KEYS).decode()
        self.say(f"    evidence: {evidence}")
    self.say(
        f"  candidate {report['candidate']} vs control {report['control']} on "
        f"{report['dataset']}, seeds {','.join(map(str, report['seeds']))}"
    )
    for h in report["history"]:
        self.say(f"  {h['at']}  {h['from'] or '-':>11} → {h['to']:<11} {h['reason']}")
    if report["replay"] is not None:
        _print_replay(self, report["replay"], False)
    gate = _gate(report)
    if gate is not None:
        self.say(
            f"gate: {'PASSED' if gate['passed'] else 'NOT PASSED'} — {gate['reason']} (the "
            "plan judges it no worse, so its replay is judged so too; the verdict above is "
            "the replay rule's 'better')"
        )
    if report["status"] == "incomplete":
        _resume_hint(self, report)


def _gate(report: dict[str, Any]) -> dict[str, Any] | None:
    """The non-inferiority verdict that decided an experiment planned "no worse", or None."""
    for evidence in (report["outcome"], *(h["evidence"] for h in report["history"])):
        if isinstance(evidence, dict) and "replay_verdict" in evidence:
            gate: dict[str, Any] = evidence["verdict"]
            return gate
    return None


def _resume_hint(self: GroupedCommand, report: dict[str, Any]) -> None:
    """How to resume an incomplete experiment: run its incomplete replays again."""
    replay = report["replay"] or {}
    control = replay.get("control") or {}
    incomplete = [
        policy
        for policy, side in ((report["candidate"], replay), (report["control"], control))
        if side.get("status") == "incomplete"
    ]
    where = f"--dataset {report['dataset']} --seeds {','.join(map(str, report['seeds']))}"
    self.say(
        "  to resume: with a replay executor serving the doer (`learnops replay executor`), run"
    )
    for policy in incomplete or [report["candidate"]]:
        self.say(f"    learnops replay run --policy {policy} {where}")
    self.say(
        "  (the experiment resumes while its candidate is compared with its own control "
        f"{report['control']}; after another version became active, create a new experiment)"
    )


@command(
    experiment,
    "list",
    click.option("--doer", default=None),
    click.option("--status", type=click.Choice(STATUSES), default=None),
    limit_option(100),
    json_option,
)
async def experiment_list(
    self: GroupedCommand, doer: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """Experiments, newest first."""
    async with database(self) as pool:
        rows = await store.list_experiments(pool, doer=doer, status=status, limit=limit)
        if doer is not None and not rows:
            # A doer name typed in another case finds its doer's, as elsewhere in the CLI.
            doer = await _known_doer(pool, doer)
            rows = await store.list_experiments(pool, doer=doer, status=status, limit=limit)
    items = [
        {
            "experiment_id": r["experiment_id"],
            "type": r["experiment_type"],
            "doer": r["doer"],
            "phase": r["phase"],
            "status": r["status"],
            "candidate": f"{r['policy_id']}@{r['policy_version']}",
            "request_id": str(r["request_id"]) if r["request_id"] else None,
            "created_at": _iso(r["created_at"]),
        }
        for r in rows
    ]
    if as_json:
        self.say(_dump(items))
        return
    shown = table("experiment", "type", "doer", "candidate", "status", "created", ids=1)
    for item in items:
        shown.add_row(
            item["experiment_id"],
            item["type"],
            item["doer"],
            item["candidate"],
            item["status"],
            item["created_at"],
        )
    self.console().print(shown)
    if not items:
        self.say("no experiments" + (f" of {doer}" if doer else ""))


async def _known_doer(pool: Any, doer: str) -> str:
    """The doer as written, or the one doer whose name matches regardless of case.

    Fails with the closest name when no doer has a policy or an experiment
    request under that name.
    """
    from storage.policies import registered_doers

    requests = await list_requests(pool, include_closed=True, limit=100000)
    if any(r["doer"] == doer for r in requests):
        return doer
    known = {r["doer"] for r in requests}
    known |= await registered_doers(pool)
    found = as_known(doer, known)
    if found is not None:
        return found
    fail(f"no such doer {doer!r}{closest(doer, known)} (no policy and no experiment request)")


# --------------------------------------------------------------------------- requests


async def find_request(pool: Any, request_id: str) -> Any:
    """The request whose id is or starts with ``request_id`` (8 hex digits at least, as
    `experiment requests` shows them); one sentence and exit 1 if none or several."""
    from storage.skills import find_requests

    start = event_id_start(request_id, "request")
    rows = await find_requests(pool, start)
    if not rows:
        fail(f"no experiment request {start} (`learnops experiment requests` lists them)")
    if len(rows) > 1:
        fail(f"more than one experiment request starts with {start}: give more of its id")
    return rows[0]


def _request_report(row: Any) -> dict[str, Any]:
    """An experiment request as `learnops experiment requests --json` prints it."""
    return {
        "request_id": str(row["request_id"]),
        "doer": row["doer"],
        "reason": row["reason"],
        "status": row["status"],
        "hypothesis": row["hypothesis"],
        "message": row["message"],
        "evidence": row["evidence"],
        "opened_at": _iso(row["opened_at"]),
        "last_triggered_at": _iso(row["last_triggered_at"]),
        "published": row["published_at"] is not None,
        "experiment_id": row["experiment_id"],
        "closed_at": _iso(row["closed_at"]),
        "closed_reason": row["closed_reason"],
    }


@command(
    experiment,
    "requests",
    click.option("--doer", default=None),
    click.option("--all", "include_closed", is_flag=True, help="Closed requests too."),
    limit_option(100),
    json_option,
)
async def experiment_requests(
    self: GroupedCommand, doer: str | None, include_closed: bool, limit: int, as_json: bool
) -> None:
    """Experiment requests the learning triggers raised: open ones (--all: every one), newest first.

    Answer one with `learnops experiment create --request ID --policy CANDIDATE`; a
    bandit's (reason bandit:…) with `learnops bandit propose ID --key POLICY_KEY`.
    """
    async with database(self) as pool:
        rows = await list_requests(pool, doer=doer, include_closed=include_closed, limit=limit)
        if doer is not None and not rows:
            doer = await _known_doer(pool, doer)
            rows = await list_requests(pool, doer=doer, include_closed=include_closed, limit=limit)
    items = [{**_request_report(r), "experiment_status": r["answered_status"]} for r in rows]
    if as_json:
        self.say(_dump(items))
        return
    shown = table("request", "doer", "reason", "status", "opened", "answered by", "message")
    for item in items:
        answered = (
            f"{item['experiment_id']} ({item['experiment_status']})"
            if item["experiment_id"]
            else ""
        )
        shown.add_row(
            item["request_id"],
            item["doer"],
            item["reason"],
            item["status"],
            item["opened_at"],
            answered,
            item["message"],
        )
    self.console().print(shown)
    if not items:
        self.say("no open experiment requests" if not include_closed else "no experiment requests")


__all__ = ["experiment", "replay"]
