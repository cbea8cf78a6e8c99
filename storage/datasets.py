"""dataset_samples, v_dataset_stats and golden datasets: curated samples and frozen copies."""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from learning.golden import Verification, manifest_hash, manifest_of, verify
from models.datasets import DATASET_SEPARATOR, DatasetSummary, GoldenDataset, tenant_of
from models.events import SampleCurated


class GoldenError(ValueError):
    """A golden dataset cannot be frozen or found; the message says why."""


def sample_tenant(sample: SampleCurated) -> str:
    """The tenant a sample is stored under: its own, or its dataset's for a pre-tenant event."""
    return sample.tenant_id or tenant_of(sample.dataset or "")


def stored_dataset(sample: SampleCurated) -> str:
    """The three-part dataset name a sample is stored under (a pre-tenant name gets its tenant)."""
    return tenant_dataset(sample_tenant(sample), sample.dataset or "")


def unstorable(sample: SampleCurated) -> str | None:
    """Why a sample cannot be stored (a field dataset_samples needs is missing), or ``None``."""
    missing = [
        name
        for name in ("dataset", "content", "content_hash", "labels")
        if getattr(sample, name) is None
    ]
    if missing:
        return f"{', '.join(missing)}: required to store a sample"
    assert sample.dataset is not None
    if sample.tenant_id is not None and tenant_of(sample.dataset) != sample.tenant_id:
        return f"dataset {sample.dataset} is not a dataset of tenant {sample.tenant_id}"
    return None


# One statement per batch: unnest turns the column arrays back into rows. The
# BEFORE INSERT trigger turns an accepted exact duplicate into a reject.
_INSERT = """
INSERT INTO dataset_samples (
    sample_id, event_id, dataset, doer, run_id, source_event_id, phase, policy_id, policy_version,
    model, artifact_id, kind, origin, content, content_hash, redactions, labels, accepted,
    reject_reason, near_duplicate_of, self_loop_of, diversity, run_occurred_at, curated_at, curator,
    tenant_id
)
SELECT r.sample_id, r.event_id, r.dataset, r.doer, r.run_id, r.source_event_id, r.phase,
       r.policy_id, r.policy_version, r.model, r.artifact_id, r.kind, r.origin, r.content,
       r.content_hash, r.redactions::jsonb, r.labels::jsonb, r.accepted, r.reject_reason,
       ARRAY(SELECT jsonb_array_elements_text(r.near::jsonb)), r.self_loop_of, r.diversity,
       r.run_occurred_at, r.curated_at, r.curator, r.tenant_id
FROM unnest(
    $1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[],
    $8::text[], $9::int[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
    $15::text[], $16::text[], $17::text[], $18::bool[], $19::text[], $20::text[], $21::text[],
    $22::float8[], $23::timestamptz[], $24::timestamptz[], $25::text[], $26::text[]
) WITH ORDINALITY AS r(
    sample_id, event_id, dataset, doer, run_id, source_event_id, phase, policy_id, policy_version,
    model, artifact_id, kind, origin, content, content_hash, redactions, labels, accepted,
    reject_reason, near, self_loop_of, diversity, run_occurred_at, curated_at, curator, tenant_id,
    position
)
ORDER BY r.position
ON CONFLICT (sample_id) DO NOTHING
"""


def _json(value: Any) -> str:
    # JSON travels as text: asyncpg would read a list inside jsonb[] as a sub-array.
    return orjson.dumps(value).decode()


async def insert_samples(pool: Any, samples: Sequence[SampleCurated]) -> int:
    """Store a batch of curated samples in order; returns how many were new.

    Idempotent by sample id (a redelivery adds nothing).  Every sample must be
    storable (:func:`unstorable`).
    """
    if not samples:
        return 0
    # ON CONFLICT cannot see rows of its own statement: keep the first of a repeated id.
    unique = list({s.sample_id: s for s in reversed(samples)}.values())[::-1]
    for sample in unique:
        reason = unstorable(sample)
        if reason is not None:
            raise ValueError(f"sample {sample.sample_id}: {reason}")
    columns = (
        [s.sample_id for s in unique],
        [s.event_id for s in unique],
        [stored_dataset(s) for s in unique],
        [s.doer for s in unique],
        [s.run_id for s in unique],
        [s.source_event_id for s in unique],
        [s.phase for s in unique],
        [s.policy_id for s in unique],
        [s.policy_version for s in unique],
        [s.model for s in unique],
        [s.artifact_id for s in unique],
        [s.kind for s in unique],
        [s.origin for s in unique],
        [s.content for s in unique],
        [s.content_hash for s in unique],
        [_json(s.redactions) for s in unique],
        [_json(s.labels.model_dump(mode="json") if s.labels else None) for s in unique],
        [s.accepted for s in unique],
        [s.reject_reason for s in unique],
        [_json(s.near_duplicate_of) for s in unique],
        [s.self_loop_of for s in unique],
        [s.diversity for s in unique],
        [s.run_occurred_at for s in unique],
        [s.occurred_at for s in unique],
        [s.curator for s in unique],
        [sample_tenant(s) for s in unique],
    )
    status = await pool.execute(_INSERT, *columns)
    return int(status.rsplit(" ", 1)[-1])


