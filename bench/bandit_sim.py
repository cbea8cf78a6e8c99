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
  5 % of its runs: runs until it is excluded, its largest share ever, and on
  how many seeds it ever held more than the floor;
* **probation** — the trade-off of safe exploration's ``probation_runs``:
  heavy stationary regret against the harmful option's seeds above the floor;
* **probes** — probation served by shadow runs: each option on probation is
  also run in shadow beside the routed option on a share of tasks
  (``BanditState.observe_probe``); stationary regret, the harmful option's
  seeds above the floor, and how many shadow runs that took;
* **relative harm** — every option has a security critical on 2 % of its
  runs and option-3, the best by loss (factors 1.0, 1.1, 1.2, 0.85), on ρ
  times that (1: no worse, 2, 3): on how many seeds it left the floor, its
  runs above the floor, its first release and the regret to uniform's, with
  probes on half the tasks and without (20,000 runs by ``--relative-runs``);
* **drift tail** — the drift on more seeds (``--tail-seeds``, from seed 1,000),
  with the packaged probes: the distribution of the runs after the drift until
  the new best holds the majority (median, mean, 90th percentile, worst, and
  on how many seeds within 1,000), and the stationary regret on the same seeds;
* **what if** — the zero-heavy drift on the same seeds if options that did
  not serve a task were run in shadow and scored into their statistics
  (``simulate``'s ``score_unserved``, which the stage never does): what more
  information per run would buy, and its price in shadow executions;
* **misfit** — option-3's losses are not lognormal (rare catastrophes,
  ``learning.bandit_simulation.rare_catastrophes``): its logs look best, its
  mean is the worst but one; the hurdle model against the normal one.

Every row is printed for the defaults of ``BanditConfig`` and, beside them in
the same run, for the defaults of issue 20's second round (``ROUND_2``: shares
from the untempered posterior, each option's rate of positive losses on its
own runs) and for the model before that round (``BEFORE``: a discounted
normal model of the mean, discount 0.999, no change detection, no probation).

Writes the allocation-over-time plots (seed 0) to ``--plots`` (default
docs/bandits/). Asserts nothing: ``tests/unit/test_bandit_simulation.py``
checks the targets over several seeds.
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
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
    rare_catastrophes,
    runs_to_majority,
    simulate,
)
from learning.canary_simulation import heavy

FACTORS = (1.0, 0.75, 1.25, 1.5)
DRIFTED = (0.6, 1.25, 1.0, 1.5)
HARMFUL = (1.0, 0.6, 1.25, 1.5)
HARM_RATES = (0.0, 0.05, 0.0, 0.0)
RELATIVE = (1.0, 1.1, 1.2, 0.85)  # option-3 best by loss, with ρ times the others' events
BASE_RATE = 0.02  # every option's rate of runs with a security critical
MISFIT = (1.0, 1.25, 1.5, 1.7)  # option-3 rare_catastrophes: mean ≈ 1.2 × option-0's
BEFORE = BanditConfig(
    model="normal", discount=0.999, change_threshold=0.0, probation_runs=0, temper=1.0
)
ROUND_2 = BanditConfig(temper=1.0, rate_pooling=False)  # the defaults before the third round
MODELS = {"defaults": BanditConfig(), "round 2": ROUND_2, "before": BEFORE}


