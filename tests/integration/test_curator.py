"""The curator and dataset stages through a real worker process, real Kafka and real PostgreSQL.

Bundles from the simulated orchestrator carry human notes with PII in them,
exact and near duplicates of earlier notes, and copies of our own documents;
some are redelivered, some are malformed, one reuses an artifact id for other
content. What the worker stores and emits must be exactly what the pure
curation (learning.samples) gives for the same bundles, with no planted PII
value anywhere in PostgreSQL or on learning.samples; the contaminated dataset
raises one alert; the guard's state survives a restart of the worker; a frozen
golden dataset verifies and refuses any later change.

The module uses the session worker (restarted by one test). It used to start a
worker of its own beside it, so every bundle here was curated twice, by two
consumer groups, which cost the run a worker start and the CPU of the second.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agents.topics import read_from_start
from learning.contamination import reason_kind
from learning.samples import CurationConfig, DoerCuration
from learnops.simulation.orchestrator import NoteMix, Orchestrator, bad_inputs
from models.events import Alert, DeadLetter, RunCompleted, SampleCurated
from models.ids import sample_id
from tests.integration.kafka_io import eventually, publish
from tests.services import (
    REPO,
    WorkerProcess,
    run_learnops,
)

TOPIC = "learning.run-completed"
START = datetime(2026, 11, 3, 9, tzinfo=UTC)
# Heavy trouble for the first doer's one dataset: about 35 % of its samples are
# contaminated, above the default alert rule (20 % after 200 samples).
HEAVY = NoteMix(pii=0.9, duplicate=0.3, near_duplicate=0.2, self_loop=0.2)
CURATION_TABLES = ("dataset_samples", "golden_datasets", "golden_dataset_samples")


def _config() -> CurationConfig:
    from agents.config import load_learning_config

    return load_learning_config(REPO / "config" / "learning.yaml").curation


def _note(bundle: RunCompleted, content: str, run_id: str) -> RunCompleted:
    """The bundle as another run, its human note replaced by ``content``."""
    artifacts = [
        a.model_copy(update={"artifact_id": f"{run_id}-{i}"})
        for i, a in enumerate(bundle.artifacts)
    ]
    artifacts[-1] = artifacts[-1].model_copy(update={"content": content})
    return bundle.model_copy(
        update={
            "event_id": uuid.uuid5(uuid.NAMESPACE_URL, f"learnops-test:{run_id}"),
            "run_id": run_id,
            "artifacts": artifacts,
        }
    )


class Expected:
    """The pure curation of the bundles, in each doer's order: what the worker must reach."""

    def __init__(self, config: CurationConfig) -> None:
        self.config = config
        self.doers: dict[str, DoerCuration] = {}
        self.samples: dict[str, SampleCurated] = {}
        self.alerts: list[Alert] = []

    def curate(self, bundles: list[RunCompleted]) -> None:
        for bundle in bundles:
            state = self.doers.setdefault(bundle.doer, DoerCuration(bundle.doer, self.config))
            for curated in state.curate(bundle, now=START).samples:
                self.samples[curated.event.sample_id] = curated.event
                if curated.alert is not None:
                    self.alerts.append(curated.alert)


@pytest.fixture(scope="module")
async def curator_worker(worker: WorkerProcess) -> WorkerProcess:
    """The session worker, whose curator and datasets stages this module checks."""
    return worker


