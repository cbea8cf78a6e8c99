"""Near-duplicate, self-loop and diversity checks that keep a training dataset clean.

Similarity is the Jaccard similarity of the sets of word shingles (``k``
consecutive words after NFKC normalisation and case folding; ``k = 5`` by
default), estimated with MinHash (Broder, "On the resemblance and containment
of documents", 1997) and searched with banded LSH (Leskovec, Rajaraman and
Ullman, *Mining of Massive Datasets*, ch. 3) from datasketch.  A signature is
``num_perm`` unsigned 32-bit minima, 512 bytes at the default 128 — small
enough for a Faust table row, which is why every class here can take a
signature instead of a text.

- :class:`MinHasher` turns text into shingles and a signature.
- :class:`NearDuplicateIndex` answers "which stored samples have Jaccard ≥
  threshold with this text?" in time that does not grow with the index
  (LSH candidates, then each candidate verified by the MinHash estimate).
- :class:`SelfLoopGuard` remembers what our own policies generated and
  recognises it when it comes back as someone else's data.
- :class:`DiversityWindow` scores a new sample against the recent ones.
- :class:`ContaminationGuard` puts them together and returns a
  :class:`GuardVerdict` with a reason for every rejection;
  :class:`DatasetStats` counts verdicts and :class:`ContaminationAlertRule`
  says when the contamination rate needs a person.

Design notes and measured figures: ``docs/curation.md``.  Pure logic, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from learning.curation import content_hash

if TYPE_CHECKING:
    # Imported where it is used: datasketch's package imports its LSH, and that
    # scipy.integrate, about 0.3 s of every process that reads the learning
    # configuration (each CLI command that does, each worker without the curator).
    from datasketch import MinHash

Signature = npt.NDArray[np.uint32]

#: datasketch's permutation scheme (since datasketch 2.0): 32-bit affine permutations.
SCHEME: Final = "affine32"
_EMPTY: Final = np.uint32(0xFFFFFFFF)  # a MinHash slot no shingle has lowered
_WORD = re.compile(r"\w+")
# Odd 64-bit multiplier that rolls k token hashes into one shingle hash
# (a polynomial hash mod 2**64; the golden-ratio constant of Knuth's
# multiplicative hashing).
_ROLL: Final = np.uint64(0x9E3779B97F4A7C15)
_TOKEN_CACHE_SIZE: Final = 1 << 18


@lru_cache(maxsize=_TOKEN_CACHE_SIZE)
def _token_hash(token: str) -> int:
    # Stable across processes (unlike hash()), so signatures computed by one
    # worker match those of another and those stored in a table.
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that banded LSH makes a pair with this Jaccard similarity a candidate.

    ``1 − (1 − s^r)^b`` (*Mining of Massive Datasets*, section 3.4.2).
    """
    return 1.0 - (1.0 - similarity**rows) ** bands


