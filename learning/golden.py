"""Golden datasets: the content-hash manifest of a frozen dataset and its verification.

A golden dataset is a dataset's accepted samples frozen under a name and
version.  Its manifest maps each sample id to the SHA-256 of the sample's
(redacted) content (``learning.curation.content_hash``); the manifest hash is
the SHA-256 of the manifest's canonical JSON (keys sorted, no whitespace,
UTF-8).  Verifying recomputes every content hash from the stored content and
the manifest hash from those, so any change to a sample, an added or a missing
sample, or an edited manifest shows.  Pure logic: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from learning.curation import content_hash


def manifest_of(samples: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The manifest of ``(sample_id, content_hash)`` pairs; a repeated id is an error."""
    manifest: dict[str, str] = {}
    for sample, digest in samples:
        if sample in manifest:
            raise ValueError(f"sample {sample} is listed twice")
        manifest[sample] = digest
    return dict(sorted(manifest.items()))


def manifest_hash(manifest: Mapping[str, str]) -> str:
    """SHA-256 hex of the manifest's canonical JSON (sorted keys, compact separators, UTF-8)."""
    canonical = json.dumps(
        dict(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Verification:
    """The outcome of verifying a golden dataset: what was recomputed and every problem found."""

    sample_count: int
    manifest_hash: str  # recomputed from the stored samples' content
    problems: list[str]
    erased: int = 0  # samples that are tombstones of an erasure (not checked against content)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    *,
    stored_manifest: Mapping[str, str],
    stored_manifest_hash: str,
    stored_count: int,
    samples: Iterable[tuple[str, str, str]],
    erased: Collection[str] = frozenset(),
) -> Verification:
    """Recompute a golden dataset's manifest from its ``(sample_id, content, content_hash)`` rows.

    Problems name the sample and what differs: content whose hash is not the
    stored one, a sample missing from the rows or from the manifest, a manifest
    entry that differs, a manifest hash or count that is not what was frozen.
    A sample in ``erased`` is a tombstone left by `learnops dataset erase`: its
    content is gone, so its stored hash stands in for the content's.
    """
    problems: list[str] = []
    recomputed: dict[str, str] = {}
    for sample, content, digest in samples:
        if sample in erased:
            recomputed[sample] = digest
            continue
        actual = content_hash(content)
        if actual != digest:
            problems.append(
                f"sample {sample}: content hashes to {actual[:12]}…, stored {digest[:12]}…"
            )
        recomputed[sample] = actual
    for sample in sorted(set(stored_manifest) - set(recomputed)):
        problems.append(f"sample {sample} is in the manifest but not stored")
    for sample in sorted(set(recomputed) - set(stored_manifest)):
        problems.append(f"sample {sample} is stored but not in the manifest")
    for sample in sorted(set(recomputed) & set(stored_manifest)):
        if recomputed[sample] != stored_manifest[sample]:
            problems.append(f"sample {sample}: content differs from the manifest")
    if manifest_hash(stored_manifest) != stored_manifest_hash:
        problems.append("the stored manifest does not hash to the stored manifest hash")
    digest = manifest_hash(recomputed)
    if digest != stored_manifest_hash:
        problems.append(
            f"manifest hash of the stored samples is {digest[:12]}…, "
            f"frozen {stored_manifest_hash[:12]}…"
        )
    if len(recomputed) != stored_count:
        problems.append(f"{len(recomputed)} samples stored, {stored_count} frozen")
    return Verification(
        sample_count=len(recomputed),
        manifest_hash=digest,
        problems=problems,
        erased=len(set(erased) & set(recomputed)),
    )