def median_worst(values: list[int | None]) -> str:
    """ "median, worst" of the values that happened, and how many never did."""
    found = [v for v in values if v is not None]
    if not found:
        return "never"
    missed = len(values) - len(found)
    return f"{int(np.median(found))}, {max(found)}" + (f" ({missed} never)" if missed else "")


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...] = ()) -> Table:
    """A table with these columns, right-aligned but for those in ``left``."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right")
    return table


def regret_table(seeds: int, runs: int) -> tuple[Table, dict[str, SimulationResult]]:
    table = _table(
        f"Cumulative regret after {runs:,} runs, mean over {seeds} seeds",
        (
            "loss",
            "environment",
            "model",
            *POLICIES,
            "Thompson / uniform",
            "ETC / uniform",
            "runs to majority after drift (median, max)",
        ),
        left=("loss", "environment"),
    )
    examples: dict[str, SimulationResult] = {}
    for shape_name, shape in SHAPES.items():
        for kind in ("stationary", "drift"):
            drift = runs // 2 if kind == "drift" else None
            env = Environment(FACTORS, shape, drift_at=drift, after=DRIFTED if drift else None)
            fixed = {
                p: float(np.mean([simulate(env, p, runs, s).regret for s in range(seeds)]))
                for p in POLICIES
                if p != "thompson"
            }
            for model, config in MODELS.items():
                results = [simulate(env, "thompson", runs, s, config=config) for s in range(seeds)]
                regret = {**fixed, "thompson": float(np.mean([r.regret for r in results]))}
                majority = ""
                if model == "defaults":
                    examples[f"{kind} {shape_name}"] = results[0]
                if drift is not None:
                    majority = median_worst([runs_to_majority(r, 0, drift) for r in results])
                table.add_row(
                    "heavy" if shape_name == "heavy" else shape_name,
                    kind,
                    model,
                    *(f"{regret[p]:.1f}" for p in POLICIES),
                    f"{regret['thompson'] / regret['uniform']:.2f}",
                    f"{regret['explore_then_commit'] / regret['uniform']:.2f}",
                    majority,
                )
    return table, examples


def harm_table(seeds: int, runs: int) -> tuple[Table, SimulationResult]:
    table = _table(
        f"Harmful option (lowest loss, 5 % security criticals): {seeds} seeds × {runs:,} runs",
        (
            "loss",
            "model",
            "runs to exclusion (median, max)",
            "largest share ever",
            "seeds above the floor",
            "floor",
        ),
    )
    example = None
    for shape_name, shape in SHAPES.items():
        env = Environment(HARMFUL, shape, event_rates=HARM_RATES)
        for model, config in MODELS.items():
            results = [simulate(env, "thompson", runs, s, config=config) for s in range(seeds)]
            if model == "defaults":
                example = example or results[0]
            excluded = [r.excluded_at.get(1) for r in results]
            largest = [max_share_after(r, 1, 0) for r in results]
            above = sum(share > config.min_share + 1e-9 for share in largest)
            table.add_row(
                shape_name,
                model,
                median_worst(excluded),
                f"{max(largest):.3f}",
                f"{above} of {seeds}",
                f"{config.min_share:.3f}",
            )
    assert example is not None
    return table, example


def probation_table(seeds: int, runs: int) -> Table:
    """Safe exploration's price: stationary regret and harmful releases by probation length."""
    table = _table(
        f"Probation length (heavy loss, {seeds} seeds × {runs:,} runs)",
        (
            "probation_runs",
            "stationary Thompson / uniform",
            "harmful above the floor (seeds)",
            "0.95^runs",
        ),
    )
    stationary = Environment(FACTORS)
    harmful = Environment(HARMFUL, event_rates=HARM_RATES)
    uniform = float(
        np.mean([simulate(stationary, "uniform", runs, s).regret for s in range(seeds)])
    )
    for length in (0, 10, 20, 40, 60):
        config = replace(BanditConfig(), probation_runs=length)
        regret = np.mean(
            [simulate(stationary, "thompson", runs, s, config=config).regret for s in range(seeds)]
        )
        above = sum(
            max_share_after(simulate(harmful, "thompson", runs, s, config=config), 1, 0)
            > config.min_share + 1e-9
            for s in range(seeds)
        )
        table.add_row(
            str(length), f"{regret / uniform:.2f}", f"{above} of {seeds}", f"{0.95**length:.2f}"
        )
    return table


def probe_table(seeds: int, runs: int) -> Table:
    """Probation served by shadow runs: both targets it traded, and the extra executions."""
    table = _table(
        f"Probes: probation options also run in shadow ({seeds} × {runs:,} runs)",
        (
            "probe share of tasks",
            "loss",
            "stationary Thompson / uniform",
            "harmful above the floor (seeds)",
            "probes (stationary, mean)",
            "probes (harmful, mean)",
        ),
    )
    for shape_name, shape in SHAPES.items():
        stationary = Environment(FACTORS, shape)
        harmful = Environment(HARMFUL, shape, event_rates=HARM_RATES)
        uniform = float(
            np.mean([simulate(stationary, "uniform", runs, s).regret for s in range(seeds)])
        )
        for share in (0.0, 0.25, 0.5):
            plain = [simulate(stationary, "thompson", runs, s, probe=share) for s in range(seeds)]
            harm = [simulate(harmful, "thompson", runs, s, probe=share) for s in range(seeds)]
            above = sum(max_share_after(r, 1, 0) > BanditConfig().min_share + 1e-9 for r in harm)
            table.add_row(
                f"{share:.2f}",
                "heavy" if shape_name == "heavy" else "zero-heavy",
                f"{np.mean([r.regret for r in plain]) / uniform:.2f}",
                f"{above} of {seeds}",
                f"{np.mean([r.probe_runs for r in plain]):.0f}",
                f"{np.mean([r.probe_runs for r in harm]):.0f}",
            )
    return table