@pytest.fixture(scope="module")
async def published(producer: Any, curator_worker: WorkerProcess) -> dict[str, Any]:
    """Publish the scenario once: notes with PII and trouble, redeliveries, bad input."""
    tag = uuid.uuid4().hex[:8]
    heavy, light = f"Cur{tag}H", f"Cur{tag}L"
    orchestrator = Orchestrator(seed=20261103, doers=(heavy, light), run_prefix=f"cur-{tag}")
    good: list[RunCompleted] = []
    for k in range(160):
        good.append(
            orchestrator.bundle(
                heavy, occurred_at=START + timedelta(seconds=k), phase="draft", notes=HEAVY
            )
        )
        if k % 2 == 0:
            good.append(
                orchestrator.bundle(
                    light, occurred_at=START + timedelta(seconds=k), notes=NoteMix()
                )
            )
    expected = Expected(_config())
    expected.curate(good)

    messages = [(b.doer.encode(), b.to_json()) for b in good]
    # Redeliveries, byte for byte, each after its original (same doer, same partition).
    redelivered = good[5::12]
    for b in redelivered:
        messages.append((b.doer.encode(), b.to_json()))
    bad = [b for b in bad_inputs(orchestrator, 8) if b.fault in ("json", "schema")]
    for item in bad:
        messages.append((heavy.encode(), item.value))
    # The first note of the light doer again, under its run and artifact ids, other text.
    original = next(b for b in good if b.doer == light)
    reused = original.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "artifacts": [
                *original.artifacts[:-1],
                original.artifacts[-1].model_copy(update={"content": "Other words entirely."}),
            ],
        }
    )
    messages.append((light.encode(), reused.to_json()))
    metadata = await publish(producer, TOPIC, messages)
    at = {
        value: (m.topic, m.partition, m.offset)
        for (_, value), m in zip(messages, metadata, strict=True)
    }
    return {
        "heavy": heavy,
        "light": light,
        "doers": [heavy, light],
        "orchestrator": orchestrator,
        "good": good,
        "expected": expected,
        "bad": {at[item.value]: item.value for item in bad},
        "reused": (at[reused.to_json()], reused.to_json()),
    }


async def _rows(db: Any, doers: list[str]) -> list[Any]:
    return list(
        await db.fetch(
            "SELECT * FROM dataset_samples WHERE doer = ANY($1::text[]) ORDER BY sample_id", doers
        )
    )


async def _stored(published: dict[str, Any], db: Any, count: int | None = None) -> list[Any]:
    want = count if count is not None else len(published["expected"].samples)
    rows = await eventually(
        lambda: _rows(db, published["doers"]), lambda rs: len(rs) >= want, timeout=180
    )
    assert len(rows) == want, f"{len(rows)} samples stored, {want} expected"
    return rows


async def _sample_messages(settings: Any, doers: list[str]) -> list[SampleCurated]:
    records = await read_from_start(settings, "learning.samples", timeout=30)
    keys = {d.encode() for d in doers}
    return [SampleCurated.from_json(r.value) for r in records if r.key in keys]


async def test_each_artifact_gives_one_row_with_the_verdict_the_pure_curation_gives(
    published: dict[str, Any], db: Any
) -> None:
    expected: Expected = published["expected"]
    rows = await _stored(published, db)
    by_id = {r["sample_id"]: r for r in rows}
    assert set(by_id) == set(expected.samples), "one row per artifact with content, no more"
    for sid, want in expected.samples.items():
        row = by_id[sid]
        assert (row["accepted"], row["reject_reason"]) == (want.accepted, want.reject_reason)
        assert row["content"] == want.content
        assert row["content_hash"] == want.content_hash
        assert row["dataset"] == want.dataset
        assert row["labels"] == want.labels.model_dump(mode="json")  # type: ignore[union-attr]
        assert row["redactions"] == want.redactions
        assert row["run_id"] == want.run_id and row["source_event_id"] == want.source_event_id
    # Exact dedup across the dataset: one accepted row per dataset and content hash.
    accepted = Counter((r["dataset"], r["content_hash"]) for r in rows if r["accepted"])
    assert max(accepted.values()) == 1


