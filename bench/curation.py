"""Redaction and contamination-guard throughput, near-duplicate lookup scaling, detector quality.

    .venv/bin/python bench/curation.py [--sizes 10000,100000,1000000] [--quick]

1. Redaction precision/recall per PII kind on the labelled corpus the unit
   tests build (tests/unit/pii_corpus.py).
2. Samples per second through ``redact``, ``MinHasher.signature`` and
   ``ContaminationGuard.check`` on ~1 KB agent-artifact-like texts, beside two
   baselines over the same texts in the same run (``str.lower().split()`` and
   SHA-256), so the figures mean something on a shared machine.
3. Near-duplicate recall on planted pairs of exactly known Jaccard
   (tests/unit/neardup_corpus.py) with 128 and 256 permutations.
4. Lookup time (mean, p99) and memory of a ``NearDuplicateIndex`` grown to each
   size in ``--sizes``.  The first 10k entries are real texts; the rest are
   signatures of synthetic documents (60 random shingle ids each) computed in
   bulk with numpy from per-shingle permuted values that datasketch itself
   produced, and checked equal to datasketch's signatures for a few rows —
   the index sees the same kind of signature either way, only faster to make.

Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the corpora live with the tests

from learning.contamination import (  # noqa: E402
    ContaminationGuard,
    MinHasher,
    NearDuplicateIndex,
    Signature,
)
from learning.curation import KINDS, findings_only, redact  # noqa: E402
from tests.unit.neardup_corpus import (  # noqa: E402
    build_planted,
    format_planted,
    jaccard,
    score_planted,
)
from tests.unit.pii_corpus import build_corpus, format_table, positive_example, score  # noqa: E402

# ------------------------------------------------------------------ realistic texts

DOERS = ["PRDWriter", "CodeReviewer", "TestPlanner", "SQLMigrator", "Summariser", "Triage"]
IDENTS = ["max_retries", "pool_size", "batch_window", "timeoutMs", "cache.ttl", "rateLimit"]
NOUNS = ["checkout flow", "billing API", "search index", "onboarding email", "audit log", "cache"]
VERBS = ["refactor", "document", "benchmark", "migrate", "split", "harden", "deprecate"]
SENTENCES = [
    "The {doer} doer proposed raising `{ident}` from {a} to {b} after run {run} on {date}.",
    "Latency p95 was {ms} ms against a {budget} ms budget; {k} of {m} gates passed.",
    "Next step: {verb} the {noun} in services/{svc}/handler.py before release {ver}.",
    "Customers reported {k} incidents with the {noun} last week, {m} of them in EU regions.",
    "Acceptance criteria: the {noun} returns within {ms} ms for {k} concurrent users.",
    "Risk: the {noun} depends on {svc} v{ver}, which is end-of-life on {date}.",
    "We will {verb} the {noun} in {k} steps and measure error rate after each one.",
    "Open question for {doer}: should `{ident}` default to {a} or stay at {b}?",
    "Grounding: {k} of {m} claims cite a source; the rest need a link to the design doc.",
    "The migration touches {k} tables and {m} indexes; estimated downtime is zero.",
]


def artifact_text(rng: random.Random, pii_rate: float, size: int = 1000) -> str:
    """A ~1 KB agent-artifact-like text; with probability ``pii_rate`` one sentence holds PII."""
    parts: list[str] = [f"## {rng.choice(VERBS).title()} the {rng.choice(NOUNS)}"]
    n = len(parts[0])
    while n < size:
        sentence = rng.choice(SENTENCES).format(
            doer=rng.choice(DOERS),
            ident=rng.choice(IDENTS),
            a=rng.randint(1, 50),
            b=rng.randint(51, 500),
            run=f"run-{rng.randint(10_000, 99_999)}",
            date=f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            ms=rng.randint(50, 900),
            budget=rng.choice([200, 500, 1000]),
            k=rng.randint(1, 20),
            m=rng.randint(20, 40),
            verb=rng.choice(VERBS),
            noun=rng.choice(NOUNS),
            svc=rng.choice(["auth", "billing", "search", "notify"]),
            ver=f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
        )
        parts.append(sentence)
        n += len(sentence) + 1
    if rng.random() < pii_rate:
        lead, value, trail = positive_example(
            rng, rng.choice(KINDS), ("US", "GB", "DE", "FR", "IN")
        )
        parts.insert(rng.randint(1, len(parts)), f"Contact detail seen: {lead}{value}{trail}.")
    return " ".join(parts)


def edit_words(rng: random.Random, text: str, share: float) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(len(words) * share))):
        words[i] = rng.choice(VERBS + NOUNS)
    return " ".join(words)


# ------------------------------------------------------------------ helpers


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def per_second(fn: Callable[[str], object], texts: Sequence[str]) -> tuple[float, float]:
    """(samples per second, microseconds per sample) of ``fn`` over ``texts``."""
    start = time.perf_counter()
    for text in texts:
        fn(text)
    elapsed = time.perf_counter() - start
    return len(texts) / elapsed, elapsed / len(texts) * 1e6


def header(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 74 - len(title)))


# ------------------------------------------------------------------ 1. detector quality


def bench_detector_quality() -> None:
    header("1. redaction precision / recall (tests/unit/pii_corpus.py, seed 20240315)")
    corpus = build_corpus()
    start = time.perf_counter()
    result = score(corpus, findings_only)
    elapsed = time.perf_counter() - start
    print(f"{len(corpus)} sentences scored in {elapsed:.2f} s")
    print(format_table(result))


# ------------------------------------------------------------------ 2. throughput


def bench_throughput(n_texts: int, seed: int) -> None:
    header(f"2. throughput on {n_texts} texts of ~1 KB (20 % hold one PII value)")
    rng = random.Random(seed)
    texts = [artifact_text(rng, pii_rate=0.2) for _ in range(n_texts)]
    mean_len = statistics.fmean(len(t) for t in texts)
    # A guard stream: 10 % exact repeats and 10 % light edits of earlier texts.
    stream: list[str] = []
    for i, text in enumerate(texts):
        roll = rng.random()
        if i > 10 and roll < 0.1:
            stream.append(rng.choice(stream))
        elif i > 10 and roll < 0.2:
            stream.append(edit_words(rng, rng.choice(stream), 0.03))
        else:
            stream.append(text)
    hasher = MinHasher()
    guard = ContaminationGuard()
    counter = iter(range(10**9))

    def check(text: str) -> object:
        return guard.check(f"s{next(counter)}", text, ai_generated_by_us=False)

    rows = [
        ("baseline: str.lower().split()", per_second(lambda t: t.lower().split(), texts)),
        ("baseline: sha256", per_second(lambda t: hashlib.sha256(t.encode()).hexdigest(), texts)),
        ("redact()", per_second(redact, texts)),
        ("MinHasher.signature()", per_second(hasher.signature, texts)),
        ("ContaminationGuard.check()", per_second(check, stream)),
    ]
    print(f"mean text length {mean_len:.0f} characters")
    print(f"{'operation':<32} {'samples/s':>11} {'µs/sample':>10}")
    for name, (rate, micros) in rows:
        print(f"{name:<32} {rate:>11,.0f} {micros:>10.1f}")
    stats = guard.stats.to_dict()
    print(f"guard verdicts: {stats} (clean rate {guard.stats.clean_rate:.3f})")
    redact_rate = rows[2][1][0]
    guard_rate = rows[4][1][0]
    both = 1 / (1 / redact_rate + 1 / guard_rate)
    print(f"redact + guard per sample: ~{both:,.0f} samples/s on one core")


# ------------------------------------------------------------------ 3. planted quality


def bench_planted(quick: bool) -> None:
    n_bases, n_edited = (400, 60) if quick else (1500, 150)
    header(f"3. near-duplicate recall on planted pairs ({n_bases} documents, threshold 0.8)")
    corpus = build_planted(seed=7, n_bases=n_bases, n_edited=n_edited)
    for num_perm in (128, 256):
        index = NearDuplicateIndex(threshold=0.8, num_perm=num_perm)
        for doc_id, text in corpus.bases.items():
            index.add(doc_id, text)
        result = score_planted(index.query, corpus, 0.8)
        print(f"\nnum_perm={num_perm}, (bands, rows)={index.bands}")
        print(format_planted(result))


# ------------------------------------------------------------------ 4. scaling


class SyntheticSignatures:
    """Signatures of synthetic documents, made with numpy from datasketch's per-shingle values."""

    def __init__(self, hasher: MinHasher, seed: int, vocabulary: int = 1 << 16, shingles: int = 60):
        self.rng = np.random.default_rng(seed)
        self.shingles = shingles
        self.vocab = self.rng.choice(1 << 32, size=vocabulary, replace=False).astype(np.uint32)
        # Each shingle's permuted values: the signature of a one-shingle set.
        self.permuted = np.stack(
            [hasher.signature_of_shingles(self.vocab[i : i + 1]) for i in range(vocabulary)]
        )
        self.hasher = hasher

    def batch(self, n: int, chunk: int = 4096) -> npt.NDArray[np.uint32]:
        out = np.empty((n, self.hasher.num_perm), dtype=np.uint32)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            ids = self.rng.integers(0, len(self.vocab), size=(hi - lo, self.shingles))
            out[lo:hi] = self.permuted[ids].min(axis=1)
            if lo == 0:  # the fast path must agree with datasketch
                for row in range(min(4, hi - lo)):
                    direct = self.hasher.signature_of_shingles(self.vocab[ids[row]])
                    assert np.array_equal(direct, out[row]), "synthetic signature mismatch"
        return out