def _tail_run(
    job: tuple[str, str, str, int, int],
    what_if: tuple[float, float, float | None] = (0.0, 1.0, None),
) -> tuple[float, int | None, int]:
    """One seed of a drift tail table: regret, runs to the new best's majority, scored runs.

    ``what_if``: ``simulate``'s ``score_unserved`` and ``score_below``, and the
    change detector's threshold (None: ``BanditConfig``'s default).
    """
    shape_name, kind, policy, runs, seed = job
    score_unserved, score_below, threshold = what_if
    drift = runs // 2 if kind == "drift" else None
    env = Environment(FACTORS, SHAPES[shape_name], drift_at=drift, after=DRIFTED if drift else None)
    probe = 0.5 if policy == "thompson" else 0.0
    result = simulate(
        env,
        policy,  # type: ignore[arg-type]
        runs,
        seed,
        probe=probe,
        config=BanditConfig() if threshold is None else BanditConfig(change_threshold=threshold),
        score_unserved=score_unserved,
        score_below=score_below,
    )
    majority = runs_to_majority(result, 0, drift) if drift is not None else None
    return result.regret, majority, result.scored_runs


def drift_tail_table(seeds: int, runs: int) -> Table:
    """Runs to the new best's majority after a drift, as a distribution over many seeds."""
    first = 1000
    table = _table(
        f"Drift tail: seeds {first}–{first + seeds - 1}, probes on half the tasks (packaged)",
        (
            "loss",
            "runs to majority: median",
            "mean",
            "90th pct",
            "worst",
            "seeds within 1,000",
            "drift Thompson / uniform",
            "stationary Thompson / uniform",
        ),
    )
    never = 2 * runs  # a seed on which it never happened counts as this many runs
    with ProcessPoolExecutor() as pool:
        for shape_name in SHAPES:
            regret: dict[tuple[str, str], float] = {}
            majority: list[int] = []
            for kind in ("stationary", "drift"):
                for policy in ("thompson", "uniform"):
                    jobs = [
                        (shape_name, kind, policy, runs, s) for s in range(first, first + seeds)
                    ]
                    results = list(pool.map(_tail_run, jobs, chunksize=8))
                    regret[(kind, policy)] = float(np.mean([r for r, _, _ in results]))
                    if kind == "drift" and policy == "thompson":
                        majority = [never if m is None else m for _, m, _ in results]
            table.add_row(
                "heavy" if shape_name == "heavy" else "zero-heavy",
                f"{np.median(majority):.0f}",
                f"{np.mean(majority):.0f}",
                f"{np.percentile(majority, 90):.0f}",
                "never" if max(majority) == never else f"{max(majority)}",
                f"{sum(m <= 1000 for m in majority)} of {seeds}",
                f"{regret[('drift', 'thompson')] / regret[('drift', 'uniform')]:.3f}",
                f"{regret[('stationary', 'thompson')] / regret[('stationary', 'uniform')]:.3f}",
            )
    return table


def _relative_run(job: tuple[str, float, float, int, int]) -> tuple[float, float, int | None]:
    """One seed of relative harm: regret, option-3's runs above the floor, its first release."""
    policy, ratio, probe, runs, seed = job
    env = Environment(RELATIVE, event_rates=(BASE_RATE, BASE_RATE, BASE_RATE, ratio * BASE_RATE))
    result = simulate(env, policy, runs, seed, probe=probe)  # type: ignore[arg-type]
    floor = BanditConfig().min_share
    share = result.shares[:, 3]
    above = np.flatnonzero(share > floor + 1e-9)
    over = float((np.maximum(share - floor, 0.0) * result.batch).sum())
    return result.regret, over, int(above[0]) * result.batch if len(above) else None


def relative_harm_table(seeds: int, runs: int) -> Table:
    """Options every one of which has events: the best by loss with ρ times the others' rate."""
    table = _table(
        f"Relative harm: every option a security critical on {BASE_RATE:.0%} of runs, option-3"
        f" (best by loss) on ρ times that; {seeds} seeds × {runs:,} runs",
        (
            "ρ",
            "probes",
            "seeds option-3 above the floor",
            "its runs above the floor (mean)",
            "first release (median run)",
            "Thompson / uniform",
        ),
    )
    with ProcessPoolExecutor() as pool:
        for ratio in (1.0, 2.0, 3.0):
            jobs = [("uniform", ratio, 0.0, runs, s) for s in range(seeds)]
            uniform = float(np.mean([r for r, _, _ in pool.map(_relative_run, jobs)]))
            for probe in (0.5, 0.0):
                jobs = [("thompson", ratio, probe, runs, s) for s in range(seeds)]
                results = list(pool.map(_relative_run, jobs, chunksize=4))
                released = [f for _, _, f in results if f is not None]
                table.add_row(
                    f"{ratio:g}",
                    "half the tasks (packaged)" if probe else "none (live probation)",
                    f"{len(released)} of {seeds}",
                    f"{np.mean([o for _, o, _ in results]):,.0f}",
                    f"{np.median(released):,.0f}" if released else "never",
                    f"{np.mean([r for r, _, _ in results]) / uniform:.2f}",
                )
    return table