# --- datasets -----------------------------------------------------------------------

# A dataset's tenant is the first part of its name (migration 023 renamed every dataset).
_STATS = """
SELECT * FROM (
    SELECT dataset, split_part(dataset, '/', 1) AS tenant_id, doer, checked, accepted,
           clean_rate, contamination_rate, rejected, first_sample_at, last_sample_at
    FROM v_dataset_stats
) AS stats
"""


def tenant_dataset(tenant: str, dataset: str) -> str:
    """The full name of a tenant's dataset given as ``doer/phase`` or ``tenant/doer/phase``.

    A three-part name of another tenant is returned as it is: the reads below
    filter on the tenant as well, so it finds nothing.
    """
    if dataset.count(DATASET_SEPARATOR) == 1:
        return f"{tenant}{DATASET_SEPARATOR}{dataset}"
    return dataset


async def list_datasets(pool: Any, tenant: str | None) -> list[DatasetSummary]:
    """The tenant's datasets with their counts and rates, by name; every tenant's if None.

    Only counts and rates: no sample text, so the platform operator may list
    every tenant's datasets (each row names its tenant).
    """
    rows = await pool.fetch(
        _STATS + " WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY dataset", tenant
    )
    return [DatasetSummary.model_validate(dict(row)) for row in rows]


async def dataset_summary(pool: Any, tenant: str, dataset: str) -> DatasetSummary | None:
    """One of the tenant's datasets' counts and rates, or ``None`` if it has no sample."""
    row = await pool.fetchrow(
        _STATS + " WHERE tenant_id = $1 AND dataset = $2", tenant, tenant_dataset(tenant, dataset)
    )
    return None if row is None else DatasetSummary.model_validate(dict(row))


async def dataset_samples(
    pool: Any, tenant: str, dataset: str, *, limit: int = 20, accepted: bool | None = None
) -> list[Any]:
    """The tenant's dataset's latest samples (all, or only accepted or only rejected ones)."""
    return list(
        await pool.fetch(
            """
            SELECT sample_id, run_id, artifact_id, kind, origin, accepted, reject_reason,
                   content_hash, diversity, labels, redactions, content, created_at
            FROM dataset_samples
            WHERE tenant_id = $1 AND dataset = $2 AND ($3::boolean IS NULL OR accepted = $3)
            ORDER BY created_at DESC, sample_id
            LIMIT $4
            """,
            tenant,
            tenant_dataset(tenant, dataset),
            accepted,
            limit,
        )
    )


# --- golden datasets ----------------------------------------------------------------

_COPY = """
INSERT INTO golden_dataset_samples (
    golden_name, golden_version, sample_id, doer, run_id, artifact_id, kind, origin, content,
    content_hash, redactions, labels
)
SELECT $1, $2, sample_id, doer, run_id, artifact_id, kind, origin, content, content_hash,
       redactions, labels
FROM dataset_samples WHERE tenant_id = $4 AND dataset = $3 AND accepted
RETURNING sample_id, content_hash
"""

_GOLDEN = """
SELECT name, version, dataset, tenant_id, frozen_at, frozen_by, manifest_hash, sample_count
FROM golden_datasets
"""


