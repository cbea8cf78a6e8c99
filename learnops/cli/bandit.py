"""`learnops bandit freeze|unfreeze|show DOER`: hold a doer's bandit allocations, or read them.

``freeze`` and ``unfreeze`` publish a :class:`models.bandit.BanditControl`, signed
with the operator's key (``LEARNOPS_OPERATOR_KEY``) like every command, on the
compacted learning.bandit-controls topic (keyed by doer); the bandit stage
(agents/bandit.py) verifies it, applies it at its next batch and republishes
the allocations with ``frozen`` set. ``show`` reads the
doer's latest record of learning.bandit-allocations.

``propose REQUEST_ID`` turns the bandit's experiment request (a confidently
best option) into a policy: the worker never signs policies, so an owner
signs the request's candidate artifact with their policy signing key, sends
it as a RegisterPolicy (as ``learnops policy register``), then files the
``tool_tuning``/``rag_optimization`` experiment answering the request (as
``learnops experiment create``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from learnops.cli.experiments import canary_mode_option, canary_plan, margin_option
from learnops.cli.main import (
    GroupedCommand,
    ServiceUnreachable,
    actor_option,
    as_known,
    closest,
    command,
    database,
    fail,
    group,
    json_option,
    split_ref,
    table,
)
from learnops.cli.policy import (
    fail_if_runs_without_policy,
    policy_key_option,
    timeout_option,
    wait_option,
)

if TYPE_CHECKING:
    from learning.signing import SigningKey

CONTROLS = "learning.bandit-controls"
ALLOCATIONS = "learning.bandit-allocations"

_actor = actor_option("Who is asking, as declared (the record names the key's operator).")
_reason = click.option("--reason", required=True, help="Why, for the record.")
_doer = click.argument("doer")


@group("The bandit optimizer: a doer's option shares; freeze, unfreeze, propose.")
def bandit() -> None:
    pass


async def _allocations_of(ctx: GroupedCommand, doer: str) -> tuple[str, Any, set[str]]:
    """The doer as its allocations name it, its latest record (or None), every doer named.

    Doer names are matched as written, then regardless of case when one fits:
    the bandit stage keys a doer's book by its name as the runs give it. Only
    records signed by a key of the trusted keyring count, names included, so a
    record anyone wrote under a look-alike name (another case) can neither be
    shown nor take a freeze meant for the doer (a red-team trial froze such a
    decoy while the doer's shares moved on); and of a doer the stage has stored
    allocations for, only the records it stored as sent (the keyring holds the
    policy signers' keys too). A name as typed among those records comes first,
    then the policy store's spelling. When the database cannot be read, or no
    record is signed (a worker without a signing key), every valid record
    counts, as the topic has them. A record that is not a valid allocation is
    skipped.
    """
    from pydantic import ValidationError

    from agents.topics import read_from_start
    from learnops.client.allocations import check_allocations
    from models.bandit import BanditAllocations
    from storage.policies import registered_doers
    from storage.signing_keys import load_keyring

    records = await read_from_start(ctx.settings, ALLOCATIONS)
    valid: list[tuple[bytes, BanditAllocations]] = []
    for record in records:
        if record.key is not None and record.value is not None:
            try:
                valid.append((record.key, BanditAllocations.from_json(record.value)))
            except ValidationError:
                continue
    registered: set[str] = set()
    sent: dict[tuple[str, int, bool], Any] = {}
    try:
        async with database(ctx) as pool:
            keyring = await load_keyring(pool)
            registered = await registered_doers(pool)
            for row in await pool.fetch(
                "SELECT doer, sequence, frozen, allocations FROM bandit_allocations "
                "WHERE doer = ANY($1::text[])",
                sorted({found.doer for _, found in valid}),
            ):
                sent[(row["doer"], row["sequence"], row["frozen"])] = row["allocations"]
    except ServiceUnreachable:
        keyring = None
    if keyring is not None and len(keyring):
        signed = [
            (key, found)
            for key, found in valid
            if check_allocations(found, key, keyring, stale=False) is None
        ]
        # None signed: a worker without a signing key publishes them unsigned (a local
        # setup), and every valid record counts, as the stage's own clients take them.
        valid = signed or valid
    # The keyring holds the policy signers' keys too, and a red-team trial showed a
    # record one of them signed: what the stage sent, it stored first (storage.bandit).
    # A doer with nothing stored (allocations sent before migration 036) keeps its own.
    stored_doers = {doer for doer, _, _ in sent}
    valid = [
        (key, found)
        for key, found in valid
        if found.doer not in stored_doers
        or sent.get((found.doer, found.sequence, found.frozen))
        == [p.model_dump(mode="json") for p in found.allocations]
    ]
    doers = {found.doer for _, found in valid}
    # A book is keyed as the runs name the doer: an exact name among the records first.
    doer = doer if doer in doers else as_known(doer, registered) or as_known(doer, doers) or doer
    latest: Any = None
    for key, found in valid:
        if key == doer.encode() and (latest is None or found.sequence >= latest.sequence):
            latest = found
    return doer, latest, doers


async def _registered_doer(ctx: GroupedCommand, doer: str, allocated: set[str]) -> str:
    """The doer as the policy store names it (regardless of case); refused when it has none."""
    from storage.policies import registered_doers

    async with database(ctx) as pool:
        known = await registered_doers(pool)
    found = as_known(doer, known)
    if found is not None:
        return found
    async with database(ctx) as pool:
        await fail_if_runs_without_policy(pool, doer)
    fail(
        f"no doer {doer!r} in the policy store or on {ALLOCATIONS}"
        f"{closest(doer, known | allocated)}; nothing sent (a doer's bandit starts from its "
        "registered policy)"
    )


async def _verdict(
    ctx: GroupedCommand, control: Any, timeout: float, has_allocations: bool | None
) -> str | None:
    """Wait until the bandit stage applied ``control``; exit 1 with the reason if refused.

    Applied, it is in ``applied_commands``; refused for its signature or role, it
    leaves a ``command_refused`` alert. A note (not a failure) is returned when
    the database cannot be read: the control went out all the same.
    """
    import time

    from learnops.cli.policy import fail_if_refused_on_arrival
    from storage.operator_keys import applied_at

    try:
        async with database(ctx) as pool:
            deadline = time.monotonic() + timeout
            while await applied_at(pool, control.event_id) is None:
                await fail_if_refused_on_arrival(pool, control.event_id)
                if time.monotonic() > deadline:
                    later = (
                        "`learnops bandit show` says frozen or moving"
                        if has_allocations is not False
                        else "the doer has no allocations yet: it holds from its first on"
                    )
                    fail(
                        f"sent {control.event_id}, but no bandit stage applied it within "
                        f"{timeout:g}s; is a worker running the bandit stage? (it applies it "
                        f"when it runs; {later})"
                    )
                await asyncio.sleep(0.25)
    except ServiceUnreachable as exc:
        return f"sent, but whether it was applied could not be checked ({exc})"
    return None


async def _control(
    ctx: GroupedCommand,
    doer: str,
    frozen: bool,
    actor: str,
    reason: str,
    as_json: bool,
    wait: bool = True,
    timeout: float = 30.0,
) -> None:
    from aiokafka.errors import KafkaError

    from agents.topics import TopicCatalogError, started
    from learnops.cli.operator import refuse_unless_authorised, signed
    from models.bandit import BanditControl

    verb = "frozen" if frozen else "unfrozen"
    note = None
    has_allocations: bool | None = None  # None: the allocations could not be read
    try:
        doer, latest, doers = await _allocations_of(ctx, doer)
    except (KafkaError, TopicCatalogError) as exc:
        # An emergency control goes out even when the allocations cannot be read
        # (the topic missing, the broker slow to answer a read): as typed.
        note = f"could not read {ALLOCATIONS} ({exc}); sent under the name as typed"
    else:
        has_allocations = latest is not None
        if latest is not None and latest.frozen == frozen:
            # Sent all the same (it changes nothing); said, so a second freeze is not read
            # as the one that held them.
            note = (
                f"{doer}'s allocations are {verb} already (sequence {latest.sequence}); "
                "sent again, it changes nothing unless another operator's "
                f"{'unfreeze' if frozen else 'freeze'} is on its way"
            )
    if has_allocations is False:
        # A freeze ahead of a doer's first allocation is allowed (it holds from then on)
        # for a doer the policy store knows, under the name it knows; a name nobody
        # knows would freeze nothing anyone routes by, so it is refused.
        doer = await _registered_doer(ctx, doer, doers)
        action = "freeze" if frozen else "unfreeze"
        note = (
            f"{doer} has no allocations on {ALLOCATIONS} yet; the {action} holds from its "
            "first allocation on"
        )
        declaration = await _declaration(ctx, doer)
        if declaration is not None and not declaration[1]:
            # Nothing to hold now; it would carry over to a later version that declares some.
            note = (
                f"{doer}: {declaration[0]}; the {action} holds from the first allocation of a "
                "later version that declares some"
            )
    control = signed(
        ctx,
        BanditControl(
            doer=doer,
            command="freeze_bandit" if frozen else "unfreeze_bandit",
            actor=actor,
            reason=reason,
        ),
    )
    await refuse_unless_authorised(ctx, control)
    async with started(ctx.settings.kafka_producer()) as producer:
        await producer.send_and_wait(CONTROLS, key=doer.encode(), value=control.to_json())
    unchecked = await _verdict(ctx, control, timeout, has_allocations) if wait else None
    applied = None if unchecked is not None or not wait else True
    note = "; ".join(n for n in (note, unchecked) if n) or None
    if as_json:
        sent = {
            "doer": doer,
            "frozen": frozen,
            "event_id": str(control.event_id),
            "sent": True,
            "applied": applied,
            "has_allocations": has_allocations,
            "note": note,
        }
        ctx.say(orjson.dumps(sent).decode())
        return
    if note is not None:
        ctx.say(f"note: {note}", file=ctx.stderr)
    if applied:
        ctx.say(f"{doer}: {verb} (applied {control.event_id}, signed with your operator key)")
        return
    ctx.say(
        f"{doer}: {verb} sent as {control.event_id}, signed with your operator key (the bandit "
        "stage applies it at its next batch if your key holds the operator role on the doer)"
    )


def _control_command(name: str, frozen: bool, doc: str) -> None:
    """Register ``learnops bandit NAME DOER``: send a freeze (or unfreeze) and report it."""

    async def run(
        ctx: GroupedCommand,
        doer: str,
        actor: str,
        reason: str,
        wait: bool,
        timeout: float,
        as_json: bool,
    ) -> None:
        await _control(ctx, doer, frozen, actor, reason, as_json, wait, timeout)

    run.__doc__ = doc
    options = (_doer, _actor, _reason, wait_option, timeout_option, json_option)
    command(bandit, name, *options)(run)


_control_command(
    "freeze", True, "Hold DOER's allocations where they are; the bandit keeps learning meanwhile."
)
_control_command(
    "unfreeze",
    False,
    "Let DOER's allocations move again (what was learned while frozen counts at once).",
)


async def _superseded(ctx: GroupedCommand, doer: str, latest: Any) -> str | None:
    """Why the shown allocations do not route the doer's tasks now, if they do not.

    After a promotion the record still holds the previous version's shares until
    the stage publishes the new version's first ones (at its first live run); a
    Router routing under the new version ignores them meanwhile. Read from the
    policy store; when that cannot be reached the allocations are shown without it.
    """
    from models.tunables import tunables_of
    from storage.policies import find_policy
    from storage.skills import active_policy

    try:
        async with database(ctx) as pool:
            active = await active_policy(pool, doer)
            record = None if active is None else await find_policy(pool, *active)
    except ServiceUnreachable as exc:
        return f"the active policy could not be checked ({exc})"
    stale = sorted(
        {
            f"{a.policy_id}@{a.policy_version}"
            for a in latest.allocations
            if active is not None and (a.policy_id, a.policy_version) != active
        }
    )
    if not stale or active is None:
        return None
    try:
        declared = tunables_of(record.artifact) if record is not None else None
    except ValueError:
        declared = None
    current = f"{active[0]}@{active[1]}"
    if declared is not None and not declared.root:
        # A version that fixes every choice (a bandit's promoted proposal): nothing to share.
        then = f"Tasks under {current} take what it fixes: it declares no options to allocate"
    else:
        then = (
            f"Tasks under {current} take its defaults until the bandit stage publishes its "
            "first shares, at its first live run"
        )
    return (
        f"{doer}'s active policy is {current}; the shares below are of "
        f"{', '.join(stale)} and route only tasks routed under it. {then}"
    )


async def _declaration(ctx: GroupedCommand, doer: str) -> tuple[str, bool] | None:
    """What DOER's active policy leaves to the bandit, and whether it leaves anything;
    None when the doer has no active policy or the store cannot be read."""
    from models.tunables import tunables_of
    from storage.policies import find_policy
    from storage.skills import active_policy

    try:
        async with database(ctx) as pool:
            active = await active_policy(pool, doer)
            record = None if active is None else await find_policy(pool, *active)
    except ServiceUnreachable:
        return None
    if active is None or record is None:
        return None
    ref = f"{active[0]}@{active[1]}"
    try:
        declared = tunables_of(record.artifact)
    except ValueError as exc:
        return f"its active policy {ref} declares its options wrongly ({exc})", False
    open_ = [f"{phase}/{name}" for phase, names in sorted(declared.root.items()) for name in names]
    if not open_:
        return (
            f"its active policy {ref} declares no tunables, so the bandit has nothing to allocate",
            False,
        )
    return f"its active policy {ref} leaves {', '.join(open_)} open", True


async def _registered_hint(ctx: GroupedCommand, doer: str) -> str:
    """``did you mean 'X'? …`` for the closest doer the policy store knows, or ''."""
    from storage.policies import registered_doers

    try:
        async with database(ctx) as pool:
            registered = await registered_doers(pool)
    except ServiceUnreachable:
        return ""
    if doer in registered:
        return f"{doer} is registered but has no active policy yet"
    hint = closest(doer, registered - {doer}).removeprefix("; ")
    return f"{hint} It has a policy but no allocations either" if hint else ""


@command(bandit, "show", _doer, json_option)
async def show(ctx: GroupedCommand, doer: str, as_json: bool) -> None:
    """DOER's latest allocations: per phase and parameter, each option's share."""
    doer, latest, doers = await _allocations_of(ctx, doer)
    if latest is None:
        declaration = await _declaration(ctx, doer)
        if declaration is not None:  # the doer is known: say what it is waiting for
            said, open_ = declaration
            later = (
                "; the bandit stage publishes shares once its runs name the options they "
                "used (docs/bandits.md)"
                if open_
                else ""
            )
            fail(f"no allocations of {doer!r} on {ALLOCATIONS} yet: {said}{later}")
        hint = closest(doer, doers).removeprefix("; ") or await _registered_hint(ctx, doer)
        fail(
            f"no allocations of {doer!r} on {ALLOCATIONS} ({hint or 'none under that name'}); "
            "the bandit stage publishes them once the doer's runs name options its policy "
            "declares (docs/bandits.md)"
        )
    note = await _superseded(ctx, doer, latest)
    if note is not None:
        ctx.say(f"note: {note}", file=ctx.stderr)
    if as_json:
        ctx.say(orjson.dumps(latest.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        return
    state = "frozen" if latest.frozen else "moving"
    shown = table(
        "phase/parameter",
        "option",
        "share",
        "policy",
        "allocation",
        "runs (all options)",
        "probed",
        title=f"{doer}: bandit allocations ({state}, sequence {latest.sequence})",
    )
    for allocation in latest.allocations:
        for option, share in sorted(allocation.shares.items(), key=lambda s: -s[1]):
            shown.add_row(
                f"{allocation.phase}/{allocation.parameter}",
                option,
                f"{share:.1%}",
                f"{allocation.policy_id}@{allocation.policy_version}",
                str(allocation.sequence),
                str(allocation.runs),
                # On probation and not held: run in shadow until shown no worse (docs/bandits.md).
                f"{100 * allocation.probe_share:g}% of tasks"
                if option in allocation.probes
                else "",
            )
    ctx.console().print(shown)


# The reason the bandit stage gives its requests (agents/bandit.py): "bandit:POLICY@V:KEY=OPTION".
BANDIT_REASON = "bandit:"
_PROPOSAL_FIELDS = ("experiment_id", "experiment_type", "phase", "candidate_artifact", "parent")


def proposal_of(request: Any) -> dict[str, Any]:
    """The bandit's proposal a request carries; one sentence and exit 1 when it carries none."""
    request_id = request["request_id"]
    evidence = request["evidence"] or {}
    if not str(request["reason"]).startswith(BANDIT_REASON):
        fail(
            f"request {request_id} was raised by {request['reason']!r}, not by the bandit; "
            "answer it with `learnops experiment create --request ID --policy CANDIDATE`"
        )
    missing = [name for name in _PROPOSAL_FIELDS if name not in evidence]
    if missing:
        fail(f"request {request_id} carries no {', '.join(missing)} in its evidence")
    if request["experiment_id"] is not None:
        fail(
            f"request {request_id} is answered already by experiment {request['experiment_id']} "
            "(`learnops experiment show` shows it)"
        )
    if request["status"] != "open":
        fail(
            f"request {request_id} is {request['status']} ({request['closed_reason']}); "
            "`learnops experiment requests --all` shows it"
        )
    return dict(evidence)


@command(
    bandit,
    "propose",
    click.argument("request_id"),
    policy_key_option,
    click.option("--golden", default=None, help="Golden dataset NAME or NAME@VERSION to replay."),
    click.option(
        "--deploy",
        type=click.Choice(("shadow", "canary")),
        default="shadow",
        show_default=True,
        help="Where the candidate goes once its replay passes.",
    ),
    canary_mode_option(
        "non_inferiority",
        "How the shadow and canary judge it: the control already runs mostly the "
        "proposed option, so 'no worse' is what they can show.",
    ),
    margin_option,
    timeout_option,
    _actor,
    json_option,
)
async def propose(
    ctx: GroupedCommand,
    request_id: str,
    key_file: Path,
    golden: str | None,
    deploy: str,
    canary_mode: str,
    margin: float | None,
    timeout: float,
    actor: str,
    as_json: bool,
) -> None:
    """Sign the bandit's proposal in REQUEST_ID as a policy and file its experiment.

    The candidate (the policy with the best option fixed) is registered as the
    next version of the doer's policy, then the tool_tuning or rag_optimization
    experiment answering the request replays, shadows and canaries it.
    """
    from learnops.cli.policy import load_signing_key

    key = load_signing_key(key_file)
    with ctx.quiet(as_json):
        canary = canary_plan(ctx, canary_mode, margin, what="nothing registered or sent")
        event, policy, request = await _propose(
            ctx, request_id, key, golden, deploy, {"canary": canary}, timeout, actor
        )
    if as_json:
        answered = {
            "experiment_id": event.experiment_id,
            "experiment_type": event.experiment_type,
            "event_id": str(event.event_id),
            "request_id": str(request["request_id"]),
            "candidate": f"{policy.policy_id}@{policy.version}",
        }
        ctx.say(orjson.dumps(answered).decode())
        return
    ctx.say(
        f"{event.experiment_type} experiment {event.experiment_id} answers request "
        f"{request['request_id']} with candidate {policy.policy_id}@{policy.version}"
    )


async def _propose(
    ctx: GroupedCommand,
    request_id: str,
    key: SigningKey,
    golden: str | None,
    deploy: str,
    plan: dict[str, Any],
    timeout: float,
    actor: str,
) -> tuple[Any, Any, Any]:
    """Register the proposal's candidate (or find it registered) and send its experiment."""
    from learnops.cli.experiments import find_request, golden_for, send_experiment
    from learnops.cli.policy import register_artifact
    from storage import experiments as experiments_store
    from storage import policies as policies_store

    async with database(ctx) as pool:
        request = await find_request(pool, request_id)
        proposal = proposal_of(request)
        experiment_id = str(proposal["experiment_id"])
        if await experiments_store.get_experiment(pool, experiment_id) is not None:
            fail(f"experiment {experiment_id} exists already (`learnops experiment show` shows it)")
        # Checked before anything is registered or sent: the experiment id is the
        # proposal's, so an experiment failed for its golden dataset could not be filed again.
        await golden_for(pool, request["doer"], golden, str(proposal["phase"]))
        parent_id, parent_version = split_ref(str(proposal["parent"]))
        active = await experiments_store.active_policy_row(pool, request["doer"])
        # The candidate is the parent with one option fixed: filed against another active
        # version, it would undo what that version changed. (A doer with no active policy
        # has the bandit follow its runs' version; nothing to be stale against.)
        if active is not None and (active["policy_id"], active["version"]) != (
            parent_id,
            parent_version,
        ):
            fail(
                f"request {request_id} is about {parent_id}@{parent_version}, and "
                f"{active['policy_id']}@{active['version']} is {request['doer']}'s active "
                "policy now: its proposal is stale (the bandit of the active version raises "
                "its own request); nothing registered or sent"
            )
        # Proposed before but the experiment not filed: the registered candidate is reused.
        version = await pool.fetchval(
            "SELECT max(version) FROM policies WHERE policy_id = $1 AND experiment_id = $2",
            parent_id,
            experiment_id,
        )
        if version is None:
            registered = await register_artifact(
                ctx,
                pool,
                proposal["candidate_artifact"],
                key,
                source=f"request {request_id}",
                doer=request["doer"],
                policy_id=parent_id,
                version=None,
                parent=(parent_id, parent_version),
                datasets=[],
                experiment=experiment_id,
                reason=f"bandit proposal {request['reason']}",
                actor=actor,
                wait=True,
                timeout=timeout,
                as_json=False,
            )
            version = registered.version
        policy = await policies_store.find_policy(pool, parent_id, version)
    assert policy is not None  # applied above, or found registered
    event = await send_experiment(
        ctx,
        policy,
        request,
        hypothesis=None,
        experiment_type=str(proposal["experiment_type"]),
        experiment_id=experiment_id,
        phase=str(proposal["phase"]),
        dataset=golden,
        seeds=None,
        deploy=deploy,
        reason=f"bandit proposal {request['reason']}",
        actor=actor,
        as_json=False,
        plan=plan,
    )
    return event, policy, request
