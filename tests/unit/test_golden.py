"""Golden dataset manifests: canonical hashing and verification that notices every change."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from learning.curation import content_hash
from learning.golden import manifest_hash, manifest_of, verify

ROWS = [
    ("s-1", "first sample, [EMAIL] redacted"),
    ("s-2", "second sample"),
    ("s-3", "third sample, café"),
]


def _frozen() -> tuple[dict[str, str], str, list[tuple[str, str, str]]]:
    rows = [(sample, text, content_hash(text)) for sample, text in ROWS]
    manifest = manifest_of((sample, digest) for sample, _, digest in rows)
    return manifest, manifest_hash(manifest), rows


def test_manifest_hash_is_sha256_of_canonical_json() -> None:
    manifest = {"b": "2" * 64, "a": "1" * 64}
    canonical = '{"a":"' + "1" * 64 + '","b":"' + "2" * 64 + '"}'
    assert manifest_hash(manifest) == hashlib.sha256(canonical.encode()).hexdigest()
    assert manifest_hash({}) == hashlib.sha256(b"{}").hexdigest()


@given(st.permutations(ROWS))
def test_manifest_does_not_depend_on_row_order(rows: list[tuple[str, str]]) -> None:
    manifest = manifest_of((sample, content_hash(text)) for sample, text in rows)
    assert manifest_hash(manifest) == _frozen()[1]


def test_a_sample_listed_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        manifest_of([("s-1", "a" * 64), ("s-1", "b" * 64)])


def test_unchanged_rows_verify() -> None:
    manifest, digest, rows = _frozen()
    result = verify(
        stored_manifest=manifest, stored_manifest_hash=digest, stored_count=3, samples=rows
    )
    assert result.ok and result.problems == []
    assert (result.sample_count, result.manifest_hash) == (3, digest)


def test_changed_content_is_found_even_with_its_hash_updated() -> None:
    manifest, digest, rows = _frozen()
    edited = "second sample, quietly edited"
    tampered = [rows[0], ("s-2", edited, content_hash(edited)), rows[2]]
    result = verify(
        stored_manifest=manifest, stored_manifest_hash=digest, stored_count=3, samples=tampered
    )
    assert not result.ok
    assert any("s-2: content differs from the manifest" in p for p in result.problems)
    assert result.manifest_hash != digest


def test_content_that_does_not_match_its_stored_hash_is_found() -> None:
    manifest, digest, rows = _frozen()
    tampered = [rows[0], ("s-2", "something else", rows[1][2]), rows[2]]
    result = verify(
        stored_manifest=manifest, stored_manifest_hash=digest, stored_count=3, samples=tampered
    )
    assert any(p.startswith("sample s-2: content hashes to") for p in result.problems)


def test_missing_and_extra_samples_and_an_edited_manifest_are_found() -> None:
    manifest, digest, rows = _frozen()
    extra = ("s-4", "smuggled in", content_hash("smuggled in"))
    result = verify(
        stored_manifest=manifest,
        stored_manifest_hash=digest,
        stored_count=3,
        samples=[rows[0], rows[1], extra],
    )
    problems = " | ".join(result.problems)
    assert "s-3 is in the manifest but not stored" in problems
    assert "s-4 is stored but not in the manifest" in problems

    edited = {**manifest, "s-1": "0" * 64}
    result = verify(
        stored_manifest=edited, stored_manifest_hash=digest, stored_count=3, samples=rows
    )
    assert "the stored manifest does not hash to the stored manifest hash" in result.problems

    result = verify(
        stored_manifest=manifest, stored_manifest_hash=digest, stored_count=4, samples=rows
    )
    assert result.problems == ["3 samples stored, 4 frozen"]


def test_an_erased_sample_verifies_as_a_tombstone_and_only_when_listed_as_erased() -> None:
    manifest, digest, rows = _frozen()
    tombstoned = [rows[0], ("s-2", "[ERASED]", rows[1][2]), rows[2]]
    result = verify(
        stored_manifest=manifest,
        stored_manifest_hash=digest,
        stored_count=3,
        samples=tombstoned,
        erased={"s-2"},
    )
    assert result.ok, result.problems
    assert (result.erased, result.manifest_hash) == (1, digest)
    # The same tombstone with no erasure record is tampering.
    unlisted = verify(
        stored_manifest=manifest, stored_manifest_hash=digest, stored_count=3, samples=tombstoned
    )
    assert any(p.startswith("sample s-2: content hashes to") for p in unlisted.problems)