async def freeze(pool: Any, tenant: str, dataset: str, golden: str, *, actor: str) -> GoldenDataset:
    """Freeze one tenant's dataset's accepted samples as the next version of ``golden``.

    One transaction: the samples are copied, the manifest is built from the
    copied rows, then the golden_datasets row closes the set; from then on the
    database refuses any change to it. A golden name belongs to one tenant:
    freezing under another tenant's name is refused.
    """
    dataset = tenant_dataset(tenant, dataset)
    async with pool.acquire() as conn, conn.transaction():
        # Two freezes of one name at once would pick the same version; and a
        # freeze during an erasure (which holds this lock exclusively) could
        # copy a sample the erasure is about to delete.
        await conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext('learnops:erasure'))")
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('golden:' || $1))", golden)
        owner = await conn.fetchval(
            "SELECT tenant_id FROM golden_datasets WHERE name = $1 LIMIT 1", golden
        )
        if owner is not None and owner != tenant:
            twin = " (tenant ids are case-sensitive)" if owner.lower() == tenant.lower() else ""
            raise GoldenError(
                f"golden dataset name {golden} is taken by another tenant{twin}; choose another "
                "name"
            )
        version = int(
            await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM golden_datasets WHERE name = $1", golden
            )
        )
        copied = await conn.fetch(_COPY, golden, version, dataset, tenant)
        if not copied:
            raise GoldenError(await _nothing_to_freeze(conn, tenant, dataset))
        manifest = manifest_of((row["sample_id"], row["content_hash"]) for row in copied)
        row = await conn.fetchrow(
            """
            INSERT INTO golden_datasets
                (name, version, dataset, frozen_by, manifest, manifest_hash, sample_count,
                 tenant_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            RETURNING name, version, dataset, tenant_id, frozen_at, frozen_by, manifest_hash,
                      sample_count
            """,
            golden,
            version,
            dataset,
            actor,
            manifest,
            manifest_hash(manifest),
            len(manifest),
            tenant,
        )
    return GoldenDataset.model_validate(dict(row))


async def _nothing_to_freeze(conn: Any, tenant: str, dataset: str) -> str:
    """Why the tenant's ``dataset`` gave no sample to freeze, and where samples are."""
    reason = f"dataset {dataset} has no accepted sample to freeze"
    suffix = dataset.split(DATASET_SEPARATOR, 1)[1] if DATASET_SEPARATOR in dataset else dataset
    elsewhere = await conn.fetch(
        "SELECT DISTINCT tenant_id FROM dataset_samples WHERE accepted "
        "AND substr(dataset, strpos(dataset, '/') + 1) = $1 AND tenant_id <> $2 "
        "ORDER BY tenant_id",
        suffix,
        tenant,
    )
    if elsewhere:
        tenants = ", ".join(r["tenant_id"] for r in elsewhere)
        return f"{reason} for tenant {tenant}; tenant {tenants} has samples of {suffix} (--tenant)"
    names = [
        r["dataset"]
        for r in await conn.fetch(
            "SELECT DISTINCT dataset FROM dataset_samples WHERE tenant_id = $1 AND accepted",
            tenant,
        )
    ]
    close = difflib.get_close_matches(dataset.lower(), [n.lower() for n in names], n=1)
    if close:
        match = next(n for n in names if n.lower() == close[0])
        return f"{reason}; did you mean {match!r}?"
    return f"{reason} (`learnops dataset list --tenant {tenant}` lists the tenant's datasets)"


async def golden_versions(pool: Any, tenant: str, name: str) -> list[GoldenDataset]:
    """Every frozen version of one of the tenant's golden datasets, oldest first."""
    rows = await pool.fetch(
        _GOLDEN + " WHERE tenant_id = $1 AND name = $2 ORDER BY version", tenant, name
    )
    return [GoldenDataset.model_validate(dict(row)) for row in rows]


async def list_golden(pool: Any, tenant: str | None) -> list[GoldenDataset]:
    """The tenant's golden dataset versions (every tenant's if None), by name and version.

    Names, counts and hashes only: no sample text.
    """
    rows = await pool.fetch(
        _GOLDEN + " WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY name, version", tenant
    )
    return [GoldenDataset.model_validate(dict(row)) for row in rows]


async def golden(
    pool: Any, tenant: str, name: str, version: int | None = None
) -> GoldenDataset | None:
    """One of the tenant's golden datasets' versions (the latest when None), or ``None``."""
    row = await pool.fetchrow(
        _GOLDEN + " WHERE tenant_id = $1 AND name = $2 AND ($3::int IS NULL OR version = $3)"
        " ORDER BY version DESC LIMIT 1",
        tenant,
        name,
        version,
    )
    return None if row is None else GoldenDataset.model_validate(dict(row))