def lsh_bands(threshold: float, num_perm: int, candidate_recall: float = 0.95) -> tuple[int, int]:
    """The most selective banding (longest bands) that still finds a pair at the threshold.

    Among ``(bands, rows)`` with ``bands · rows ≤ num_perm`` and
    :func:`candidate_probability` at ``threshold`` ≥ ``candidate_recall``, take
    the largest ``rows`` (fewest chance collisions of dissimilar texts), then
    the fewest bands (least memory).  datasketch's own optimiser weighs false
    positives and negatives equally, which at 0.8/128 leaves a pair with
    Jaccard 0.85 a candidate only 69 % of the time; here every candidate is
    verified anyway, so a miss costs more than a candidate.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is not in (0, 1]")
    if not 0.0 < candidate_recall < 1.0:
        raise ValueError(f"candidate_recall {candidate_recall} is not in (0, 1)")
    for rows in range(num_perm // 2, 0, -1):
        for bands in range(2, num_perm // rows + 1):
            if candidate_probability(threshold, bands, rows) >= candidate_recall:
                return bands, rows
    raise ValueError(
        f"no banding of {num_perm} permutations reaches {candidate_recall} at {threshold}"
    )


class MinHasher:
    """Word shingles of a text and their MinHash signature (datasketch, ``affine32`` scheme)."""

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, seed: int = 1) -> None:
        if num_perm < 16:
            raise ValueError(f"num_perm {num_perm} is below 16")
        if shingle_size < 1:
            raise ValueError(f"shingle_size {shingle_size} is below 1")
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        from datasketch import MinHash

        self._template = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME)
        self.permutations = self._template.permutations
        self._a = np.asarray(self.permutations[0], dtype=np.uint32)
        self._b = np.asarray(self.permutations[1], dtype=np.uint32)

    @property
    def signature_bytes(self) -> int:
        """Length in bytes of a serialised signature."""
        return 4 * self.num_perm

    def tokens(self, text: str) -> list[str]:
        """The words of ``text``: runs of word characters after NFKC and case folding."""
        return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())

    def shingles(self, text: str) -> npt.NDArray[np.uint32]:
        """32-bit hashes of the text's ``k``-word shingles (fewer than ``k`` words: one shingle)."""
        tokens = self.tokens(text)
        if not tokens:
            return np.empty(0, dtype=np.uint32)
        hashes = np.fromiter(map(_token_hash, tokens), dtype=np.uint64, count=len(tokens))
        k = min(self.shingle_size, len(hashes))
        n = len(hashes) - k + 1
        rolled = hashes[:n].copy()
        for j in range(1, k):
            rolled = rolled * _ROLL + hashes[j : j + n]  # wraps mod 2**64, as intended
        return ((rolled ^ (rolled >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)

    def signature(self, text: str) -> Signature:
        """The MinHash signature of the text's shingles (all slots 2**32−1 if it has no words)."""
        return self.signature_of_shingles(self.shingles(text))

    def signature_of_shingles(self, shingles: npt.NDArray[np.uint32]) -> Signature:
        """The MinHash signature of a set of 32-bit shingle hashes.

        datasketch's ``affine32`` scheme, computed here in one numpy expression
        (datasketch builds a Python list of the hashes first, most of the
        cost): each hash is mixed by the MurmurHash3 32-bit finaliser, then
        slot ``k`` keeps the minimum of ``a_k · h + b_k mod 2**32`` over the
        shingles.  Equal to ``MinHash.update_batch`` (tests/unit/test_contamination.py).
        """
        if not len(shingles):
            return np.full(self.num_perm, _EMPTY, dtype=np.uint32)
        h = np.asarray(shingles, dtype=np.uint32).reshape(-1, 1)
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        h = h ^ (h >> np.uint32(16))
        permuted = h * self._a  # uint32 arithmetic wraps: mod 2**32
        permuted += self._b
        return permuted.min(axis=0)

    def minhash(self, signature: Signature) -> MinHash:
        """A datasketch MinHash holding ``signature`` (for datasketch's LSH and ``jaccard``)."""
        from datasketch import MinHash

        return MinHash(
            seed=self.seed, hashvalues=signature, permutations=self.permutations, scheme=SCHEME
        )

    def to_bytes(self, signature: Signature) -> bytes:
        """A signature as little-endian bytes (what a table row stores)."""
        return np.asarray(signature, dtype="<u4").tobytes()

    def from_bytes(self, raw: bytes) -> Signature:
        """A signature back from :meth:`to_bytes`, checked for length."""
        if len(raw) != self.signature_bytes:
            raise ValueError(
                f"signature has {len(raw)} bytes; {self.signature_bytes} expected for "
                f"num_perm={self.num_perm}"
            )
        return np.frombuffer(raw, dtype="<u4").astype(np.uint32)

    def coerce(self, signature: bytes | Signature) -> Signature:
        """A signature from its bytes or as an array, checked for length."""
        if isinstance(signature, bytes | bytearray | memoryview):
            return self.from_bytes(bytes(signature))
        array = np.asarray(signature, dtype=np.uint32)
        if array.shape != (self.num_perm,):
            raise ValueError(f"signature has shape {array.shape}; ({self.num_perm},) expected")
        return array


def estimate_jaccard(a: Signature, b: Signature) -> float:
    """MinHash estimate of the Jaccard similarity: the share of equal slots (0 if one is empty)."""
    if is_empty(a) or is_empty(b):
        return 0.0
    return float(np.count_nonzero(a == b)) / len(a)


def is_empty(signature: Signature) -> bool:
    """Whether a signature is that of a text with no words."""
    # The first slot settles it for nearly every signature of a text with words.
    return bool(signature[0] == _EMPTY) and bool(np.all(signature == _EMPTY))


# --------------------------------------------------------------------------------------
# Near-duplicate index
# --------------------------------------------------------------------------------------

_INDEX_MAGIC: Final = b"LNDX1"


class BandTable:
    """Banded LSH: the rows whose signatures agree on every slot of at least one band.

    Band ``i`` is slots ``[i·r, (i+1)·r)``, as datasketch's ``MinHashLSH``
    bands them, and two signatures share a bucket when those slots are equal,
    so the candidates are the ones ``MinHashLSH`` gives; a band's key is the
    bytes of its slots, without building a ``MinHash`` for every insert and
    query (which cost more than the lookup itself).
    """

    def __init__(self, bands: int, rows: int) -> None:
        self.bands, self.rows = bands, rows
        self._buckets: list[dict[bytes, set[int]]] = [{} for _ in range(bands)]
        self._members: set[int] = set()

    def _keys(self, signature: Signature) -> list[bytes]:
        width = 4 * self.rows  # bytes of one band of uint32 slots
        raw = np.ascontiguousarray(signature[: self.bands * self.rows], dtype=np.uint32).tobytes()
        return [raw[at : at + width] for at in range(0, len(raw), width)]

    def insert(self, row: int, signature: Signature) -> None:
        """File ``row`` under each band of its signature."""
        for buckets, key in zip(self._buckets, self._keys(signature), strict=True):
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = {row}
            else:
                bucket.add(row)
        self._members.add(row)

    def remove(self, row: int, signature: Signature) -> None:
        """Take ``row`` (filed with ``signature``) out of every band."""
        for buckets, key in zip(self._buckets, self._keys(signature), strict=True):
            bucket = buckets[key]
            bucket.discard(row)
            if not bucket:
                del buckets[key]
        self._members.discard(row)

    def query(self, signature: Signature) -> set[int]:
        """The rows that share at least one band with ``signature``."""
        found: set[int] = set()
        for buckets, key in zip(self._buckets, self._keys(signature), strict=True):
            bucket = buckets.get(key)
            if bucket:
                found |= bucket
        return found

    def __contains__(self, row: object) -> bool:
        return row in self._members


class NearDuplicateIndex:
    """Ids of stored texts whose shingle Jaccard with a query is at or above ``threshold``.

    LSH (:class:`BandTable`, banding from :func:`lsh_bands`) proposes
    candidates in time independent of the index size; each candidate is then
    kept only if the MinHash estimate of its Jaccard with the query is ≥
    ``threshold``.  Signatures live in one contiguous ``uint32`` matrix
    (``num_perm · 4`` bytes per sample); exact shingle sets are not kept (see
    docs/curation.md for the recall this costs near the threshold).
    """

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        shingle_size: int = 5,
        seed: int = 1,
        bands: tuple[int, int] | None = None,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is not in (0, 1]")
        self.threshold = threshold
        self.hasher = MinHasher(num_perm=num_perm, shingle_size=shingle_size, seed=seed)
        self.bands = bands if bands is not None else lsh_bands(threshold, num_perm)
        self._lsh = BandTable(*self.bands)
        self._rows: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._sigs = np.empty((0, num_perm), dtype=np.uint32)

    # -- signatures --------------------------------------------------------------------

    def signature(self, text: str) -> bytes:
        """The serialised signature of ``text``, as a table stores it."""
        return self.hasher.to_bytes(self.hasher.signature(text))

    # -- writes ------------------------------------------------------------------------

    def add(self, sample_id: str, text: str) -> None:
        """Store ``text`` under ``sample_id`` (replacing what the id held before)."""
        self._add(sample_id, self.hasher.signature(text))

    def add_signature(self, sample_id: str, signature: bytes | Signature) -> None:
        """Store a signature (bytes or array) under ``sample_id``, replacing what it held."""
        self._add(sample_id, self.hasher.coerce(signature))

    def add_signatures(self, sample_ids: Sequence[str], signatures: npt.ArrayLike) -> None:
        """Store many signatures at once (a ``len(ids) × num_perm`` uint32 matrix)."""
        matrix = np.asarray(signatures, dtype=np.uint32)
        if matrix.shape != (len(sample_ids), self.hasher.num_perm):
            raise ValueError(
                f"signatures have shape {matrix.shape}; "
                f"({len(sample_ids)}, {self.hasher.num_perm}) expected"
            )
        for sample_id in sample_ids:
            if sample_id in self._rows:
                self.remove(sample_id)
        first = len(self._ids)
        self._grow(first + len(sample_ids))
        self._sigs[first : first + len(sample_ids)] = matrix
        for offset, sample_id in enumerate(sample_ids):
            row = first + offset
            self._ids.append(sample_id)
            self._rows[sample_id] = row
            if not is_empty(matrix[offset]):
                self._lsh.insert(row, matrix[offset])

    def remove(self, sample_id: str) -> None:
        """Forget ``sample_id``; raises ``KeyError`` if it is not stored."""
        row = self._rows.pop(sample_id)
        if row in self._lsh:
            self._lsh.remove(row, self._sigs[row])
        self._ids[row] = None
        self._free.append(row)

    def _grow(self, needed: int) -> None:
        if needed <= len(self._sigs):
            return
        capacity = max(needed, 2 * len(self._sigs), 1024)
        grown = np.empty((capacity, self.hasher.num_perm), dtype=np.uint32)
        grown[: len(self._sigs)] = self._sigs
        self._sigs = grown

    def _add(self, sample_id: str, signature: Signature) -> None:
        if sample_id in self._rows:
            if np.array_equal(self._sigs[self._rows[sample_id]], signature):
                return  # redelivery of the same sample: nothing to do
            self.remove(sample_id)
        if self._free:
            row = self._free.pop()
            self._ids[row] = sample_id
        else:
            row = len(self._ids)
            self._grow(row + 1)
            self._ids.append(sample_id)
        self._sigs[row] = signature
        self._rows[sample_id] = row
        if not is_empty(signature):
            self._lsh.insert(row, signature)

    # -- reads -------------------------------------------------------------------------

    def similar(self, text: str) -> list[tuple[str, float]]:
        """``(id, estimated Jaccard)`` of stored texts at or above the threshold, closest first."""
        return self.similar_to_signature(self.hasher.signature(text))

    def similar_to_signature(self, signature: bytes | Signature) -> list[tuple[str, float]]:
        """As :meth:`similar`, for a signature (bytes or array)."""
        signature = self.hasher.coerce(signature)
        if is_empty(signature) or not self._rows:
            return []
        rows = self._lsh.query(signature)
        if not rows:
            return []
        rows_arr = np.fromiter(rows, dtype=np.int64, count=len(rows))
        estimates = np.count_nonzero(self._sigs[rows_arr] == signature, axis=1) / len(signature)
        hits: list[tuple[str, float]] = []
        for row, est in zip(rows_arr.tolist(), estimates.tolist(), strict=True):
            sample_id = self._ids[row]
            if est >= self.threshold and sample_id is not None:
                hits.append((sample_id, est))
        hits.sort(key=lambda hit: (-hit[1], hit[0]))
        return hits

    def query(self, text: str) -> list[str]:
        """Ids of stored texts whose estimated shingle Jaccard with ``text`` is ≥ the threshold."""
        return [sample_id for sample_id, _ in self.similar(text)]

    def query_signature(self, signature: bytes | Signature) -> list[str]:
        """As :meth:`query`, for a signature (bytes or array)."""
        return [s for s, _ in self.similar_to_signature(signature)]

    def candidates(self, signature: Signature) -> int:
        """How many candidates LSH proposes for a signature before verification (for the bench)."""
        if is_empty(signature) or not self._rows:
            return 0
        return len(self._lsh.query(signature))

    def stored_signature(self, sample_id: str) -> Signature:
        """The signature stored under ``sample_id``."""
        return self._sigs[self._rows[sample_id]].copy()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._rows

    # -- state -------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The index as bytes: parameters, ids and signature matrix (LSH is rebuilt on load)."""
        ids = [s for s in self._ids if s is not None]
        rows = np.fromiter((self._rows[s] for s in ids), dtype=np.int64, count=len(ids))
        header = json.dumps(
            {
                "threshold": self.threshold,
                "num_perm": self.hasher.num_perm,
                "shingle_size": self.hasher.shingle_size,
                "seed": self.hasher.seed,
                "bands": list(self.bands),
                "ids": ids,
            }
        ).encode("utf-8")
        body = np.ascontiguousarray(self._sigs[rows], dtype="<u4").tobytes()
        return _INDEX_MAGIC + struct.pack("<I", len(header)) + header + body

    @classmethod
    def from_bytes(cls, raw: bytes) -> NearDuplicateIndex:
        """An index back from :meth:`to_bytes`."""
        if not raw.startswith(_INDEX_MAGIC):
            raise ValueError("not a serialised NearDuplicateIndex (bad magic)")
        at = len(_INDEX_MAGIC)
        (length,) = struct.unpack_from("<I", raw, at)
        header = json.loads(raw[at + 4 : at + 4 + length])
        index = cls(
            threshold=header["threshold"],
            num_perm=header["num_perm"],
            shingle_size=header["shingle_size"],
            seed=header["seed"],
            bands=(header["bands"][0], header["bands"][1]),
        )
        body = np.frombuffer(raw, dtype="<u4", offset=at + 4 + length)
        ids = header["ids"]
        if body.size != len(ids) * header["num_perm"]:
            raise ValueError("serialised NearDuplicateIndex is truncated")
        index.add_signatures(ids, body.reshape(len(ids), header["num_perm"]))
        return index


# --------------------------------------------------------------------------------------
# Self-loop guard
# --------------------------------------------------------------------------------------


class SelfLoopGuard:
    """Remembers what our own policies generated and recognises it, exactly or nearly, later.

    A self-loop is our own output coming back as training data that does not
    say it is ours (pasted into a "human" document, re-uploaded, lightly
    edited): training on it teaches the policy its own habits.
    """

    def __init__(
        self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 5, seed: int = 1
    ):
        self._hashes: dict[str, str] = {}
        self._index = NearDuplicateIndex(
            threshold=threshold, num_perm=num_perm, shingle_size=shingle_size, seed=seed
        )

    @property
    def hasher(self) -> MinHasher:
        return self._index.hasher

    def record(self, artifact_id: str, text: str) -> None:
        """Remember an artifact one of our policies generated."""
        self.record_signature(artifact_id, content_hash(text), self._index.hasher.signature(text))

    def record_signature(self, artifact_id: str, digest: str, signature: bytes | Signature) -> None:
        """Remember an artifact by its content hash and signature (e.g. from a table)."""
        self._hashes.setdefault(digest, artifact_id)
        self._index.add_signature(artifact_id, signature)

    def record_hash(self, artifact_id: str, digest: str) -> None:
        """Remember an artifact known only by a hash of its text (a bundle may carry no content).

        It can then be recognised exactly, never nearly: pass the same kind of
        hash of a later text as ``also_hashes`` to :meth:`match_signature`.
        """
        self._hashes.setdefault(digest, artifact_id)

    def match(self, text: str) -> str | None:
        """Id of the artifact of ours that ``text`` copies, exactly or nearly; ``None`` if none."""
        return self.match_signature(content_hash(text), self._index.hasher.signature(text))

    def match_signature(
        self, digest: str, signature: bytes | Signature, also_hashes: Iterable[str] = ()
    ) -> str | None:
        """As :meth:`match`, for a precomputed content hash and signature.

        ``also_hashes`` are other exact keys of the same text (e.g. the SHA-256
        of the text before redaction), looked up like ``digest``.
        """
        for key in (digest, *also_hashes):
            exact = self._hashes.get(key)
            if exact is not None:
                return exact
        near = self._index.similar_to_signature(signature)
        return near[0][0] if near else None

    def __len__(self) -> int:
        return len(self._index)


# --------------------------------------------------------------------------------------
# Diversity
# --------------------------------------------------------------------------------------


_BYTE_SUM: Final = np.uint64(0x0101010101010101)


def _most_true_per_row(matrix: npt.NDArray[np.bool_]) -> int:
    """The largest number of true values in a row of a boolean matrix.

    Read eight booleans (bytes of 0 or 1) at a time as one uint64: the row sum
    of those words holds a count per byte lane (at most width / 8), and multiplying by
    0x0101…01 adds the bytes into the top one (a SIMD-within-a-register sum,
    several times cheaper than ``count_nonzero(axis=1)`` on a numpy bool matrix).
    """
    width = matrix.shape[1]
    if width % 8 or width > 255 or not matrix.flags.c_contiguous:
        return int(np.count_nonzero(matrix, axis=1).max())
    words = matrix.view(np.uint64).sum(axis=1, dtype=np.uint64)
    return int(((words * _BYTE_SUM) >> np.uint64(56)).max())


class DiversityWindow:
    """How different a sample is from the last ``size`` accepted ones: 1 − max estimated Jaccard.

    The maximum rather than the mean: one very close recent sample is what
    makes a batch repetitive, and a mean over a large window would hide it.
    1.0 for an empty window or a text with no words.
    """

    def __init__(self, size: int = 1000, num_perm: int = 128, shingle_size: int = 5, seed: int = 1):
        if size < 1:
            raise ValueError(f"window size {size} is below 1")
        self.size = size
        self.hasher = MinHasher(num_perm=num_perm, shingle_size=shingle_size, seed=seed)
        self._sigs = np.full((size, num_perm), _EMPTY, dtype=np.uint32)
        self._ids: list[str | None] = [None] * size
        self._next = 0
        self._count = 0

    def score(self, text: str) -> float:
        """Diversity of ``text`` against the window, in [0, 1]."""
        return self.score_signature(self.hasher.signature(text))

    def score_signature(self, signature: bytes | Signature) -> float:
        """As :meth:`score`, for a signature (bytes or array)."""
        signature = self.hasher.coerce(signature)
        if self._count == 0 or is_empty(signature):
            return 1.0
        equal = self._sigs[: self._count] == signature
        return 1.0 - _most_true_per_row(equal) / len(signature)

    def push(self, sample_id: str, text: str) -> None:
        """Add a sample to the window, evicting the oldest when full."""
        self.push_signature(sample_id, self.hasher.signature(text))

    def push_signature(self, sample_id: str, signature: bytes | Signature) -> None:
        """As :meth:`push`, for a signature (bytes or array)."""
        signature = self.hasher.coerce(signature)
        if is_empty(signature):
            return
        self._sigs[self._next] = signature
        self._ids[self._next] = sample_id
        self._next = (self._next + 1) % self.size
        self._count = min(self._count + 1, self.size)

    def __len__(self) -> int:
        return self._count


# --------------------------------------------------------------------------------------
# Stats and alert
# --------------------------------------------------------------------------------------

REASONS: Final[tuple[str, ...]] = (
    "golden_copy",
    "self_loop",
    "exact_duplicate",
    "near_duplicate",
    "low_diversity",
)
#: Reasons that count as contamination (low diversity is a quality signal, not contamination).
CONTAMINATION_REASONS: Final[frozenset[str]] = frozenset(
    {"golden_copy", "self_loop", "exact_duplicate", "near_duplicate"}
)


def reason_kind(reason: str) -> str:
    """The reason without its detail: ``near_duplicate:s-17`` → ``near_duplicate``."""
    return reason.split(":", 1)[0]


@dataclass
class DatasetStats:
    """Counts of guard verdicts for one dataset: mergeable, and JSON for a table row."""

    checked: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def record(self, verdict: GuardVerdict) -> None:
        """Count one verdict."""
        self.checked += 1
        if verdict.accepted:
            self.accepted += 1
        elif verdict.reason is not None:
            kind = reason_kind(verdict.reason)
            self.rejected[kind] = self.rejected.get(kind, 0) + 1

    def merge(self, other: DatasetStats) -> DatasetStats:
        """Add another partition's counts into this one (returns self)."""
        self.checked += other.checked
        self.accepted += other.accepted
        for kind, n in other.rejected.items():
            self.rejected[kind] = self.rejected.get(kind, 0) + n
        return self

    @property
    def clean_rate(self) -> float:
        """Share of checked samples that were accepted (1.0 before any check)."""
        return self.accepted / self.checked if self.checked else 1.0

    @property
    def contaminated(self) -> int:
        """Samples rejected as duplicates or self-loops."""
        return sum(n for kind, n in self.rejected.items() if kind in CONTAMINATION_REASONS)

    @property
    def contamination_rate(self) -> float:
        """Share of checked samples rejected as duplicates or self-loops."""
        return self.contaminated / self.checked if self.checked else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "accepted": self.accepted, "rejected": dict(self.rejected)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetStats:
        stats = cls(
            checked=int(data["checked"]),
            accepted=int(data["accepted"]),
            rejected={str(k): int(v) for k, v in dict(data.get("rejected", {})).items()},
        )
        if (
            stats.accepted + sum(stats.rejected.values()) > stats.checked
            or min([stats.checked, stats.accepted, *stats.rejected.values()]) < 0
        ):
            raise ValueError(f"dataset stats are inconsistent: {stats.to_dict()}")
        return stats

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> DatasetStats:
        return cls.from_dict(json.loads(raw))


@dataclass(frozen=True)
class ContaminationAlertRule:
    """Alert when the contamination rate exceeds ``max_rate`` after ``min_count`` checks."""

    max_rate: float = 0.2
    min_count: int = 200

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_rate <= 1.0 or not math.isfinite(self.max_rate):
            raise ValueError(f"max_rate {self.max_rate} is not in [0, 1]")
        if self.min_count < 1:
            raise ValueError(f"min_count {self.min_count} is below 1")

    def evaluate(self, stats: DatasetStats) -> str | None:
        """A message a person can act on when the rule fires, else ``None``."""
        if stats.checked < self.min_count or stats.contamination_rate <= self.max_rate:
            return None
        parts = ", ".join(
            f"{kind}={stats.rejected[kind]}"
            for kind in REASONS
            if kind in CONTAMINATION_REASONS and stats.rejected.get(kind)
        )
        return (
            f"contamination rate {stats.contamination_rate:.1%} is above {self.max_rate:.1%} "
            f"after {stats.checked} samples ({parts})"
        )


# --------------------------------------------------------------------------------------
# The guard
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardConfig:
    """Thresholds of the contamination guard (defaults and their reasons in docs/curation.md)."""

    near_duplicate_threshold: float = 0.8
    self_loop_threshold: float = 0.8
    min_diversity: float = 0.3
    diversity_window: int = 1000
    reject_own_outputs: bool = False
    num_perm: int = 128
    shingle_size: int = 5
    seed: int = 1
    replay_memory: int = 10_000
    # How long a doer's guard remembers a checked sample or an output of ours
    # (days since it was curated); older records expire with the samples they guard.
    memory_days: int = 90

    def __post_init__(self) -> None:
        if self.memory_days < 1:
            raise ValueError(f"memory_days {self.memory_days} is below 1")
        for name in ("near_duplicate_threshold", "self_loop_threshold"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} {value} is not in (0, 1]")
        if not 0.0 <= self.min_diversity <= 1.0:
            raise ValueError(f"min_diversity {self.min_diversity} is not in [0, 1]")


class GoldenSet:
    """The evaluation samples of one tenant's golden datasets, for the guard to keep out.

    A sample that copies one (the same NFC content hash, or an estimated
    Jaccard at or above the near-duplicate threshold) is evaluation data: in a
    training set it would leak into what a later replay measures. Keyed by
    ``golden_name@version/sample_id`` of the copied sample.
    """

    def __init__(self, config: GuardConfig) -> None:
        self.index = NearDuplicateIndex(
            threshold=config.near_duplicate_threshold,
            num_perm=config.num_perm,
            shingle_size=config.shingle_size,
            seed=config.seed,
        )
        self._hashes: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, ref: str, text: str) -> None:
        """Keep a golden sample's (redacted) text under ``ref``."""
        ((_, digest, signature),) = self.keys([(ref, text)])
        self.add_signature(ref, digest, signature)

    def keys(self, texts: Sequence[tuple[str, str]]) -> list[tuple[str, str, Signature]]:
        """(id, content hash, signature) of ``(id, text)`` pairs: what :meth:`add_signature`
        keeps. Reads nothing of the set's state, so it may run in another thread."""
        hasher = self.index.hasher
        return [(key, content_hash(text), hasher.signature(text)) for key, text in texts]

    def add_signature(self, ref: str, digest: str, signature: Signature) -> None:
        """Keep a golden sample by its content hash and signature (computed elsewhere).

        A text already kept (the same sample in a later version of its golden dataset)
        keeps its first ref: the index holds one row per distinct text.
        """
        if digest in self._hashes:
            return
        self._hashes[digest] = ref
        self.index.add_signature(ref, signature)

    def match(self, digest: str, signature: Signature) -> str | None:
        """The golden sample a text copies (``digest``: its content hash), or None."""
        exact = self._hashes.get(digest)
        if exact is not None:
            return exact
        near = self.index.similar_to_signature(signature)
        return near[0][0] if near else None


@dataclass(frozen=True)
class GuardVerdict:
    """Whether a sample goes into the dataset and, if not, why.

    ``reason`` is one of ``golden_copy:<golden name@version/sample id>``,
    ``self_loop``, ``exact_duplicate``, ``near_duplicate:<id of the closest
    stored sample>``, ``low_diversity`` (checked in that order), or ``None``
    when accepted.
    """

    accepted: bool
    reason: str | None
    diversity: float
    near_duplicates: list[str]
    content_hash: str
    self_loop_of: str | None = None


class ContaminationGuard:
    """Decides, sample by sample, whether a sample is clean enough for the dataset.

    Checks, in order: self-loop (the text copies an artifact our policies
    generated, yet is not declared ours), exact duplicate of an accepted
    sample (NFC content hash), near duplicate of an accepted sample (MinHash
    LSH), low diversity against the recent window.  A rejected sample comes
    back with its reason; nothing is dropped silently.  Artifacts our
    policies generated are recorded for the self-loop check whether or not
    they are accepted.  Checking the same sample id with the same text again
    (a redelivery) returns the first verdict without counting it twice.
    """

    def __init__(
        self, config: GuardConfig | None = None, *, self_loop: SelfLoopGuard | None = None
    ) -> None:
        self.config = config or GuardConfig()
        c = self.config
        self.index = NearDuplicateIndex(
            threshold=c.near_duplicate_threshold,
            num_perm=c.num_perm,
            shingle_size=c.shingle_size,
            seed=c.seed,
        )
        if self_loop is None:
            self_loop = SelfLoopGuard(
                threshold=c.self_loop_threshold,
                num_perm=c.num_perm,
                shingle_size=c.shingle_size,
                seed=c.seed,
            )
        elif (self_loop.hasher.num_perm, self_loop.hasher.shingle_size, self_loop.hasher.seed) != (
            c.num_perm,
            c.shingle_size,
            c.seed,
        ):
            raise ValueError("a shared SelfLoopGuard must hash like the guard's config")
        # Several guards (one per dataset) may share one memory of our outputs.
        self.self_loop = self_loop
        self.window = DiversityWindow(
            size=c.diversity_window, num_perm=c.num_perm, shingle_size=c.shingle_size, seed=c.seed
        )
        self.stats = DatasetStats()
        self._accepted_hashes: dict[str, str] = {}
        self._recent: OrderedDict[str, GuardVerdict] = OrderedDict()

    @property
    def hasher(self) -> MinHasher:
        return self.index.hasher

    def record_own_output(self, artifact_id: str, text: str) -> None:
        """Remember an artifact our policies generated that is not itself offered as a sample."""
        self.self_loop.record(artifact_id, text)

    def check(
        self,
        sample_id: str,
        text: str,
        *,
        ai_generated_by_us: bool,
        also_hashes: Iterable[str] = (),
        signature: bytes | Signature | None = None,
        golden: GoldenSet | None = None,
    ) -> GuardVerdict:
        """The verdict on one sample; an accepted sample is added to the dataset's state.

        ``also_hashes`` are other exact keys of the sample looked up in the
        self-loop memory (see :meth:`SelfLoopGuard.record_hash`);
        ``signature`` is the text's signature when the caller has it already;
        ``golden`` the tenant's golden samples, which no sample may copy.
        """
        digest = content_hash(text)
        replay = self._recent.get(sample_id)
        if replay is not None and replay.content_hash == digest:
            return replay
        signature = (
            self.hasher.signature(text) if signature is None else self.hasher.coerce(signature)
        )

        if ai_generated_by_us:
            self.self_loop.record_signature(sample_id, digest, signature)
            self_loop_of = sample_id if self.config.reject_own_outputs else None
        else:
            self_loop_of = self.self_loop.match_signature(digest, signature, also_hashes)
        near = self.index.similar_to_signature(signature)
        diversity = self.window.score_signature(signature)
        exact_of = self._accepted_hashes.get(digest)
        golden_of = golden.match(digest, signature) if golden else None

        reason: str | None = None
        if golden_of is not None:
            reason = f"golden_copy:{golden_of}"
        elif self_loop_of is not None:
            reason = "self_loop"
        elif exact_of is not None:
            reason = "exact_duplicate"
        elif near:
            reason = f"near_duplicate:{near[0][0]}"
        elif diversity < self.config.min_diversity:
            reason = "low_diversity"
        verdict = GuardVerdict(
            accepted=reason is None,
            reason=reason,
            diversity=diversity,
            near_duplicates=[sample for sample, _ in near],
            content_hash=digest,
            self_loop_of=self_loop_of,
        )
        if verdict.accepted:
            self._accepted_hashes[digest] = sample_id
            self.index.add_signature(sample_id, signature)
            self.window.push_signature(sample_id, signature)
        self.stats.record(verdict)
        self._remember(sample_id, verdict)
        return verdict

    def restore(
        self,
        sample_id: str,
        verdict: GuardVerdict,
        signature: bytes | Signature | None,
        *,
        ai_generated_by_us: bool,
    ) -> None:
        """Put back a verdict :meth:`check` reached before, leaving the state as it left it.

        For rebuilding a guard after a restart from stored verdicts, which must
        be restored in the order they were reached.  ``signature`` is needed for
        an accepted sample and for one of ours (they enter the index, window or
        self-loop memory); it may be ``None`` for anyone else's reject.
        """
        if signature is None:
            if verdict.accepted or ai_generated_by_us:
                raise ValueError(f"sample {sample_id}: restoring it needs its signature")
        else:
            signature = self.hasher.coerce(signature)
            if ai_generated_by_us:
                self.self_loop.record_signature(sample_id, verdict.content_hash, signature)
            if verdict.accepted:
                self._accepted_hashes[verdict.content_hash] = sample_id
                self.index.add_signature(sample_id, signature)
                self.window.push_signature(sample_id, signature)
        self.stats.record(verdict)
        self._remember(sample_id, verdict)

    def check_many(self, samples: Iterable[tuple[str, str, bool]]) -> list[GuardVerdict]:
        """Verdicts for ``(sample_id, text, ai_generated_by_us)`` triples, in order."""
        return [self.check(s, t, ai_generated_by_us=ours) for s, t, ours in samples]

    def _remember(self, sample_id: str, verdict: GuardVerdict) -> None:
        self._recent[sample_id] = verdict
        self._recent.move_to_end(sample_id)
        while len(self._recent) > self.config.replay_memory:
            self._recent.popitem(last=False)