async def test_planted_duplicates_near_duplicates_and_self_loops_are_rejects_with_reasons(
    published: dict[str, Any], db: Any
) -> None:
    orchestrator: Orchestrator = published["orchestrator"]
    rows = await _stored(published, db)
    by_id = {r["sample_id"]: r for r in rows}
    seen: Counter[tuple[str, str]] = Counter()
    for bundle in published["good"]:
        note = bundle.artifacts[-1]
        planted = orchestrator.planted[note.artifact_id]
        row = by_id[sample_id(bundle.tenant_id, bundle.doer, bundle.run_id, note.artifact_id)]
        verdict = "accepted" if row["accepted"] else reason_kind(row["reject_reason"])
        assert verdict == ("accepted" if planted.kind == "fresh" else planted.kind), planted
        seen[(planted.kind, verdict)] += 1
        if planted.kind == "exact_duplicate":
            assert planted.source is not None
            assert (
                sample_id(bundle.tenant_id, bundle.doer, *planted.source)
                in row["near_duplicate_of"]
            )
        if planted.kind == "self_loop":
            assert planted.source is not None
            assert row["self_loop_of"] == sample_id(bundle.tenant_id, bundle.doer, *planted.source)
    for kind in ("exact_duplicate", "near_duplicate", "self_loop"):
        assert seen[(kind, kind)] >= 5, seen
    rejects = [r for r in rows if not r["accepted"]]
    assert rejects and all(r["reject_reason"] for r in rejects)


async def test_dataset_statistics_give_clean_rate_and_rejects_by_reason(
    published: dict[str, Any], db: Any
) -> None:
    expected: Expected = published["expected"]
    await _stored(published, db)
    stats = {
        r["dataset"]: r
        for r in await db.fetch(
            "SELECT * FROM v_dataset_stats WHERE doer = ANY($1::text[])", published["doers"]
        )
    }
    want: dict[str, Counter[str]] = {}
    for sample in expected.samples.values():
        assert sample.dataset is not None
        counts = want.setdefault(sample.dataset, Counter())
        counts["checked"] += 1
        counts[reason_kind(sample.reject_reason) if sample.reject_reason else "accepted"] += 1
    assert set(stats) == set(want)
    for dataset, counts in want.items():
        row = stats[dataset]
        assert row["checked"] == counts["checked"] and row["accepted"] == counts["accepted"]
        assert row["clean_rate"] == pytest.approx(counts["accepted"] / counts["checked"])
        rejected = {k: v for k, v in counts.items() if k not in ("checked", "accepted")}
        assert row["rejected"] == rejected
    heavy = stats[f"acme/{published['heavy']}/draft"]
    assert heavy["contamination_rate"] > 0.2 and heavy["checked"] >= 200


async def test_the_contaminated_dataset_raises_one_contamination_alert(
    published: dict[str, Any], settings: Any, db: Any
) -> None:
    expected: Expected = published["expected"]
    assert [a.evidence["dataset"] for a in expected.alerts] == [f"acme/{published['heavy']}/draft"]
    await _stored(published, db)

    async def alerts() -> list[Alert]:
        records = await read_from_start(settings, "learning.alerts", timeout=30)
        found = [Alert.from_json(r.value) for r in records]
        return [a for a in found if a.doer in published["doers"] and a.kind == "contamination"]

    found = await eventually(alerts, lambda a: len(a) >= 1, timeout=60)
    # A second worker (the session's) would send the same alert, with the same event id.
    assert {a.event_id for a in found} == {expected.alerts[0].event_id}
    alert = found[0]
    assert alert.doer == published["heavy"] and alert.phase == "draft"
    assert alert.value is not None and alert.threshold is not None
    assert alert.value > alert.threshold == 0.2
    checked = alert.evidence["checked"]
    assert isinstance(checked, int) and checked >= 200
    assert alert.evidence["rejected"] == expected.alerts[0].evidence["rejected"]


