"""Near-duplicate recall and precision on planted pairs; self-loops, diversity, the guard, stats."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from hypothesis import given, settings
from hypothesis import strategies as st

from learning.contamination import (
    BandTable,
    ContaminationAlertRule,
    ContaminationGuard,
    DatasetStats,
    DiversityWindow,
    GoldenSet,
    GuardConfig,
    MinHasher,
    NearDuplicateIndex,
    SelfLoopGuard,
    _most_true_per_row,
    candidate_probability,
    estimate_jaccard,
    lsh_bands,
)
from tests.unit.neardup_corpus import (
    PlantedCorpus,
    build_planted,
    edit_to_similarity,
    format_planted,
    make_document,
    make_vocabulary,
    score_planted,
)

SHINGLE = 5
THRESHOLD = 0.8


@pytest.fixture(scope="module")
def planted() -> tuple[NearDuplicateIndex, PlantedCorpus]:
    corpus = build_planted(seed=7, n_bases=1500, n_edited=150)
    index = NearDuplicateIndex(threshold=THRESHOLD, shingle_size=SHINGLE)
    for doc_id, text in corpus.bases.items():
        index.add(doc_id, text)
    return index, corpus


def test_planted_near_duplicates_are_found_and_dissimilar_ones_are_not(
    planted: tuple[NearDuplicateIndex, PlantedCorpus],
) -> None:
    index, corpus = planted
    result = score_planted(index.query, corpus, THRESHOLD)
    print(f"\nnear-duplicate index: threshold {THRESHOLD}, (bands, rows) {index.bands}, 128 perms")
    print(format_planted(result))
    assert result.returned_rate(0.95) == 1.0
    assert result.returned_rate(0.9) >= 0.98
    # Pairs just above the threshold: the 128-slot estimate has a standard
    # error of about 0.03 at J = 0.85, so some fall under 0.8 (docs/curation.md).
    assert result.returned_rate(0.85) >= 0.8
    assert result.recall >= 0.9
    assert result.returned_rate(0.7) <= 0.05
    assert result.returned_rate(0.5) == 0.0
    assert result.far_below_returned == 0
    assert result.unrelated_returned == 0


def test_query_ranks_closest_first_and_finds_itself() -> None:
    rng = random.Random(3)
    vocabulary = make_vocabulary(rng, 5000)
    base = make_document(rng, vocabulary)
    close, _ = edit_to_similarity(rng, base, 0.85, vocabulary)
    closer, _ = edit_to_similarity(rng, base, 0.99, vocabulary)
    index = NearDuplicateIndex(threshold=0.7)
    index.add("close", close)
    index.add("closer", closer)
    index.add("other", make_document(rng, vocabulary))
    similar = index.similar(base)
    assert [s for s, _ in similar] == ["closer", "close"]
    assert similar[0][1] > similar[1][1] >= 0.7
    assert index.query(closer)[0] == "closer"


def test_add_remove_len_and_replace() -> None:
    index = NearDuplicateIndex()
    text = "the quick brown fox jumps over the lazy dog near the river bank today"
    index.add("a", text)
    index.add("a", text)  # redelivery: no second entry
    assert len(index) == 1 and "a" in index
    assert index.query(text) == ["a"]
    index.add("a", "something entirely different from the first text we stored here")
    assert index.query(text) == []
    index.remove("a")
    assert len(index) == 0 and "a" not in index
    with pytest.raises(KeyError):
        index.remove("a")
    index.add("b", text)  # reuses the freed row
    assert index.query(text) == ["b"]


def test_signatures_round_trip_through_bytes() -> None:
    index = NearDuplicateIndex()
    text = "a signature stored in a table row must give the same answers as the text itself"
    sig = index.signature(text)
    assert len(sig) == 128 * 4
    other = NearDuplicateIndex()
    other.add_signature("s1", sig)
    assert other.query(text) == ["s1"]
    assert other.query_signature(sig) == ["s1"]
    with pytest.raises(ValueError, match="bytes"):
        other.add_signature("bad", sig[:-4])


def test_index_serialises_and_restores() -> None:
    rng = random.Random(11)
    vocabulary = make_vocabulary(rng, 5000)
    docs = {f"d{i}": make_document(rng, vocabulary, 60) for i in range(200)}
    index = NearDuplicateIndex(threshold=0.7, shingle_size=3)
    for doc_id, text in docs.items():
        index.add(doc_id, text)
    index.remove("d5")
    restored = NearDuplicateIndex.from_bytes(index.to_bytes())
    assert len(restored) == len(index) == 199
    assert (restored.threshold, restored.hasher.shingle_size, restored.bands) == (
        0.7,
        3,
        index.bands,
    )
    for text in docs.values():
        assert restored.query(text) == index.query(text)
    with pytest.raises(ValueError, match="magic"):
        NearDuplicateIndex.from_bytes(b"nonsense")


def test_text_without_words_matches_nothing() -> None:
    index = NearDuplicateIndex()
    index.add("empty", "  ... !!! ")
    index.add("words", "some words here")
    assert index.query("") == []
    assert index.query("--") == []
    assert len(index) == 2


def test_banding_keeps_pairs_at_the_threshold_as_candidates() -> None:
    for threshold in (0.5, 0.7, 0.8, 0.9, 0.95):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows <= 128
        assert candidate_probability(threshold, bands, rows) >= 0.95
        assert candidate_probability(threshold / 2, bands, rows) < 0.5
    assert lsh_bands(0.8, 128) == (13, 7)


def test_signatures_are_stable_across_processes_and_versions() -> None:
    # Signatures live in table rows and serialised indexes: a change of token
    # hashing, shingling or datasketch's affine32 permutations breaks them.
    sig = MinHasher().signature("the quick brown fox jumps over the lazy dog")
    assert sig[:4].tolist() == [585472853, 221079748, 746728428, 120711585]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=300), st.integers(0, 2**16))
def test_signature_of_shingles_equals_datasketchs_affine32_minhash(
    shingles: list[int], seed: int
) -> None:
    hasher = MinHasher(seed=seed)
    reference = MinHash(num_perm=hasher.num_perm, seed=seed, hashfunc=int, scheme="affine32")
    reference.update_batch(shingles)
    mine = hasher.signature_of_shingles(np.array(shingles, dtype=np.uint32))
    assert mine.dtype == np.uint32
    assert mine.tolist() == np.asarray(reference.hashvalues, dtype=np.uint32).tolist()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.sampled_from([8, 16, 128, 130, 256]), st.floats(0, 1), st.integers())
def test_most_true_per_row_counts_like_count_nonzero(
    rows: int, width: int, share: float, seed: int
) -> None:
    rng = np.random.default_rng(seed % 2**32)
    matrix = rng.random((rows, width)) < share
    expected = int(np.count_nonzero(matrix, axis=1).max())
    assert _most_true_per_row(matrix) == expected


def test_band_table_proposes_the_candidates_datasketchs_lsh_proposes() -> None:
    rng = np.random.default_rng(3)
    hasher = MinHasher()
    bases = rng.integers(0, 2**32 - 1, size=(40, hasher.num_perm), dtype=np.uint32)
    # Each stored signature is a base with some slots changed: many share bands, few all.
    sigs = bases[rng.integers(0, len(bases), size=400)].copy()
    changed = rng.random(sigs.shape) < rng.uniform(0.02, 0.4, size=(len(sigs), 1))
    sigs[changed] = rng.integers(0, 2**32 - 1, size=int(changed.sum()), dtype=np.uint32)
    table, reference = BandTable(13, 7), MinHashLSH(num_perm=hasher.num_perm, params=(13, 7))
    for row, sig in enumerate(sigs[:300]):
        table.insert(row, sig)
        reference.insert(row, hasher.minhash(sig))
    for row in range(0, 300, 7):
        table.remove(row, sigs[row])
        reference.remove(row)
    for sig in sigs:
        assert table.query(sig) == set(reference.query(hasher.minhash(sig)))


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=200), st.text(min_size=1, max_size=200))
def test_estimate_is_a_symmetric_similarity(a: str, b: str) -> None:
    h = MinHasher()
    sa, sb = h.signature(a), h.signature(b)
    assert estimate_jaccard(sa, sb) == estimate_jaccard(sb, sa)
    assert 0.0 <= estimate_jaccard(sa, sb) <= 1.0
    if h.tokens(a):
        assert estimate_jaccard(sa, sa) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["alpha", "Beta", "gamma", "DELTA", "eps"]), min_size=1))
def test_signature_ignores_case_spacing_and_punctuation(words: list[str]) -> None:
    h = MinHasher()
    plain = " ".join(words)
    noisy = "  ".join(w.upper() + "," for w in words)
    assert np.array_equal(h.signature(plain), h.signature(noisy))


# ------------------------------------------------------------------ self-loops


def test_self_loop_guard_recognises_our_output_exactly_and_nearly() -> None:
    rng = random.Random(5)
    vocabulary = make_vocabulary(rng, 5000)
    ours = make_document(rng, vocabulary)
    guard = SelfLoopGuard()
    guard.record("artifact-1", ours)
    assert guard.match(ours) == "artifact-1"
    lightly_edited, true = edit_to_similarity(rng, ours, 0.9, vocabulary)
    assert true >= 0.85
    assert guard.match(lightly_edited) == "artifact-1"
    assert guard.match(make_document(rng, vocabulary)) is None
    assert len(guard) == 1


# ------------------------------------------------------------------ diversity


def test_diversity_orders_identical_close_and_unrelated() -> None:
    rng = random.Random(9)
    vocabulary = make_vocabulary(rng, 5000)
    base = make_document(rng, vocabulary)
    window = DiversityWindow(size=50)
    assert window.score(base) == 1.0  # empty window
    window.push("base", base)
    close, _ = edit_to_similarity(rng, base, 0.8, vocabulary)
    somewhat, _ = edit_to_similarity(rng, base, 0.4, vocabulary)
    scores = [window.score(t) for t in (base, close, somewhat, make_document(rng, vocabulary))]
    assert scores[0] == 0.0
    assert scores == sorted(scores)
    assert scores[3] > 0.95


def test_diversity_window_forgets_the_oldest() -> None:
    rng = random.Random(10)
    vocabulary = make_vocabulary(rng, 5000)
    first = make_document(rng, vocabulary)
    window = DiversityWindow(size=3)
    window.push("first", first)
    for i in range(3):
        window.push(f"n{i}", make_document(rng, vocabulary))
    assert len(window) == 3
    assert window.score(first) > 0.9


# ------------------------------------------------------------------ the guard


@pytest.fixture
def docs() -> tuple[random.Random, list[str]]:
    rng = random.Random(12)
    return rng, make_vocabulary(rng, 5000)


def test_guard_accepts_clean_samples_and_gives_reasons_for_the_rest(
    docs: tuple[random.Random, list[str]],
) -> None:
    rng, vocabulary = docs
    guard = ContaminationGuard()
    first = make_document(rng, vocabulary)
    v1 = guard.check("s1", first, ai_generated_by_us=False)
    assert v1.accepted and v1.reason is None and v1.diversity == 1.0

    v2 = guard.check("s2", first, ai_generated_by_us=False)
    assert (v2.accepted, v2.reason, v2.near_duplicates) == (False, "exact_duplicate", ["s1"])

    near, _ = edit_to_similarity(rng, first, 0.92, vocabulary)
    v3 = guard.check("s3", near, ai_generated_by_us=False)
    assert (v3.accepted, v3.reason) == (False, "near_duplicate:s1")

    ours = make_document(rng, vocabulary)
    v4 = guard.check("s4", ours, ai_generated_by_us=True)
    assert v4.accepted  # our own output may be trained on, once
    copied, _ = edit_to_similarity(rng, ours, 0.9, vocabulary)
    v5 = guard.check("s5", copied, ai_generated_by_us=False)
    assert (v5.accepted, v5.reason, v5.self_loop_of) == (False, "self_loop", "s4")

    assert guard.stats.to_dict() == {
        "checked": 5,
        "accepted": 2,
        "rejected": {"exact_duplicate": 1, "near_duplicate": 1, "self_loop": 1},
    }


def test_guard_flags_low_diversity_below_the_near_duplicate_threshold(
    docs: tuple[random.Random, list[str]],
) -> None:
    rng, vocabulary = docs
    guard = ContaminationGuard(GuardConfig(near_duplicate_threshold=0.9, min_diversity=0.5))
    base = make_document(rng, vocabulary)
    guard.check("a", base, ai_generated_by_us=False)
    similar, true = edit_to_similarity(rng, base, 0.7, vocabulary)
    verdict = guard.check("b", similar, ai_generated_by_us=False)
    assert verdict.reason == "low_diversity", (true, verdict)
    assert verdict.diversity < 0.5


def test_guard_records_our_output_that_is_not_a_sample(
    docs: tuple[random.Random, list[str]],
) -> None:
    rng, vocabulary = docs
    guard = ContaminationGuard()
    ours = make_document(rng, vocabulary)
    guard.record_own_output("run-7/prd.md", ours)
    verdict = guard.check("s1", ours, ai_generated_by_us=False)
    assert (verdict.reason, verdict.self_loop_of) == ("self_loop", "run-7/prd.md")


def test_guard_can_refuse_all_of_our_own_outputs(docs: tuple[random.Random, list[str]]) -> None:
    rng, vocabulary = docs
    guard = ContaminationGuard(GuardConfig(reject_own_outputs=True))
    verdict = guard.check("s1", make_document(rng, vocabulary), ai_generated_by_us=True)
    assert (verdict.accepted, verdict.reason) == (False, "self_loop")


def test_redelivered_sample_gets_the_same_verdict_and_is_counted_once(
    docs: tuple[random.Random, list[str]],
) -> None:
    rng, vocabulary = docs
    guard = ContaminationGuard()
    text = make_document(rng, vocabulary)
    first = guard.check("s1", text, ai_generated_by_us=False)
    again = guard.check("s1", text, ai_generated_by_us=False)
    assert again == first and again.accepted
    assert guard.stats.checked == 1


def test_guard_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="near_duplicate_threshold"):
        GuardConfig(near_duplicate_threshold=1.5)
    with pytest.raises(ValueError, match="min_diversity"):
        GuardConfig(min_diversity=-0.1)


# ------------------------------------------------------------------ stats and alert


def test_dataset_stats_merge_and_serialise() -> None:
    a = DatasetStats(checked=10, accepted=7, rejected={"exact_duplicate": 2, "low_diversity": 1})
    b = DatasetStats(checked=5, accepted=2, rejected={"exact_duplicate": 1, "self_loop": 2})
    merged = DatasetStats.from_bytes(a.to_bytes()).merge(b)
    assert merged.to_dict() == {
        "checked": 15,
        "accepted": 9,
        "rejected": {"exact_duplicate": 3, "low_diversity": 1, "self_loop": 2},
    }
    assert merged.clean_rate == pytest.approx(9 / 15)
    assert merged.contaminated == 5
    assert merged.contamination_rate == pytest.approx(5 / 15)
    assert DatasetStats().clean_rate == 1.0 and DatasetStats().contamination_rate == 0.0
    with pytest.raises(ValueError, match="inconsistent"):
        DatasetStats.from_dict({"checked": 1, "accepted": 2, "rejected": {}})


def test_alert_fires_only_above_the_rate_after_the_minimum_count() -> None:
    rule = ContaminationAlertRule(max_rate=0.2, min_count=100)
    few = DatasetStats(checked=50, accepted=10, rejected={"near_duplicate": 40})
    assert rule.evaluate(few) is None
    fine = DatasetStats(
        checked=200, accepted=160, rejected={"near_duplicate": 30, "low_diversity": 10}
    )
    assert rule.evaluate(fine) is None  # 15 %; low diversity is not contamination
    bad = DatasetStats(checked=200, accepted=120, rejected={"near_duplicate": 50, "self_loop": 30})
    message = rule.evaluate(bad)
    assert message is not None
    assert "40.0%" in message and "self_loop=30" in message and "near_duplicate=50" in message
    with pytest.raises(ValueError, match="max_rate"):
        ContaminationAlertRule(max_rate=2.0)


# ------------------------------------------------------------------ restoring and sharing


def _mixed_stream(rng: random.Random, vocabulary: list[str], n: int) -> list[tuple[str, str, bool]]:
    """Samples with exact repeats, near copies and ours mixed in, as (id, text, ours)."""
    out: list[tuple[str, str, bool]] = []
    for i in range(n):
        roll = rng.random()
        if out and roll < 0.15:
            text = rng.choice(out)[1]
        elif out and roll < 0.3:
            text, _ = edit_to_similarity(rng, rng.choice(out)[1], 0.9, vocabulary)
        else:
            text = make_document(rng, vocabulary)
        out.append((f"s{i}", text, rng.random() < 0.3))
    return out


def test_a_restored_guard_decides_as_the_one_that_never_stopped(
    docs: tuple[random.Random, list[str]],
) -> None:
    rng, vocabulary = docs
    stream = _mixed_stream(rng, vocabulary, 240)
    config = GuardConfig(diversity_window=50)
    running = ContaminationGuard(config)
    stored = []
    for sample, text, ours in stream[:160]:
        verdict = running.check(sample, text, ai_generated_by_us=ours)
        signature = running.hasher.signature(text)
        stored.append((sample, verdict, signature if verdict.accepted or ours else None, ours))

    restored = ContaminationGuard(config)
    for sample, verdict, signature, ours in stored:
        restored.restore(sample, verdict, signature, ai_generated_by_us=ours)
    assert restored.stats == running.stats
    for sample, text, ours in stream[160:]:
        assert restored.check(sample, text, ai_generated_by_us=ours) == running.check(
            sample, text, ai_generated_by_us=ours
        )
    assert restored.stats == running.stats
    assert {v.reason for _, v, _, _ in stored} >= {None, "exact_duplicate"}


def test_restoring_an_accepted_sample_needs_its_signature() -> None:
    guard = ContaminationGuard()
    verdict = guard.check("s1", "one two three four five six", ai_generated_by_us=False)
    with pytest.raises(ValueError, match="needs its signature"):
        ContaminationGuard().restore("s1", verdict, None, ai_generated_by_us=False)


def test_guards_sharing_a_self_loop_memory_see_each_others_outputs(
    docs: tuple[random.Random, list[str]],
) -> None:
    rng, vocabulary = docs
    shared = SelfLoopGuard()
    drafts, reviews = ContaminationGuard(self_loop=shared), ContaminationGuard(self_loop=shared)
    ours = make_document(rng, vocabulary)
    assert drafts.check("d1", ours, ai_generated_by_us=True).accepted
    verdict = reviews.check("r1", ours, ai_generated_by_us=False)
    assert (verdict.reason, verdict.self_loop_of) == ("self_loop", "d1")
    with pytest.raises(ValueError, match="hash like"):
        ContaminationGuard(GuardConfig(num_perm=64), self_loop=shared)


def test_our_output_known_by_hash_only_is_recognised_exactly() -> None:
    guard = ContaminationGuard()
    guard.self_loop.record_hash("run-1/diff", "ab" * 32)
    text = "a diff someone pasted back into a human note, word for word"
    plain = guard.check("s1", text, ai_generated_by_us=False)
    assert plain.accepted
    copied = guard.check("s2", text + " again", ai_generated_by_us=False, also_hashes=["ab" * 32])
    assert (copied.reason, copied.self_loop_of) == ("self_loop", "run-1/diff")


# ------------------------------------------------------------------ golden copies

GOLDEN_TEXT = (
    "Acceptance criteria for the export feature: the report lists every invoice of the "
    "quarter, totals match the ledger to the cent, and the file opens in a spreadsheet."
)


def test_a_copy_of_a_golden_sample_is_kept_out_of_training_data_even_edited() -> None:
    """A new operator's trial: golden (evaluation) samples copied into another phase or
    doer, verbatim or with a word changed, were accepted as training samples."""
    config = GuardConfig()
    golden = GoldenSet(config)
    golden.add("eval@1/s-7", GOLDEN_TEXT)
    guard = ContaminationGuard(config)
    verbatim = guard.check("a", GOLDEN_TEXT, ai_generated_by_us=False, golden=golden)
    assert (verbatim.accepted, verbatim.reason) == (False, "golden_copy:eval@1/s-7")
    edited = GOLDEN_TEXT.replace("spreadsheet", "spreadsheet program")
    near = guard.check("b", edited, ai_generated_by_us=False, golden=golden)
    assert (near.accepted, near.reason) == (False, "golden_copy:eval@1/s-7")
    other = "Release notes: the importer now skips empty rows and logs each file it reads."
    assert guard.check("c", other, ai_generated_by_us=False, golden=golden).accepted
    # Without the golden set (another tenant's), the same text is a sample like any other.
    assert ContaminationGuard(config).check("d", GOLDEN_TEXT, ai_generated_by_us=False).accepted
    assert guard.stats.rejected == {"golden_copy": 2}
    assert guard.stats.contaminated == 2  # counted toward the contamination alert
    # A redelivery gets its first verdict again.
    again = guard.check("a", GOLDEN_TEXT, ai_generated_by_us=False, golden=golden)
    assert again == verbatim
