"""The optimizer's bandit by simulation: regret, drift and guardrails (issue 20).

    .venv/bin/python bench/bandit_sim.py [--seeds N] [--runs R] [--plots DIR] [--quick]

Environments (``learning.bandit_simulation``): four options whose losses are
the canary's shapes — heavy (lognormal σ_log 1, 5 % zeros, 1 % ×10) and
zero-heavy (90 % zeros, else lognormal) — scaled by 1.0, 0.75, 1.25 and 1.5
(option-1 is best). Rows:

* **stationary** — cumulative regret against the oracle that always routes to
  the best option, for Thompson sampling (``learning.bandit.allocate`` every
  100 runs, the defaults of ``BanditConfig``), uniform allocation and
  explore-then-commit (uniform for the first 1,000 runs, then the best
  observed mean), at the same budget; the ratio to uniform's regret;
* **drift** — at the halfway run the factors become 0.6, 1.25, 1.0, 1.5
  (option-0 becomes best): regret, and runs after the drift until option-0
  holds the majority of the traffic (median and worst over seeds);
* **harmful** — option-1 has the lowest loss (0.6) but a security critical on
  5 % of its runs: runs until it is excluded and its largest share afterwards.

Writes the allocation-over-time plots (seed 0) to ``--plots`` (default
docs/bandits/). Asserts nothing: ``tests/unit/test_bandit_simulation.py``
checks the targets over several seeds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.table import Table

from learning.bandit import BanditConfig
from learning.bandit_simulation import (
    POLICIES,
    SHAPES,
    Environment,
    SimulationResult,
    max_share_after,
    runs_to_majority,
    simulate,
)

FACTORS = (1.0, 0.75, 1.25, 1.5)
DRIFTED = (0.6, 1.25, 1.0, 1.5)
HARMFUL = (1.0, 0.6, 1.25, 1.5)
HARM_RATES = (0.0, 0.05, 0.0, 0.0)


def median_worst(values: list[int | None]) -> str:
    """ "median, worst" of the values that happened, and how many never did."""
    found = [v for v in values if v is not None]
    if not found:
        return "never"
    missed = len(values) - len(found)
    return f"{int(np.median(found))}, {max(found)}" + (f" ({missed} never)" if missed else "")


def regret_table(seeds: int, runs: int) -> tuple[Table, dict[str, SimulationResult]]:
    table = Table(title=f"Cumulative regret after {runs:,} runs, mean over {seeds} seeds")
    for col in (
        "loss",
        "environment",
        *POLICIES,
        "Thompson / uniform",
        "ETC / uniform",
        "runs to majority after drift (median, max)",
    ):
        table.add_column(col, justify="left" if col in ("loss", "environment") else "right")
    examples: dict[str, SimulationResult] = {}
    for shape_name, shape in SHAPES.items():
        for kind in ("stationary", "drift"):
            drift = runs // 2 if kind == "drift" else None
            env = Environment(FACTORS, shape, drift_at=drift, after=DRIFTED if drift else None)
            regret = {}
            for policy in POLICIES:
                results = [simulate(env, policy, runs, s) for s in range(seeds)]
                regret[policy] = float(np.mean([r.regret for r in results]))
                if policy == "thompson":
                    examples[f"{kind} {shape_name}"] = results[0]
                    if drift is not None:
                        majority = median_worst([runs_to_majority(r, 0, drift) for r in results])
            table.add_row(
                "heavy" if shape_name == "heavy" else shape_name,
                kind,
                *(f"{regret[p]:.1f}" for p in POLICIES),
                f"{regret['thompson'] / regret['uniform']:.2f}",
                f"{regret['explore_then_commit'] / regret['uniform']:.2f}",
                majority if drift is not None else "",
            )
    return table, examples


def harm_table(seeds: int, runs: int) -> tuple[Table, SimulationResult]:
    config = BanditConfig()
    table = Table(
        title=f"Harmful option (lowest loss, 5 % security criticals): {seeds} seeds × {runs:,} runs"
    )
    for col in ("loss", "runs to exclusion (median, max)", "largest share after", "floor"):
        table.add_column(col, justify="right")
    example = None
    for shape_name, shape in SHAPES.items():
        env = Environment(HARMFUL, shape, event_rates=HARM_RATES)
        results = [simulate(env, "thompson", runs, s, config=config) for s in range(seeds)]
        example = example or results[0]
        excluded = [r.excluded_at.get(1) for r in results]
        after = [
            max_share_after(r, 1, e + r.batch)
            for r, e in zip(results, excluded, strict=True)
            if e is not None
        ]
        table.add_row(
            shape_name,
            median_worst(excluded),
            f"{max(after):.3f}" if after else "–",
            f"{config.min_share:.3f}",
        )
    assert example is not None
    return table, example


def plot(result: SimulationResult, title: str, path: Path, drift_at: int | None = None) -> None:
    """Stacked shares of each option over the runs."""
    x = np.arange(len(result.shares)) * result.batch
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [f"option-{i}" for i in range(result.shares.shape[1])]
    ax.stackplot(x, result.shares.T, labels=labels, step="post")
    if drift_at is not None:
        ax.axvline(drift_at, color="black", linestyle="--", linewidth=1, label="drift")
    ax.set_xlim(0, x[-1] + result.batch)
    ax.set_ylim(0, 1)
    ax.set_xlabel("runs")
    ax.set_ylabel("share of traffic")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--plots", type=Path, default=Path("docs/bandits"))
    parser.add_argument("--quick", action="store_true", help="4 seeds")
    args = parser.parse_args()
    seeds = 4 if args.quick else args.seeds
    console = Console()
    started = time.perf_counter()
    table, examples = regret_table(seeds, args.runs)
    console.print(table)
    harm, harmful_example = harm_table(seeds, args.runs)
    console.print(harm)
    args.plots.mkdir(parents=True, exist_ok=True)
    out = args.plots
    plot(
        examples["stationary heavy"],
        "Stationary, heavy loss (option-1 best)",
        out / "stationary.png",
    )
    drift_title = "Drift at the halfway run (option-0 becomes best)"
    plot(examples["drift heavy"], drift_title, out / "drift.png", args.runs // 2)
    plot(harmful_example, "Harmful option-1 (lowest loss, security criticals)", out / "harmful.png")
    console.print(f"plots in {args.plots}/; wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