def time_queries(
    index: NearDuplicateIndex, signatures: Sequence[Signature]
) -> tuple[float, float, float]:
    """(mean µs, p99 µs, mean candidates) of lookups by precomputed signature."""
    times = []
    candidates = 0
    for sig in signatures:
        start = time.perf_counter()
        index.similar_to_signature(sig)
        times.append((time.perf_counter() - start) * 1e6)
        candidates += index.candidates(sig)
    times.sort()
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    return statistics.fmean(times), p99, candidates / len(signatures)


def bench_scaling(sizes: Sequence[int], n_queries: int, seed: int) -> None:
    header(f"4. near-duplicate lookup vs index size {', '.join(f'{s:,}' for s in sizes)}")
    rng = random.Random(seed)
    rss0 = rss_mb()
    index = NearDuplicateIndex(threshold=0.8)
    hasher = index.hasher
    n_real = min(10_000, sizes[0])
    real = [artifact_text(rng, pii_rate=0.0) for _ in range(n_real)]
    start = time.perf_counter()
    real_sigs = np.stack([hasher.signature(t) for t in real])
    sign_s = time.perf_counter() - start
    print(f"signed {n_real:,} real texts in {sign_s:.2f} s ({sign_s / n_real * 1e6:.0f} µs each)")

    start = time.perf_counter()
    synthetic = SyntheticSignatures(hasher, seed)
    print(
        f"synthetic fill: {len(synthetic.vocab):,} shingle ids' permuted values from datasketch "
        f"in {time.perf_counter() - start:.1f} s; {synthetic.shingles} shingles per document"
    )

    # Queries: half light edits of indexed real texts, half fresh texts.
    query_texts: list[str] = []
    query_base: list[int | None] = []
    for _ in range(n_queries // 2):
        i = rng.randrange(n_real)
        query_texts.append(edit_words(rng, real[i], 0.02))
        query_base.append(i)
        query_texts.append(artifact_text(rng, pii_rate=0.0))
        query_base.append(None)
    query_sigs = [hasher.signature(t) for t in query_texts]
    truth = [
        jaccard(real[b], q) if b is not None else None
        for q, b in zip(query_texts, query_base, strict=True)
    ]

    build_s = 0.0
    start = time.perf_counter()
    index.add_signatures([f"real-{i}" for i in range(n_real)], real_sigs)
    build_s += time.perf_counter() - start
    print(
        f"\n{'size':>10} {'build s':>8} {'RSS MB':>8} {'sig MB':>7} {'lookup µs':>10} "
        f"{'p99 µs':>8} {'cands':>6} {'recall':>7} {'extra':>6} {'time ratio':>11}"
    )
    first_mean: float | None = None
    for size in sizes:
        todo = size - len(index)
        start = time.perf_counter()
        while todo > 0:
            n = min(todo, 100_000)
            ids = [f"syn-{len(index) + j}" for j in range(n)]
            sigs = synthetic.batch(n)
            index.add_signatures(ids, sigs)
            todo -= n
        build_s += time.perf_counter() - start
        mean_us, p99_us, cands = time_queries(index, query_sigs)
        found = above = extra = 0
        for sig, base, true in zip(query_sigs, query_base, truth, strict=True):
            hits = index.similar_to_signature(sig)
            ids_found = [h for h, _ in hits]
            if base is not None and true is not None and true >= 0.8:
                above += 1
                found += f"real-{base}" in ids_found
            extra += sum(1 for h in ids_found if h.startswith("syn-"))
        first_mean = first_mean or mean_us
        ratio = (mean_us / first_mean) / (size / sizes[0])
        print(
            f"{size:>10,} {build_s:>8.1f} {rss_mb() - rss0:>8.0f} "
            f"{size * hasher.signature_bytes / 2**20:>7.0f} {mean_us:>10.1f} {p99_us:>8.1f} "
            f"{cands:>6.2f} {found / max(1, above):>7.3f} {extra:>6} {ratio:>11.4f}"
        )
    print(
        "time ratio = (lookup time / lookup time at the first size) / (size / first size);\n"
        "linear growth would keep it at 1, constant lookup time makes it fall as 1/size.\n"
        "recall = edited copies (exact J >= 0.8) that found their original; extra = synthetic\n"
        "documents returned by any query (should be 0). RSS is the growth of the process since\n"
        "the section started (signature matrix + datasketch's dict-of-sets band tables)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=None, help="comma-separated index sizes")
    parser.add_argument("--quick", action="store_true", help="small sizes, well under 30 s")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [2_000, 10_000, 50_000] if args.quick else [10_000, 100_000, 1_000_000]
    n_texts = 400 if args.quick else 3000
    n_queries = 200 if args.quick else 1000
    started = time.perf_counter()
    bench_detector_quality()
    bench_throughput(n_texts, args.seed)
    bench_planted(args.quick)
    bench_scaling(sorted(sizes), n_queries, args.seed)
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
