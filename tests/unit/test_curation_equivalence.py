"""Curating a fixed seeded corpus gives byte-identical outputs, whatever the hot path does."""

from __future__ import annotations

from tests.unit.curation_corpus import corpus, curate_corpus

#: sha256 of every output of ``curate_corpus(list(corpus()))``, recorded from the code
#: before the curator's hot path was optimised; it must never change.
RECORDED_DIGEST = "d7803f2361baf1e6910897d36652b08f2e54f082b0ee8aa889afbe74c2f6ccef"


def test_curating_the_seeded_corpus_gives_the_recorded_outputs() -> None:
    digest, verdicts = curate_corpus(list(corpus()))
    # The corpus exercises every path: PII, each reject reason, alerts, redeliveries.
    assert set(verdicts) >= {"accepted", "exact_duplicate", "near_duplicate", "self_loop", "alert"}
    assert digest == RECORDED_DIGEST
