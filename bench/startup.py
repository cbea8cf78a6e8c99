"""Start-up times: the orchestrator's client import and the CLI, beside the interpreter's own.

Each probe runs in a fresh interpreter ``--runs`` times, interleaved so that
load on the machine hits every probe alike; the table prints the median and the
90th percentile of the wall time, and each probe's median minus the bare
interpreter's (the part that is ours and our dependencies').

    .venv/bin/python bench/startup.py --runs 15

Targets (issue 14): ``from learnops.client import Router`` under 0.3 s;
``learnops --help`` and read-only commands under 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LEARNOPS = str(BIN / "learnops")

PROBES: dict[str, list[str]] = {
    "python -c pass (the baseline)": [sys.executable, "-c", "pass"],
    "import pydantic (the contract's floor)": [sys.executable, "-c", "import pydantic"],
    "from learnops.client import Router": [
        sys.executable,
        "-c",
        "from learnops.client import Router",
    ],
    # What a Router pays by its first record: the contract, imported on first use.
    "... and parse one PolicyChange": [
        sys.executable,
        "-c",
        "from learnops.client import Router;"
        " Router('127.0.0.1:9', allow_unverified=True).apply(b'{}')",
    ],
    "learnops --help": [LEARNOPS, "--help"],
    "learnops --version": [LEARNOPS, "--version"],
    "learnops policy --help": [LEARNOPS, "policy", "--help"],
    "learnops worker --help": [LEARNOPS, "worker", "--help"],
}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, env=os.environ.copy())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {name: [] for name in PROBES}
    for command in PROBES.values():
        timed(command)  # warm the file cache and the .pyc files
    for _ in range(args.runs):
        for name, command in PROBES.items():
            samples[name].append(timed(command))
    base = statistics.median(samples["python -c pass (the baseline)"])
    width = max(len(name) for name in PROBES)
    print(f"{'probe':<{width}}  median    p90   median - baseline   ({args.runs} runs each)")
    for name, values in samples.items():
        values.sort()
        median = statistics.median(values)
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        print(f"{name:<{width}}  {median:6.3f}  {p90:6.3f}  {median - base:+8.3f} s")


if __name__ == "__main__":
    main()
