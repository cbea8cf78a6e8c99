"""`learnops dataset erase` on real PostgreSQL: a subject leaves samples and golden datasets."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from agents.topics import TEXT_TOPICS
from learning.curation import content_hash
from storage import datasets as store
from storage import experiments
from tests.integration.test_policy_store import bootstrap, trusted_key
from tests.services import run_learnops

_INSERT = """
INSERT INTO dataset_samples (
    sample_id, event_id, dataset, doer, run_id, phase, policy_id, policy_version, artifact_id,
    kind, origin, content, content_hash, labels, accepted, curated_at, tenant_id
) VALUES ($1, $2, $3, $4, $5, 'prd', 'p', 1, $6, 'prd', 'human', $7, $8, '{}', true, now(), 'acme')
"""


async def _seed(db: Any, texts: list[str], doer: str | None = None) -> tuple[str, str, list[str]]:
    """A dataset of ``texts`` frozen as a golden dataset: (dataset, golden, sample ids)."""
    tag = uuid.uuid4().hex[:10]
    doer = doer or f"Erase{tag}"
    dataset, golden = f"acme/{doer}/prd", f"erase-{tag}"
    ids = []
    for n, text in enumerate(texts):
        sample = f"{tag}-{n}"
        ids.append(sample)
        await db.execute(
            _INSERT, sample, uuid.uuid4(), dataset, doer, f"run-{sample}", f"a{n}", text,
            content_hash(text),
        )  # fmt: skip
    await store.freeze(db, "acme", dataset, golden, actor="tests")
    return dataset, golden, ids


def _texts(subject: str) -> list[str]:
    return [
        f"Ticket from {subject.upper()} asks for a refund",
        f"escalated by {subject} again",
        "Ticket from bob_other asks for an invoice",
    ]


async def _erase(settings_env: dict[str, str], subject: str, *more: str) -> dict[str, Any]:
    done = run_learnops(
        settings_env, "dataset", "erase", "--subject", subject, "--actor", "dpo", "--json", *more
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


async def test_erase_removes_the_subject_everywhere_and_keeps_the_others(
    db: Any, settings_env: dict[str, str], topics: Any
) -> None:
    subject = f"alice_{uuid.uuid4().hex[:8]}"
    doer = f"Erase{uuid.uuid4().hex[:8]}"
    await bootstrap(db, doer, await trusted_key(db), versions=1)
    dataset, golden, ids = await _seed(db, _texts(subject), doer)
    # A replay of the golden dataset: its tasks' inputs are the samples' text.
    frozen = await experiments.find_golden(db, golden)
    assert frozen is not None
    replay = await experiments.start_replay(
        db,
        policy=await experiments.find_policy_row(db, doer.lower(), 1),
        golden=frozen,
        seeds=[1, 2],
        requested_by=uuid.uuid4(),
        actor="tests",
        timeout_s=600,
        force=False,
    )

    result = await _erase(settings_env, f"  {subject.title()} ", "--reason", "request 42")
    erased_at = datetime.now(UTC)

    # Kafka cannot be edited: the command says by when each text topic's copies age out,
    # from the cluster's own configs (topics.yaml: retention, and a segment a day).
    assert result["kafka_error"] is None
    kafka = {copy["topic"]: copy for copy in result["kafka"]}
    assert set(kafka) == set(TEXT_TOPICS)
    day = 86_400_000
    for topic, days in {"learning.run-completed": 7, "learning.dlq": 30}.items():
        copy = kafka[topic]
        assert copy["exists"] and not copy["assumed_kafka_default"], copy
        assert (copy["retention_ms"], copy["segment_ms"]) == (days * day, day)
        gone_by = datetime.fromisoformat(copy["gone_by"])
        assert abs(gone_by - (erased_at + timedelta(days=days + 1))) < timedelta(minutes=5)

    assert result["rows"] == {
        "blobs": 2,
        "offline_replay_tasks": 4,
        "dataset_samples": 2,
        "golden_dataset_samples": 2,
        "golden_datasets": 1,
    }
    assert result["new_versions"] == {golden: 2}
    needle = f"%{subject}%"
    for table in ("dataset_samples", "golden_dataset_samples"):
        left = await db.fetchval(
            f"SELECT count(*) FROM {table} WHERE content ILIKE $1 OR labels::text ILIKE $1", needle
        )
        assert left == 0, f"{table} still holds the subject"
    tasks = await db.fetch(
        "SELECT t.sample_id, convert_from(b.content, 'UTF8') AS input FROM offline_replay_tasks t "
        "JOIN blobs b ON b.sha256 = t.input_hash WHERE t.replay_id = $1 ORDER BY t.sample_id",
        replay.replay_id,
    )
    assert sorted({(t["sample_id"], t["input"]) for t in tasks}) == [
        (ids[0], "[ERASED]"),
        (ids[1], "[ERASED]"),
        (ids[2], _texts(subject)[2]),
    ]
    assert not await db.fetchval(
        "SELECT count(*) FROM blobs WHERE convert_from(content, 'UTF8') ILIKE $1 "
        "AND media_type = 'text/plain'",
        needle,
    )
    # The other person's sample stays: in the dataset and in both golden versions.
    assert (
        await db.fetchval("SELECT count(*) FROM dataset_samples WHERE dataset = $1", dataset) == 1
    )
    kept = await db.fetch(
        "SELECT golden_version, sample_id, content FROM golden_dataset_samples "
        "WHERE golden_name = $1 ORDER BY golden_version, sample_id",
        golden,
    )
    assert [(r["golden_version"], r["sample_id"], r["content"]) for r in kept] == [
        (1, ids[0], "[ERASED]"),
        (1, ids[1], "[ERASED]"),
        (1, ids[2], _texts(subject)[2]),
        (2, ids[2], _texts(subject)[2]),
    ]
    # The new version is a manifest of its own that verifies; the old one keeps
    # its manifest and verifies with its tombstones.
    new, checked = await store.verify_golden(db, "acme", golden, 2)
    assert checked.ok, checked.problems
    assert (new.sample_count, new.frozen_by) == (1, "dpo")
    old, checked_old = await store.verify_golden(db, "acme", golden, 1)
    assert checked_old.ok and checked_old.erased == 2, checked_old.problems
    assert old.sample_count == 3
    for args in ((f"{golden}@1", "--tenant", "acme"), (f"acme/{golden}@1",)):
        shown = run_learnops(settings_env, "dataset", "verify", *args)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert f"ok: {golden}@1: 3 samples (2 erased)" in shown.stdout
        # `show` takes a golden dataset's name the same ways.
        described = run_learnops(settings_env, "dataset", "show", *args)
        assert described.returncode == 0, described.stdout + described.stderr
        assert f"golden             {golden}@1" in described.stdout
    # The audit row: counts, actor, reason, and the subject only as a hash.
    audit = await db.fetchrow("SELECT * FROM subject_erasures WHERE id = $1", result["erasure_id"])
    assert (audit["actor"], audit["reason"]) == ("dpo", "request 42")
    assert audit["row_counts"] == result["rows"]
    assert audit["subject_hash"] == result["subject_hash"]
    # The hash is HMAC-SHA256 of the normalised subject under the private key.
    key = await db.fetchval("SELECT key FROM learnops_private.erasure_key")
    expected = hmac.new(key, subject.encode(), hashlib.sha256).hexdigest()
    assert audit["subject_hash"] == expected
    assert subject not in orjson.dumps(dict(audit), default=str).decode().lower()
    # Erasing again finds nothing and makes no version; the hash is the same.
    again = await _erase(settings_env, subject)
    assert again["rows"]["golden_dataset_samples"] == 0 and again["new_versions"] == {}
    assert again["subject_hash"] == result["subject_hash"]


async def test_a_dry_run_prints_the_counts_and_changes_nothing(
    db: Any, settings_env: dict[str, str]
) -> None:
    subject = f"carol_{uuid.uuid4().hex[:8]}"
    dataset, golden, _ = await _seed(db, _texts(subject))
    erasures = await db.fetchval("SELECT count(*) FROM subject_erasures")

    done = run_learnops(settings_env, "dataset", "erase", "--subject", subject, "--dry-run")

    assert done.returncode == 0, done.stderr
    assert (
        "would erase: blobs=0, dataset_samples=2, golden_dataset_samples=2, golden_datasets=1, "
        "offline_replay_tasks=0" in done.stdout
    )
    assert f"{golden}@2" in done.stdout
    assert (
        await db.fetchval("SELECT count(*) FROM dataset_samples WHERE dataset = $1", dataset) == 3
    )
    assert [g.version for g in await store.golden_versions(db, "acme", golden)] == [1]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM golden_dataset_samples "
            "WHERE golden_name = $1 AND content ILIKE $2",
            golden,
            f"%{subject}%",
        )
        == 2
    )
    assert await db.fetchval("SELECT count(*) FROM subject_erasures") == erasures


async def test_a_subject_too_short_to_be_a_person_is_refused(
    settings_env: dict[str, str],
) -> None:
    done = run_learnops(settings_env, "dataset", "erase", "--subject", " a ")
    assert done.returncode == 1
    assert "at least 3 characters" in done.stderr


async def test_the_frozen_rows_change_only_through_the_erasure_function(
    db: Any, role_urls: dict[str, str]
) -> None:
    subject = f"dave_{uuid.uuid4().hex[:8]}"
    _, golden, _ = await _seed(db, _texts(subject))
    # The owner, outside the function, is refused as before.
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="frozen"):
        await db.execute(
            "UPDATE golden_dataset_samples SET content = '[ERASED]', labels = '{}', "
            "redactions = '{}' WHERE golden_name = $1",
            golden,
        )
    assert "worker" in role_urls, "the tests need scripts/postgres.sh's learnops_worker login"
    worker = await asyncpg.connect(role_urls["worker"])
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await worker.fetchval(
                "SELECT learnops_erase_subject($1, 'r', 'worker', false)", subject
            )
        # Setting the erasure's flag by hand does not make the worker the owner.
        async with worker.transaction():
            await worker.execute("SELECT set_config('learnops.erasing', 'on', true)")
            with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="frozen"):
                await worker.execute(
                    "UPDATE golden_dataset_samples SET content = '[ERASED]', labels = '{}', "
                    "redactions = '{}' WHERE golden_name = $1",
                    golden,
                )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await worker.execute(
                "INSERT INTO subject_erasures (subject_hash, actor, reason, row_counts, "
                "new_versions) VALUES (repeat('0', 64), 'worker', '', '{}', '{}')"
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await worker.fetchval("SELECT key FROM learnops_private.erasure_key")
    finally:
        await worker.close()
