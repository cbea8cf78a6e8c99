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
import getpass
import json
import os
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson
import yaml
from faust.cli import base as faust_cli

from learning.signing import (
    CanonicalJSONError,
    PublicKey,
    SigningKey,
    diff_artifacts,
    generate_key,
    signed_artifact,
)
from learnops.cli.main import GroupedCommand, command, database, fail, json_option, split_ref
from models.base import Event
from models.commands import (
    ArchivePolicy,
    PromotePolicy,
    RegisterPolicy,
    RollbackPolicy,
    StartCanary,
    StartShadow,
)
from storage import audit as audit_store
from storage import policies as store
from storage import signing_keys as keys_store

COMMANDS_TOPIC = "learning.commands"


@faust_cli.cli.group()
def policy() -> None:
    """Signed policy versions: register, shadow, canary, promote, roll back, inspect."""


@policy.group()
def keys() -> None:
    """The Ed25519 keys trusted to sign policy artifacts."""


# --------------------------------------------------------------------------- shared options

_actor = click.option(
    "--actor",
    default=lambda: getpass.getuser(),
    show_default="the current user",
    help="Who is asking, for the audit.",
)
_wait = click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait for the agent's verdict."
)
_timeout = click.option(
    "--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait."
)


async def _find(pool: Any, ref: str) -> store.PolicyRecord:
    policy_id, version = split_ref(ref)
    found = await store.find_policy(pool, policy_id, version)
    if found is None:
        fail(f"no policy {ref} is registered")
    assert found is not None
    return found


async def _send(self: GroupedCommand, event: Event) -> None:
    settings = self.lapp.settings
    producer = settings.kafka_producer()
    await producer.start()
    try:
        await producer.send_and_wait(COMMANDS_TOPIC, key=event.doer.encode(), value=event.to_json())
    finally:
        await producer.stop()


async def _submit(
    self: GroupedCommand, pool: Any, event: Event, *, wait: bool, timeout: float
) -> None:
    """Send a command; with ``wait``, report the agent's verdict (exit 1 when refused)."""
    await _send(self, event)
    self.say(f"sent {event.event_id} to {COMMANDS_TOPIC}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while (outcome := await audit_store.outcome_of(pool, event.event_id)) is None:
        if time.monotonic() > deadline:
            fail(
                f"no verdict on {event.event_id} after {timeout:g}s; is a worker running? "
                f"(`learnops policy history {event.doer}` shows it once handled)"
            )
        await asyncio.sleep(0.25)
    if outcome.applied:
        self.say(f"applied: {outcome.verdict}")
        return
    fail(f"refused ({outcome.refusal}): {outcome.verdict}")


def _load_artifact(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
        raise
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            artifact = yaml.safe_load(text)
        else:
            artifact = json.loads(text)
    except (yaml.YAMLError, ValueError) as exc:
        fail(f"{path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {exc}")
        raise
    if not isinstance(artifact, dict):
        fail(f"{path} must hold a JSON object (prompts, parameters, router rules, tools, …)")
    assert isinstance(artifact, dict)
    return artifact


def _when(value: datetime | None, timespec: str = "seconds") -> str:
    return value.isoformat(timespec=timespec) if value else "-"


def _dump(value: Any) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return obj.hex()
        if isinstance(obj, uuid.UUID):  # asyncpg's own UUID subclass, which orjson skips
            return str(obj)
        raise TypeError

    options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    return orjson.dumps(value, default=default, option=options).decode()


# --------------------------------------------------------------------------- changes


@command(
    policy,
    "register",
    click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False)),
    click.option("--doer", required=True, help="The doer this policy is for."),
    click.option(
        "--key",
        "key_file",
        required=True,
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="Private key PEM (from `learnops policy keys generate`).",
    ),
    click.option("--policy-id", default=None, help="Policy id (default: the doer)."),
    click.option("--version", type=int, default=None, help="Version (default: the next one)."),
    click.option("--parent", default=None, help="The version it derives from, POLICY_ID@VERSION."),
    click.option("--dataset", "datasets", multiple=True, help="A dataset it learned from."),
    click.option("--experiment", default=None, help="The experiment that produced it."),
    click.option("--reason", default=None, help="Why (default: the file name)."),
    _actor,
    _wait,
    _timeout,
)
async def policy_register(
    self: GroupedCommand,
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
) -> None:
    """Sign FILE (JSON or YAML) and register it as a new draft version of a doer's policy."""
    artifact = _load_artifact(file)
    try:
        key = SigningKey.from_pem(key_file.read_bytes())
    except (ValueError, TypeError) as exc:
        fail(f"{key_file} is not an Ed25519 private key PEM: {exc}")
        raise
    try:
        signed = signed_artifact(artifact, key)
    except CanonicalJSONError as exc:
        fail(f"{file}: {exc}")
        raise
    policy_id = policy_id or doer
    parent_id, parent_version = split_ref(parent) if parent else (None, None)
    if parent and parent_version is None:
        fail(f"--parent {parent!r} must name a version, POLICY_ID@VERSION")
    async with database(self) as pool:
        allowed = (await keys_store.load_keyring(pool)).check_signing_key(key)
        if not allowed:
            fail(f"key {key.key_id} cannot sign: {allowed.reason}")
        event = RegisterPolicy(
            doer=doer,
            actor=actor,
            reason=reason or f"register {file.name}",
            policy_id=policy_id,
            version=version or await store.next_version(pool, policy_id),
            **signed,
            parent_policy_id=parent_id,
            parent_version=parent_version,
            dataset_ids=list(datasets),
            experiment_id=experiment,
        )
        ref = f"{event.policy_id}@{event.version}"
        self.say(f"{ref} sha256:{event.content_hash} signed by key {key.key_id}")
        await _submit(self, pool, event, wait=wait, timeout=timeout)


