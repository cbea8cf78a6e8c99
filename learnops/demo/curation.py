"""`learnops demo curation`: what the curator made of one simulation, and a scan for its PII.

After `learnops demo simulate --run-prefix P`, this reports for the runs ``P-…``:
samples curated per dataset with their clean and contamination rates, rejects
by reason, redactions by kind, the contamination alerts, and a PII scan. The
scan takes every PII value the detectors find in the simulation's own bundles
on learning.run-completed (the input) and looks for each, verbatim, in every
text column of the curation tables (the simulation's rows of
``dataset_samples``, every row of the golden tables) and in every
learning.samples message of the simulation; it also runs the detectors over
all of them. It prints counts
only, never a value, and exits 1 if anything is found.
"""

from __future__ import annotations

import asyncio
import re
import time

import click
from pydantic import ValidationError
from rich.table import Table

from agents.topics import read_from_start
from learning.contamination import CONTAMINATION_REASONS
from learning.curation import contains_pii, pii_values
from learnops.cli.main import GroupedCommand, command
from learnops.demo.commands import demo
from learnops.simulation.orchestrator import DOERS
from models.events import Alert, RunCompleted, SampleCurated
from storage import datasets as store
from storage.pool import create_pool

_MEANING = {
    "self_loop": "copies a document one of our policies generated, not declared ours",
    "exact_duplicate": "same redacted content as an accepted sample of the dataset",
    "near_duplicate": "estimated Jaccard >= threshold with an accepted sample",
    "low_diversity": "too close to one of the dataset's recent samples",
}


@command(
    demo,
    "curation",
    click.option("--run-prefix", required=True, help="The simulation's run id prefix."),
    click.option(
        "--expect-samples", type=int, default=0, help="Wait until this many samples are stored."
    ),
    click.option("--timeout", type=float, default=120.0, show_default=True),
)
async def curation(
    self: GroupedCommand, run_prefix: str, expect_samples: int, timeout: float
) -> None:
    """Samples per dataset, rejects by reason, redactions by kind, and a PII scan of the store."""
    settings = self.settings
    console = self.console()
    pool = await create_pool(settings.database_dsn, min_size=1, max_size=2)
    try:
        deadline = time.monotonic() + timeout
        stored = await store.count_run_samples(pool, run_prefix)
        while stored < expect_samples and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            stored = await store.count_run_samples(pool, run_prefix)
        verdicts = await store.run_verdicts(pool, run_prefix)
        redactions = await store.run_redactions(pool, run_prefix)
        columns = await store.text_columns(pool)
        # The samples table grows with every run the store has seen: this simulation's
        # rows only. The golden copies stay whole: small by design, and replayed to
        # executors, so any PII there is a finding whoever's run it came from.
        per_run = {"dataset_samples"}
        texts = {
            (table, column): await store.column_texts(
                pool, table, column, run_prefix if table in per_run else None
            )
            for table, column in columns
        }
    finally:
        await pool.close()
    prefix = run_prefix.encode()
    bundles = [
        bundle
        for record in await read_from_start(settings, "learning.run-completed", timeout=60)
        if record.value is not None
        and prefix in record.value
        and (bundle := _bundle(record.value)) is not None
    ]
    samples = [
        SampleCurated.model_validate_json(record.value)
        for record in await read_from_start(settings, "learning.samples", timeout=60)
        if record.value is not None and prefix in record.value
    ]
    alerts = [
        alert
        for alert in (
            Alert.model_validate_json(r.value)
            for r in await read_from_start(settings, "learning.alerts", timeout=60)
        )
        if alert.kind == "contamination" and alert.doer in DOERS
    ]

    console.print(_datasets(run_prefix, stored, verdicts))
    console.print(_rejects(verdicts))
    console.print(_redactions(redactions))
    if alerts:
        console.print(_alerts(alerts))
    scan, leaks = _scan(bundles, texts, samples)
    console.print(scan)
    if expect_samples and stored < expect_samples:
        raise SystemExit(
            f"learnops: only {stored} of {expect_samples} samples stored after {timeout}s"
        )
    if leaks:
        raise SystemExit(f"learnops: PII found downstream of the curator ({leaks} hits)")


def _bundle(raw: bytes) -> RunCompleted | None:
    # The topic holds the simulation's malformed events too (the DLQ has them).
    try:
        return RunCompleted.model_validate_json(raw)
    except ValidationError:
        return None


