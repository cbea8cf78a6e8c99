"""The cost of refusing repeated JSON keys on the CRL stage's decode, beside its baseline.

    python bench/duplicate_keys.py [--bundles 5000] [--rounds 5]

Per bundle (about 1.4 KB, from the simulated orchestrator), best of interleaved rounds:
the baseline is what the stage did before (pydantic's ``model_validate_json``
then ``score_bundle``); the check adds ``models.base.duplicate_key_problem``
(a jiter parse with ``catch_duplicate_keys``) in front. Prints figures; asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.config import load_learning_config
from learning.crl import score_bundle
from learnops.simulation.orchestrator import Orchestrator
from models.base import duplicate_key_problem
from models.events import RunCompleted


def per_bundle_us(
    works: list[Callable[[bytes], object]], raws: list[bytes], rounds: int
) -> list[float]:
    """Best time per bundle of each work; rounds interleave them, so load hits all alike."""
    best = [float("inf")] * len(works)
    for _ in range(rounds):
        for i, work in enumerate(works):
            started = time.perf_counter()
            for raw in raws:
                work(raw)
            best[i] = min(best[i], time.perf_counter() - started)
    return [b / len(raws) * 1e6 for b in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    doers = ("PRDWriter", "CodeReviewer", "TestWriter")
    orchestrator = Orchestrator(seed=11, doers=doers)
    raws = [orchestrator.bundle(doers[i % 3]).to_json() for i in range(args.bundles)]
    config = load_learning_config(None)

    def baseline(raw: bytes) -> object:
        bundle = RunCompleted.model_validate_json(raw)
        return score_bundle(bundle, config.weights, config.objectives)

    def checked(raw: bytes) -> object:
        if duplicate_key_problem(raw) is not None:
            raise AssertionError("the simulated bundles repeat no key")
        return baseline(raw)

    size = sum(map(len, raws)) / len(raws)
    check_only, base, with_check = per_bundle_us(
        [duplicate_key_problem, baseline, checked], raws, args.rounds
    )
    print(f"{args.bundles} bundles of {size:.0f} bytes, best of {args.rounds} rounds")
    print(f"  duplicate-key check alone           {check_only:7.1f} µs/bundle")
    print(f"  baseline: validate + score          {base:7.1f} µs/bundle")
    print(f"  check + validate + score            {with_check:7.1f} µs/bundle "
          f"({(with_check / base - 1) * 100:+.0f} %)")  # fmt: skip


if __name__ == "__main__":
    main()
