"""A corpus of malformed messages mixed with valid bundles, against a worker running every stage.

    python -m tests.faults.fuzz [--messages 10000] [--seed 1]

On learning.run-completed (and a few on learning.task-routed and
learning.commands): invalid and truncated JSON, wrong types, NaN/Infinity,
100k-deep nesting, 1 MB bodies valid and invalid, non-UTF-8, NUL, empty
values, tombstones, no key, a wrong key, integers past PostgreSQL's range,
unknown schema versions, and valid bundles (some published twice).

Checks: every message is either processed exactly once (its run in
crl_results once) or dead-lettered exactly once by the stage that owns the
topic, never both and never neither; no stage dead-letters one record twice;
the daily aggregates count exactly the stored runs; the worker never exits,
halts a stage or crash-loops; every partition's committed offset reaches the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from learnops.simulation.orchestrator import Orchestrator
from models.base import Event
from models.commands import PromotePolicy
from models.events import TaskRouted
from tests.faults.ledger import (
    Report,
    Row,
    caught_up,
    check_aggregates,
    check_logs,
    check_offsets,
    crl_rows,
    dead_letters,
)
from tests.faults.rig import Services, run_script, workers

RUNS = "learning.run-completed"
ROUTED = "learning.task-routed"
COMMANDS = "learning.commands"
#: The stage that must dead-letter (or process) each fuzzed topic's records exactly once.
OWNER = {RUNS: "crl", ROUTED: "canary", COMMANDS: "policy"}
MEGABYTE = 1_000_000  # under the broker's default message.max.bytes (1 MiB + 12)


@dataclass
class Message:
    """One record of the corpus, and what the system must do with it."""

    topic: str
    key: bytes | None
    value: bytes | None
    kind: str
    run_id: str | None = None  # the run it carries, when it could be stored
    expect: str = "dead"  # "processed" once, "dead"-lettered once, or "either" (exactly one)
    partition: int = -1
    offset: int = -1


def _dumps(record: Any) -> bytes:
    return json.dumps(record, allow_nan=True, separators=(",", ":")).encode()


def _wrong_type(rng: random.Random, record: dict[str, Any]) -> str:
    field, value = rng.choice(
        [
            ("policy_version", "1"),
            ("policy_version", 1.5),
            ("policy_version", True),
            ("doer", 5),
            ("shadow", "false"),
            ("occurred_at", 12345),
            ("occurred_at", "yesterday"),
            ("qav", "high"),
            ("costs", {"spent": "a lot", "budget": 1.0, "currency": "USD"}),
            ("gates", None),
            ("run_id", ["x"]),
            ("latency", {"p95_ms": "fast", "p50_ms": 1.0, "timeouts": 0}),
            ("artifacts", {"a": 1}),
            ("api_breakages", -1),
            ("event_id", "not-a-uuid"),
            ("schema_version", "1"),
        ]
    )
    record[field] = value
    return f"wrong type {field}"


def _bundle_fault(rng: random.Random, orchestrator: Orchestrator, doer: str) -> Message:
    """One malformed (or valid) run-completed record; the kind says which."""
    bundle = orchestrator.bundle(doer, occurred_at=datetime.now(UTC) - timedelta(hours=1))
    run_id = bundle.run_id
    good = bundle.to_json()
    record = bundle.model_dump(mode="json")
    key: bytes | None = doer.encode()
    roll = rng.random()

    def bad(value: bytes | None, kind: str, key: bytes | None = key) -> Message:
        return Message(RUNS, key, value, kind, run_id)

    if roll < 0.20:
        return Message(RUNS, key, good, "valid", run_id, "processed")
    if roll < 0.27:
        return bad(good[: rng.randrange(0, len(good))], "truncated json")
    if roll < 0.32:
        junk = rng.choice(
            [b"{", b"}", b"[1,2", b"not json", b'{"doer":', b"{'doer': 'x'}", b"nul", b"\x00"]
        )
        return bad(junk, "invalid json")
    if roll < 0.42:
        return bad(_mutated(rng, record), "wrong type")
    if roll < 0.48:
        target = rng.choice(["qav.grounding_score", "costs.spent", "latency.p95_ms"])
        part, leaf = target.split(".")
        record[part][leaf] = rng.choice([float("nan"), float("inf"), float("-inf")])
        return bad(_dumps(record), f"NaN/Infinity in {target}")
    if roll < 0.50:
        depth = 100_000
        if rng.random() < 0.5:
            return bad(b"[" * depth + b"]" * depth, "100k-deep nesting")
        nested = _dumps(record)[:-1] + b',"metrics":' + b"[" * depth + b"]" * depth + b"}"
        return bad(nested, "100k-deep nesting in a field")
    if roll < 0.51:
        if rng.random() < 0.5:
            text = "x" * (MEGABYTE - len(good) - 200)
            record["artifacts"][0]["content"] = text
            record["artifacts"][0]["content_hash"] = None
            return Message(RUNS, key, _dumps(record), "1 MB bundle", run_id, "either")
        return bad(b'{"doer":"' + b"y" * MEGABYTE + b'"', "1 MB invalid json")
    if roll < 0.56:
        return bad(good.replace(b"model-", b"model-\xff\xfe", 1), "non-UTF-8")
    if roll < 0.61:
        if rng.random() < 0.5:
            record["model"] = "model\u0000x"
            return bad(_dumps(record), "NUL escaped in a stored text")
        return bad(good.replace(b"model-", b"model-\x00", 1), "raw NUL byte")
    if roll < 0.65:
        return bad(b"", "empty value")
    if roll < 0.69:
        return bad(None, "tombstone")
    if roll < 0.74:
        return Message(RUNS, None, good, "no key", run_id)
    if roll < 0.79:
        other = rng.choice(
            [b"SomeoneElse", doer.lower().encode(), b"", b"\xff\xfe", b" " + doer.encode()]
        )
        return Message(RUNS, other, good, "wrong key", run_id)
    if roll < 0.89:
        field, value = rng.choice(
            [
                ("policy_version", 2**40),
                ("policy_version", 2**31),
                ("security.criticals", 2**33),
                ("api_breakages", 2**63),
                ("qav.contradictions", 10**30),
                ("latency.timeouts", 2**31),
            ]
        )
        part, _, leaf = field.partition(".")
        if leaf:
            record[part][leaf] = value
        else:
            record[part] = value
        return bad(_dumps(record), f"integer past PostgreSQL's range in {field}")
    version = rng.choice([0, 2, 99, -1, 2**40, "1", None, 1.0])
    record["schema_version"] = version
    return bad(_dumps(record), f"schema_version {version!r}")


def _mutated(rng: random.Random, record: dict[str, Any]) -> bytes:
    _wrong_type(rng, record)
    return _dumps(record)


def _other_fault(rng: random.Random, topic: str, doer: str) -> Message:
    """A malformed record for learning.task-routed or learning.commands."""
    now = datetime.now(UTC)
    good: Event
    if topic == ROUTED:
        good = TaskRouted(
            doer=doer,
            occurred_at=now,
            task_id=f"t-{uuid.uuid4().hex[:8]}",
            deployment_id="canary-unknown",
            arm="control",
            policy_id="p",
            policy_version=1,
            step=0,
            allocation=0.5,
        )
    else:
        good = PromotePolicy(
            doer=doer, actor="fuzz", reason="fuzz", policy_id="p", version=1, force=True
        )
    raw = good.to_json()
    record = json.loads(raw)
    key: bytes | None = doer.encode()
    choice = rng.randrange(9)
    if choice == 0:
        value: bytes | None = raw[: rng.randrange(len(raw))]
    elif choice == 1:
        value = b""
    elif choice == 2:
        value = None
    elif choice == 3:
        key, value = None, raw
    elif choice == 4:
        key, value = b"SomeoneElse", raw
    elif choice == 5:
        field = "policy_version" if topic == ROUTED else "version"
        record[field] = 2**40
        value = _dumps(record)
    elif choice == 6:
        record["schema_version"] = 7
        value = _dumps(record)
    elif choice == 7:
        value = raw.replace(b'"p"', b'"p\xff"', 1)
    else:
        record["doer"] = 17
        value = _dumps(record)
    return Message(topic, key, value, f"{topic} fault {choice}")


def corpus(n: int, seed: int, prefix: str) -> list[Message]:
    """``n`` records (2 % on task-routed, 2 % on commands), in a seeded random order."""
    rng = random.Random(seed)
    doers = [f"{prefix}Fuzz{i}" for i in range(4)]
    orchestrator = Orchestrator(seed=seed, doers=tuple(doers), run_prefix=f"{prefix}-fuzz")
    messages: list[Message] = []
    for _ in range(n):
        doer = rng.choice(doers)
        roll = rng.random()
        if roll < 0.02:
            messages.append(_other_fault(rng, ROUTED, doer))
        elif roll < 0.04:
            messages.append(_other_fault(rng, COMMANDS, doer))
        else:
            messages.append(_bundle_fault(rng, orchestrator, doer))
    # A publisher's duplicates: some valid bundles sent twice, later in the stream.
    valid = [m for m in messages if m.expect == "processed"]
    for m in rng.sample(valid, min(len(valid), max(1, n // 200))):
        twin = Message(m.topic, m.key, m.value, "duplicate", m.run_id, "processed")
        messages.insert(rng.randrange(len(messages)), twin)
    return messages


async def publish(producer: Any, messages: list[Message]) -> None:
    """Send every record and note where it landed."""
    futures = [await producer.send(m.topic, key=m.key, value=m.value) for m in messages]
    for message, metadata in zip(messages, await asyncio.gather(*futures), strict=True):
        message.partition, message.offset = metadata.partition, metadata.offset


async def fuzz(found: Services, pool: Any, *, messages: int = 10_000, seed: int = 1) -> Report:
    """Publish the corpus to a running worker; the report of how each record ended."""
    report = Report(f"fuzz: {messages} malformed and valid messages, seed {seed}")
    prefix = f"Z{uuid.uuid4().hex[:6]}"
    records = corpus(messages, seed, prefix)
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=found.bootstrap,
        acks="all",
        linger_ms=20,
        max_request_size=2 * MEGABYTE,
        # A record with no key: let the default partitioner place it.
    )
    await producer.start()
    try:
        async with workers(found, "fuzz") as group:
            await group.start()
            started = time.monotonic()
            await publish(producer, records)
            try:
                await caught_up(found.bootstrap, group.app_id, timeout=600)
                report.notes.append(f"published and caught up in {time.monotonic() - started:.0f}s")
            except TimeoutError as exc:
                report.fail(str(exc))
            process = group.running["a"].process
            if process is not None and process.poll() is not None:
                report.fail(f"the worker exited with {process.returncode}")
            await group.stop_all()
            await check_outcomes(report, found, pool, group.app_id, records, prefix)
            await check_offsets(report, found.bootstrap, group.app_id)
            check_logs(report, group.log_text())
            report.notes.append(f"logs in {group.log_dir}")
    finally:
        await producer.stop()
    return report


def _bucket(message: Message) -> str:
    """The report line a record is counted on (its kind, without the detail)."""
    if message.topic != RUNS:
        return f"{message.topic}: malformed"
    if message.kind.startswith("schema_version"):
        return "unknown schema_version"
    return message.kind.split(" in ")[0]


async def check_outcomes(
    report: Report, found: Services, pool: Any, app_id: str, records: list[Message], prefix: str
) -> None:
    """Each record processed exactly once or dead-lettered exactly once, by kind."""
    letters = await dead_letters(found.bootstrap, app_id)
    per_source = Counter((d.stage, d.topic, d.partition, d.offset) for d in letters)
    run_ids = [m.run_id for m in records if m.run_id]
    stored = Counter(
        r["run_id"]
        for r in await pool.fetch(
            "SELECT run_id FROM crl_results WHERE run_id = ANY($1::text[])", run_ids
        )
    )
    by_kind: dict[str, Row] = {}
    for m in records:
        kind = _bucket(m)
        row = by_kind.setdefault(kind, Row(kind, published=0, stored=0, dead_letters=0))
        row.published += 1  # type: ignore[operator]
        owner = OWNER[m.topic]
        dead = per_source[(owner, m.topic, m.partition, m.offset)]
        processed = stored[m.run_id] if m.run_id else 0
        row.stored += processed  # type: ignore[operator]
        row.dead_letters += dead  # type: ignore[operator]
        where = f"{m.topic}#{m.partition}@{m.offset} ({m.kind})"
        wanted = {"processed": (1, 0), "dead": (0, 1)}.get(m.expect)
        # "either": exactly one of the two.
        fine = processed + dead == 1 if wanted is None else (processed, dead) == wanted
        if not fine:
            if processed + dead == 0:
                row.lost += 1
            else:
                row.duplicated += 1
            row.detail.append(f"{where}: stored {processed}, dead-lettered {dead}")
    for row in sorted(by_kind.values(), key=lambda r: r.check):
        report.add(row)
    twice = {k: n for k, n in per_source.items() if n > 1}
    if twice:
        report.fail(
            f"{len(twice)} records dead-lettered twice by one stage, e.g. {next(iter(twice))}"
        )
    reasonless = [d for d in letters if not d.reason.strip()]
    if reasonless:
        report.fail(f"{len(reasonless)} dead letters without a reason")
    doers = {f"{prefix}Fuzz{i}" for i in range(4)}
    rows = await crl_rows(pool, doers)
    await check_aggregates(report, pool, found.bootstrap, app_id, rows, doers)
    reasons = Counter((d.stage, d.error_type) for d in letters)
    report.notes.append(
        f"{len(letters)} dead letters by (stage, error type): "
        + ", ".join(f"{s}/{e}={n}" for (s, e), n in sorted(reasons.items()))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    async def scenario(found: Services, pool: Any) -> Report:
        return await fuzz(found, pool, messages=args.messages, seed=args.seed)

    run_script("fuzz", scenario)


if __name__ == "__main__":
    main()