@command(
    policy,
    "shadow",
    click.argument("ref"),
    click.option("--fraction", type=float, default=1.0, show_default=True, help="Share mirrored."),
    click.option("--reason", default="start shadow", show_default=True),
    _actor,
    _wait,
    _timeout,
)
async def policy_shadow(
    self: GroupedCommand,
    ref: str,
    fraction: float,
    reason: str,
    actor: str,
    wait: bool,
    timeout: float,
) -> None:
    """Start mirroring a share of the doer's tasks to draft REF (outputs recorded, never served)."""
    async with database(self) as pool:
        found = await _find(pool, ref)
        event = StartShadow(
            doer=found.doer,
            actor=actor,
            reason=reason,
            policy_id=found.policy_id,
            version=found.version,
            mirror_fraction=fraction,
        )
        await _submit(self, pool, event, wait=wait, timeout=timeout)


@command(
    policy,
    "canary",
    click.argument("ref"),
    click.option("--steps", default=None, help="Traffic shares, e.g. 0.05,0.25,0.5."),
    click.option("--require-approval", is_flag=True, help="Wait for approval at each step."),
    click.option("--force", is_flag=True, help="Start from draft, skipping shadow."),
    click.option("--reason", default=None, help="Why (required with --force)."),
    _actor,
    _wait,
    _timeout,
)
async def policy_canary(
    self: GroupedCommand,
    ref: str,
    steps: str | None,
    require_approval: bool,
    force: bool,
    reason: str | None,
    actor: str,
    wait: bool,
    timeout: float,
) -> None:
    """Start serving REF to a growing share of the doer's tasks against its active policy."""
    if force and not reason:
        fail("--force needs --reason: a skipped step is recorded with why")
    try:
        shares = [float(s) for s in steps.split(",")] if steps else None
    except ValueError:
        fail(f"--steps {steps!r} must be comma-separated numbers, e.g. 0.05,0.25,0.5")
        raise
    async with database(self) as pool:
        found = await _find(pool, ref)
        event = StartCanary(
            doer=found.doer,
            actor=actor,
            reason=reason or "start canary",
            policy_id=found.policy_id,
            version=found.version,
            steps=shares,
            require_approval=require_approval,
            force=force,
        )
        await _submit(self, pool, event, wait=wait, timeout=timeout)