async def test_bad_input_is_dead_lettered_once_and_a_reused_artifact_id_by_the_curator(
    published: dict[str, Any], settings: Any, db: Any, curator_worker: WorkerProcess
) -> None:
    await _stored(published, db)
    reused_at, reused_value = published["reused"]
    wanted = set(published["bad"]) | {reused_at}

    async def letters() -> list[DeadLetter]:
        records = await read_from_start(settings, "learning.dlq", timeout=30)
        found = [DeadLetter.from_json(r.value) for r in records]
        return [
            d
            for d in found
            if (d.topic, d.partition, d.offset) in wanted and d.consumer == curator_worker.app_id
        ]

    found = await eventually(letters, lambda ds: len(ds) >= len(wanted), timeout=90)
    assert len(found) == len(wanted), "one letter per bad event, not one per stage"
    by_position = {(d.topic, d.partition, d.offset): d for d in found}
    for position, value in published["bad"].items():
        assert by_position[position].stage == "crl"
        assert by_position[position].value == value
    letter = by_position[reused_at]
    assert (letter.stage, letter.error_type) == ("curator", "curation")
    assert "artifact ids must not be reused" in letter.reason
    assert letter.value == reused_value
    # The first content of that artifact is what stays stored.
    light = next(b for b in published["good"] if b.doer == published["light"])
    note = light.artifacts[-1]
    row = await db.fetchrow(
        "SELECT content FROM dataset_samples WHERE sample_id = $1",
        sample_id(light.tenant_id, light.doer, light.run_id, note.artifact_id),
    )
    assert row["content"] != "Other words entirely."


async def test_golden_dataset_freezes_verifies_and_refuses_any_later_change(
    published: dict[str, Any], db: Any, settings_env: dict[str, str]
) -> None:
    await _stored(published, db)

    async def dataset_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            run_learnops, settings_env, "dataset", *args, "--tenant", "acme"
        )

    dataset = f"acme/{published['heavy']}/draft"
    golden = f"golden-{published['heavy'].lower()}"
    accepted = await db.fetchval(
        "SELECT count(*) FROM dataset_samples WHERE dataset = $1 AND accepted", dataset
    )

    frozen = await dataset_cli("freeze", dataset, "--as", golden, "--actor", "tester")
    assert frozen.returncode == 0, frozen.stderr
    assert f"froze {accepted} samples of {dataset} as {golden}@1" in frozen.stdout
    shown = await dataset_cli("show", golden)
    assert shown.returncode == 0, shown.stderr
    assert f"golden             {golden}@1" in shown.stdout
    assert f"samples          {accepted}" in shown.stdout
    stats = await dataset_cli("show", dataset)
    assert "rejects by reason  " in stats.stdout and "self_loop=" in stats.stdout
    verified = await dataset_cli("verify", golden)
    assert verified.returncode == 0, verified.stderr
    assert f"ok: {golden}@1: {accepted} samples" in verified.stdout

    one = await db.fetchval(
        "SELECT sample_id FROM golden_dataset_samples WHERE golden_name = $1 LIMIT 1", golden
    )
    refusals = (
        ("UPDATE golden_dataset_samples SET content = 'x' WHERE golden_name = $1", golden),
        ("DELETE FROM golden_dataset_samples WHERE golden_name = $1", golden),
        ("UPDATE golden_datasets SET sample_count = 0 WHERE name = $1", golden),
        ("DELETE FROM golden_datasets WHERE name = $1", golden),
        (
            "INSERT INTO golden_dataset_samples (golden_name, golden_version, sample_id, doer,"
            " run_id, artifact_id, kind, origin, content, content_hash, redactions, labels)"
            " SELECT golden_name, golden_version, sample_id || '-x', doer, run_id, artifact_id,"
            " kind, origin, content, content_hash, redactions, labels"
            " FROM golden_dataset_samples WHERE golden_name = $1 LIMIT 1",
            golden,
        ),
    )
    for statement, arg in refusals:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="frozen"):
            await db.execute(statement, arg)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM golden_dataset_samples WHERE golden_name = $1", golden
        )
        == accepted
    )

    # Past the database's refusal (an owner disabling its triggers), verify still notices.
    async def tamper(content: str | None) -> str:
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("ALTER TABLE golden_dataset_samples DISABLE TRIGGER USER")
            before = await conn.fetchval(
                "SELECT content FROM golden_dataset_samples WHERE golden_name = $1"
                " AND sample_id = $2",
                golden,
                one,
            )
            await conn.execute(
                "UPDATE golden_dataset_samples SET content = coalesce($3, content || ' edited')"
                " WHERE golden_name = $1 AND sample_id = $2",
                golden,
                one,
                content,
            )
            await conn.execute("ALTER TABLE golden_dataset_samples ENABLE TRIGGER USER")
        return str(before)

    original = await tamper(None)
    try:
        broken = await dataset_cli("verify", golden)
        assert broken.returncode == 1
        assert f"MISMATCH sample {one}: content hashes to" in broken.stdout
    finally:
        await tamper(original)
    again = await dataset_cli("verify", f"{golden}@1")
    assert again.returncode == 0, again.stdout + again.stderr

    second = await dataset_cli("freeze", dataset, "--as", golden, "--actor", "tester")
    assert second.returncode == 0 and f"as {golden}@2" in second.stdout
    assert f"note: the same samples as {golden}@1" in second.stderr, second.stderr
    misnamed = await dataset_cli("freeze", dataset, "--as", "bad name!")
    assert misnamed.returncode == 2 and "a golden dataset's name has" in misnamed.stderr
    assert "Traceback" not in misnamed.stderr
    missing = await dataset_cli("freeze", "NoSuchDoer/draft", "--as", golden)
    assert missing.returncode == 1 and "no accepted sample" in missing.stderr
    # A typo gets a suggestion; another tenant's dataset names that tenant.
    doer, phase = dataset.split("/")[-2:]
    typo = await dataset_cli("freeze", f"{doer[:-1]}/{phase}", "--as", golden)
    assert typo.returncode == 1 and "did you mean" in typo.stderr, typo.stderr
    elsewhere = await asyncio.to_thread(
        run_learnops,
        settings_env,
        *("dataset", "freeze", f"{doer}/{phase}", "--as", "golden-x", "--tenant", "nobody"),
    )
    assert elsewhere.returncode == 1, elsewhere.stdout
    assert f"has samples of {doer}/{phase} (--tenant)" in elsewhere.stderr, elsewhere.stderr


