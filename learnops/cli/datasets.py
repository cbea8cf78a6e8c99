"""`learnops dataset …`: curated datasets, their statistics and samples; golden datasets.

Datasets are named ``TENANT/DOER/PHASE`` (one rolling dataset per tenant, doer
and phase; given as ``DOER/PHASE`` with ``--tenant``); golden datasets are
named by whoever freezes them, ``NAME`` or ``NAME@VERSION`` (the latest
version when the version is left out), and belong to one tenant. Every command
that shows or copies samples takes ``--tenant`` and never shows another
tenant's text; ``list`` shows counts only, of one tenant or (without
``--tenant``) of every tenant, each row naming its tenant. Everything here
reads and writes PostgreSQL directly; freezing is one transaction, and the
database refuses any later change to what it froze.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import click
import orjson

from learnops.cli.main import (
    GroupedCommand,
    actor_option,
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
from models.base import name_problem
from storage import datasets as store


@group(
    "Curated datasets (TENANT/DOER/PHASE) and golden datasets: list, show, samples, export, "
    "freeze, verify, erase."
)
def dataset() -> None:
    pass


def _tenant(_: Any, __: Any, value: str | None) -> str | None:
    problem = None if value is None else name_problem(value)
    if problem is not None:
        raise click.BadParameter(f"the tenant {problem}")
    return value


def tenant_option(*, required: bool, in_name: str | None = None) -> Any:
    """``--tenant T``: whose datasets (a name); required where sample text is shown or copied.

    ``in_name``: the form of NAME that names its tenant instead (qualified()).
    """
    if in_name is not None:
        help_ = f"The tenant whose datasets these are (or name it {in_name})."
    elif required:
        help_ = "The tenant whose datasets these are."
    else:
        help_ = "The tenant whose datasets these are (every tenant's counts when left out)."
    return click.option("--tenant", required=required, callback=_tenant, help=help_)


def qualified(name: str, tenant: str | None, slashes: int, form: str) -> tuple[str, str]:
    """NAME without its tenant, and the tenant: ``--tenant T NAME`` or NAME as ``T/NAME``.

    ``slashes`` is how many ``/`` a name with its tenant has (TENANT/DOER/PHASE: 2,
    TENANT/GOLDEN: 1); ``form`` names that form in the error.
    """
    if name.count("/") == slashes:
        named, rest = name.split("/", 1)
        problem = name_problem(named)
        if problem is not None:
            usage_error(f"{name!r}: the tenant {problem}")
        if tenant is not None and tenant != named:
            usage_error(f"{name!r} is of tenant {named!r}, not --tenant {tenant!r}")
        return rest, named
    if tenant is None:
        usage_error(
            f"{name!r}: give --tenant T, or name it {form} as `learnops dataset list` shows it"
        )
    return name, tenant


def _dump(value: Any) -> str:
    return dumps(value)


async def _no_such(pool: Any, tenant: str, name: str) -> None:
    """Fail naming the closest of the tenant's datasets or golden datasets."""
    known = {d.dataset for d in await store.list_datasets(pool, tenant)}
    known |= {d.split("/", 1)[1] for d in known}
    goldens = {g.name: g.version for g in await store.list_golden(pool, tenant)}
    bare = name.split("@", 1)[0]
    if bare in goldens and "@" not in name:
        # Suggested as itself before ("did you mean 'mydoer-eval'?"): a golden dataset is
        # read by version.
        fail(
            f"{bare!r} is a golden dataset of tenant {tenant}, not a dataset: `learnops "
            f"dataset show {tenant}/{bare}` lists its versions, `learnops dataset export "
            f"{tenant}/{bare}@{goldens[bare]}` writes its samples"
        )
    known |= set(goldens)
    fail(
        f"no such dataset {name!r} of tenant {tenant}{closest(name, known)} "
        f"(`learnops dataset list --tenant {tenant}` shows them)"
    )