@command(
    policy,
    "promote",
    click.argument("ref"),
    click.option("--force", is_flag=True, help="Skip steps (draft or shadow → active)."),
    click.option("--reason", default=None, help="Why (required with --force)."),
    click.option("--deployment", default=None, help="Only promote out of this deployment."),
    _actor,
    _wait,
    _timeout,
)
async def policy_promote(
    self: GroupedCommand,
    ref: str,
    force: bool,
    reason: str | None,
    deployment: str | None,
    actor: str,
    wait: bool,
    timeout: float,
) -> None:
    """Make REF its doer's active policy; the previous active version is archived."""
    if force and not reason:
        fail("--force needs --reason: a skipped step is recorded with why")
    async with database(self) as pool:
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
        await _submit(self, pool, event, wait=wait, timeout=timeout)


@command(
    policy,
    "rollback",
    click.argument("ref", required=False),
    click.option("--doer", default=None, help="Roll back this doer's live candidate."),
    click.option("--deployment", default=None, help="Roll back this deployment."),
    click.option("--reason", required=True, help="Why."),
    _actor,
    _wait,
    _timeout,
)
async def policy_rollback(
    self: GroupedCommand,
    ref: str | None,
    doer: str | None,
    deployment: str | None,
    reason: str,
    actor: str,
    wait: bool,
    timeout: float,
) -> None:
    """End the shadow or canary of REF (or --doer's live candidate); traffic returns to active."""
    async with database(self) as pool:
        policy_id: str | None = None
        version: int | None = None
        if ref:
            found = await _find(pool, ref)
            doer, policy_id, version = found.doer, found.policy_id, found.version
        if not doer:
            fail("name the candidate (REF) or its doer (--doer)")
        assert doer is not None
        event = RollbackPolicy(
            doer=doer,
            actor=actor,
            reason=reason,
            policy_id=policy_id,
            version=version,
            deployment_id=deployment,
        )
        await _submit(self, pool, event, wait=wait, timeout=timeout)


@command(
    policy,
    "archive",
    click.argument("ref"),
    click.option("--reason", required=True, help="Why."),
    _actor,
    _wait,
    _timeout,
)
async def policy_archive(
    self: GroupedCommand, ref: str, reason: str, actor: str, wait: bool, timeout: float
) -> None:
    """Withdraw draft REF; it is kept, and never deployed."""
    async with database(self) as pool:
        found = await _find(pool, ref)
        event = ArchivePolicy(
            doer=found.doer,
            actor=actor,
            reason=reason,
            policy_id=found.policy_id,
            version=found.version,
        )
        await _submit(self, pool, event, wait=wait, timeout=timeout)


# --------------------------------------------------------------------------- reading