async def test_a_dataset_and_a_golden_version_export_as_json_lines(
    published: dict[str, Any], db: Any, settings_env: dict[str, str], tmp_path: Path
) -> None:
    """A new operator found no way to get the curated samples out but `dataset samples
    --limit 100000 --json` (latest first, no phase, model or policy version)."""
    await _stored(published, db)
    dataset = f"acme/{published['heavy']}/draft"
    counts = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE accepted) AS accepted, count(*) AS every"
        " FROM dataset_samples WHERE dataset = $1",
        dataset,
    )
    out = tmp_path / "samples.jsonl"

    async def export(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_learnops, settings_env, "dataset", "export", *args)

    # Evaluation data stays out of training data: what a freeze copied is left out (a test
    # above froze this dataset), unless asked for.
    frozen_hashes = await db.fetchval(
        "SELECT count(*) FROM dataset_samples AS d WHERE dataset = $1 AND accepted AND EXISTS"
        " (SELECT 1 FROM golden_dataset_samples AS g JOIN golden_datasets AS v"
        "  ON v.name = g.golden_name AND v.version = g.golden_version"
        "  WHERE v.tenant_id = 'acme' AND g.content_hash = d.content_hash)",
        dataset,
    )
    done = await export(dataset, "--out", str(out), "--include-golden")
    assert done.returncode == 0, done.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == counts["accepted"] > 0
    rows = [json.loads(line) for line in lines]
    assert all(r["accepted"] and r["dataset"] == dataset and r["phase"] == "draft" for r in rows)
    assert {"content", "labels", "redactions", "policy_version", "model", "run_id"} <= set(rows[0])
    stamps = [r["created_at"] for r in rows]
    assert stamps == sorted(stamps)  # in the order they were stored
    training = await export(dataset)
    assert training.returncode == 0, training.stderr
    assert len(training.stdout.splitlines()) == counts["accepted"] - frozen_hashes
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    said = f"exported {len(lines)} accepted samples of {dataset} to {out} (JSON Lines, sha256 "
    assert said + digest in done.stderr, done.stderr
    every = await export(dataset, "--include-rejected", "--include-golden")  # to stdout
    assert every.returncode == 0, every.stderr
    assert len(every.stdout.splitlines()) == counts["every"]
    golden = f"export-{published['heavy'].lower()}"
    frozen = await asyncio.to_thread(
        run_learnops, settings_env, "dataset", "freeze", dataset, "--as", golden
    )
    assert frozen.returncode == 0, frozen.stderr
    version = await export(f"acme/{golden}@1")
    assert version.returncode == 0, version.stderr
    golden_ids = {json.loads(line)["sample_id"] for line in version.stdout.splitlines()}
    assert golden_ids == {r["sample_id"] for r in rows}
    after = await export(dataset)  # every accepted sample is in a golden version now
    assert after.returncode == 0 and after.stdout == "", after.stdout[:300]
    assert f"exported 0 accepted samples of {dataset}" in after.stderr
    missing = await export("acme/NoSuchDoer/draft")
    assert missing.returncode == 1 and "no such dataset" in missing.stderr, missing.stderr
    # A golden dataset's name where a dataset's goes: said what it is, not "did you mean" it.
    named = await asyncio.to_thread(
        run_learnops, settings_env, "dataset", "samples", golden, "--tenant", "acme"
    )
    assert named.returncode == 1, named.stdout
    assert f"'{golden}' is a golden dataset of tenant acme, not a dataset" in named.stderr
    assert f"learnops dataset export acme/{golden}@1" in named.stderr


