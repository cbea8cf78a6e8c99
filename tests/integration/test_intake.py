"""Bundles through a real worker process into PostgreSQL; bad input to the DLQ."""

from __future__ import annotations

import uuid
from typing import Any

from agents.topics import read_from_start
from learning.simulation import Orchestrator, bad_inputs
from models.events import DeadLetter
from tests.integration.kafka_io import eventually, publish
from tests.services import WorkerProcess

TOPIC = "learning.run-completed"


async def test_worker_stores_one_row_per_run_and_dead_letters_bad_input(
    worker: WorkerProcess, producer: Any, db: Any, settings: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    doers = tuple(f"Intake{tag}{i}" for i in range(3))
    orchestrator = Orchestrator(seed=int(tag, 16) % 10_000, doers=doers)
    good = list(orchestrator.bundles(150))
    bad = bad_inputs(orchestrator, 12)

    messages = [(b.doer.encode(), b.to_json()) for b in good[:100]]
    messages += [(b.key, b.value) for b in bad]
    # A redelivery: the same 30 events again, byte for byte.
    messages += [(b.doer.encode(), b.to_json()) for b in good[:30]]
    messages += [(b.doer.encode(), b.to_json()) for b in good[100:]]
    metadata = await publish(producer, TOPIC, messages)
    bad_positions = {
        (m.topic, m.partition, m.offset): b
        for m, b in zip(metadata[100 : 100 + len(bad)], bad, strict=True)
    }

    async def stored() -> int:
        return int(
            await db.fetchval("SELECT count(*) FROM runs WHERE doer = ANY($1::text[])", list(doers))
        )

    assert await eventually(stored, lambda n: n >= len(good)) == len(good)

    async def letters() -> list[DeadLetter]:
        records = await read_from_start(settings, "learning.dlq")
        parsed = [DeadLetter.from_json(r.value) for r in records]
        return [d for d in parsed if (d.topic, d.partition, d.offset) in bad_positions]

    found = await eventually(letters, lambda ds: len(ds) >= len(bad))
    assert len(found) == len(bad), "one dead letter per malformed event, no more, no less"
    for letter in found:
        original = bad_positions[(letter.topic, letter.partition, letter.offset)]
        assert letter.value == original.value
        assert letter.key == original.key
        assert letter.stage == "intake"
        assert letter.reason
        expected = {"json": {"json"}, "schema": {"schema"}, "nan": {"json", "schema"}}
        assert letter.error_type in expected.get(original.fault, {original.fault})

    rows = await db.fetch(
        "SELECT run_id, doer, source_topic, bundle FROM runs WHERE doer = ANY($1::text[])",
        list(doers),
    )
    assert sorted(r["run_id"] for r in rows) == sorted(b.run_id for b in good)
    assert {r["source_topic"] for r in rows} == {TOPIC}
    for row in rows:
        for artifact in row["bundle"]["artifacts"]:
            assert "content" not in artifact, "raw artifact text is never stored with the run"
            assert len(artifact["content_hash"]) == 64

    # The worker is still up and still consuming after the bad input.
    late = orchestrator.bundle(doers[0])
    await publish(producer, TOPIC, [(late.doer.encode(), late.to_json())])
    assert await eventually(stored, lambda n: n > len(good)) == len(good) + 1
    assert worker.process is not None and worker.process.poll() is None