@command(
    policy,
    "list",
    click.option("--doer", default=None),
    click.option("--status", default=None),
    click.option("--limit", type=int, default=200, show_default=True),
    json_option,
)
async def policy_list(
    self: GroupedCommand, doer: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """List policy versions, newest first."""
    async with database(self) as pool:
        found = await store.list_policies(pool, doer=doer, status=status, limit=limit)
    if as_json:
        self.say(_dump([{k: v for k, v in r.__dict__.items() if k != "artifact"} for r in found]))
        return
    for r in found:
        self.say(
            f"{r.ref:32} {r.doer:20} {r.status:12} sha256:{r.content_hash[:12]} "
            f"key {r.key_id} {_when(r.created_at)} by {r.created_by}"
        )


@command(policy, "show", click.argument("ref"), json_option)
async def policy_show(self: GroupedCommand, ref: str, as_json: bool) -> None:
    """Show a version: provenance, signature, artifact and its audit trail."""
    async with database(self) as pool:
        found = await _find(pool, ref)
        trail = await audit_store.promotions(pool, policy_id=found.policy_id, version=found.version)
    if as_json:
        self.say(_dump({"policy": found, "promotions": trail}))
        return
    parent = f"{found.parent_policy_id}@{found.parent_version}" if found.parent_policy_id else "-"
    for label, value in (
        ("policy", found.ref),
        ("doer", found.doer),
        ("status", found.status),
        ("content", f"sha256:{found.content_hash}"),
        ("signed by", f"key {found.key_id}"),
        ("parent", parent),
        ("datasets", ", ".join(found.dataset_ids) or "-"),
        ("experiment", found.experiment_id or "-"),
        ("created", f"{_when(found.created_at)} by {found.created_by}"),
        ("updated", _when(found.updated_at)),
    ):
        self.say(f"{label:11} {value}")
    self.say("artifact:")
    self.say(_dump(found.artifact))
    self.say("audit:")
    for row in trail:
        self.say(_audit_line(row))


def _audit_line(row: audit_store.PromotionRecord) -> str:
    moved = f"{row.from_status or '-'} → {row.to_status or '-'}"
    return (
        f"  {_when(row.recorded_at)} {row.action:12} {row.outcome:7} {moved:22} "
        f"by {row.actor} ({row.source}): {row.verdict}"
    )


def _parse_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--at {text!r} is not an ISO 8601 time, e.g. 2026-03-03T14:03:00+00:00")
        raise
    if at.utcoffset() is None:
        fail(f"--at {text!r} has no timezone; add one, e.g. +00:00 or Z")
    return at


@command(
    policy,
    "history",
    click.argument("doer"),
    click.option("--at", "at", default=None, help="Only the version live at this ISO time."),
    json_option,
)
async def policy_history(self: GroupedCommand, doer: str, at: str | None, as_json: bool) -> None:
    """Show which version was live for DOER over time (or at one moment), and the audit trail."""
    async with database(self) as pool:
        if at is not None:
            moment = _parse_time(at)
            live = await store.live_at(pool, doer, moment)
            if as_json:
                self.say(_dump(live))
            elif live is None:
                self.say(f"no active policy for {doer} at {moment.isoformat()}")
            else:
                self.say(
                    f"{live.ref} was live for {doer} at {moment.isoformat()} "
                    f"(active {_when(live.active_from, 'milliseconds')} → "
                    f"{_when(live.active_to, 'milliseconds') if live.active_to else 'now'})"
                )
            return
        stretches = await store.activations(pool, doer)
        trail = await audit_store.promotions(pool, doer=doer)
    if as_json:
        self.say(_dump({"activations": stretches, "promotions": trail}))
        return
    self.say(f"live history of {doer}:")
    for a in stretches:
        until = _when(a.active_to, "milliseconds") if a.active_to else "now"
        self.say(f"  {_when(a.active_from, 'milliseconds')} → {until:29} {a.ref}")
    self.say("audit:")
    for row in trail:
        self.say(f"{_audit_line(row)} [{row.policy_id}@{row.version}]")


@command(policy, "diff", click.argument("a"), click.argument("b"))
async def policy_diff(self: GroupedCommand, a: str, b: str) -> None:
    """Show how artifact B differs from A (each a POLICY_ID@VERSION or a JSON/YAML file)."""
    async with database(self) as pool:
        left = await _artifact_of(pool, a)
        right = await _artifact_of(pool, b)
    try:
        lines = diff_artifacts(left, right)
    except CanonicalJSONError as exc:
        fail(str(exc))
    self.say(f"--- {a}\n+++ {b}")
    if not lines:
        self.say("no differences: the content hashes are equal")
    for line in lines:
        self.say(line)


async def _artifact_of(pool: Any, ref: str) -> Any:
    path = Path(ref)
    if path.is_file():
        return _load_artifact(path)
    return (await _find(pool, ref)).artifact


@command(
    policy,
    "lineage",
    click.argument("ref", required=False),
    click.option("--dataset", default=None, help="Every version trained on this dataset instead."),
    json_option,
)
async def policy_lineage(
    self: GroupedCommand, ref: str | None, dataset: str | None, as_json: bool
) -> None:
    """Show datasets → experiment → version (and its ancestors) → promotions, in one query."""
    if bool(ref) == bool(dataset):
        fail("name a version (REF) or a --dataset, not both")
    async with database(self) as pool:
        if dataset:
            chain = await store.dataset_lineage(pool, dataset)
        else:
            assert ref is not None
            found = await _find(pool, ref)
            chain = await store.lineage(pool, found.policy_id, found.version)
    if as_json:
        self.say(_dump(chain))
        return
    for entry in chain:
        pad = "  " * entry.depth
        self.say(
            f"{pad}{entry.ref} ({entry.doer}, {entry.status}) sha256:{entry.content_hash[:12]} "
            f"datasets=[{', '.join(entry.dataset_ids)}] experiment={entry.experiment_id or '-'}"
        )
        for p in entry.promotions:
            self.say(
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
)
async def keys_generate(self: GroupedCommand, out: Path, note: str, actor: str) -> None:
    """Create an Ed25519 signing key: the private half to OUT, the public half to the keyring."""
    key = generate_key()
    async with database(self) as pool:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            fail(f"{out} exists; refusing to overwrite a key")
            raise
        except OSError as exc:
            fail(f"cannot create {out}: {exc.strerror}")
            raise
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(key.to_pem())
        record = await keys_store.add_signing_key(pool, key.public_key, created_by=actor, note=note)
    self.say(f"key {record.key_id} trusted; private key written to {out} (mode 0600)")
    self.say(f"public key (base64): {key.public_key.to_b64()}")


@command(
    keys,
    "add",
    click.argument("public_pem", type=click.Path(path_type=Path, exists=True, dir_okay=False)),
    click.option("--note", default=""),
    _actor,
)
async def keys_add(self: GroupedCommand, public_pem: Path, note: str, actor: str) -> None:
    """Trust a public key made elsewhere (a PEM `PUBLIC KEY` block)."""
    try:
        public_key = PublicKey.from_pem(public_pem.read_bytes())
    except ValueError as exc:
        fail(f"{public_pem}: {exc}")
        raise
    async with database(self) as pool:
        record = await keys_store.add_signing_key(pool, public_key, created_by=actor, note=note)
    self.say(f"key {record.key_id} trusted ({record.status})")


@command(keys, "list", json_option)
async def keys_list(self: GroupedCommand, as_json: bool) -> None:
    """List the keyring: every key, and whether it is active, retired or revoked."""
    async with database(self) as pool:
        found = await keys_store.signing_keys(pool)
    if as_json:
        self.say(_dump(found))
        return
    for k in found:
        self.say(
            f"{k.key_id} {k.status:8} added {_when(k.created_at)} by {k.created_by}"
            + (f" retired {_when(k.retired_at)}" if k.retired_at else "")
            + (f" revoked {_when(k.revoked_at)}" if k.revoked_at else "")
            + (f"  {k.note}" if k.note else "")
        )


@command(keys, "retire", click.argument("key_id"))
async def keys_retire(self: GroupedCommand, key_id: str) -> None:
    """Stop KEY_ID vouching for new registrations; versions it signed before still deploy."""
    async with database(self) as pool:
        record = await keys_store.retire_signing_key(pool, key_id)
    if record is None:
        fail(f"no key {key_id} in the keyring")
    assert record is not None
    self.say(f"key {key_id} retired at {_when(record.retired_at)}")


@command(keys, "revoke", click.argument("key_id"), click.option("--reason", required=True))
async def keys_revoke(self: GroupedCommand, key_id: str, reason: str) -> None:
    """Distrust KEY_ID: nothing it signed moves to shadow, canary or active again."""
    async with database(self) as pool:
        record = await keys_store.revoke_signing_key(pool, key_id, note=reason)
    if record is None:
        fail(f"no key {key_id} in the keyring")
    assert record is not None
    self.say(f"key {key_id} revoked at {_when(record.revoked_at)}")