async def test_a_dead_lettered_bundle_leaves_the_doers_guard_state_intact(
    published: dict[str, Any],
    db: Any,
    settings: Any,
    producer: Any,
    curator_worker: WorkerProcess,
) -> None:
    reused_at, _ = published["reused"]

    async def letter() -> list[DeadLetter]:
        records = await read_from_start(settings, "learning.dlq", timeout=30)
        found = [DeadLetter.from_json(r.value) for r in records]
        return [d for d in found if (d.topic, d.partition, d.offset) == reused_at]

    assert await eventually(letter, bool, timeout=90), "the reused artifact id was dead-lettered"
    await _copies_are_caught(published, db, settings, producer, curator_worker, "after-dlq")


async def test_the_guard_state_survives_a_restart_of_the_worker(
    published: dict[str, Any],
    db: Any,
    settings: Any,
    producer: Any,
    curator_worker: WorkerProcess,
) -> None:
    await _stored(published, db)
    await asyncio.to_thread(curator_worker.stop)
    await asyncio.to_thread(curator_worker.start)
    # The new process knows nothing until it restores the doer from the tables.
    await _copies_are_caught(published, db, settings, producer, curator_worker, "restart")


async def _copies_are_caught(
    published: dict[str, Any],
    db: Any,
    settings: Any,
    producer: Any,
    worker: WorkerProcess,
    label: str,
) -> None:
    """Copies of an accepted note and of our document, sent now, are rejected as before."""
    expected: Expected = published["expected"]
    light = published["light"]
    # An accepted human note of the light doer from the scenario, and one of our documents.
    mine = [b for b in published["good"] if b.doer == light]
    accepted = next(
        b
        for b in mine
        if expected.samples[
            sample_id(b.tenant_id, light, b.run_id, b.artifacts[-1].artifact_id)
        ].accepted
        and published["orchestrator"].planted[b.artifacts[-1].artifact_id].kind == "fresh"
    )
    note = expected.samples[
        sample_id(accepted.tenant_id, light, accepted.run_id, accepted.artifacts[-1].artifact_id)
    ]
    assert note.content is not None
    words = note.content.split(" ")
    ours = accepted.artifacts[0].content
    assert ours is not None
    tag = f"{published['orchestrator'].run_prefix}-{label}"
    later = [
        _note(accepted, note.content, f"{tag}-again-exact"),
        _note(accepted, " ".join([*words[:3], "honestly", *words[3:]]), f"{tag}-again-near"),
        _note(accepted, ours.upper(), f"{tag}-again-ours"),
    ]
    before = len(expected.samples)
    assert before == len(await _rows(db, published["doers"]))
    expected.curate(later)
    await publish(producer, TOPIC, [(b.doer.encode(), b.to_json()) for b in later])
    new_ids = {
        sample_id(b.tenant_id, b.doer, b.run_id, a.artifact_id): b.run_id
        for b in later
        for a in b.artifacts
        if a.content
    }

    async def mine_after() -> dict[str, SampleCurated]:
        found = await _sample_messages(settings, [light])
        return {
            s.sample_id: s for s in found if s.sample_id in new_ids and s.curator == worker.app_id
        }

    found = await eventually(mine_after, lambda f: len(f) >= len(new_ids), timeout=90)
    assert set(found) == set(new_ids)
    for sid, sample in found.items():
        assert sample.reject_reason == expected.samples[sid].reject_reason, sample.run_id
    verdicts = {
        new_ids[sid]: reason_kind(s.reject_reason or "accepted")
        for sid, s in found.items()
        if s.kind == "note"
    }
    assert verdicts == {
        f"{tag}-again-exact": "exact_duplicate",
        f"{tag}-again-near": "near_duplicate",
        f"{tag}-again-ours": "self_loop",
    }
    await _stored(published, db, before + len(new_ids))


