"""The streaming state a worker keeps per doer, for 10,000 doers × 30 days, beside the old design.

    .venv/bin/python bench/state_size.py [--doers N] [--runs-per-day R] [--days D]

Builds each table value the way the stages do (one doer-day of R scored runs
folded into the CRL aggregates per doer, phase and policy, and into the skill
statistics; one live canary deployment with R runs per arm) and reports, per
doer and for ``--doers``: the changelog bytes (the JSON Faust writes) and the
Python heap the in-memory store holds for them (tracemalloc over the decoded
values of ``--measured`` doers, scaled).

The baseline is the design before fold claims: the same values plus one
changelog key per folded run in crl-folded-runs and skills-folded-runs, and
one per counted run and routing in canary-seen, all kept 30 days.

The curator's guard state is measured apart (``--samples``): one verdict
record per checked sample and one record per artifact of ours, each kept
``curation.memory_days`` (90) days, then deleted (docs/curation.md). Printed
per sample, and per doer at ``--samples-per-day``.

Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from agents.tables import marked
from learning.crl import LatencyObjectives, WeightBook, score_bundle
from learning.samples import CurationConfig, DoerCuration
from learning.skills import DailySkillStats
from learning.trends import DailyCRL
from learnops.simulation.orchestrator import PHASES, Orchestrator
from models.events import DeploymentRouting


def scored_runs(runs: int) -> list[Any]:
    """The CRL results of ``runs`` simulated bundles of one doer, StateDoer."""
    orchestrator = Orchestrator(seed=11, doers=("StateDoer",))
    return [
        score_bundle(bundle, WeightBook.from_dict({}), LatencyObjectives.from_dict({}))
        for bundle in orchestrator.bundles(runs)
    ]


def doer_day_records(results: list[Any]) -> dict[str, list[tuple[bytes, bytes]]]:
    """One doer-day's (key, value) changelog records per table, as the stages write them."""
    doer = results[0].doer
    by_doer = DailyCRL()
    by_phase = {phase: DailyCRL() for phase in PHASES}
    by_policy = {version: DailyCRL() for version in (1, 2)}
    skills = DailySkillStats()
    for offset, result in enumerate(results):
        by_doer.add(result.loss)
        by_phase[result.phase].add(result.loss)
        by_policy[1 + offset % 2].add(result.loss)
        skills.add(result)
    last = 10_000_000 + len(results)

    def record(key: str, value: dict[str, Any]) -> tuple[bytes, bytes]:
        return orjson.dumps([key, [0.0, 86399.9]]), orjson.dumps(marked(value, 0, last))

    return {
        "crl-daily-doer": [record(doer, by_doer.to_dict())],
        "crl-daily-phase": [record(f"{doer}/{p}", v.to_dict()) for p, v in by_phase.items()],
        "crl-daily-policy": [
            record(f"{doer}/{doer.lower()}-policy@{v}", d.to_dict()) for v, d in by_policy.items()
        ],
        "skills-daily": [record(doer, skills.to_dict())],
        "folded-run marks (baseline only)": [
            (orjson.dumps([f"{doer}/{r.run_id}", [0.0, 86399.9]]), b"true") for r in results
        ]
        * 2,  # crl-folded-runs and skills-folded-runs
    }


def canary_record(results: list[Any]) -> tuple[bytes, bytes]:
    """StateDoer's canary-deployments (key, value) with ``results`` routed and observed."""
    from learning.deployments import DeploymentState

    doer = results[0].doer
    routing = DeploymentRouting(
        deployment_id="dep-1",
        salt="salt-1",
        candidate_policy_id=f"{doer.lower()}-policy",
        candidate_version=2,
        allocation=0.05,
        control_policy_id=f"{doer.lower()}-policy",
        control_version=1,
        steps=[0.05, 0.1, 0.25, 0.5],
    )
    state = DeploymentState(doer, routing, "canary")
    for i, result in enumerate(results):
        state.route("candidate" if i % 2 else "control", 0)
        state.observe(
            result.model_copy(
                update={"deployment_id": "dep-1", "arm": "candidate" if i % 2 else "control"}
            )
        )
    value = {**state.to_dict(), "source_offsets": {"learning.crl-computed#0": len(results)}}
    return orjson.dumps(f"{doer}/dep-1"), orjson.dumps(value, default=str)


