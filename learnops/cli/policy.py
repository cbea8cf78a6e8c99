"""`learnops policy …`: register, move and inspect policy versions; manage the signing keys.

Changes are commands: the CLI signs and sends them on learning.commands and
waits until the policy agent has recorded the outcome in PostgreSQL, so the
operator sees "applied" or "refused, because …". Reading (list, show, history,
diff, lineage) queries PostgreSQL directly. Keys are managed in PostgreSQL
directly too: the keyring is the trust root the agent reads.

A policy version is named ``POLICY_ID@VERSION``; ``POLICY_ID`` alone means its
latest version.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from learnops.cli.main import (
    CommandContext,
    actor_option,
    as_known,
    closest,
    command,
    database,
    dumps,
    fail,
    group,
    json_option,
    limit_option,
    split_ref,
    table,
    usage_error,
)
from storage import policies as store

if TYPE_CHECKING:
    from learning.signing import SigningKey
    from models.base import Event
    from models.commands import CanarySettings, RegisterPolicy

COMMANDS_TOPIC = "learning.commands"
ALERTS_TOPIC = "learning.alerts"


@group("Signed policy versions: register, shadow, canary, approve, promote, roll back, inspect.")
def policy() -> None:
    pass


@group("The Ed25519 keys trusted to sign policy artifacts.")
def keys() -> None:
    pass


policy.add_command(keys)

# --------------------------------------------------------------------------- shared options

_actor = actor_option(
    "Who is asking, as the command says; the audit names the operator of the signing key."
)
_wait = click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait for the agent's verdict."
)
_check = click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Refuse here, with nothing sent, a move the policy store would refuse as things "
    "stand now; --no-check sends it anyway (after commands still queued, the worker decides).",
)
_timeout = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait.",
)

# The policy signing key a registration is signed with (``--key``, a PEM file).
policy_key_option = click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Private key PEM (from `learnops policy keys generate`).",
)
timeout_option = _timeout
wait_option = _wait

# Names that exist, for "did you mean": the doers and policy ids of registered versions.
_KNOWN = "SELECT DISTINCT doer, policy_id FROM policies"


async def known_names(pool: Any) -> tuple[set[str], set[str]]:
    """The doers and the policy ids that have registered versions."""
    rows = await pool.fetch(_KNOWN)
    return {r["doer"] for r in rows}, {r["policy_id"] for r in rows}


async def resolve_doer(pool: Any, doer: str) -> str:
    """The doer as stored (case-insensitively); one sentence with the closest name if none."""
    doers, _ = await known_names(pool)
    found = as_known(doer, doers)
    if found is not None:
        return found
    await fail_if_runs_without_policy(pool, doer)
    fail(f"no such doer {doer!r}{closest(doer, doers)} (`learnops policy list` shows them)")


async def fail_if_runs_without_policy(pool: Any, name: str) -> None:
    """Fail saying so when NAME is a doer with scored runs and no registered policy.

    Such a doer is listed by `skills list` and the console; "no such doer" for it
    reads as a typo.
    """
    # learning_progress has a row per doer and day of stored runs: small, any case.
    with_runs = await pool.fetchval(
        "SELECT doer FROM learning_progress WHERE lower(doer) = lower($1)"
        " AND NOT EXISTS (SELECT 1 FROM policies WHERE lower(doer) = lower($1)) LIMIT 1",
        name,
    )
    if with_runs is not None:
        fail(
            f"doer {with_runs!r} has runs but no policy yet (`learnops policy register FILE "
            f"--doer {with_runs} --key KEY.pem` registers its first)"
        )


#: What ``policy shadow|canary POLICY_ID`` starts without a version: the latest version
#: that can go that way (a shadow from draft; a canary from the live shadow, else from the
#: latest draft, with --force).
ROLLOUT_FROM = {"shadow": ("draft",), "canary": ("draft", "shadow")}


async def _rollout_candidate(pool: Any, ref: str, how: str) -> store.PolicyRecord:
    """The version REF names, or for a REF without one, its latest that can start ``how``.

    "Latest" would otherwise pick a version that is archived or rolled back, whose
    rollout the policy stage refuses (a version number typed too high and then
    archived stood in front of every later one).
    """
    found = await _find(pool, ref)
    if split_ref(ref)[1] is not None:
        return found
    # The live shadow first: a canary without --force goes on from it, not from a newer draft.
    rows = await pool.fetch(
        "SELECT version FROM policies WHERE policy_id = $1 AND status = ANY($2::text[])"
        " ORDER BY status = 'shadow' DESC, version DESC LIMIT 1",
        found.policy_id,
        list(ROLLOUT_FROM[how]),
    )
    if not rows:
        fail(
            f"{found.policy_id} has no version that can start a {how} (its latest, "
            f"{found.policy_id}@{found.version}, is {found.status}); `learnops policy register` "
            "makes a new draft"
        )
    chosen = await store.find_policy(pool, found.policy_id, rows[0]["version"])
    assert chosen is not None
    return chosen


async def _find(pool: Any, ref: str) -> store.PolicyRecord:
    """The version REF names: ``POLICY_ID@VERSION`` or ``POLICY_ID`` (its latest).

    The policy id is matched exactly, then lower-cased (ids default to the doer's
    name), then as a doer's name when that doer has one policy id.
    """
    policy_id, version = split_ref(ref)
    found = await store.find_policy(pool, policy_id, version)
    if found is not None:
        return found
    name, at, suffix = ref.rpartition("@")
    if at and name and not suffix.isdigit():
        fail(f"{ref!r}: the version after '@' must be a number (POLICY_ID@VERSION)")
    doers, ids = await known_names(pool)
    candidates = [i for i in ids if i.lower() == policy_id.lower()]
    if not candidates:
        # A doer's name: as written first, then regardless of case.
        rows = await pool.fetch(
            "SELECT DISTINCT policy_id FROM policies WHERE doer = $1", policy_id
        ) or await pool.fetch(
            "SELECT DISTINCT policy_id FROM policies WHERE lower(doer) = lower($1)", policy_id
        )
        candidates = [r["policy_id"] for r in rows]
    if len(candidates) == 1:
        found = await store.find_policy(pool, candidates[0], version)
        if found is not None:
            return found
        versions = await pool.fetch(
            "SELECT version FROM policies WHERE policy_id = $1 ORDER BY version", candidates[0]
        )
        known = ", ".join(f"{candidates[0]}@{r['version']}" for r in versions)
        fail(f"no such policy version {ref!r}; {candidates[0]} has {known}")
    if len(candidates) > 1:
        fail(f"{policy_id!r} could be {', '.join(sorted(candidates))}: name one")
    await fail_if_runs_without_policy(pool, policy_id)
    hint = closest(policy_id, ids) or closest(policy_id, doers)
    fail(f"no such policy {policy_id!r}{hint} (`learnops policy list` shows what exists)")


async def _send(ctx: CommandContext, event: Event, approver_key: Path | None = None) -> Event:
    """Sign the command with the operator's key and send it; the signed command is returned."""
    from agents.topics import started
    from learnops.cli.operator import refuse_unless_authorised, signed

    event = signed(ctx, event, approver_key)
    await refuse_unless_authorised(ctx, event)
    async with started(ctx.settings.kafka_producer()) as producer:
        await producer.send_and_wait(COMMANDS_TOPIC, key=event.doer.encode(), value=event.to_json())
    return event


async def fail_if_refused_on_arrival(pool: Any, event_id: Any) -> None:
    """Stop with the reason when the stage refused the command's signature or role.

    Such a command leaves no audit or step row, only a ``command_refused`` alert.
    """
    from models.ids import caused_event_id

    message = await pool.fetchval(
        "SELECT message FROM alerts WHERE event_id = $1 AND kind = 'command_refused'",
        caused_event_id("alert", event_id),
    )
    if message is not None:
        fail(message)  # "<action> refused: <reason>"


