"""Always-valid canary vs a t-test after every batch: promotion and rollback rates.

    .venv/bin/python bench/canary_sim.py [--canaries N] [--seed S] [--clip]

Each canary gets CRL ~ N(0.3, 0.15²) per run (clipped at 0 with --clip), is
looked at after every batch of 10 runs per arm up to 5,000 runs per arm, and
stops at its first decision. Both methods start deciding at the same
``min_sample_size``; the only difference is the test:

* mSPRT — ``learning.canary.simulate`` (the statistic of ``evaluate``) with the
  default ``CanaryConfig``;
* naive — Welch's t-test at every look: promote when p < alpha and the
  candidate is better, roll back when p < alpha and it is worse.

Prints the figures and the wall time; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table
from scipy import stats

from learning.canary import CanaryConfig, SimulationResult, cumulative_statistics, simulate

MEAN, SD = 0.3, 0.15
RUNS, BATCH, CHUNK = 5_000, 10, 250
SCENARIOS = {
    "A/A": 1.00,
    "10 % worse": 1.10,
    "5 % worse (rollback threshold)": 1.05,
    "8 % better": 0.92,
}


@dataclass
class Tally:
    actions: list[npt.NDArray[np.str_]]
    runs: list[npt.NDArray[np.int64]]
    seconds: float = 0.0

    def result(self) -> SimulationResult:
        return SimulationResult(np.concatenate(self.actions), np.concatenate(self.runs))


def naive_t_test(
    control: npt.NDArray[np.float64], candidate: npt.NDArray[np.float64], config: CanaryConfig
) -> SimulationResult:
    """First decision of Welch's t-test repeated after every batch."""
    counts = np.arange(BATCH, RUNS + 1, BATCH)
    mean_c, var_c = cumulative_statistics(control, counts)
    mean_t, var_t = cumulative_statistics(candidate, counts)
    se2_c, se2_t = var_c / counts, var_t / counts
    delta = mean_t - mean_c
    t = delta / np.sqrt(se2_c + se2_t)
    df = (se2_c + se2_t) ** 2 / (se2_c**2 / (counts - 1) + se2_t**2 / (counts - 1))
    p = 2 * stats.t.sf(np.abs(t), df)
    ready = counts >= config.min_sample_size
    significant = ready & (p < config.alpha)
    rollback, promote = significant & (delta > 0), significant & (delta < 0)
    decided = rollback | promote
    first = decided.argmax(axis=1)
    rows = np.arange(len(first))
    hit = decided[rows, first]
    action = np.where(hit, np.where(rollback[rows, first], "rollback", "promote"), "continue")
    return SimulationResult(action, np.where(hit, counts[first], counts[-1]).astype(np.int64))


def run(canaries: int, seed: int, clip: bool) -> tuple[dict[str, dict[str, Tally]], float]:
    config = CanaryConfig()
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Tally]] = {}
    started = time.perf_counter()
    for name, ratio in SCENARIOS.items():
        tallies = {"mSPRT (always valid)": Tally([], []), "naive t-test": Tally([], [])}
        for start in range(0, canaries, CHUNK):
            size = min(CHUNK, canaries - start)
            control = rng.normal(MEAN, SD, (size, RUNS))
            candidate = rng.normal(MEAN * ratio, SD, (size, RUNS))
            if clip:
                np.clip(control, 0, None, out=control)
                np.clip(candidate, 0, None, out=candidate)
            for method, tally in tallies.items():
                t0 = time.perf_counter()
                if method == "naive t-test":
                    result = naive_t_test(control, candidate, config)
                else:
                    result = simulate(control, candidate, config, batch=BATCH)
                tally.seconds += time.perf_counter() - t0
                tally.actions.append(result.action)
                tally.runs.append(result.runs_per_arm)
        out[name] = tallies
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--canaries", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--clip", action="store_true", help="clip CRL at 0")
    args = parser.parse_args()
    config = CanaryConfig()
    console = Console()
    results, wall = run(args.canaries, args.seed, args.clip)

    table = Table(
        title=(
            f"{args.canaries} canaries per scenario, CRL ~ N({MEAN}, {SD}²)"
            f"{' clipped at 0' if args.clip else ''}, a look every {BATCH} runs per arm up to "
            f"{RUNS}; alpha={config.alpha}, min_sample_size={config.min_sample_size}, "
            f"max_crl_increase={config.max_crl_increase}, mixing_sd={config.mixing_sd}"
        )
    )
    for column in ("scenario", "method", "promote", "rollback", "undecided"):
        table.add_column(column, justify="left" if column in ("scenario", "method") else "right")
    table.add_column("median runs/arm to decision", justify="right")
    table.add_column("compute s", justify="right")
    for name, tallies in results.items():
        for method, tally in tallies.items():
            r = tally.result()
            median = r.median_runs()
            table.add_row(
                name,
                method,
                f"{r.rate('promote'):.2%}",
                f"{r.rate('rollback'):.2%}",
                f"{r.rate('continue'):.2%}",
                "–" if median is None else f"{median:,.0f}",
                f"{tally.seconds:.2f}",
            )
        table.add_section()
    console.print(table)
    console.print(f"wall time {wall:.1f} s (data generation included)")


if __name__ == "__main__":
    main()