WHAT_IFS: tuple[tuple[str, tuple[float, float, float | None]], ...] = (
    ("packaged (losses of served runs only)", (0.0, 1.0, None)),
    ("threshold 10", (0.0, 1.0, 10.0)),
    ("options below 10 % also scored on half the tasks", (0.5, 0.1, None)),
    ("every option scored on every task", (1.0, 1.01, None)),
    ("every option scored on every task, threshold 10", (1.0, 1.01, 10.0)),
)


def what_if_table(seeds: int, runs: int) -> Table:
    """The zero-heavy drift with more information per run: shadow runs scored like live ones.

    The stage never does this (shadow runs do not move its estimates); the rows
    measure what the drift target would cost in shadow executions.
    """
    first = 1000
    table = _table(
        f"Zero-heavy drift, what if unserved options were scored too: seeds {first}–"
        f"{first + seeds - 1}, probes on half the tasks",
        (
            "variant",
            "runs to majority: median",
            "90th pct",
            "worst",
            "seeds within 1,000",
            "drift Thompson / uniform",
            "stationary Thompson / uniform",
            "scored shadow runs per live run",
        ),
    )
    never = 2 * runs
    shape = "zero-heavy (90 % zeros)"
    with ProcessPoolExecutor() as pool:
        uniform: dict[str, float] = {}
        for kind in ("stationary", "drift"):
            jobs = [(shape, kind, "uniform", runs, s) for s in range(first, first + seeds)]
            uniform[kind] = float(
                np.mean([r for r, _, _ in pool.map(_tail_run, jobs, chunksize=8)])
            )
        for label, what in WHAT_IFS:
            out = {}
            for kind in ("stationary", "drift"):
                jobs = [(shape, kind, "thompson", runs, s) for s in range(first, first + seeds)]
                out[kind] = list(pool.map(_tail_run, jobs, [what] * seeds, chunksize=8))
            majority = [never if m is None else m for _, m, _ in out["drift"]]
            scored = np.mean([n for _, _, n in out["drift"] + out["stationary"]]) / runs
            table.add_row(
                label,
                f"{np.median(majority):.0f}",
                f"{np.percentile(majority, 90):.0f}",
                "never" if max(majority) == never else f"{max(majority)}",
                f"{sum(m <= 1000 for m in majority)} of {seeds}",
                f"{np.mean([r for r, _, _ in out['drift']]) / uniform['drift']:.3f}",
                f"{np.mean([r for r, _, _ in out['stationary']]) / uniform['stationary']:.3f}",
                f"{scored:.2f}",
            )
    return table


def misfit_table(seeds: int, runs: int) -> Table:
    """Options whose positive losses are not lognormal: does the hurdle model mis-rank?"""
    env = Environment(MISFIT, shapes=(heavy, heavy, heavy, rare_catastrophes))
    table = _table(
        f"Misfit: option-3 has rare catastrophes (mean 1.2 × the best's): {seeds} seeds",
        (
            "model",
            "Thompson / uniform",
            "option-0 (best) final share (median)",
            "option-3 largest share (median)",
            "seeds confident of option-3",
        ),
    )
    uniform = float(np.mean([simulate(env, "uniform", runs, s).regret for s in range(seeds)]))
    for model, config in {
        "hurdle (defaults)": BanditConfig(),
        "hurdle, no misfit check": replace(BanditConfig(), misfit_z=math.inf),
        "normal": replace(BanditConfig(), model="normal"),
        "round 2": ROUND_2,
        "before": BEFORE,
    }.items():
        results = [simulate(env, "thompson", runs, s, config=config) for s in range(seeds)]
        table.add_row(
            model,
            f"{np.mean([r.regret for r in results]) / uniform:.2f}",
            f"{np.median([r.shares[-1][0] for r in results]):.2f}",
            f"{np.median([r.shares[:, 3].max() for r in results]):.2f}",
            f"{sum(3 in r.confident for r in results)} of {seeds}",
        )
    return table


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
    parser.add_argument("--tail-seeds", type=int, default=200, help="seeds of the drift tail")
    parser.add_argument("--relative-runs", type=int, default=20_000, help="runs of relative harm")
    parser.add_argument("--quick", action="store_true", help="4 seeds, 20 for the drift tail")
    args = parser.parse_args()
    seeds = 4 if args.quick else args.seeds
    console = Console(width=220)
    started = time.perf_counter()
    table, examples = regret_table(seeds, args.runs)
    console.print(table)
    harm, harmful_example = harm_table(seeds, args.runs)
    console.print(harm)
    console.print(probation_table(seeds, args.runs))
    console.print(probe_table(seeds, args.runs))
    console.print(relative_harm_table(seeds, args.relative_runs))
    console.print(drift_tail_table(20 if args.quick else args.tail_seeds, args.runs))
    console.print(what_if_table(20 if args.quick else args.tail_seeds, args.runs))
    console.print(misfit_table(seeds, args.runs))
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