def _rejects(rejected: dict[str, int]) -> str:
    return ", ".join(f"{kind}={n}" for kind, n in sorted(rejected.items())) or "none"


@command(dataset, "list", tenant_option(required=False), json_option)
async def dataset_list(self: GroupedCommand, tenant: str | None, as_json: bool) -> None:
    """The tenant's (or every tenant's) datasets with clean rate and rejects, and golden ones."""
    async with database(self) as pool:
        found = await store.list_datasets(pool, tenant)
        goldens = await store.list_golden(pool, tenant)
    if as_json:
        self.say(
            _dump(
                {
                    "datasets": [d.model_dump(mode="json") for d in found],
                    "golden": [g.model_dump(mode="json") for g in goldens],
                }
            )
        )
        return
    console = self.console()
    shown = table("tenant", "dataset", "checked", "accepted", "clean", "contam.", "rejects", ids=2)
    for d in found:
        shown.add_row(
            d.tenant_id,
            d.dataset,
            str(d.checked),
            str(d.accepted),
            f"{d.clean_rate:.1%}",
            f"{d.contamination_rate:.1%}",
            _rejects(d.rejected),
        )
    console.print(shown)
    if not found:
        self.say("no datasets yet: the curator stores samples as runs arrive")
    if goldens:
        frozen = table("tenant", "golden", "from dataset", "samples", "frozen", "by", ids=3)
        for g in goldens:
            frozen.add_row(
                g.tenant_id,
                f"{g.name}@{g.version}",
                g.dataset,
                str(g.sample_count),
                f"{g.frozen_at:%Y-%m-%d %H:%M}",
                g.frozen_by,
            )
        console.print(frozen)


@command(
    dataset,
    "show",
    click.argument("name"),
    tenant_option(required=False, in_name="TENANT/DOER/PHASE"),
    json_option,
)
async def dataset_show(self: GroupedCommand, name: str, tenant: str | None, as_json: bool) -> None:
    """A tenant's dataset's statistics (clean rate, rejects), or its golden dataset's versions.

    NAME is DOER/PHASE or GOLDEN[@VERSION] with --tenant, or TENANT/DOER/PHASE or
    TENANT/GOLDEN[@VERSION] without.
    """
    if tenant is None and name.count("/") == 1:
        # Without --tenant a DOER/PHASE cannot be meant: TENANT/GOLDEN[@VERSION], as verify.
        name, tenant = qualified(name, tenant, 1, "TENANT/GOLDEN[@VERSION]")
    else:
        name, tenant = qualified(name, tenant, 2, "TENANT/DOER/PHASE")
    golden_name, version = split_ref(name)
    async with database(self) as pool:
        summary = await store.dataset_summary(pool, tenant, name)
        versions = await store.golden_versions(pool, tenant, golden_name)
        versions = [v for v in versions if version is None or v.version == version]
        if summary is None and not versions:
            await _no_such(pool, tenant, name)
    if as_json:
        self.say(
            _dump(
                {
                    "dataset": summary.model_dump(mode="json") if summary else None,
                    "golden": [v.model_dump(mode="json") for v in versions],
                }
            )
        )
        return
    if summary is not None:
        s = summary
        self.say(f"dataset            {s.dataset}")
        self.say(f"tenant             {s.tenant_id}")
        self.say(f"doer               {s.doer}")
        self.say(f"checked            {s.checked}")
        self.say(f"accepted           {s.accepted}")
        self.say(f"clean rate         {s.clean_rate:.1%}")
        self.say(f"contamination rate {s.contamination_rate:.1%}")
        self.say(f"rejects by reason  {_rejects(s.rejected)}")
        self.say(
            f"samples from       {s.first_sample_at:%Y-%m-%d %H:%M:%S} to "
            f"{s.last_sample_at:%Y-%m-%d %H:%M:%S}"
        )
    for g in versions:
        self.say(f"golden             {g.name}@{g.version}")
        self.say(f"  frozen from      {g.dataset}")
        self.say(f"  frozen at        {g.frozen_at:%Y-%m-%d %H:%M:%S} by {g.frozen_by}")
        self.say(f"  samples          {g.sample_count}")
        self.say(f"  manifest hash    {g.manifest_hash}")