def _limits_of(ctx: CommandContext, event: Event) -> Any:
    """The canary limits a shadow or canary is checked by here; None for other moves.

    They are this CLI's configuration's (``LEARNOPS_CONFIG_FILE``; the worker
    applies its own). Other moves load no learning configuration.
    """
    from models.commands import StartCanary, StartShadow

    return ctx.learning.canary_limits if isinstance(event, StartCanary | StartShadow) else None


async def _submit(
    ctx: CommandContext,
    pool: Any,
    event: Event,
    *,
    wait: bool,
    timeout: float,
    as_json: bool = False,
    approver_key: Path | None = None,
    first: str | None = None,
    check: bool = True,
    notes: Sequence[str] = (),
) -> None:
    """Send a command; with ``wait``, report the agent's verdict (exit 1 when refused).

    With ``check``, a move the policy store would refuse as things stand is
    refused here with nothing sent. ``notes`` go to stderr once it is sent;
    ``first`` is said then too (not before: a command the operator's key cannot
    sign is refused with nothing said to look done).
    """
    from storage import audit as audit_store
    from storage.policy_commands import refusal_of

    if check:
        refused = await refusal_of(pool, event, _limits_of(ctx, event))  # type: ignore[arg-type]
        if refused is not None:
            # What the policy stage would refuse as things stand: said now, nothing sent
            # (it would be an audited refusal and a policy_refused alert for a typo).
            fail(
                f"refused ({refused.refusal}): {refused.verdict} (checked against the store as "
                "it is now: nothing sent; --no-check sends it for the worker to decide)"
            )
    signed = await _send(ctx, event, approver_key)
    for note in notes:
        ctx.say(f"note: {note}", file=ctx.stderr)
    if first is not None and not as_json:
        ctx.say(first)
    sent = {"event_id": str(event.event_id), "command": event.command, "doer": event.doer}  # type: ignore[attr-defined]
    if not as_json:
        ctx.say(f"sent {event.event_id} to {COMMANDS_TOPIC}")
    if not wait:
        if as_json:
            ctx.say(dumps({**sent, "outcome": None}))
        return
    deadline = time.monotonic() + timeout
    while (outcome := await audit_store.outcome_of(pool, event.event_id)) is None:
        await fail_if_refused_on_arrival(pool, event.event_id)
        if time.monotonic() > deadline:
            fail(_unanswered(signed, timeout, f"`learnops policy history {event.doer}`"))
        await asyncio.sleep(0.25)
    if as_json and outcome.applied:  # a refusal is the error object on stderr alone
        ctx.say(
            dumps(
                {
                    **sent,
                    "outcome": {
                        "applied": outcome.applied,
                        "verdict": outcome.verdict,
                        "refusal": outcome.refusal,
                        "from_status": outcome.from_status,
                        "to_status": outcome.to_status,
                    },
                }
            )
        )
    elif outcome.applied:
        ctx.say(f"applied: {outcome.verdict}")
    if not outcome.applied:
        fail(f"refused ({outcome.refusal}): {outcome.verdict} (event {event.event_id})")


def _load_artifact(path: Path) -> dict[str, Any]:
    from agents.yaml12 import YAMLFileError, load_yaml
    from models.base import duplicate_key_problem

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            artifact = load_yaml(text, path)
        except YAMLFileError as exc:
            fail(f"{exc}; fix the file (YAML 1.2: quote values such as '1.10' meant as text)")
    else:
        repeated = duplicate_key_problem(text)
        if repeated is not None:
            fail(f"{path}: {repeated}; keep one of them")
        try:
            artifact = json.loads(text)
        except ValueError as exc:
            fail(f"{path} is not valid JSON: {' '.join(str(exc).split())}")
    if not isinstance(artifact, dict):
        fail(f"{path} must hold a JSON object (prompts, parameters, router rules, tools, …)")
    return artifact


def _when(value: datetime | None, timespec: str = "seconds") -> str:
    """A time for a table or a line of text; "-" when there is none."""
    return value.isoformat(timespec=timespec) if value else "-"


def _iso(value: datetime | None, timespec: str = "seconds") -> str | None:
    """A time for a JSON report: ISO 8601, or null when there is none (never a table's "-")."""
    return value.isoformat(timespec=timespec) if value else None


def _dump(value: Any) -> str:
    return dumps(value)


def _fraction(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise click.BadParameter(
            f"{value:g} is a share of the doer's tasks: give a number in (0, 1], e.g. 0.25"
        )
    return value


def _steps(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        shares = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} must be comma-separated shares, e.g. 0.05,0.25,0.5"
        ) from None
    if not shares:
        raise click.BadParameter("give at least one share, e.g. 0.05,0.25,0.5")
    from learning.promotion import check_steps

    problem = check_steps(shares)
    if problem:
        raise click.BadParameter(f"{problem}; e.g. 0.05,0.25,0.5")
    return shares