def _curator_state(samples: int) -> tuple[int, int, float, int]:
    """Curate bundles until ``samples`` records are kept; (records, changelog bytes, heap, days).

    The heap is that of a state restored from the records, as a restarted worker holds it.
    """
    config = CurationConfig()
    orchestrator = Orchestrator(seed=13, doers=("StateDoer",))
    state = DoerCuration("StateDoer", config, curator="bench")
    verdicts: dict[str, dict[str, Any]] = {}
    own: dict[str, dict[str, Any]] = {}
    now = time.time()
    from datetime import UTC, datetime

    for bundle in orchestrator.bundles(samples * 4):
        curation = state.curate(bundle, now=datetime.fromtimestamp(now, UTC), previous=verdicts.get)
        own.update(curation.own_outputs)
        for curated in curation.samples:
            if curated.record is not None:
                verdicts[curated.event.sample_id] = curated.record
        if len(verdicts) + len(own) >= samples:
            break
    changelog = sum(
        len(orjson.dumps(f"StateDoer/{key}")) + len(orjson.dumps(record))
        for key, record in (*verdicts.items(), *own.items())
    )
    records = [orjson.loads(orjson.dumps(r)) for r in verdicts.values()]
    owned = [(k, orjson.loads(orjson.dumps(r))) for k, r in own.items()]
    tracemalloc.start()
    restored = DoerCuration("StateDoer", config, curator="bench")
    restored.restore(records, owned)
    heap = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del restored
    return len(verdicts) + len(own), changelog, heap, config.guard.memory_days


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--doers", type=int, default=10_000)
    parser.add_argument("--runs-per-day", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--measured", type=int, default=200, help="doers decoded for the heap")
    parser.add_argument("--samples", type=int, default=2_000, help="curator records measured")
    parser.add_argument("--samples-per-day", type=int, default=20, help="curated per doer a day")
    args = parser.parse_args()
    started = time.perf_counter()
    results = scored_runs(args.runs_per_day)
    per_day = doer_day_records(results)
    canary_key, canary_value = canary_record(results)
    marks = per_day.pop("folded-run marks (baseline only)")
    canary_seen = [(b"k" * 60, b"true")] * (2 * args.runs_per_day * args.days)

    def size(records: list[tuple[bytes, bytes]]) -> int:
        return sum(len(k) + len(v) for k, v in records)

    now_day = sum(size(r) for r in per_day.values())
    now_doer = now_day * args.days + len(canary_key) + len(canary_value)
    base_doer = now_doer + size(marks) * args.days + size(canary_seen)

    # The heap the memory:// store holds: decoded values of --measured doers.
    tracemalloc.start()
    kept = []
    for _ in range(args.measured):
        for records in per_day.values():
            for _, value in records:
                kept.extend(orjson.loads(value) for _ in range(args.days))
        kept.append(orjson.loads(canary_value))
    heap_now = tracemalloc.get_traced_memory()[0] / args.measured
    mark_heap = []
    for _ in range(max(1, args.measured // 20)):
        mark_heap.extend({f"{i}": True} for i in range(len(marks) * args.days))
    heap_marks = tracemalloc.get_traced_memory()[0] / args.measured - heap_now
    tracemalloc.stop()
    heap_marks *= 20  # the marks were built for a twentieth of the doers
    del kept, mark_heap

    table = Table(
        title=(
            f"Streaming state per doer ({args.runs_per_day} runs/day, {args.days} days, "
            f"{len(PHASES)} phases, 2 policy versions, 1 live canary)"
        )
    )
    for column in ("design", "changelog bytes/doer", f"{args.doers:,} doers", "heap/doer"):
        table.add_column(column, justify="right")
    table.add_row(
        "values with their source marks (now)",
        f"{now_doer:,.0f}",
        f"{now_doer * args.doers / 2**30:.2f} GiB",
        f"{heap_now:,.0f} B",
    )
    table.add_row(
        "baseline: + one key per folded run",
        f"{base_doer:,.0f}",
        f"{base_doer * args.doers / 2**30:.2f} GiB",
        f"{heap_now + heap_marks:,.0f} B",
    )
    console = Console()
    console.print(table)
    console.print(
        f"heap for {args.doers:,} doers now: {heap_now * args.doers / 2**30:.2f} GiB "
        f"(baseline {(heap_now + heap_marks) * args.doers / 2**30:.2f} GiB); "
        f"{time.perf_counter() - started:.1f} s"
    )

    count, changelog, heap, memory_days = _curator_state(args.samples)
    kept = args.samples_per_day * memory_days
    curator = Table(
        title=(
            f"Curator guard state ({count:,} records measured; {args.samples_per_day} "
            f"samples/day kept {memory_days} days = {kept:,} records per doer)"
        )
    )
    for column in ("", "changelog bytes", "heap (restored)"):
        curator.add_column(column, justify="right")
    curator.add_row("per record", f"{changelog / count:,.0f}", f"{heap / count:,.0f} B")
    curator.add_row(
        "per doer", f"{changelog / count * kept:,.0f}", f"{heap / count * kept / 2**20:.1f} MiB"
    )
    curator.add_row(
        f"{args.doers:,} doers",
        f"{changelog / count * kept * args.doers / 2**30:.2f} GiB",
        f"{heap / count * kept * args.doers / 2**30:.2f} GiB",
    )
    console.print(curator)


if __name__ == "__main__":
    main()