@command(
    dataset,
    "samples",
    click.argument("name"),
    tenant_option(required=False, in_name="TENANT/DOER/PHASE"),
    limit_option(20),
    click.option(
        "--only",
        type=click.Choice(["all", "accepted", "rejected"]),
        default="all",
        show_default=True,
    ),
    json_option,
)
async def dataset_samples(
    self: GroupedCommand, name: str, tenant: str | None, limit: int, only: str, as_json: bool
) -> None:
    """A tenant's dataset's latest samples: verdict, reason, labels and the (redacted) content."""
    name, tenant = qualified(name, tenant, 2, "TENANT/DOER/PHASE")
    accepted = {"all": None, "accepted": True, "rejected": False}[only]
    async with database(self) as pool:
        rows = await store.dataset_samples(pool, tenant, name, limit=limit, accepted=accepted)
        if not rows and await store.dataset_summary(pool, tenant, name) is None:
            await _no_such(pool, tenant, name)
    if as_json:
        self.say(_dump([dict(r) for r in rows]))
        return
    shown = table(
        "sample",
        "kind",
        "origin",
        "verdict",
        "diversity",
        "specificity",
        "synthetic",
        "redacted",
        "content",
    )
    for r in rows:
        verdict = "accepted" if r["accepted"] else f"rejected: {r['reject_reason']}"
        labels = r["labels"]
        content = " ".join(r["content"].split())
        shown.add_row(
            str(r["sample_id"]),
            r["kind"],
            r["origin"],
            verdict,
            f"{r['diversity']:.2f}",
            f"{labels['specificity']:.2f}",
            f"{labels['synthetic_confidence']:.1f}",
            _rejects(r["redactions"]) if r["redactions"] else "",
            f"{content[:110]}{'…' if len(content) > 110 else ''}",
        )
    self.console().print(shown)


@command(
    dataset,
    "freeze",
    click.argument("name"),
    tenant_option(required=False, in_name="TENANT/DOER/PHASE"),
    click.option(
        "--as", "golden", required=True, help="Name of the golden dataset (letters, digits, ._-)."
    ),
    actor_option("Who froze it, for the record."),
    json_option,
)
async def dataset_freeze(
    self: GroupedCommand, name: str, tenant: str | None, golden: str, actor: str, as_json: bool
) -> None:
    """Freeze the tenant's dataset NAME's accepted samples as the next version of GOLDEN."""
    name, tenant = qualified(name, tenant, 2, "TENANT/DOER/PHASE")
    problem = name_problem(golden)
    if problem is not None:
        usage_error(f"--as {golden!r}: a golden dataset's name {problem} (letters, digits, ._-)")
    async with database(self) as pool:
        try:
            frozen = await store.freeze(pool, tenant, name, golden, actor=actor)
        except store.GoldenError as exc:
            fail(str(exc))
        same = [
            v.version
            for v in await store.golden_versions(pool, tenant, golden)
            if v.version < frozen.version and v.manifest_hash == frozen.manifest_hash
        ]
    if as_json:
        same_as = f"{frozen.name}@{same[-1]}" if same else None
        self.say(_dump({**frozen.model_dump(mode="json"), "same_samples_as": same_as}))
        return
    self.say(
        f"froze {frozen.sample_count} samples of {frozen.dataset} as "
        f"{frozen.name}@{frozen.version} (manifest sha256 {frozen.manifest_hash})"
    )
    if same:
        # A freeze is a record of its own (who, when); replays key on the manifest, so a
        # replay of either version is the same replay.
        self.say(
            f"note: the same samples as {frozen.name}@{same[-1]} (the same manifest)",
            file=self.stderr,
        )


