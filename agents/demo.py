"""`learnops simulate` (a simulated orchestrator) and `learnops report` (what happened)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import click
from aiokafka import AIOKafkaProducer
from faust.cli import base as faust_cli
from rich.console import Console
from rich.table import Table

from agents.cli import GroupedCommand, command
from agents.topics import read_from_start
from learning.simulation import Orchestrator, bad_inputs
from models.events import DeadLetter
from storage.pool import create_pool


@faust_cli.cli.group()
def demo() -> None:
    """A simulated orchestrator and a report of what the worker did."""


@command(
    demo,
    "simulate",
    click.option("--runs", type=int, default=500, show_default=True, help="Bundles to publish."),
    click.option(
        "--bad", type=int, default=12, show_default=True, help="Malformed events mixed in."
    ),
    click.option(
        "--redeliver",
        type=int,
        default=25,
        show_default=True,
        help="Bundles published a second time, as a redelivery would.",
    ),
    click.option("--seed", type=int, default=7, show_default=True),
)
async def simulate(self: GroupedCommand, runs: int, bad: int, redeliver: int, seed: int) -> None:
    """Publish bundles as an orchestrator would, with bad input and redeliveries mixed in."""
    settings = self.lapp.settings
    orchestrator = Orchestrator(seed=seed)
    good = [(b.doer.encode(), b.to_json()) for b in orchestrator.bundles(runs)]
    broken = [(b.key, b.value) for b in bad_inputs(orchestrator, bad)]
    # Spread the bad events and the redeliveries through the stream.
    messages = list(good)
    for i, item in enumerate(broken + good[:redeliver]):
        messages.insert((i * 37) % max(1, len(messages)), item)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        linger_ms=5,
        **settings.kafka_client_options(),
    )
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [
            await producer.send("learning.run-completed", key=key, value=value)
            for key, value in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - started
    self.say(
        f"published {len(messages)} events to learning.run-completed in {elapsed:.2f}s: "
        f"{runs} distinct runs, {redeliver} redelivered, {bad} malformed"
    )


@command(
    demo,
    "report",
    click.option(
        "--expect-runs", type=int, default=0, help="Wait until this many runs are stored."
    ),
    click.option("--timeout", type=float, default=60.0, show_default=True),
)
async def report(self: GroupedCommand, expect_runs: int, timeout: float) -> None:
    """Show runs stored per doer and the dead letters, with their reasons."""
    settings = self.lapp.settings
    console = Console(file=self.stdout)
    pool = await create_pool(settings.database_dsn, min_size=1, max_size=2)
    try:
        deadline = time.monotonic() + timeout
        while True:
            total = int(await pool.fetchval("SELECT count(*) FROM runs"))
            if total >= expect_runs or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        rows = await pool.fetch(
            "SELECT doer, count(*) AS runs, count(DISTINCT policy_id) AS policies, "
            "min(occurred_at) AS first, max(occurred_at) AS last "
            "FROM runs GROUP BY doer ORDER BY doer"
        )
    finally:
        await pool.close()

    table = Table(title=f"PostgreSQL: runs ({total} rows, one per distinct run)")
    for column in ("doer", "runs", "policies", "first run", "last run"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["doer"],
            str(row["runs"]),
            str(row["policies"]),
            f"{row['first']:%Y-%m-%d %H:%M}",
            f"{row['last']:%Y-%m-%d %H:%M}",
        )
    console.print(table)

    letters = await _dead_letters(settings)
    kinds = Counter((d.stage, d.error_type) for d in letters)
    dlq = Table(title=f"learning.dlq: {len(letters)} dead letters")
    for column in ("stage", "error", "count", "example reason", "from"):
        dlq.add_column(column, overflow="fold")
    for (stage, error_type), count in sorted(kinds.items()):
        example = next(d for d in letters if (d.stage, d.error_type) == (stage, error_type))
        dlq.add_row(
            stage,
            error_type,
            str(count),
            example.reason[:90],
            f"{example.topic}[{example.partition}]@{example.offset}",
        )
    console.print(dlq)
    if expect_runs and total < expect_runs:
        raise SystemExit(f"learnops: only {total} of {expect_runs} runs stored after {timeout}s")


async def _dead_letters(settings: Any) -> list[DeadLetter]:
    records = await read_from_start(settings, "learning.dlq")
    return [DeadLetter.from_json(r.value) for r in records]
