"""The canary's statistics by simulation, beside the naive methods they replace (issue 16).

    .venv/bin/python bench/canary_sim.py [--canaries N] [--results R] [--seed S] [--quick]

Every canary is judged after every result as the canary stage does
(``learning.canary_simulation.simulate_flow``: routed at the step's share,
``evaluate`` and ``advance`` rules after each result). Rows:

* **CRL** — loss shapes heavy (lognormal σ 1, 5 % zeros, 1 % ×10) and
  zero-inflated (90 %, 98 % zeros); a constant 5 % share and the real
  5 → 10 → 25 → 50 % flow; A/A, a harmful candidate (+10 %), one at the
  rollback margin (+5 %) and a better one (−8 %). Methods: ``canary`` (the
  default ``CanaryConfig``: variance guard, harm rule, dwell step-ups),
  ``previous`` (the rule before issue 16: plug-in variance, no harm rule,
  step-ups on evidence) and ``t-test`` (Welch's t-test at alpha after every
  result, in the same flow as ``canary``).
* **SRM** — the sequential Beta-binomial test (``learning.srm``) beside the
  χ² of each step's counts at p < 0.001 after every routing: A/A false pauses
  over 100,000 routings and the four steps, and a 90/10 split seen as 92/8.
* **Count guardrails** — ``learning.event_guardrails``: 1 % criticals per
  candidate run against none, candidate runs to rollback in the dwell flow;
  A/A false rollbacks.
* **Replays** — ``learning.replay_simulation`` at the demo's 12 samples: how
  often the paired verdict passes an identical and a 10 % better candidate at
  3 seeds and at the default 16, beside the old rule (means only).

Prints the tables, the number of replications and the wall time; asserts
nothing (``tests/unit/test_canary_flow.py``, ``test_srm.py`` and
``test_event_guardrails.py`` hold smaller versions with assertions).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from learning.canary import CanaryConfig
from learning.canary_simulation import SHAPES, FlowResult, previous, simulate_flow
from learning.event_guardrails import first_rollback
from learning.replay_simulation import GOLDEN, pass_rate, simulated_losses
from learning.srm import first_pause

SCENARIOS = {"A/A": 1.0, "+10 % (harmful)": 1.10, "+5 % (at margin)": 1.05, "−8 % (better)": 0.92}
BY = 50_000  # the horizon for harm


def crl_rows(
    canaries: int, results: int, seed: int, quick: bool
) -> list[tuple[str, str, str, str, FlowResult, float]]:
    config = CanaryConfig()
    methods = {"canary": (config, "canary"), "previous": (previous(config), "canary")}
    rows = []
    for shape in SHAPES:
        scenarios = SCENARIOS if shape == "heavy" else {"A/A": 1.0, "−8 % (better)": 0.92}
        if quick and shape != "heavy":
            continue
        for scenario, effect in scenarios.items():
            for setting, share in (("5 % share", 0.05), ("5→10→25→50 %", None)):
                runs = dict(methods)
                if scenario == "A/A":
                    runs["t-test"] = (config, "t_test")
                for method, (cfg, rule) in runs.items():
                    started = time.perf_counter()
                    result = simulate_flow(
                        SHAPES[shape], cfg, effect=effect, canaries=canaries,
                        results=results, seed=seed, share=share, rule=rule,  # type: ignore[arg-type]
                    )  # fmt: skip
                    seconds = time.perf_counter() - started
                    rows.append((shape, scenario, setting, method, result, seconds))
    return rows


def crl_table(rows: list[tuple[str, str, str, str, FlowResult, float]], n: int, r: int) -> Table:
    table = Table(
        title=(
            f"CRL decisions: {n} canaries per row, judged after every result up to {r:,} "
            f"results; alpha {CanaryConfig.alpha}, per side ≤ {CanaryConfig.alpha / 2}"
        )
    )
    for column in ("shape", "scenario", "allocation", "method"):
        table.add_column(column)
    for column in (
        "promote", "rollback", f"rollback by {BY // 1000}k", "undecided",
        "median results to promote", "median results to rollback",
        "median cand. runs at decision", "s",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    previous_key = None
    for shape, scenario, setting, method, result, seconds in rows:
        if previous_key is not None and previous_key != (shape, scenario):
            table.add_section()
        previous_key = (shape, scenario)
        decided = result.action != "continue"
        cand = float(np.median(result.candidate_runs[decided])) if decided.any() else None
        table.add_row(
            shape, scenario, setting, method,
            f"{result.rate('promote'):.2%}", f"{result.rate('rollback'):.2%}",
            f"{result.rate('rollback', by=BY):.2%}", f"{result.rate('continue'):.2%}",
            _count(result.median_results("promote")), _count(result.median_results("rollback")),
            _count(cand), f"{seconds:.0f}",
        )  # fmt: skip
    return table


def _count(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def srm_table(replications: int, seed: int) -> Table:
    from scipy.stats import chi2

    rng = np.random.default_rng(seed)
    per_step = 25_000
    steps = (0.05, 0.10, 0.25, 0.50)
    alloc = np.repeat(steps, per_step)
    table = Table(title=f"Sample ratio mismatch: {replications} canaries per row, threshold 0.001")
    for column in ("case", "method", "paused", "median routings to pause"):
        table.add_column(column, justify="left" if column in ("case", "method") else "right")
    paused_seq, paused_chi = [], []
    for start in range(0, replications, 50):
        size = min(50, replications - start)
        routed = rng.random((size, alloc.size)) < alloc
        paused_seq.append(first_pause(routed, alloc))
        naive = np.full(size, -1)
        offset = 0
        for share in steps:
            part = routed[:, offset : offset + per_step]
            m = np.cumsum(part, axis=1)
            n = np.arange(1, per_step + 1)
            stat = (m - n * share) ** 2 / (n * share * (1.0 - share))
            hit = chi2.sf(stat, 1) < 0.001
            first = np.where(hit.any(axis=1), hit.argmax(axis=1) + offset, -1)
            naive = np.where((naive < 0) & (first >= 0), first, naive)
            offset += per_step
        paused_chi.append(naive)
    for method, found in (("sequential", paused_seq), ("χ² at every routing", paused_chi)):
        first = np.concatenate(found)
        hit = first >= 0
        median = _count(float(np.median(first[hit]) + 1)) if hit.any() else "–"
        table.add_row("A/A, 4 steps × 25,000 routings", method, f"{hit.mean():.2%}", median)
    routed = rng.random((replications, 10_000)) < 0.08  # intended 10 %, seen 8 %
    first = first_pause(routed, 0.10)
    hit = first >= 0
    table.add_row(
        "90/10 seen as 92/8, 10,000 routings", "sequential", f"{hit.mean():.2%}",
        _count(float(np.median(first[hit]) + 1)) if hit.any() else "–",
    )  # fmt: skip
    return table


def guardrail_table(replications: int, seed: int) -> Table:
    rng = np.random.default_rng(seed)
    config = CanaryConfig()
    dwell = config.min_sample_size
    steps = np.asarray(config.steps)
    # Criticals in 1 % of candidate runs, none in the control: every event run is a
    # candidate run; the share in force is that of the step the run fell in (dwell flow).
    gaps = rng.geometric(0.01, size=(replications, 60))
    at_run = np.cumsum(gaps, axis=1)
    shares = steps[np.minimum((at_run - 1) // dwell, len(steps) - 1)]
    first = np.array(
        [first_rollback(np.ones((1, 60), bool), shares[i])[0] for i in range(replications)]
    )
    runs = at_run[np.arange(replications), first]
    aa_shares = np.repeat(steps, 100)
    aa = first_rollback(rng.random((replications, aa_shares.size)) < aa_shares, aa_shares)
    table = Table(title=f"Count guardrails (α 0.005): {replications} canaries per row")
    for column in ("case", "result"):
        table.add_column(column)
    table.add_row(
        "1 % criticals per candidate run vs none, dwell flow",
        f"rolled back {np.mean(first >= 0):.2%}; median {np.median(runs):,.0f} candidate runs, "
        f"median {np.median(first + 1):.0f} criticals shipped",
    )
    table.add_row(
        "A/A, 100 event runs per step over 4 steps", f"false rollback {np.mean(aa >= 0):.2%}"
    )
    return table


def replay_table(replications: int, seed: int) -> Table:
    table = Table(
        title=f"Replay verdicts: {GOLDEN} samples, {replications} simulated replays per cell"
    )
    for column in ("candidate", "seeds", "paired bound passes", "means only passes"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for name, scale in (("identical", 1.0), ("10 % better", 0.9)):
        for seeds in (3, 16):
            rate = pass_rate(scale, replications, seed=seed, seeds=seeds)
            rng = np.random.default_rng(seed)
            naive = 0
            for _ in range(replications):  # the rule before issue 16: the mean is lower
                candidate, control = simulated_losses(rng, scale, seeds=seeds)
                naive += np.mean([x for *_, x in candidate]) < np.mean([x for *_, x in control])
            table.add_row(name, str(seeds), f"{rate:.1%}", f"{naive / replications:.1%}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--canaries", type=int, default=400)
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--quick", action="store_true", help="the heavy shape only")
    args = parser.parse_args()
    console = Console(width=220)
    started = time.perf_counter()
    rows = crl_rows(args.canaries, args.results, args.seed, args.quick)
    console.print(crl_table(rows, args.canaries, args.results))
    console.print(srm_table(min(args.canaries, 400), args.seed + 1))
    console.print(guardrail_table(2_000, args.seed + 2))
    console.print(replay_table(1_000, args.seed + 3))
    console.print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