def _datasets(run_prefix: str, stored: int, verdicts: dict[str, dict[str, int]]) -> Table:
    table = Table(title=f"Samples curated per dataset: {stored} samples of runs {run_prefix}-…")
    for column in ("dataset", "samples", "accepted", "clean", "contaminated", "rejects"):
        table.add_column(column, justify="left" if column in ("dataset", "rejects") else "right")
    for dataset, counts in verdicts.items():
        checked = sum(counts.values())
        accepted = counts.get("accepted", 0)
        dirty = sum(n for kind, n in counts.items() if kind in CONTAMINATION_REASONS)
        rejects = ", ".join(f"{k}={n}" for k, n in counts.items() if k != "accepted")
        rate = dirty / checked
        table.add_row(
            dataset,
            str(checked),
            str(accepted),
            f"{accepted / checked:.0%}",
            f"[{'red' if rate > 0.2 else 'green'}]{rate:.0%}",
            rejects or "—",
        )
    return table


def _rejects(verdicts: dict[str, dict[str, int]]) -> Table:
    totals: dict[str, int] = {}
    for counts in verdicts.values():
        for kind, n in counts.items():
            if kind != "accepted":
                totals[kind] = totals.get(kind, 0) + n
    table = Table(title=f"Rejects by reason: {sum(totals.values())} rejected, each stored with it")
    for column in ("reason", "samples", "meaning"):
        table.add_column(column, justify="right" if column == "samples" else "left")
    for kind, n in sorted(totals.items(), key=lambda item: -item[1]):
        table.add_row(kind, str(n), _MEANING.get(kind, ""))
    return table


def _redactions(redactions: dict[str, int]) -> Table:
    table = Table(title=f"Redactions by kind: {sum(redactions.values())} values replaced")
    table.add_column("kind")
    table.add_column("replaced", justify="right")
    table.add_column("placeholder")
    for kind, n in sorted(redactions.items(), key=lambda item: -item[1]):
        table.add_row(kind, str(n), f"[{kind}]")
    return table


def _alerts(alerts: list[Alert]) -> Table:
    latest: dict[str, tuple[int, Alert]] = {}
    for alert in alerts:  # at most one per dataset and day (learning/samples.py)
        dataset = str(alert.evidence.get("dataset"))
        latest[dataset] = (latest.get(dataset, (0, alert))[0] + 1, alert)
    table = Table(title=f"learning.alerts: {len(alerts)} contamination alerts (one a day at most)")
    for column in ("dataset", "days alerted", "latest day", "rate", "threshold", "message"):
        table.add_column(column, overflow="fold")
    for dataset, (days, alert) in sorted(latest.items()):
        table.add_row(
            dataset,
            str(days),
            str(alert.evidence.get("day")),
            f"{alert.value:.1%}" if alert.value is not None else "—",
            f"{alert.threshold:.1%}" if alert.threshold is not None else "—",
            alert.message.split(": ", 1)[-1][:60],
        )
    return table


def _scan(
    bundles: list[RunCompleted],
    texts: dict[tuple[str, str], list[str]],
    samples: list[SampleCurated],
) -> tuple[Table, int]:
    values: set[str] = set()
    with_pii = 0
    for bundle in bundles:
        for artifact in bundle.artifacts:
            found = pii_values(artifact.content or "")
            with_pii += bool(found)
            values |= found
    # One pass per text for all values (longest first, so a value inside another still counts).
    pattern = (
        re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))
        if values
        else None
    )

    def hits(items: list[str]) -> tuple[int, int]:
        verbatim = sum(1 for t in items if pattern is not None and pattern.search(t))
        detected = sum(1 for t in items if contains_pii(t))
        return verbatim, detected

    table = Table(title="PII scan: the input's PII values, looked for downstream of the curator")
    for column in ("where", "scanned", "input values found", "detector findings"):
        table.add_column(column, justify="left" if column == "where" else "right")
    table.add_row(
        "learning.run-completed (input)",
        f"{len(bundles)} bundles",
        f"{len(values)} distinct values in {with_pii} artifacts",
        "—",
    )
    leaks = 0
    per_table: dict[str, list[str]] = {}
    columns: dict[str, int] = {}
    for (name, _), items in texts.items():
        per_table.setdefault(name, []).extend(items)
        columns[name] = columns.get(name, 0) + 1
    for name, items in per_table.items():
        verbatim, detected = hits(items)
        leaks += verbatim + detected
        table.add_row(
            f"{name} ({columns[name]} text columns)",
            f"{len(items)} values",
            _count(verbatim),
            _count(detected),
        )
    verbatim, detected = hits([s.to_json().decode() for s in samples])
    leaks += verbatim + detected
    table.add_row(
        "learning.samples (this simulation)", str(len(samples)), _count(verbatim), _count(detected)
    )
    table.caption = (
        "[green]no PII downstream of the curator[/green]"
        if not leaks
        else f"[red]{leaks} texts hold PII[/red]"
    )
    return table, leaks


def _count(n: int) -> str:
    return f"[{'red' if n else 'green'}]{n}"
