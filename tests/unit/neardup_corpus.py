"""Planted near-duplicates with exactly computed Jaccard similarity, and an index's score on them.

Test data, not product code: ``tests/unit/test_contamination.py`` asserts on
it and ``bench/curation.py`` prints the same table.  Documents are random
words from a large made-up vocabulary, so two unrelated documents share
(almost) no shingle; each edited copy is made by one-word substitutions until
its exact shingle Jaccard with the original reaches a target level.  The
exact Jaccard is computed on word tuples, independently of the hashing under
test.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

LEVELS: tuple[float, ...] = (0.95, 0.9, 0.85, 0.7, 0.5)


def words_of(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def shingle_set(text: str, k: int = 5) -> set[tuple[str, ...]]:
    """The exact set of k-word shingles (a text shorter than k words is one shingle)."""
    w = words_of(text)
    if len(w) < k:
        return {tuple(w)} if w else set()
    return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}


def jaccard(a: str, b: str, k: int = 5) -> float:
    sa, sb = shingle_set(a, k), shingle_set(b, k)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def make_vocabulary(rng: random.Random, n: int = 20_000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return sorted(
        {"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)}
    )


def make_document(rng: random.Random, vocabulary: list[str], n_words: int = 180) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(n_words))


def edit_to_similarity(
    rng: random.Random, base: str, target: float, vocabulary: list[str], k: int = 5
) -> tuple[str, float]:
    """``base`` with random one-word substitutions until its exact Jaccard falls to ``target``."""
    words = base.split()
    text = base
    positions = list(range(len(words)))
    rng.shuffle(positions)
    for pos in positions:
        candidate = words.copy()
        candidate[pos] = rng.choice(vocabulary)
        candidate_text = " ".join(candidate)
        if jaccard(base, candidate_text, k) < target - 0.02:
            continue  # this edit overshoots; try another position
        words, text = candidate, candidate_text
        if jaccard(base, text, k) <= target + 0.01:
            break
    return text, jaccard(base, text, k)


@dataclass(frozen=True)
class Planted:
    """An edited copy of ``base_id`` planted at ``level``, and its exact Jaccard with the base."""

    base_id: str
    level: float
    text: str
    true_jaccard: float


@dataclass
class PlantedCorpus:
    bases: dict[str, str]
    queries: list[Planted]


def build_planted(
    seed: int = 7,
    n_bases: int = 1500,
    n_edited: int = 150,
    levels: tuple[float, ...] = LEVELS,
    words_per_document: int = 180,
) -> PlantedCorpus:
    """``n_bases`` unrelated documents and, for ``n_edited`` of them, a copy at every level."""
    rng = random.Random(seed)
    vocabulary = make_vocabulary(rng)
    bases = {f"doc-{i}": make_document(rng, vocabulary, words_per_document) for i in range(n_bases)}
    queries: list[Planted] = []
    step = max(1, n_bases // n_edited)
    for i in range(0, step * n_edited, step):
        base_id = f"doc-{i}"
        for level in levels:
            text, true = edit_to_similarity(rng, bases[base_id], level, vocabulary)
            queries.append(Planted(base_id, level, text, true))
    return PlantedCorpus(bases, queries)


@dataclass
class PlantedScore:
    """How often each planted copy found its base, and what else came back."""

    threshold: float
    per_level: dict[float, tuple[float, int, float]] = field(default_factory=dict)
    above_found: int = 0
    above_total: int = 0
    below_found: int = 0
    below_total: int = 0
    far_below_returned: int = 0
    unrelated_returned: int = 0

    @property
    def recall(self) -> float:
        """Share of pairs with exact Jaccard ≥ threshold that the index returned."""
        return self.above_found / self.above_total if self.above_total else 1.0

    @property
    def below_rate(self) -> float:
        """Share of pairs with exact Jaccard < threshold that the index returned anyway."""
        return self.below_found / self.below_total if self.below_total else 0.0

    def returned_rate(self, level: float) -> float:
        return self.per_level[level][2]


def score_planted(
    query: Callable[[str], list[str]], corpus: PlantedCorpus, threshold: float, far: float = 0.15
) -> PlantedScore:
    """Score ``query`` (text → ids) on the planted copies; "far below" is ``threshold − far``."""
    result = PlantedScore(threshold)
    found_by_level: dict[float, list[bool]] = {}
    true_by_level: dict[float, list[float]] = {}
    for q in corpus.queries:
        returned = query(q.text)
        found = q.base_id in returned
        found_by_level.setdefault(q.level, []).append(found)
        true_by_level.setdefault(q.level, []).append(q.true_jaccard)
        result.unrelated_returned += sum(1 for r in returned if r != q.base_id)
        if found and q.true_jaccard < threshold - far:
            result.far_below_returned += 1
        if q.true_jaccard >= threshold:
            result.above_total += 1
            result.above_found += found
        else:
            result.below_total += 1
            result.below_found += found
    for level, hits in found_by_level.items():
        trues = true_by_level[level]
        result.per_level[level] = (sum(trues) / len(trues), len(hits), sum(hits) / len(hits))
    return result


def format_planted(result: PlantedScore) -> str:
    lines = [f"{'planted J':>9} {'exact J (mean)':>14} {'pairs':>6} {'returned':>9}"]
    for level, (mean_true, pairs, rate) in sorted(result.per_level.items(), reverse=True):
        lines.append(f"{level:>9.2f} {mean_true:>14.3f} {pairs:>6} {rate:>9.3f}")
    lines.append(
        f"recall, exact J >= {result.threshold}: {result.recall:.3f} of {result.above_total} pairs"
    )
    lines.append(
        f"returned with exact J < {result.threshold}: {result.below_rate:.3f} of "
        f"{result.below_total}; more than 0.15 below: {result.far_below_returned}; "
        f"unrelated documents returned: {result.unrelated_returned}"
    )
    return "\n".join(lines)
