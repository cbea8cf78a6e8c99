"""How fast `learnops dlq replay` publishes and records refused records: a batch per transaction.

    KAFKA_BOOTSTRAP_SERVERS=… DATABASE_URL=… python bench/dlq_replay.py [--records 20000]

A replay publishes each refused record again and records the copy in
``dead_letter_replays`` once the broker acknowledged it, under a lock that
keeps two replays from publishing one record twice. The command sends
:data:`learnops.cli.dlq.REPLAY_BATCH` records per transaction; the baseline,
in the same run, is one record per transaction (what the command did before).
Both run the command's own ``_replay`` on the same kind of records (about
1 KB, as a bundle is) on a topic of the bench's own, into a database of its
own migrated for the run; reading the records back and checking them against
the contract, which the command also does, are left out.

Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from learnops.cli.dlq import REPLAY_BATCH, _replay  # noqa: E402
from storage.dead_letters import Origin  # noqa: E402
from storage.pool import create_pool  # noqa: E402
from tests.services import (  # noqa: E402
    ReadBack,
    create_migrated_database,
    drop_database,
    partition_letter,
)

console = Console()


async def publish(bootstrap: str, topic: str, records: int) -> dict[Origin, ReadBack]:
    """``records`` records of about 1 KB on ``topic``, by where they landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = []
        for n in range(records):
            key, value = f"Doer{n % 50}".encode(), (f"{n:08d}" * 128).encode()
            sent.append((key, value, await producer.send(topic, key=key, value=value)))
        return {
            (topic, meta.partition, meta.offset): ReadBack(key, value)
            for key, value, meta in [(k, v, await f) for k, v, f in sent]
        }
    finally:
        await producer.stop()


async def replay(pool: object, bootstrap: str, found: dict[Origin, ReadBack], batch: int) -> float:
    """Seconds to publish and record every record of ``found``, ``batch`` per transaction."""
    origins = list(found)
    todo = {o: [partition_letter(o)] for o in origins}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        began = time.perf_counter()
        published = 0
        for start in range(0, len(origins), batch):
            chunk = origins[start : start + batch]
            published += len(await _replay(pool, producer, chunk, found, todo, "bench"))
        seconds = time.perf_counter() - began
    finally:
        await producer.stop()
    assert published == len(origins), f"{published} of {len(origins)} published"
    return seconds


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20_000, help="records replayed in batches")
    parser.add_argument(
        "--baseline", type=int, default=2_000, help="records replayed one per transaction"
    )
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    server_dsn = os.environ.get(
        "DATABASE_URL", "postgresql://learnops:learnops@127.0.0.1:15432/learnops"
    )
    tag = uuid.uuid4().hex[:8]
    topics = {"one": f"bench.replay-one-{tag}", "batch": f"bench.replay-batch-{tag}"}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(t, 6, 1) for t in topics.values()])
    database = f"bench_replay_{tag}"
    dsn = await create_migrated_database(server_dsn, database)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        one = await publish(bootstrap, topics["one"], args.baseline)
        many = await publish(bootstrap, topics["batch"], args.records)
        rows = [
            ("one per transaction (before)", args.baseline, await replay(pool, bootstrap, one, 1)),
            (
                f"{REPLAY_BATCH} per transaction (REPLAY_BATCH)",
                args.records,
                await replay(pool, bootstrap, many, REPLAY_BATCH),
            ),
        ]
    finally:
        await pool.close()
        await drop_database(server_dsn, database)
        await admin.delete_topics(list(topics.values()))
        await admin.close()
    table = Table(title="dlq replay: publish each copy, then record it (same run, same broker)")
    for column in ("batches", "records", "seconds", "records/s"):
        table.add_column(column, justify="left" if column == "batches" else "right")
    for name, records, seconds in rows:
        table.add_row(name, f"{records:,}", f"{seconds:.2f}", f"{records / seconds:,.0f}")
    console.print(table)
    console.print(f"{rows[1][1] / rows[1][2] / (rows[0][1] / rows[0][2]):.1f}× the baseline's rate")


if __name__ == "__main__":
    asyncio.run(main())
