"""`learnops operator keys …`: the operator keys that sign commands, and their roles.

Every command the CLI sends on learning.commands is signed with the operator's
private key (``LEARNOPS_OPERATOR_KEY``, a PEM file) and expires after
``LEARNOPS_COMMAND_TTL_S`` seconds; the policy stage applies it only if the key
is registered here, not revoked, and holds the role the command needs on its
doer (docs/security.md#commands). These commands write PostgreSQL directly:
they are the administrator's path, and every change is an append-only row
naming who made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from learnops.cli.main import (
    CommandContext,
    ServiceUnreachable,
    actor_option,
    command,
    database,
    dumps,
    fail,
    group,
    json_option,
    table,
    usage_error,
)

if TYPE_CHECKING:
    from learning.signing import SigningKey
    from models.base import Event

ROLE_CHOICE = click.Choice(["viewer", "operator", "owner", "none"])


@group("Operator keys that sign commands, and their roles per doer.")
def operator() -> None:
    pass


@group("Register, list, grant and revoke operator keys.")
def keys() -> None:
    pass


operator.add_command(keys)

_actor = actor_option("Who makes this change, for the key history.")


@contextlib.contextmanager
def private_key_kept_if(out: Path, key: SigningKey) -> Iterator[None]:
    """Write the private key to OUT first; remove it again if the block fails.

    First, so a key is never trusted whose private half could not be written (OUT
    exists, a read-only directory); removed on failure (the database refused the
    role, a network error), so a retry does not meet 'OUT exists' for a key that
    was never trusted.
    """
    write_private_key(out, key)
    try:
        yield
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def write_private_key(out: Path, key: SigningKey) -> None:
    """Write a private key PEM to a new file with mode 0600; one sentence if that fails."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"{out} exists; refusing to overwrite a key (choose another --out)")
    except OSError as exc:
        fail(f"cannot create {out}: {exc.strerror}")
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(key.to_pem())


def read_private_key(path: Path, what: str) -> SigningKey:
    """The Ed25519 private key in a PEM file; one sentence naming the file if it is not one."""
    from learning.signing import SigningKey

    try:
        return SigningKey.from_pem(path.read_bytes())
    except OSError as exc:
        fail(f"cannot read the {what} {path}: {exc.strerror}")
    except (TypeError, ValueError) as exc:
        fail(f"{path} is not an Ed25519 private key PEM ({what}): {exc}")


def signed(ctx: CommandContext, event: Event, approver_key: Path | None = None) -> Event:
    """The command signed with the operator's key (and a second approver's, if given)."""
    from learning.command_signing import sign_command

    path = ctx.settings.learnops_operator_key
    if path is None:
        fail(
            "commands are signed: set LEARNOPS_OPERATOR_KEY to your operator key file "
            "(`learnops operator keys add --operator NAME --generate --out FILE` makes one)"
        )
    key = read_private_key(path, "operator key (LEARNOPS_OPERATOR_KEY)")
    approver = read_private_key(approver_key, "approver key") if approver_key else None
    return sign_command(
        event,
        key,
        now=datetime.now(UTC),
        ttl=timedelta(seconds=ctx.settings.learnops_command_ttl_s),
        approver=approver,
    )


#: Seconds the CLI gives PostgreSQL to answer its check of a command's key and role.
PRECHECK_S = 10.0