@command(
    dataset,
    "export",
    click.argument("name"),
    tenant_option(required=False, in_name="TENANT/DOER/PHASE or TENANT/GOLDEN@VERSION"),
    click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write to FILE (default: standard output).",
    ),
    click.option(
        "--since",
        type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
        default=None,
        help="Only samples stored at or after this time (UTC unless it says); for an "
        "incremental export give the last one's start less a minute, and keep a sample id once.",
    ),
    click.option("--include-rejected", is_flag=True, help="Rejected samples too, with why."),
    click.option(
        "--include-golden",
        is_flag=True,
        help="Samples frozen into a golden (evaluation) dataset too; left out by default.",
    ),
)
async def dataset_export(
    self: GroupedCommand,
    name: str,
    tenant: str | None,
    out: Path | None,
    since: datetime | None,
    include_rejected: bool,
    include_golden: bool,
) -> None:
    """Write a dataset's accepted samples, or a golden dataset version's, as JSON Lines.

    One object per line, in the order they were stored (a golden version: by sample
    id), samples frozen into a golden dataset left out unless asked for: the
    redacted content with its labels, redactions, content hash and where it
    came from (run, policy version, model). What was written is said on stderr.
    """
    golden_ref = "@" in name
    if golden_ref:
        name, tenant = qualified(name, tenant, 1, "TENANT/GOLDEN@VERSION")
        if since is not None or include_rejected or include_golden:
            usage_error("--since and --include-* are for a dataset, not a golden version")
    else:
        name, tenant = qualified(name, tenant, 2, "TENANT/DOER/PHASE")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    digest, count = hashlib.sha256(), 0
    frozen = None
    async with database(self) as pool:
        if golden_ref:
            golden_name, version = split_ref(name)
            frozen = await store.golden(pool, tenant, golden_name, version)
            if frozen is None:
                await _no_such(pool, tenant, name)
            assert frozen is not None
            what = f"{tenant}/{frozen.name}@{frozen.version}"
        elif await store.dataset_summary(pool, tenant, name) is None:
            await _no_such(pool, tenant, name)
        else:
            what = f"{tenant}/{name}"
        with _output(out) as sink:
            async with pool.acquire() as conn, conn.transaction(readonly=True):
                rows = (
                    store.export_golden(conn, frozen.name, frozen.version)
                    if frozen is not None
                    else store.export_samples(
                        conn,
                        tenant,
                        name,
                        accepted_only=not include_rejected,
                        since=since,
                        golden=include_golden,
                    )
                )
                async for row in rows:
                    line = orjson.dumps(row) + b"\n"
                    sink.write(line)
                    digest.update(line)
                    count += 1
    where = str(out) if out is not None else "standard output"
    kind = "samples" if include_rejected or golden_ref else "accepted samples"
    self.say(
        f"exported {count} {kind} of {what} to {where} (JSON Lines, sha256 {digest.hexdigest()})",
        file=self.stderr,
    )


@contextmanager
def _output(out: Path | None) -> Iterator[BinaryIO]:
    """The file to write (replaced only once it is complete), or standard output."""
    if out is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    partial = out.with_name(f".{out.name}.partial")
    with partial.open("wb") as sink:
        yield sink
    partial.replace(out)