async def verify_golden(
    pool: Any, tenant: str, name: str, version: int | None = None
) -> tuple[GoldenDataset, Verification]:
    """Recompute a tenant's golden dataset's content hashes and manifest hash from its rows."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        frozen = await golden(conn, tenant, name, version)
        if frozen is None:
            shown = name if version is None else f"{name}@{version}"
            raise GoldenError(f"no golden dataset {shown}")
        stored = await conn.fetchrow(
            "SELECT manifest FROM golden_datasets WHERE name = $1 AND version = $2",
            frozen.name,
            frozen.version,
        )
        rows = await conn.fetch(
            "SELECT sample_id, content, content_hash FROM golden_dataset_samples "
            "WHERE golden_name = $1 AND golden_version = $2",
            frozen.name,
            frozen.version,
        )
        erased = await conn.fetch(
            "SELECT sample_id FROM erased_golden_samples "
            "WHERE golden_name = $1 AND golden_version = $2",
            frozen.name,
            frozen.version,
        )
    result = verify(
        stored_manifest=stored["manifest"],
        stored_manifest_hash=frozen.manifest_hash,
        stored_count=frozen.sample_count,
        samples=((r["sample_id"], r["content"], r["content_hash"]) for r in rows),
        erased=frozenset(r["sample_id"] for r in erased),
    )
    return frozen, result


# --- erasure of a subject (migration 022) -------------------------------------------


class Erasure(NamedTuple):
    """What an erasure did (or, on a dry run, would do); never the subject itself."""

    subject_hash: str  # keyed SHA-256 of the normalised subject
    rows: dict[str, int]  # table -> rows erased
    new_versions: dict[str, int]  # golden dataset -> the version made without the subject
    erasure_id: int | None  # the subject_erasures row; None on a dry run


async def erase_subject(
    pool: Any, subject: str, *, reason: str, actor: str, dry_run: bool
) -> Erasure:
    """Erase ``subject`` from every sample and golden dataset, or count it with ``dry_run``.

    One call of learnops_erase_subject(), which only the migrating role may run;
    a dry run's transaction is rolled back, so it leaves nothing behind.
    """
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            raw = await conn.fetchval(
                "SELECT learnops_erase_subject($1, $2, $3, $4)", subject, reason, actor, dry_run
            )
        except BaseException:
            await transaction.rollback()
            raise
        if dry_run:
            await transaction.rollback()
        else:
            await transaction.commit()
    found = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    return Erasure(
        subject_hash=found["subject_hash"],
        rows={table: int(n) for table, n in found["rows"].items()},
        new_versions={name: int(v) for name, v in found["new_versions"].items()},
        erasure_id=found["erasure_id"],
    )


# --- scans and summaries of a simulation (learnops demo curation) ---------------------

#: Every table the curation writes; a PII scan reads every text column of each.
CURATION_TABLES = ("dataset_samples", "golden_datasets", "golden_dataset_samples")


async def text_columns(pool: Any, tables: Sequence[str] = CURATION_TABLES) -> list[tuple[str, str]]:
    """(table, column) of every text, JSON or text-array column of these tables."""
    rows = await pool.fetch(
        """
        SELECT table_name, column_name FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = ANY($1::text[])
          AND (data_type IN ('text', 'character varying', 'json', 'jsonb')
               OR (data_type = 'ARRAY' AND udt_name IN ('_text', '_varchar')))
        ORDER BY table_name, ordinal_position
        """,
        list(tables),
    )
    return [(r["table_name"], r["column_name"]) for r in rows]


async def column_texts(
    pool: Any, table: str, column: str, run_prefix: str | None = None
) -> list[str]:
    """Every non-null value of one column as text (JSON and arrays in their text form).

    With ``run_prefix``, only the rows whose ``run_id`` starts with it (the
    table must have that column).
    """
    # Names come from information_schema (text_columns), quoted as identifiers.
    query = 'SELECT "{c}"::text AS v FROM "{t}" WHERE "{c}" IS NOT NULL'.format(
        c=column.replace('"', '""'), t=table.replace('"', '""')
    )
    if run_prefix is None:
        return [r["v"] for r in await pool.fetch(query)]
    return [r["v"] for r in await pool.fetch(query + " AND starts_with(run_id, $1)", run_prefix)]


async def run_verdicts(pool: Any, run_prefix: str) -> dict[str, dict[str, int]]:
    """Per dataset, samples of runs whose id starts with ``run_prefix`` by verdict.

    The verdict is ``accepted`` or the reject reason without its detail.
    """
    rows = await pool.fetch(
        "SELECT dataset, coalesce(reject_kind, 'accepted') AS verdict, count(*) AS n"
        " FROM dataset_samples WHERE starts_with(run_id, $1)"
        " GROUP BY dataset, verdict ORDER BY dataset, verdict",
        run_prefix,
    )
    found: dict[str, dict[str, int]] = {}
    for r in rows:
        found.setdefault(r["dataset"], {})[r["verdict"]] = int(r["n"])
    return found


async def run_redactions(pool: Any, run_prefix: str) -> dict[str, int]:
    """Redactions by placeholder kind among the samples of these runs."""
    rows = await pool.fetch(
        "SELECT r.key AS kind, sum(r.value::int) AS n"
        " FROM dataset_samples, jsonb_each_text(redactions) AS r"
        " WHERE starts_with(run_id, $1) GROUP BY r.key ORDER BY r.key",
        run_prefix,
    )
    return {r["kind"]: int(r["n"]) for r in rows}


async def count_run_samples(pool: Any, run_prefix: str) -> int:
    """How many samples of runs whose id starts with ``run_prefix`` are stored."""
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM dataset_samples WHERE starts_with(run_id, $1)", run_prefix
        )
    )


async def golden_sets(pool: Any) -> list[tuple[str, int, str]]:
    """Every golden dataset version as (name, version, tenant), for the curator's guard."""
    rows = await pool.fetch("SELECT name, version, tenant_id FROM golden_datasets")
    return [(r["name"], r["version"], r["tenant_id"]) for r in rows]