def _settings(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    """``--setting KEY=VALUE`` (repeated) as CanarySettings fields; a value is JSON or text."""
    import orjson
    from pydantic import ValidationError

    from models.commands import CanarySettings

    given: dict[str, Any] = {}
    for text in values:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{text!r} is not KEY=VALUE, e.g. min_sample_size=500")
        if key not in CanarySettings.model_fields:
            known = sorted(CanarySettings.model_fields)
            raise click.BadParameter(
                f"no setting {key!r}{closest(key, known)} (the settings: {', '.join(known)})"
            )
        try:
            given[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            given[key] = raw.strip()
    try:
        return CanarySettings.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise click.BadParameter(problems) from None


#: ``--setting``: how the canary stage judges a shadow or canary (docs/canary.md).
_setting_option = click.option(
    "--setting",
    "settings",
    multiple=True,
    callback=_settings,
    metavar="KEY=VALUE",
    help="A canary setting (repeat it): min_sample_size=500, mode=non_inferiority, alpha=0.05, "
    "max_silence_s=null, … (docs/canary.md, 'Starting a deployment'); the worker refuses "
    "settings looser than its canary.limits.",
)


# --------------------------------------------------------------------------- changes


@command(
    policy,
    "register",
    click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False)),
    click.option("--doer", required=True, help="The doer this policy is for."),
    policy_key_option,
    click.option(
        "--policy-id",
        default=None,
        help="Policy id (default: the doer's policy if it has one, else the doer's name).",
    ),
    click.option(
        "--version", type=click.IntRange(min=1), default=None, help="Version (default: next)."
    ),
    click.option("--parent", default=None, help="The version it derives from, POLICY_ID@VERSION."),
    click.option("--dataset", "datasets", multiple=True, help="A dataset it learned from."),
    click.option("--experiment", default=None, help="The experiment that produced it."),
    click.option("--reason", default=None, help="Why (default: the file name)."),
    _actor,
    _wait,
    _timeout,
    json_option,
)
async def policy_register(
    ctx: CommandContext,
    file: Path,
    doer: str,
    key_file: Path,
    policy_id: str | None,
    version: int | None,
    parent: str | None,
    datasets: tuple[str, ...],
    experiment: str | None,
    reason: str | None,
    actor: str,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Sign FILE (JSON or YAML) and register it as a new draft version of a doer's policy."""
    artifact = _load_artifact(file)
    key = load_signing_key(key_file)
    parent_id, parent_version = split_ref(parent) if parent else (None, None)
    if parent and parent_version is None:
        usage_error(f"--parent {parent!r} must name a version, POLICY_ID@VERSION")
    async with database(ctx) as pool:
        await _not_a_case_variant(ctx, pool, doer, as_json=as_json)
        if policy_id is None:
            policy_id = await _policy_of(pool, doer)
        if version is not None:
            following = await store.next_version(pool, policy_id)
            if version > following and not as_json:
                skipped = (
                    f"{following}" if version == following + 1 else f"{following}–{version - 1}"
                )
                ctx.say(
                    f"note: {policy_id}@{version} leaves version(s) {skipped} unused (the next "
                    f"is {following}); versions only grow, so later ones follow {version}",
                    file=ctx.stderr,
                )
        await register_artifact(
            ctx,
            pool,
            artifact,
            key,
            source=str(file),
            doer=doer,
            policy_id=policy_id,
            version=version,
            parent=(parent_id, parent_version),
            datasets=list(datasets),
            experiment=experiment,
            reason=reason or f"register {file.name}",
            actor=actor,
            wait=wait,
            timeout=timeout,
            as_json=as_json,
        )


async def _not_a_case_variant(ctx: CommandContext, pool: Any, doer: str, *, as_json: bool) -> None:
    """Refuse a first policy for a doer whose name another doer has in another case.

    Doer names are case-sensitive keys (Kafka keys, table keys), but every
    lookup an operator types folds case: `--doer prdwriter` beside PRDWriter is a
    typo far more often than a new doer, and would leave two doers each lookup
    has to tell apart. A first policy of a doer nobody knows is noted.
    """
    doers, _ = await known_names(pool)
    if doer in doers:
        return
    # Doers with runs but no policy yet count too: theirs is the name the runs give.
    running = {r["doer"] for r in await pool.fetch("SELECT DISTINCT doer FROM learning_progress")}
    if doer in running:
        return
    twins = sorted(d for d in doers | running if d.lower() == doer.lower())
    if twins:
        fail(
            f"doer {doer!r} is not known, but {', '.join(map(repr, twins))} is: doer names "
            f"differ only in case; use --doer {twins[0]} (nothing sent)"
        )
    if not as_json:
        ctx.say(
            f"note: {doer!r} has no policy and no runs yet: this registers the first policy "
            f"of a new doer{closest(doer, doers | running)}",
            file=ctx.stderr,
        )


async def _policy_of(pool: Any, doer: str) -> str:
    """The policy id a new version of ``doer``'s policy goes under when none is named.

    The doer's one policy line if it has one (its ids may be lower-cased, as the
    demo's are: registering under the doer's name would start a second line);
    its name for a first policy; several lines must be told apart.
    """
    rows = await pool.fetch(
        "SELECT DISTINCT policy_id FROM policies WHERE doer = $1 ORDER BY policy_id", doer
    )
    lines = [r["policy_id"] for r in rows]
    if len(lines) > 1:
        usage_error(f"doer {doer!r} has the policies {', '.join(lines)}: name one with --policy-id")
    return lines[0] if lines else doer


def load_signing_key(key_file: Path) -> SigningKey:
    """The policy signing key in ``key_file``; one sentence on how to make one if it is not."""
    from learning.signing import SigningKey

    try:
        return SigningKey.from_pem(key_file.read_bytes())
    except (ValueError, TypeError) as exc:
        fail(
            f"{key_file} is not an Ed25519 private key PEM ({exc}); make one with "
            "`learnops policy keys generate`"
        )


async def register_artifact(
    ctx: CommandContext,
    pool: Any,
    artifact: dict[str, Any],
    key: SigningKey,
    *,
    source: str,
    doer: str,
    policy_id: str,
    version: int | None,
    parent: tuple[str | None, int | None],
    datasets: list[str],
    experiment: str | None,
    reason: str,
    actor: str,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> RegisterPolicy:
    """Sign ``artifact`` with a trusted policy key and send it as a signed RegisterPolicy.

    ``version`` None takes the policy's next; with ``wait`` it returns once the
    policy agent applied it (and fails with its refusal otherwise).
    """
    from learning.signing import CanonicalJSONError, signed_artifact
    from models.commands import RegisterPolicy
    from models.tunables import tunables_of
    from storage import signing_keys as keys_store
    from storage.operator_keys import operator_of

    allowed = (await keys_store.load_keyring(pool)).check_signing_key(key)
    if not allowed:
        operator = await operator_of(pool, key.key_id)
        if operator is not None:
            fail(
                f"key {key.key_id} is {operator}'s operator key (it signs commands, as "
                "LEARNOPS_OPERATOR_KEY); --key takes a policy signing key from the trusted "
                "keyring (`learnops policy keys generate --out FILE` makes one)"
            )
        fail(f"key {key.key_id} cannot sign: {allowed.reason}")
    try:
        tunables_of(artifact)  # the policy stage refuses a malformed declaration too
    except ValueError as exc:
        fail(f"{source}: {exc} (docs/bandits.md: declaring options); nothing signed or sent")
    version = version or await store.next_version(pool, policy_id)
    try:
        # The signature covers the doer, policy id and version with the artifact.
        signed = signed_artifact(artifact, key, doer=doer, policy_id=policy_id, version=version)
    except CanonicalJSONError as exc:
        fail(f"{source}: {exc}")
    event = RegisterPolicy(
        doer=doer,
        actor=actor,
        reason=reason,
        policy_id=policy_id,
        version=version,
        **signed,
        parent_policy_id=parent[0],
        parent_version=parent[1],
        dataset_ids=datasets,
        experiment_id=experiment,
    )
    ref = f"{event.policy_id}@{event.version}"
    await _submit(
        ctx,
        pool,
        event,
        wait=wait,
        timeout=timeout,
        as_json=as_json,
        first=f"{ref} sha256:{event.content_hash} signed by key {key.key_id}",
    )
    return event


async def _failed_experiments(pool: Any, found: Any) -> list[str]:
    """Notes for the version's own experiments that failed: starting it is allowed.

    A version whose replay failed (or whose canary rolled it back) may still be
    started by an operator, as any registered version may; it used to start
    with no word of that. Said once the command is sent (:func:`_submit`).
    """
    rows = await pool.fetch(
        "SELECT experiment_id, status FROM experiments WHERE policy_id = $1"
        " AND policy_version = $2 AND status IN ('failed', 'incomplete', 'rolled_back')"
        " ORDER BY created_at",
        found.policy_id,
        found.version,
    )
    return [
        f"experiment {row['experiment_id']} of {found.policy_id}@{found.version} ended "
        f"{row['status']} (`learnops experiment show {row['experiment_id']}`); started anyway"
        for row in rows
    ]


async def _ending_a_paused_shadow(pool: Any, doer: str) -> list[str]:
    """A note when the canary about to start ends a shadow someone paused."""
    paused = await pool.fetchrow(
        "SELECT deployment_id, paused_reason FROM shadow_deployments WHERE doer = $1"
        " AND mode = 'shadow' AND ended_at IS NULL AND paused_at IS NOT NULL",
        doer,
    )
    if paused is None:
        return []
    return [
        f"this ends {paused['deployment_id']}, which is paused ({paused['paused_reason']}); "
        "the canary starts unpaused (`learnops policy pause` holds it again)"
    ]


@command(
    policy,
    "shadow",
    click.argument("ref"),
    click.option(
        "--fraction",
        type=float,
        default=1.0,
        show_default=True,
        callback=_fraction,
        help="Share of the doer's tasks mirrored, in (0, 1].",
    ),
    click.option("--reason", default="start shadow", show_default=True),
    _setting_option,
    _actor,
    _wait,
    _check,
    _timeout,
    json_option,
)
async def policy_shadow(
    ctx: CommandContext,
    ref: str,
    fraction: float,
    reason: str,
    settings: CanarySettings,
    actor: str,
    wait: bool,
    check: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Start mirroring a share of the doer's tasks to draft REF (outputs recorded, never served)."""
    from models.commands import StartShadow

    async with database(ctx) as pool:
        found = await _rollout_candidate(pool, ref, "shadow")
        notes = await _failed_experiments(pool, found)
        event = StartShadow(
            doer=found.doer,
            actor=actor,
            reason=reason,
            policy_id=found.policy_id,
            version=found.version,
            mirror_fraction=fraction,
            canary=settings,
        )
        await _submit(
            ctx, pool, event, wait=wait, timeout=timeout, as_json=as_json, check=check, notes=notes
        )


@command(
    policy,
    "canary",
    click.argument("ref"),
    click.option(
        "--steps",
        default=None,
        callback=_steps,
        help="Growing traffic shares in (0, 1], e.g. 0.05,0.25,0.5 (default: 0.05,0.1,0.25,0.5).",
    ),
    click.option(
        "--require-approval",
        is_flag=True,
        help="Wait at each step for `learnops policy approve`.",
    ),
    click.option("--force", is_flag=True, help="Start from draft, skipping shadow."),
    click.option("--reason", default=None, help="Why (required with --force)."),
    _setting_option,
    _actor,
    _wait,
    _check,
    _timeout,
    json_option,
)
async def policy_canary(
    ctx: CommandContext,
    ref: str,
    steps: list[float] | None,
    require_approval: bool,
    force: bool,
    reason: str | None,
    settings: CanarySettings,
    actor: str,
    wait: bool,
    check: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Start serving REF to a growing share of the doer's tasks against its active policy."""
    from models.commands import StartCanary

    if force and not reason:
        usage_error("--force needs --reason: a skipped step is recorded with why")
    async with database(ctx) as pool:
        found = await _rollout_candidate(pool, ref, "canary")
        notes = await _failed_experiments(pool, found)
        notes += await _ending_a_paused_shadow(pool, found.doer)
        event = StartCanary(
            doer=found.doer,
            actor=actor,
            reason=reason or "start canary",
            policy_id=found.policy_id,
            version=found.version,
            steps=steps,
            require_approval=require_approval,
            force=force,
            canary=settings,
        )
        await _submit(
            ctx, pool, event, wait=wait, timeout=timeout, as_json=as_json, check=check, notes=notes
        )


def _versioned(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if split_ref(value)[1] is None:
        raise click.BadParameter(
            f"{value!r} names no version; {ctx.info_name} one explicitly, as POLICY_ID@VERSION "
            f"(`learnops policy list --doer …` shows the versions)"
        )
    return value


@command(
    policy,
    "promote",
    click.argument("ref", callback=_versioned),
    click.option(
        "--force",
        is_flag=True,
        help="Skip steps (draft or shadow → active), or promote a canary ahead of its own "
        "decision; needs --reason and a second owner's --approver-key.",
    ),
    click.option("--reason", default=None, help="Why (required with --force)."),
    click.option("--deployment", default=None, help="Only promote out of this deployment."),
    click.option(
        "--approver-key",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        default=None,
        help="With --force: the second owner's private key PEM, who approves the forced promotion.",
    ),
    _actor,
    _wait,
    _check,
    _timeout,
    json_option,
)
async def policy_promote(
    ctx: CommandContext,
    ref: str,
    force: bool,
    reason: str | None,
    deployment: str | None,
    approver_key: Path | None,
    actor: str,
    wait: bool,
    check: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Make REF (POLICY_ID@VERSION) its doer's active policy; the previous one is archived.

    A forced promotion is applied only with a second owner's signature (--approver-key).
    """
    from models.commands import PromotePolicy

    if force and not reason:
        usage_error("--force needs --reason: a skipped step is recorded with why")
    if force and approver_key is None:
        usage_error(
            "--force needs --approver-key SECOND.pem: a forced promotion is applied only "
            "with a second owner's signature (another operator, enrolled with `learnops "
            'operator keys add --role owner`; docs/security.md, "Commands")'
        )
    async with database(ctx) as pool:
        found = await _find(pool, ref)
        event = PromotePolicy(
            doer=found.doer,
            actor=actor,
            reason=reason or "promote",
            policy_id=found.policy_id,
            version=found.version,
            deployment_id=deployment,
            force=force,
        )
        await _submit(
            ctx,
            pool,
            event,
            wait=wait,
            timeout=timeout,
            as_json=as_json,
            check=check,
            approver_key=approver_key,
        )


@command(
    policy,
    "rollback",
    click.argument("ref", required=False),
    click.option("--doer", default=None, help="Roll back this doer's live candidate."),
    click.option("--deployment", default=None, help="Roll back this deployment."),
    click.option("--reason", required=True, help="Why."),
    _actor,
    _wait,
    _check,
    _timeout,
    json_option,
)
async def policy_rollback(
    ctx: CommandContext,
    ref: str | None,
    doer: str | None,
    deployment: str | None,
    reason: str,
    actor: str,
    wait: bool,
    check: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """End the shadow or canary of REF (or --doer's live candidate); traffic returns to active."""
    from models.commands import RollbackPolicy

    if not ref and not doer and not deployment:
        usage_error("name the candidate (REF), its doer (--doer) or its deployment (--deployment)")
    async with database(ctx) as pool:
        policy_id: str | None = None
        version: int | None = None
        if ref:
            found = await _find(pool, ref)
            if doer is not None and doer.lower() != found.doer.lower():
                # Two names for the candidate that disagree: which one was meant?
                usage_error(
                    f"{ref} is a version of {found.doer}, not of --doer {doer}: name one of them"
                )
            doer, policy_id, version = found.doer, found.policy_id, found.version
        elif doer is not None:
            doer = await resolve_doer(pool, doer)
        else:
            assert deployment is not None
            live = await _deployment(pool, deployment)
            if live["ended_at"]:
                fail(f"{live['deployment_id']} has ended ({live['outcome']}); nothing to roll back")
            doer, deployment = live["doer"], live["deployment_id"]
            policy_id, _, candidate = live["candidate"].rpartition("@")
            version = int(candidate)
        event = RollbackPolicy(
            doer=doer,
            actor=actor,
            reason=reason,
            policy_id=policy_id,
            version=version,
            deployment_id=deployment,
        )
        await _submit(ctx, pool, event, wait=wait, timeout=timeout, as_json=as_json, check=check)


@command(
    policy,
    "archive",
    click.argument("ref", callback=_versioned),
    click.option("--reason", required=True, help="Why."),
    _actor,
    _wait,
    _check,
    _timeout,
    json_option,
)
async def policy_archive(
    ctx: CommandContext,
    ref: str,
    reason: str,
    actor: str,
    wait: bool,
    check: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Withdraw draft REF (POLICY_ID@VERSION); it is kept, and never deployed."""
    from models.commands import ArchivePolicy

    async with database(ctx) as pool:
        found = await _find(pool, ref)
        event = ArchivePolicy(
            doer=found.doer,
            actor=actor,
            reason=reason,
            policy_id=found.policy_id,
            version=found.version,
        )
        await _submit(ctx, pool, event, wait=wait, timeout=timeout, as_json=as_json, check=check)


# --------------------------------------------------------------------------- deployments


def _deployments_query() -> str:
    """Deployments, newest first, with the step a gated canary awaits approval of."""
    from storage.deployments import ASKED

    return _DEPLOYMENTS.format(asked=ASKED)


_DEPLOYMENTS = """
SELECT deployment_id, doer, policy_id, version, control_policy_id, control_version, mode,
       allocation, step, steps, require_approval, started_at, ended_at, outcome,
       paused_at, paused_reason, resumes,
       CASE WHEN d.ended_at IS NULL AND d.require_approval THEN
           (SELECT max(dd.step) FROM deployment_decisions dd WHERE {asked})
       END AS awaiting_step
FROM shadow_deployments d
WHERE ($1::text IS NULL OR doer = $1) AND ($2 OR ended_at IS NULL)
ORDER BY started_at DESC
LIMIT $3
"""


def _deployment_state(row: Any) -> str:
    """A deployment's state in words: its outcome once ended, else live or paused.

    "awaiting approval of step N" once a canary that requires approvals has
    asked for step N (its decision "awaiting approval of step N"), and "steps
    on approval" before it asks, while it has a step left.
    """
    if row["ended_at"] is not None:
        return str(row["outcome"] or "ended")
    state = "paused" if row["paused_at"] is not None else "live"
    steps = list(row["steps"] or [])
    if row["require_approval"] and row["step"] < len(steps) - 1:
        awaiting = row.get("awaiting_step")  # not in every query
        state += (
            f", awaiting approval of step {awaiting}"
            if awaiting is not None
            else ", steps on approval"
        )
    return state


def _deployment_report(row: Any) -> dict[str, Any]:
    return {
        "deployment_id": row["deployment_id"],
        "doer": row["doer"],
        "mode": row["mode"],
        "candidate": f"{row['policy_id']}@{row['version']}",
        "control": f"{row['control_policy_id']}@{row['control_version']}",
        "allocation": row["allocation"],
        "step": row["step"],
        "steps": list(row["steps"]),
        "require_approval": row["require_approval"],
        "awaiting_approval_of_step": row.get("awaiting_step"),
        "paused": row["paused_at"] is not None,
        "paused_reason": row["paused_reason"],
        "resumes": row["resumes"],
        "started_at": _iso(row["started_at"]),
        "ended_at": _iso(row["ended_at"]),
        "outcome": row["outcome"],
        "state": _deployment_state(row),  # as the table and the console's API say it
    }


async def _deployment(pool: Any, text: str) -> dict[str, Any]:
    """The deployment TEXT names: its id, or a doer whose live deployment it is."""
    rows = await pool.fetch(_deployments_query(), None, True, 100000)
    for row in rows:
        if row["deployment_id"] == text:
            return _deployment_report(row)
    # The start of an id, as the other commands take ids: its kind and 8 more characters.
    long_enough = len(text.partition("-")[2]) >= 8
    started = [r for r in rows if long_enough and r["deployment_id"].startswith(text)]
    if len(started) == 1:
        return _deployment_report(started[0])
    if len(started) > 1:
        fail(f"{text!r} starts more than one deployment's id: give more of it")
    live = [r for r in rows if r["ended_at"] is None and r["doer"].lower() == text.lower()]
    if len(live) == 1:
        return _deployment_report(live[0])
    ended = [r for r in rows if r["doer"].lower() == text.lower()]
    if ended:
        fail(
            f"{ended[0]['doer']} has no live deployment (its latest, {ended[0]['deployment_id']}, "
            f"{ended[0]['outcome'] or 'ended'}); `learnops policy deployments --all` lists them"
        )
    names = {r["deployment_id"] for r in rows if r["ended_at"] is None}
    names |= {r["doer"] for r in rows if r["ended_at"] is None}
    await fail_if_runs_without_policy(pool, text)
    fail(
        f"no such deployment {text!r}{closest(text, names)} "
        "(`learnops policy deployments` lists the live ones)"
    )


async def _wait_for(
    pool: Any, deployment_id: str, event_id: Any, timeout: float, what: str
) -> dict[str, Any]:
    """Wait for the policy stage's verdict on operator command ``event_id`` about a deployment.

    The verdict is the command's own ``deployment_steps`` row: applied (the
    deployment as it is then is returned) or refused (exit 1 with the reason).
    A command whose signature or role is refused leaves no row, only a
    ``command_refused`` alert. Watching the deployment instead would take a
    move made meanwhile by someone else (a canary's own pause) for this one.
    """
    deadline = time.monotonic() + timeout
    while True:
        verdict = await pool.fetchrow(
            "SELECT outcome, refusal, verdict FROM deployment_steps WHERE event_id = $1", event_id
        )
        if verdict is not None:
            if verdict["outcome"] != "applied":
                fail(f"refused ({verdict['refusal']}): {verdict['verdict']}")
            row = await pool.fetchrow(
                "SELECT * FROM shadow_deployments WHERE deployment_id = $1", deployment_id
            )
            return _deployment_report(row)
        await fail_if_refused_on_arrival(pool, event_id)
        if time.monotonic() > deadline:
            raise _NoAnswer(f"{deployment_id} not {what} after {timeout:g}s")
        await asyncio.sleep(0.25)


@command(
    policy,
    "deployments",
    click.option("--doer", default=None, help="Only this doer's."),
    click.option("--all", "include_ended", is_flag=True, help="Ended deployments too."),
    limit_option(100),
    json_option,
)
async def policy_deployments(
    ctx: CommandContext, doer: str | None, include_ended: bool, limit: int, as_json: bool
) -> None:
    """Shadow and canary deployments (live ones unless --all): step, share, pause, approval."""
    async with database(ctx) as pool:
        if doer is not None:
            doer = await resolve_doer(pool, doer)
        rows = await pool.fetch(_deployments_query(), doer, include_ended, limit)
    items = [_deployment_report(r) for r in rows]
    if as_json:
        ctx.say(dumps(items))
        return
    shown = table(
        "deployment", "doer", "mode", "candidate", "control", "step", "share", "state", ids=2
    )
    for d in items:
        shown.add_row(
            d["deployment_id"],
            d["doer"],
            d["mode"],
            d["candidate"],
            d["control"],
            # "1 of 0..2": step indices, as approve --step and the console name them.
            f"{d['step']} of 0..{len(d['steps']) - 1}" if d["steps"] else "0 (shadow)",
            f"{d['allocation']:g}",
            d["state"],
        )
    ctx.console().print(shown)
    if not items:
        ctx.say("no live deployments" if not include_ended else "no deployments")


@command(policy, "steps", click.argument("deployment"), json_option)
async def policy_steps(ctx: CommandContext, deployment: str, as_json: bool) -> None:
    """DEPLOYMENT's audited moves, oldest first: step-ups, approvals, pauses and resumes."""
    from rich.markup import escape

    from storage.dashboard import canary_moves

    async with database(ctx) as pool:
        found = await _deployment(pool, deployment)
        rows = await canary_moves(pool, found["deployment_id"])
    items = [{**r, "recorded_at": _when(r["recorded_at"])} for r in rows]
    if as_json:
        ctx.say(dumps(items))
        return
    shown = table("when", "action", "step", "outcome", "actor", "reason", "verdict")
    for r in items:
        step = (
            str(r["to_step"])
            if r["from_step"] in (None, r["to_step"])
            else (f"{r['from_step']} → {r['to_step']}")
        )
        outcome = r["outcome"] if r["outcome"] == "applied" else f"refused ({r['refusal']})"
        # Free text: rich would read "[…]" in a reason as markup.
        said = [escape(str(r[k])) for k in ("actor", "reason", "verdict")]
        shown.add_row(r["recorded_at"], r["action"], step, outcome, *said)
    ctx.console().print(shown)
    if not items:
        ctx.say(f"no step, approval, pause or resume of {found['deployment_id']} yet")


@command(policy, "decisions", click.argument("deployment"), limit_option(20), json_option)
async def policy_decisions(ctx: CommandContext, deployment: str, limit: int, as_json: bool) -> None:
    """DEPLOYMENT's canary decisions and reports, latest first: the evidence behind each move.

    What the canary stage decided at each look (report, step_up, promote,
    rollback, pause, or "awaiting approval of step N"), with both arms' runs and
    mean CRL, the difference, its always-valid interval and p-value.
    """
    from rich.markup import escape

    from storage.canary import decisions

    async with database(ctx) as pool:
        found = await _deployment(pool, deployment)
        made = (await decisions(pool, found["deployment_id"]))[::-1][:limit]
    if as_json:
        ctx.say(dumps([{**asdict(d), "decided_at": _when(d.decided_at)} for d in made]))
        return
    shown = table(
        "when", "action", "step", "runs (control/candidate)", "delta", "interval", "p", "reason"
    )
    for d in made:
        report = d.report
        low, high = report.get("ci_low"), report.get("ci_high")
        shown.add_row(
            _when(d.decided_at),
            d.action,
            str(d.step),
            f"{report['control_count']}/{report['candidate_count']}",
            f"{report['delta']:+.4f}",
            "–" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]",
            f"{report['p_value']:.3g}",
            escape(d.reason),  # free text: "[…]" would read as markup
        )
    ctx.console().print(shown)
    if not made:
        ctx.say(
            f"no decision of {found['deployment_id']} yet (the canary stage decides once "
            "both arms have results)"
        )


@command(
    policy,
    "approve",
    click.argument("deployment"),
    click.option(
        "--step",
        type=click.IntRange(min=1),
        required=True,
        help="The step to move to (index into the deployment's steps; the next one).",
    ),
    click.option("--reason", default="approved", show_default=True),
    _actor,
    _wait,
    _timeout,
    json_option,
)
async def policy_approve(
    ctx: CommandContext,
    deployment: str,
    step: int,
    reason: str,
    actor: str,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Let canary DEPLOYMENT (or a doer's live one), once it asked for approval, move to --step.

    A canary started with --require-approval asks for each next step once the
    step it is at has its evidence (an approval_needed alert; `learnops policy
    deployments` says "awaiting approval of step N"); before it asks, nothing
    is sent. Any other canary steps itself up, and an approval moves it a step
    early.
    """
    from models.commands import ApproveStep

    async with database(ctx) as pool:
        found = await _deployment(pool, deployment)
        did = found["deployment_id"]
        if found["ended_at"]:
            fail(f"{did} has ended ({found['outcome']}); there is nothing to approve")
        if found["mode"] != "canary":
            fail(f"{did} is a shadow; only a canary steps up (`learnops policy canary`)")
        if found["paused"]:
            fail(
                f"{did} is paused and cannot step up ({found['paused_reason']}); resume it "
                f"first: learnops policy resume {did}"
            )
        last = len(found["steps"]) - 1
        if step <= found["step"]:
            # Not a wrong command line: done already (twice, or by someone else).
            fail(f"{did} is at step {found['step']} already; there is nothing to approve")
        if found["step"] >= last:
            # Not a wrong command line: the canary has no step left to approve.
            fail(
                f"{did} is at its last step ({found['step']} of 0..{last}): the canary promotes "
                "it on its evidence; to promote it before that (a forced move, with a second "
                f"owner): learnops policy promote {found['candidate']} --force --reason R "
                "--approver-key SECOND.pem"
            )
        if step != found["step"] + 1:
            usage_error(
                f"{did} is at step {found['step']} of 0..{last}; the next step is "
                f"{found['step'] + 1}"
            )
        if found["require_approval"] and found["awaiting_approval_of_step"] != step:
            fail(
                f"{did} has not asked for step {step} yet: the canary asks (an approval_needed "
                f"alert; `learnops policy deployments` then says 'awaiting approval of step "
                f"{step}') once step {found['step']} has its evidence; nothing sent"
            )
        event = ApproveStep(
            doer=found["doer"], actor=actor, reason=reason, deployment_id=did, step=step
        )
        moved = await _send_and_wait(ctx, pool, event, f"at step {step}", wait, timeout, as_json)
    if moved is None:
        return
    if as_json:
        ctx.say(dumps(moved))
    else:
        moved = moved["deployment"]
        ctx.say(f"applied: {did} at step {moved['step']}, {moved['allocation']:g} of the traffic")


async def _send_and_wait(
    ctx: CommandContext,
    pool: Any,
    event: Any,
    what: str,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> dict[str, Any] | None:
    """Send an operator's command about a deployment; with ``wait``, the answer once applied.

    The answer is what was sent with the deployment as it is then (``--json``
    prints it); None when not waiting (what was sent is printed here).
    """
    signed = await _send(ctx, event)
    sent = {"event_id": str(event.event_id), "command": event.command, "doer": event.doer}
    if not wait:
        ctx.say(dumps(sent) if as_json else f"sent {event.event_id} to {COMMANDS_TOPIC}")
        return None
    if not as_json:
        ctx.say(f"sent {event.event_id} to {COMMANDS_TOPIC}")
    try:
        changed = await _wait_for(pool, event.deployment_id, event.event_id, timeout, what)
    except _NoAnswer:
        fail(_unanswered(signed, timeout, f"`learnops policy steps {event.deployment_id}`"))
    return {**sent, "deployment": changed}


class _NoAnswer(Exception):
    """No verdict on a sent command within the wait (a database timeout is not one)."""


def _unanswered(command: Any, timeout: float, where: str) -> str:
    """Why a sent command has no verdict yet, and what becomes of it (it is not lost)."""
    expires = command.expires_at.astimezone(UTC).strftime("%H:%M:%S UTC")
    return (
        f"sent {command.event_id}, but no worker answered within {timeout:g}s: is one running? "
        f"The command waits on {COMMANDS_TOPIC}; a worker that reads it before it expires at "
        f"{expires} decides it, applied or refused with its reason ({where} shows it then), "
        "and after that refuses it as expired"
    )


async def _pause_or_resume(
    ctx: CommandContext,
    deployment: str,
    pause: bool,
    reason: str,
    actor: str,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Send a signed pause or resume of DEPLOYMENT and, by default, wait for the stage's verdict."""
    from models.commands import PauseDeployment, ResumeDeployment

    async with database(ctx) as pool:
        found = await _deployment(pool, deployment)
        did = found["deployment_id"]
        if found["ended_at"]:
            fail(f"{did} has ended ({found['outcome']}); there is nothing to pause or resume")
        if found["paused"] == pause:
            # Checked here and not sent: nothing to change, so nothing is audited.
            fail(
                f"{did} is paused already ({found['paused_reason']}); "
                f"learnops policy resume {did} lets it carry on"
                if pause
                else f"{did} is not paused; learnops policy pause {did} holds it"
            )
        kind = PauseDeployment if pause else ResumeDeployment
        event = kind(doer=found["doer"], actor=actor, reason=reason, deployment_id=did)
        what = "paused" if pause else "resumed"
        answer = await _send_and_wait(ctx, pool, event, what, wait, timeout, as_json)
    if answer is None:
        return
    step = answer["deployment"]["step"]
    if as_json:
        ctx.say(dumps(answer))
    elif pause:
        ctx.say(f"applied: {did} paused at step {step}; routing stays as it is")
    else:
        ctx.say(f"applied: {did} resumed at step {step}")


def _pause_command(verb: str, help_: str) -> click.Command:
    """`learnops policy pause|resume DEPLOYMENT`: the same options, the one command each sends."""

    async def run(
        ctx: CommandContext,
        deployment: str,
        reason: str,
        actor: str,
        wait: bool,
        timeout: float,
        as_json: bool,
    ) -> None:
        pause = verb == "pause"
        await _pause_or_resume(ctx, deployment, pause, reason, actor, wait, timeout, as_json)

    run.__doc__, run.__name__ = help_, f"policy_{verb}"
    return command(
        policy,
        verb,
        click.argument("deployment"),
        click.option("--reason", default=f"{verb}d by an operator", show_default=True),
        _actor,
        _wait,
        _timeout,
        json_option,
    )(run)


policy_pause = _pause_command(
    "pause", "Hold DEPLOYMENT (or a doer's live one) at its step: routing stays, nothing moves it."
)
policy_resume = _pause_command(
    "resume", "Let paused DEPLOYMENT (or a doer's) carry on from its step, however it was paused."
)


# --------------------------------------------------------------------------- reading


@command(
    policy,
    "list",
    click.option("--doer", default=None, help="Only this doer's versions."),
    click.option(
        "--status",
        type=click.Choice(["draft", "shadow", "canary", "active", "archived", "rolled_back"]),
        default=None,
    ),
    limit_option(200),
    json_option,
)
async def policy_list(
    ctx: CommandContext, doer: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """List policy versions, newest first."""
    async with database(ctx) as pool:
        if doer is not None:
            doer = await resolve_doer(pool, doer)
        found = await store.list_policies(pool, doer=doer, status=status, limit=limit)
    if as_json:
        ctx.say(_dump([{k: v for k, v in r.__dict__.items() if k != "artifact"} for r in found]))
        return
    shown = table("policy", "doer", "status", "content", "key", "created", "by", ids=2)
    for r in found:
        shown.add_row(
            r.ref,
            r.doer,
            r.status,
            f"sha256:{r.content_hash[:12]}",
            r.key_id,
            _when(r.created_at),
            r.created_by,
        )
    ctx.console().print(shown)
    if not found:
        ctx.say("no policy versions" + (f" in status {status}" if status else ""))


@command(policy, "show", click.argument("ref"), json_option)
async def policy_show(ctx: CommandContext, ref: str, as_json: bool) -> None:
    """Show a version: provenance, signature, artifact and its audit trail."""
    from learning.promotion import LEGACY_SIGNATURE_FORMAT
    from storage import audit as audit_store
    from storage import signing_keys as keys_store

    async with database(ctx) as pool:
        found = await _find(pool, ref)
        trail = await audit_store.promotions(pool, policy_id=found.policy_id, version=found.version)
        key = await keys_store.find_signing_key(pool, found.key_id)
    assert key is not None  # policies.key_id references signing_keys
    if as_json:
        ctx.say(_dump({"policy": found, "key_status": key.status, "promotions": trail}))
        return
    parent = f"{found.parent_policy_id}@{found.parent_version}" if found.parent_policy_id else "-"
    signed_by = f"key {found.key_id} ({key.status}"
    if key.revoked_at is not None:
        signed_by += f" at {_when(key.revoked_at)}: nothing it signed deploys"
    elif key.retired_at is not None:
        signed_by += f" at {_when(key.retired_at)}"
    signed_by += ")"
    if found.signature_format == LEGACY_SIGNATURE_FORMAT:
        signed_by += "; format 1: the signature covers the artifact alone, not this identity"
    for label, value in (
        ("policy", found.ref),
        ("doer", found.doer),
        ("status", found.status),
        ("content", f"sha256:{found.content_hash}"),
        ("signed by", signed_by),
        ("parent", parent),
        ("datasets", ", ".join(found.dataset_ids) or "-"),
        ("experiment", found.experiment_id or "-"),
        ("created", f"{_when(found.created_at)} by {found.created_by}"),
        ("updated", _when(found.updated_at)),
    ):
        ctx.say(f"{label:11} {value}")
    ctx.say("artifact:")
    ctx.say(_dump(found.artifact))
    ctx.console().print(_audit_table(trail, "audit"))


@command(
    policy,
    "verify",
    click.argument("doer", required=False),
    click.option(
        "--strict",
        is_flag=True,
        help="Count format 1 signatures (the artifact alone, not its identity) as failures.",
    ),
    json_option,
)
async def policy_verify(ctx: CommandContext, doer: str | None, strict: bool, as_json: bool) -> None:
    """Re-check every live version's signature and key now (of DOER, or of every doer).

    Live means active, shadow or canary. Exits 1 with a table of the versions
    that fail (a revoked or unknown key, a signature that does not match its
    doer, policy id, version and artifact, a changed row); format 1 signatures
    are listed as warnings, and as failures with --strict.
    """
    from storage.verification import verify_live

    async with database(ctx) as pool:
        if doer is not None:
            doer = await resolve_doer(pool, doer)
        checks = await verify_live(pool, doer=doer)
    failed = [c for c in checks if not c.ok or (strict and c.legacy)]
    if as_json:
        ctx.say(
            dumps(
                {
                    "checked": len(checks),
                    "failed": len(failed),
                    "versions": [
                        {
                            "doer": c.doer,
                            "policy": c.ref,
                            "status": c.status,
                            "key_id": c.key_id,
                            "key_status": c.key_status,
                            "signature_format": c.signature_format,
                            "ok": c.ok,
                            "reason": c.reason,
                        }
                        for c in checks
                    ],
                }
            )
        )
    else:
        noted = [c for c in checks if not c.ok or c.legacy]
        if noted:
            shown = table("policy", "doer", "status", "key", "key status", "problem", ids=2)
            for c in noted:
                problem = c.reason if not c.ok else "format 1 signature: identity not signed"
                shown.add_row(c.ref, c.doer, c.status, c.key_id, c.key_status, problem)
            ctx.console().print(shown)
        scope = f"of {doer}" if doer else "of every doer"
        ctx.say(f"{len(checks) - len(failed)} of {len(checks)} live versions {scope} verify")
    if failed:
        fail(
            f"{len(failed)} live version(s) do not verify; roll them back or promote a version "
            "signed by an active key (`learnops policy show POLICY_ID@VERSION` for each)"
        )


def _audit_table(trail: list[Any], title: str, with_ref: bool = False) -> Any:
    columns = ["recorded", "action", "outcome", "moved", "by", "source", "verdict"]
    shown = table(*(["policy", *columns] if with_ref else columns), title=title)
    for row in trail:
        cells = [
            _when(row.recorded_at),
            row.action,
            row.outcome,
            f"{row.from_status or '-'} → {row.to_status or '-'}",
            row.actor if row.approver is None else f"{row.actor} + {row.approver}",
            row.source,
            row.verdict,
        ]
        shown.add_row(*([f"{row.policy_id}@{row.version}", *cells] if with_ref else cells))
    return shown


def _parse_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        usage_error(f"--at {text!r} is not an ISO 8601 time, e.g. 2026-03-03T14:03:00+00:00")
    if at.utcoffset() is None:
        usage_error(f"--at {text!r} has no timezone; add one, e.g. +00:00 or Z")
    return at


@command(
    policy,
    "history",
    click.argument("doer"),
    click.option("--at", "at", default=None, help="Only the version live at this ISO time."),
    json_option,
)
async def policy_history(ctx: CommandContext, doer: str, at: str | None, as_json: bool) -> None:
    """Show which version was live for DOER over time (or at one moment), and the audit trail."""
    from storage import audit as audit_store

    moment = _parse_time(at) if at is not None else None
    async with database(ctx) as pool:
        doer = await resolve_doer(pool, doer)
        if moment is not None:
            live = await store.live_at(pool, doer, moment)
            if as_json:
                ctx.say(_dump(live))
            elif live is None:
                ctx.say(f"no active policy for {doer} at {moment.isoformat()}")
            else:
                ctx.say(
                    f"{live.ref} was live for {doer} at {moment.isoformat()} "
                    f"(active {_when(live.active_from, 'milliseconds')} → "
                    f"{_when(live.active_to, 'milliseconds') if live.active_to else 'now'})"
                )
            return
        stretches = await store.activations(pool, doer)
        trail = await audit_store.promotions(pool, doer=doer)
    if as_json:
        ctx.say(_dump({"activations": stretches, "promotions": trail}))
        return
    live = table("policy", "active from", "until", title=f"live history of {doer}")
    for a in stretches:
        until = _when(a.active_to, "milliseconds") if a.active_to else "now"
        live.add_row(a.ref, _when(a.active_from, "milliseconds"), until)
    console = ctx.console()
    console.print(live)
    console.print(_audit_table(trail, "audit", with_ref=True))


@command(policy, "diff", click.argument("a"), click.argument("b"), json_option)
async def policy_diff(ctx: CommandContext, a: str, b: str, as_json: bool) -> None:
    """Show how artifact B differs from A (each a POLICY_ID@VERSION or a JSON/YAML file)."""
    from learning.signing import CanonicalJSONError, diff_artifacts

    if Path(a).is_file() and Path(b).is_file():
        left, right = _load_artifact(Path(a)), _load_artifact(Path(b))
    else:
        async with database(ctx) as pool:
            left = await _artifact_of(pool, a)
            right = await _artifact_of(pool, b)
    try:
        lines = diff_artifacts(left, right)
    except CanonicalJSONError as exc:
        fail(str(exc))
    if as_json:
        ctx.say(dumps({"a": a, "b": b, "differences": lines}))
        return
    ctx.say(f"--- {a}\n+++ {b}")
    if not lines:
        ctx.say("no differences: the content hashes are equal")
    for line in lines:
        ctx.say(line)


async def _artifact_of(pool: Any, ref: str) -> Any:
    path = Path(ref)
    if path.is_file():
        return _load_artifact(path)
    if "/" in ref or path.suffix.lower() in {".json", ".yaml", ".yml"}:
        fail(f"no such file {ref!r} (nor a policy: a policy id has no '/' or file suffix)")
    return (await _find(pool, ref)).artifact


@command(
    policy,
    "lineage",
    click.argument("ref", required=False),
    click.option("--dataset", default=None, help="Every version trained on this dataset instead."),
    json_option,
)
async def policy_lineage(
    ctx: CommandContext, ref: str | None, dataset: str | None, as_json: bool
) -> None:
    """Show datasets → experiment → version (and its ancestors) → promotions, in one query."""
    if bool(ref) == bool(dataset):
        usage_error("name a version (REF) or a --dataset, not both")
    async with database(ctx) as pool:
        if dataset:
            chain = await store.dataset_lineage(pool, dataset)
        else:
            assert ref is not None
            found = await _find(pool, ref)
            chain = await store.lineage(pool, found.policy_id, found.version)
    if as_json:
        ctx.say(_dump(chain))
        return
    if dataset and not chain:
        fail(f"no policy version names dataset {dataset!r}")
    for entry in chain:
        pad = "  " * entry.depth
        ctx.say(
            f"{pad}{entry.ref} ({entry.doer}, {entry.status}) sha256:{entry.content_hash[:12]} "
            f"datasets=[{', '.join(entry.dataset_ids)}] experiment={entry.experiment_id or '-'}"
        )
        for p in entry.promotions:
            ctx.say(
                f"{pad}  {p['recorded_at'][:19]} {p['action']:12} {p['outcome']:7} "
                f"{p['from_status'] or '-'} → {p['to_status'] or '-'} by {p['actor']}"
            )


# --------------------------------------------------------------------------- keys


@command(
    keys,
    "generate",
    click.option(
        "--out",
        required=True,
        type=click.Path(path_type=Path, dir_okay=False),
        help="Where to write the private key PEM (created with mode 0600; never overwritten).",
    ),
    click.option("--note", default="", help="What the key is for, e.g. 'ci signer 2026'."),
    _actor,
    json_option,
)
async def keys_generate(
    ctx: CommandContext, out: Path, note: str, actor: str, as_json: bool
) -> None:
    """Create an Ed25519 signing key: the private half to OUT, the public half to the keyring."""
    from learning.signing import generate_key
    from learnops.cli.operator import private_key_kept_if
    from storage import signing_keys as keys_store

    key = generate_key()
    with private_key_kept_if(out, key):
        async with database(ctx, "keyadmin") as pool:
            record = await keys_store.add_signing_key(
                pool, key.public_key, created_by=actor, note=note
            )
    if as_json:
        ctx.say(
            dumps(
                {
                    "key_id": record.key_id,
                    "private_key_file": str(out),
                    "public_key": key.public_key.to_b64(),
                }
            )
        )
        return
    ctx.say(f"key {record.key_id} trusted; private key written to {out} (mode 0600)")
    ctx.say(f"public key (base64): {key.public_key.to_b64()}")


@command(
    keys,
    "add",
    click.argument("public_pem", type=click.Path(path_type=Path, exists=True, dir_okay=False)),
    click.option("--note", default=""),
    _actor,
    json_option,
)
async def keys_add(
    ctx: CommandContext, public_pem: Path, note: str, actor: str, as_json: bool
) -> None:
    """Trust a public key made elsewhere (a PEM `PUBLIC KEY` block)."""
    from learning.signing import PublicKey
    from storage import signing_keys as keys_store

    try:
        public_key = PublicKey.from_pem(public_pem.read_bytes())
    except ValueError as exc:
        fail(f"{public_pem}: {exc}")
    async with database(ctx, "keyadmin") as pool:
        record = await keys_store.add_signing_key(pool, public_key, created_by=actor, note=note)
    if as_json:
        ctx.say(dumps({"key_id": record.key_id, "status": record.status}))
        return
    ctx.say(f"key {record.key_id} trusted ({record.status})")


@command(keys, "list", json_option)
async def keys_list(ctx: CommandContext, as_json: bool) -> None:
    """List the keyring: every key, and whether it is active, retired or revoked."""
    from storage import signing_keys as keys_store

    async with database(ctx) as pool:
        found = await keys_store.signing_keys(pool)
    if as_json:
        ctx.say(_dump(found))
        return
    shown = table("key", "status", "added", "by", "retired", "revoked", "note")
    for k in found:
        shown.add_row(
            k.key_id,
            k.status,
            _when(k.created_at),
            k.created_by,
            _when(k.retired_at),
            _when(k.revoked_at),
            k.note or "",
        )
    ctx.console().print(shown)


@command(keys, "history", click.argument("key_id", required=False), json_option)
async def keys_history(ctx: CommandContext, key_id: str | None, as_json: bool) -> None:
    """Show who added, retired and revoked each key (or KEY_ID), oldest first; append-only."""
    from storage import signing_keys as keys_store

    async with database(ctx) as pool:
        events = await keys_store.key_history(pool, key_id)
        if key_id is not None and not events:
            await _known_key(pool, key_id)
    if as_json:
        ctx.say(_dump(events))
        return
    shown = table("when", "key", "action", "actor", "database role", "note")
    for e in events:
        shown.add_row(_when(e.at), e.key_id, e.action, e.actor, e.db_role, e.note or "")
    ctx.console().print(shown)


async def _known_key(pool: Any, key_id: str) -> None:
    from storage import signing_keys as keys_store

    found = await keys_store.signing_keys(pool)
    ids = {k.key_id for k in found}
    fail(f"no key {key_id!r} in the keyring{closest(key_id, ids)} (`learnops policy keys list`)")


@command(
    keys,
    "retire",
    click.argument("key_id"),
    click.option("--reason", default="", help="Why, for the key's history."),
    _actor,
    json_option,
)
async def keys_retire(
    ctx: CommandContext, key_id: str, reason: str, actor: str, as_json: bool
) -> None:
    """Stop KEY_ID vouching for new registrations; versions it signed before still deploy."""
    from storage import signing_keys as keys_store

    async with database(ctx, "keyadmin") as pool:
        record = await keys_store.retire_signing_key(pool, key_id, actor=actor, note=reason)
        if record is None:
            await _known_key(pool, key_id)
    assert record is not None
    if as_json:
        ctx.say(dumps({"key_id": key_id, "retired_at": _when(record.retired_at)}))
        return
    ctx.say(f"key {key_id} retired at {_when(record.retired_at)}")


@command(
    keys,
    "revoke",
    click.argument("key_id"),
    click.option("--reason", required=True),
    _actor,
    json_option,
)
async def keys_revoke(
    ctx: CommandContext, key_id: str, reason: str, actor: str, as_json: bool
) -> None:
    """Distrust KEY_ID: nothing it signed moves to shadow, canary or active again.

    Lists the live versions it signed and raises a critical alert on
    learning.alerts for each doer that has one: they keep serving until an
    operator rolls them back or promotes a version signed by another key.
    """
    from storage import signing_keys as keys_store
    from storage.verification import revocation_alerts, verify_live

    async with database(ctx, "keyadmin") as pool:
        record = await keys_store.revoke_signing_key(pool, key_id, actor=actor, note=reason)
        if record is None:
            await _known_key(pool, key_id)
        assert record is not None and record.revoked_at is not None
        live = await verify_live(pool, key_id=key_id)
    alerts = revocation_alerts(key_id, record.revoked_at, reason, actor, live)
    if as_json:
        if alerts:
            await _send_alerts(ctx, alerts)
        ctx.say(
            dumps(
                {
                    "key_id": key_id,
                    "revoked_at": _when(record.revoked_at),
                    "live_versions": [
                        {"doer": c.doer, "policy": c.ref, "status": c.status} for c in live
                    ],
                    "alerts": [str(a.event_id) for a in alerts],
                }
            )
        )
        return
    ctx.say(f"key {key_id} revoked at {_when(record.revoked_at)}")
    if not live:
        ctx.say("no live version was signed by it")
        return
    shown = table("policy", "doer", "status", title=f"live versions signed by {key_id}", ids=2)
    for c in live:
        shown.add_row(c.ref, c.doer, c.status)
    ctx.console().print(shown)
    # Said before sending, so that an unreachable Kafka cannot hide that the key is revoked.
    await _send_alerts(ctx, alerts)
    ctx.say(
        f"{len(live)} live version(s) still serve; alerted on {ALERTS_TOPIC}. Roll them back or "
        "promote a version signed by another key; `learnops policy verify` lists them again"
    )


async def _send_alerts(ctx: CommandContext, alerts: list[Any]) -> None:
    from agents.topics import started

    async with started(ctx.settings.kafka_producer()) as producer:
        for alert in alerts:
            await producer.send_and_wait(
                ALERTS_TOPIC, key=alert.doer.encode(), value=alert.to_json()
            )