async def refuse_unless_authorised(ctx: CommandContext, command: Event) -> None:
    """Fail before sending a signed command the worker would refuse for its key or role.

    The stage that applies it decides, by the same rule over the same keys and
    grants (learning.command_signing.authorise); asked here first, a key that is
    not registered, revoked or lacks the role is said at once, with nothing
    sent, not as a refusal alert from a worker that may not be running. When
    PostgreSQL cannot be read within PRECHECK_S the command goes out all the
    same (an emergency freeze must not wait on it) and the worker decides.
    """
    from learning.command_signing import authorise
    from storage.operator_keys import operator_keyring
    from storage.signing_keys import load_keyring

    async def read() -> Any:
        async with database(ctx) as pool:
            keyring, grants = await operator_keyring(pool)
            return keyring, grants, await load_keyring(pool)

    try:
        keyring, grants, policy_keys = await asyncio.wait_for(read(), PRECHECK_S)
    except (ServiceUnreachable, TimeoutError):
        return
    verdict = authorise(
        command.model_dump(mode="json"),
        keyring,
        grants,
        now=datetime.now(UTC),
        clock_skew=timedelta(seconds=ctx.settings.learnops_command_clock_skew_s),
    )
    if not verdict:
        action = getattr(command, "command", type(command).__name__)
        if verdict.refusal == "unknown_key" and _signing_key_id(command) in policy_keys:
            fail(
                f"{action} refused: LEARNOPS_OPERATOR_KEY is a policy signing key (it signs "
                "policy artifacts, as `policy register --key`), not an operator key; nothing "
                "sent (`learnops operator keys add --operator NAME --generate --out FILE` "
                "makes one)"
            )
        fail(
            f"{action} refused: {verdict.reason} (checked before sending: nothing sent; "
            "`learnops operator keys list` shows the registered keys and their roles)"
        )


def _signing_key_id(command: Event) -> str | None:
    """The key id of the command's operator signature, if it carries one that parses."""
    from learning.signing import Signature

    try:
        return Signature.parse(getattr(command, "operator_signature", None) or "").key_id
    except (TypeError, ValueError):
        return None


@command(
    keys,
    "add",
    click.option("--operator", "name", required=True, help="Whose key it is (an identifier)."),
    click.option(
        "--generate",
        is_flag=True,
        help="Make a new key pair; the private key goes to --out (mode 0600).",
    ),
    click.option(
        "--out",
        type=click.Path(path_type=Path, dir_okay=False),
        help="With --generate: where to write the private key PEM (never overwritten).",
    ),
    click.option(
        "--public",
        "public_pem",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="A public key PEM made elsewhere (instead of --generate).",
    ),
    click.option("--doer", "doer_pattern", default=None, help="Grant a role on these doers too."),
    click.option("--role", type=ROLE_CHOICE, default=None, help="The role to grant with --doer."),
    click.option("--note", default="", help="What the key is for."),
    _actor,
    json_option,
)
async def keys_add(
    ctx: CommandContext,
    name: str,
    generate: bool,
    out: Path | None,
    public_pem: Path | None,
    doer_pattern: str | None,
    role: str | None,
    note: str,
    actor: str,
    as_json: bool,
) -> None:
    """Register an operator's public key, optionally generating the pair and granting a role."""
    from pydantic import TypeAdapter, ValidationError

    from learning.signing import PublicKey, generate_key
    from models.base import Identifier
    from storage import operator_keys as store

    try:
        TypeAdapter(Identifier).validate_python(name)
    except ValidationError as exc:
        fail(f"--operator {name!r}: {exc.errors()[0]['msg']}")
    if generate == (public_pem is not None):
        usage_error("give either --generate --out FILE or --public PEM")
    if (doer_pattern is None) != (role is None):
        usage_error("--doer and --role go together")
    if generate:
        if out is None:
            usage_error("--generate needs --out FILE for the private key")
        key = generate_key()
        public_key = key.public_key
    else:
        assert public_pem is not None
        try:
            public_key = PublicKey.from_pem(public_pem.read_bytes())
        except ValueError as exc:
            fail(f"{public_pem}: {exc}")
    written = (
        private_key_kept_if(out, key) if generate and out is not None else contextlib.nullcontext()
    )
    with written:
        # One transaction: a key is trusted with its grant or not at all, so removing
        # the private half on a failure never strands a trusted key.
        async with (
            database(ctx, "keyadmin") as pool,
            pool.acquire() as conn,
            conn.transaction(),
        ):
            added = await store.add_operator_key(
                conn, public_key, operator=name, actor=actor, note=note
            )
            owner = None if added else await store.operator_of(conn, public_key.key_id)
            if owner is not None and owner != name:
                # Granting here would give the role to the other operator's key.
                fail(
                    f"key {public_key.key_id} is registered to operator {owner!r}, not {name!r}; "
                    "nothing granted (`learnops operator keys grant` grants it a role as theirs)"
                )
            if doer_pattern is not None and role is not None:
                await store.grant_role(conn, public_key.key_id, doer_pattern, role, actor=actor)
    if as_json:
        ctx.say(dumps({"key_id": public_key.key_id, "operator": name, "added": added}))
        return
    ctx.say(f"operator key {public_key.key_id} of {name} {'added' if added else 'already known'}")
    if generate:
        ctx.say(
            f"private key written to {out} (mode 0600); sign your commands with it: "
            f"LEARNOPS_OPERATOR_KEY={out}"
            # A worker's key holds the operator role: an owner's or a viewer's is no worker's.
            + (f" (a worker's: LEARNOPS_WORKER_KEY={out})" if role == "operator" else "")
        )
    if doer_pattern is not None:
        ctx.say(f"granted {role} on {doer_pattern}")