async def golden_texts(pool: Any, name: str, version: int) -> list[tuple[str, str]]:
    """A golden dataset version's samples as (sample id, redacted content), erased ones left
    out (their content is a tombstone)."""
    rows = await pool.fetch(
        "SELECT s.sample_id, s.content FROM golden_dataset_samples AS s"
        " WHERE s.golden_name = $1 AND s.golden_version = $2 AND NOT EXISTS ("
        "   SELECT 1 FROM erased_golden_samples AS e WHERE e.golden_name = s.golden_name"
        "   AND e.golden_version = s.golden_version AND e.sample_id = s.sample_id)"
        " ORDER BY s.sample_id",
        name,
        version,
    )
    return [(r["sample_id"], r["content"]) for r in rows]


#: What `learnops dataset export` writes of each sample: everything a training job needs to
#: trace it back (never a bundle's unredacted text: dataset_samples holds none).
EXPORT_COLUMNS = (
    "sample_id, tenant_id, dataset, doer, phase, run_id, policy_id, policy_version, model, "
    "artifact_id, kind, origin, content, content_hash, redactions, labels, accepted, "
    "reject_reason, near_duplicate_of, self_loop_of, diversity, run_occurred_at, curated_at, "
    "created_at"
)
_GOLDEN_EXPORT = (
    "sample_id, doer, run_id, artifact_id, kind, origin, content, content_hash, redactions, labels"
)


async def export_samples(
    conn: Any,
    tenant: str,
    dataset: str,
    *,
    accepted_only: bool,
    since: datetime | None,
    golden: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    """The tenant's dataset's samples, in the order they were stored, streamed from a cursor.

    ``conn`` must be in a transaction (a cursor lives in one); ``since`` keeps
    samples stored at or after it. Samples frozen into one of the tenant's golden
    datasets (evaluation data: the same content hash) are left out unless
    ``golden``: the samples a freeze copies stay accepted in their dataset.
    """
    query = (
        f"SELECT {EXPORT_COLUMNS} FROM dataset_samples AS d WHERE tenant_id = $1"
        " AND dataset = $2 AND (NOT $3 OR accepted)"
        " AND ($4::timestamptz IS NULL OR created_at >= $4)"
        " AND ($5 OR NOT EXISTS (SELECT 1 FROM golden_dataset_samples AS g"
        "   JOIN golden_datasets AS v ON v.name = g.golden_name AND v.version = g.golden_version"
        "   WHERE v.tenant_id = d.tenant_id AND g.content_hash = d.content_hash))"
        " ORDER BY created_at, sample_id"
    )
    rows = conn.cursor(query, tenant, tenant_dataset(tenant, dataset), accepted_only, since, golden)
    async for row in rows:
        yield dict(row)


async def export_golden(conn: Any, name: str, version: int) -> AsyncIterator[dict[str, Any]]:
    """A golden dataset version's samples, by sample id, streamed (``conn`` in a transaction)."""
    query = (
        f"SELECT {_GOLDEN_EXPORT} FROM golden_dataset_samples"
        " WHERE golden_name = $1 AND golden_version = $2 ORDER BY sample_id"
    )
    async for row in conn.cursor(query, name, version):
        yield dict(row)