_SEPARATORS = re.compile(r"[\s.\-()]")


async def test_no_stored_row_and_no_sample_message_holds_a_planted_pii_value(
    published: dict[str, Any], db: Any, settings: Any
) -> None:
    orchestrator: Orchestrator = published["orchestrator"]
    planted = {value for p in orchestrator.planted.values() for _, value in p.pii}
    kinds = {kind for p in orchestrator.planted.values() for kind, _ in p.pii}
    assert len(planted) > 100 and {"EMAIL", "PHONE", "CARD", "IBAN", "SSN"} <= kinds
    raw = b"".join(b.to_json() for b in published["good"]).decode()
    assert all(value in raw for value in planted), "the input carries every planted value"
    # Numbers are looked for with their separators and without.
    needles = planted | {
        _SEPARATORS.sub("", v) for v in planted if sum(c.isdigit() for c in v) >= 9
    }
    assert len(await _rows(db, published["doers"])) >= len(published["expected"].samples)

    tables = [
        r["table_name"]
        for r in await db.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
    ]
    assert set(CURATION_TABLES) <= set(tables)
    scanned = 0
    for table in tables:
        # Each row as text: every column, JSON and arrays included.
        for row in await db.fetch(f'SELECT t::text AS row FROM "{table}" AS t'):
            scanned += 1
            leaked = [v for v in needles if v in row["row"]]
            assert not leaked, (table, leaked)
    assert scanned >= len(published["expected"].samples)
    contents = await db.fetch(
        "SELECT content, redactions FROM dataset_samples WHERE doer = ANY($1::text[])",
        published["doers"],
    )
    redacted: Counter[str] = Counter()
    for row in contents:
        redacted.update(row["redactions"])
    assert {"EMAIL", "PHONE", "CARD", "IBAN", "SSN"} <= set(redacted), redacted
    assert any("[EMAIL]" in r["content"] for r in contents)

    messages = await _sample_messages(settings, published["doers"])
    assert len({m.sample_id for m in messages}) >= len(published["expected"].samples)
    for message in messages:
        text = message.to_json().decode()
        leaked = [v for v in needles if v in text]
        assert not leaked, (message.sample_id, leaked)


async def test_the_demo_curation_report_counts_the_simulation_and_finds_no_pii(
    published: dict[str, Any], db: Any, settings_env: dict[str, str]
) -> None:
    prefix = published["orchestrator"].run_prefix
    stored = len(await _rows(db, published["doers"]))
    report = await asyncio.to_thread(
        run_learnops,
        settings_env,
        "demo",
        "curation",
        "--run-prefix",
        prefix,
        "--expect-samples",
        str(stored),
    )
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    out = report.stdout
    assert f"Samples curated per dataset: {stored} samples of runs {prefix}-" in out
    heavy = f"{published['heavy']}/draft"
    assert heavy in out
    for reason in ("exact_duplicate", "near_duplicate", "self_loop"):
        assert reason in out
    for kind in ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]", "[SSN]"):
        assert kind in out
    assert "no PII downstream of the curator" in out
