"""CPU cost of curating a bundle (``DoerCuration.curate``), beside decoding the same bundles.

    PYTHONPATH=. .venv/bin/python bench/curation_pipeline.py [--bundles 5000] [--repeat 3]
        [--profile 25]

No Kafka and no database: ``learning/`` is pure, so this is the curator
stage's own CPU work per bundle.  The bundles are the seeded corpus of
``tests/unit/curation_corpus.py`` (five doers, a human note in every bundle
with PII, one doer's notes mostly duplicates and copies, as ``learnops demo
simulate`` makes them), encoded as the topic carries them.

1. Baselines over the same bytes in the same run: ``orjson.loads`` and
   ``RunCompleted.model_validate_json`` (what the stage does to every bundle
   before it curates it).
2. ``DoerCuration.curate`` of every bundle, one fresh state per doer per
   pass: bundles/s (wall) and CPU µs per bundle (process time), best of
   ``--repeat`` passes, and the digest of the outputs (equal across versions
   of the code that curate identically). Beside it, its two parts as the
   worker splits them with ``LEARNOPS_CURATION_PROCESSES`` (agents/curation_pool.py):
   ``prepare_bundle`` (redaction, hashes, ids, MinHash signatures: done in a
   curation process), pickling the texts there and the results back, and
   ``curate`` given the prepared text (what stays in the event loop).
3. With ``--profile N``: cProfile of one pass, the N functions with the most
   own time.

Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pickle
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the corpus lives with the tests

from learning.samples import (  # noqa: E402
    CurationConfig,
    DoerCuration,
    PreparedBundle,
    bundle_text,
    is_live,
    prepare_bundles,
)
from models.events import RunCompleted  # noqa: E402
from tests.unit.curation_corpus import NOW, corpus, curate_corpus  # noqa: E402


def timed(work: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds) of ``repeat`` runs of ``work``."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def curate_all(
    bundles: list[RunCompleted], prepared: list[PreparedBundle | None] | None = None
) -> None:
    """Curate every bundle with one fresh state per doer, keeping verdicts as the stage does."""
    config = CurationConfig()
    states: dict[str, DoerCuration] = {}
    stored: dict[str, object] = {}
    for i, bundle in enumerate(bundles):
        state = states.get(bundle.doer)
        if state is None:
            state = states[bundle.doer] = DoerCuration(bundle.doer, config, curator="bench")
        curation = state.curate(
            bundle,
            now=NOW,
            previous=stored.get,  # type: ignore[arg-type]
            prepared=prepared[i] if prepared else None,
        )
        for sample in curation.samples:
            if sample.record is not None:
                stored[sample.event.sample_id] = sample.record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args()

    started = time.perf_counter()
    raw = [b.to_json() for b in corpus(runs=args.bundles)]
    bundles = [RunCompleted.from_json(r) for r in raw]
    samples = sum(1 for b in bundles for a in b.artifacts if a.content and not b.shadow)
    print(
        f"{len(bundles)} bundles ({sum(map(len, raw)) / len(raw):.0f} B each as JSON, "
        f"{samples} samples) built in {time.perf_counter() - started:.1f}s\n"
    )

    # What LEARNOPS_CURATION_PROCESSES moves out of the worker's loop (agents/curation_pool.py):
    # prepare_bundle in a curation process, the loop curating with its result.
    hashing = CurationConfig().hashing
    live = [b for b in bundles if is_live(b)]
    texts = [bundle_text(b) for b in live]
    made = prepare_bundles(texts, hashing)
    by_event = dict(zip((b.event_id for b in live), made, strict=True))
    ready: list[PreparedBundle | None] = [by_event.get(b.event_id) for b in bundles]

    def crossed() -> object:
        """The texts pickled to a process and its results back (both ends' work)."""
        return pickle.loads(pickle.dumps(texts)), pickle.loads(pickle.dumps(made))

    rows = [
        ("orjson.loads (baseline)", timed(lambda: [orjson.loads(r) for r in raw], args.repeat)),
        (
            "RunCompleted.model_validate_json (baseline)",
            timed(lambda: [RunCompleted.model_validate_json(r) for r in raw], args.repeat),
        ),
        ("DoerCuration.curate", timed(lambda: curate_all(bundles), args.repeat)),
        (
            "  of which prepare_bundle (pure)",
            timed(lambda: prepare_bundles(texts, hashing), args.repeat),
        ),
        ("  pickled there and back (a process's cost)", timed(crossed, args.repeat)),
        (
            "  the rest: curate with the text prepared",
            timed(lambda: curate_all(bundles, ready), args.repeat),
        ),
    ]
    validate_cpu = rows[1][1][1]
    print(f"{'':44} {'bundles/s':>10} {'CPU µs/bundle':>14} {'× validate':>11}")
    for name, (wall, cpu) in rows:
        print(
            f"{name:44} {len(bundles) / wall:10,.0f} {cpu / len(bundles) * 1e6:14,.1f} "
            f"{cpu / validate_cpu:11.1f}"
        )
    digest, seen = curate_corpus(bundles[:500])
    print(f"\noutputs of the first 500 (alerting config): sha256 {digest[:16]}… {seen}")

    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(curate_all, bundles)
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue())


if __name__ == "__main__":
    main()