@command(
    dataset,
    "verify",
    click.argument("golden"),
    tenant_option(required=False, in_name="TENANT/GOLDEN[@VERSION]"),
    json_option,
)
async def dataset_verify(
    self: GroupedCommand, golden: str, tenant: str | None, as_json: bool
) -> None:
    """Recompute GOLDEN[@VERSION]'s content hashes and manifest hash; exit 1 on any mismatch."""
    golden, tenant = qualified(golden, tenant, 1, "TENANT/GOLDEN[@VERSION]")
    name, version = split_ref(golden)
    async with database(self) as pool:
        try:
            frozen, result = await store.verify_golden(pool, tenant, name, version)
        except store.GoldenError as exc:
            fail(str(exc))
    if as_json:
        self.say(
            _dump(
                {
                    "golden": frozen.model_dump(mode="json"),
                    "ok": result.ok,
                    "sample_count": result.sample_count,
                    "manifest_hash": result.manifest_hash,
                    "problems": result.problems,
                    "erased": result.erased,
                }
            )
        )
    elif result.ok:
        erased = f" ({result.erased} erased)" if result.erased else ""
        self.say(
            f"ok: {frozen.name}@{frozen.version}: {result.sample_count} samples{erased}, "
            f"manifest sha256 {result.manifest_hash}"
        )
    else:
        for problem in result.problems:
            self.say(f"MISMATCH {problem}")
    if not result.ok:
        fail(f"{frozen.name}@{frozen.version} does not match what was frozen")


@command(
    dataset,
    "erase",
    click.option(
        "--subject",
        required=True,
        help="The person's identifier as it appears in sample text (user id, name, handle).",
    ),
    click.option("--reason", default="", help="Why, for the audit record (e.g. a request id)."),
    actor_option("Who erased it, for the audit record."),
    click.option("--dry-run", is_flag=True, help="Count what would be erased; change nothing."),
    json_option,
)
async def dataset_erase(
    self: GroupedCommand, subject: str, reason: str, actor: str, dry_run: bool, as_json: bool
) -> None:
    """Erase SUBJECT from samples and golden datasets (frozen ones too), with an audit record.

    Runs as the migrating role (LEARNOPS_MIGRATE_DATABASE_URL): no other role may.
    """
    import asyncpg

    async with database(self, "migrate") as pool:
        try:
            done = await store.erase_subject(
                pool, subject, reason=reason, actor=actor, dry_run=dry_run
            )
        except asyncpg.InvalidParameterValueError as exc:
            fail(f"{exc.args[0] if exc.args else exc} (docs/curation.md, Erasing a subject)")
    kafka, unreached = await _kafka_copies(self)
    if as_json:
        self.say(
            _dump({**done._asdict(), "dry_run": dry_run, "kafka": kafka, "kafka_error": unreached})
        )
        return
    counts = ", ".join(f"{table}={n}" for table, n in sorted(done.rows.items()))
    versions = ", ".join(f"{name}@{v}" for name, v in sorted(done.new_versions.items()))
    verb = "would erase" if dry_run else f"erased (record {done.erasure_id})"
    self.say(f"{verb}: {counts}; new golden versions: {versions or 'none'}")
    self.say(f"subject hash {done.subject_hash}")
    if unreached is not None:
        self.say(f"Kafka not reached ({unreached}): copies age out by each topic's retention")
    for copy in kafka:
        until = copy["gone_by"] or "never by age (compacted or unlimited retention): delete it"
        self.say(f"Kafka {copy['topic']}: copies sent until now are gone by {until}")


async def _kafka_copies(self: GroupedCommand) -> tuple[list[dict[str, Any]], str | None]:
    """When the copies in Kafka of what was just erased age out, per text topic (or why unknown).

    A Kafka log cannot be edited: a record stays until its segment passes the
    topic's retention (agents.topics.expiry), read from the cluster's configs.
    """
    from agents.topics import TEXT_TOPICS, describe, expiry

    try:
        states = await asyncio.wait_for(describe(self.settings, list(TEXT_TOPICS)), 30)
    except Exception as exc:  # noqa: BLE001 - the erasure is done; say why this part is not
        return [], f"{type(exc).__name__}: {exc}"[:200]
    now = datetime.now(UTC)
    return [
        {
            "topic": e.topic,
            "exists": e.exists,
            "retention_ms": e.retention_ms,
            "segment_ms": e.segment_ms,
            "assumed_kafka_default": e.assumed,
            "gone_by": None
            if e.bound_ms is None
            else (now + timedelta(milliseconds=e.bound_ms)).isoformat(timespec="seconds"),
        }
        for e in expiry(states)
    ], None