@command(
    keys,
    "grant",
    click.argument("key_id"),
    click.argument("doer_pattern"),
    click.argument("role", type=ROLE_CHOICE),
    _actor,
    json_option,
)
async def keys_grant(
    ctx: CommandContext, key_id: str, doer_pattern: str, role: str, actor: str, as_json: bool
) -> None:
    """Give KEY_ID the ROLE on every doer matching DOER_PATTERN (fnmatch; `none` withdraws)."""
    import asyncpg

    from storage import operator_keys as store

    async with database(ctx, "keyadmin") as pool:
        try:
            await store.grant_role(pool, key_id, doer_pattern, role, actor=actor)
        except (asyncpg.ForeignKeyViolationError, asyncpg.CheckViolationError):
            fail(f"no operator key {key_id!r} (`learnops operator keys list` shows them)")
    if as_json:
        ctx.say(dumps({"key_id": key_id, "doer_pattern": doer_pattern, "role": role}))
        return
    ctx.say(f"{key_id}: {role} on {doer_pattern}")


@command(
    keys,
    "revoke",
    click.argument("key_id"),
    click.option("--note", default=""),
    _actor,
    json_option,
)
async def keys_revoke(
    ctx: CommandContext, key_id: str, note: str, actor: str, as_json: bool
) -> None:
    """Revoke KEY_ID: no command it signs is applied from now on."""
    import asyncpg

    from storage import operator_keys as store

    async with database(ctx, "keyadmin") as pool:
        try:
            await store.revoke_operator_key(pool, key_id, actor=actor, note=note)
        except (asyncpg.ForeignKeyViolationError, asyncpg.CheckViolationError):
            fail(f"no operator key {key_id!r} (`learnops operator keys list` shows them)")
    if as_json:
        ctx.say(dumps({"key_id": key_id, "revoked": True}))
        return
    ctx.say(f"operator key {key_id} revoked")


@command(keys, "list", json_option)
async def keys_list(ctx: CommandContext, as_json: bool) -> None:
    """Every operator key: whose it is, whether it is revoked, and its roles."""
    from storage import operator_keys as store

    async with database(ctx) as pool:
        records = await store.list_operator_keys(pool)
    rows: list[dict[str, Any]] = [
        {
            "key_id": r.key_id,
            "operator": r.operator,
            "status": "revoked" if r.revoked_at else "active",
            "grants": [{"doer_pattern": p, "role": role} for p, role in r.grants],
            "added_by": r.added_by,
            "added_at": r.added_at.isoformat(),
        }
        for r in records
    ]
    if as_json:
        ctx.say(dumps(rows))
        return
    if not rows:
        ctx.say("no operator keys (`learnops operator keys add` registers one)")
        return
    from rich.markup import escape

    shown = table("key", "operator", "status", "roles", "added by", "added at")
    for row in rows:
        grants = ", ".join(f"{g['role']} on {g['doer_pattern']}" for g in row["grants"]) or "none"
        # fnmatch patterns hold brackets, which rich would read as markup.
        shown.add_row(
            *(escape(str(cell)) for cell in (row["key_id"], row["operator"], row["status"])),
            escape(grants),
            escape(str(row["added_by"])),
            row["added_at"][:19],
        )
    ctx.console().print(shown)
