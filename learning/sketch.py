"""A mergeable quantile sketch with a relative error bound, small enough for a table row.

The DDSketch construction (C. Masson, J. E. Rim, H. K. Lee, "DDSketch: A Fast
and Fully-Mergeable Quantile Sketch with Relative-Error Guarantees", PVLDB
12(12), 2019): with relative accuracy ``α`` and ``γ = (1 + α) / (1 − α)``, a
positive value ``x`` is counted in bucket ``i = ⌈log_γ x⌉``, which holds
``(γ^(i−1), γ^i]``, and bucket ``i`` answers ``2γ^i / (γ + 1)``.  Every value
in the bucket is within a factor ``α`` of that answer, so the q-quantile
returned is within ``α·x_q`` of the true one, where ``x_q`` is the value of
rank ``⌊q·(n − 1)⌋`` (0-based) in the sorted data (numpy's
``quantile(method="lower")``).  Merging adds bucket counts, so a merged sketch
equals the sketch of the concatenated data exactly.

CRL is never negative, so values below ``min_value`` (including 0) share one
zero bucket and are answered as 0: their error is absolute, below
``min_value``, not relative.  Negative values are rejected.

Memory grows with the logarithm of the data's range, not with the number of
values: with ``α`` = 1 %, values from 10⁻³ to 10³ use at most about 700
buckets.  Past ``max_buckets`` the lowest buckets are folded together (the
paper's collapsing variant), which keeps upper quantiles such as p95 exact to
the bound and only coarsens the lowest ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


class QuantileSketch:
    """Counts of values in log-spaced buckets; answers quantiles within a relative error."""

    def __init__(
        self,
        relative_accuracy: float = 0.01,
        *,
        min_value: float = 1e-9,
        max_buckets: int = 2048,
    ) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy {relative_accuracy} is not in (0, 1)")
        if not min_value > 0:
            raise ValueError(f"min_value {min_value} is not positive")
        if max_buckets < 1:
            raise ValueError(f"max_buckets {max_buckets} is below 1")
        self.relative_accuracy = relative_accuracy
        self.min_value = min_value
        self.max_buckets = max_buckets
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self.buckets: dict[int, int] = {}
        self.zero_count = 0
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: float) -> None:
        """Count one finite, non-negative value."""
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"value {x!r} is not a finite, non-negative number")
        if x < self.min_value:
            self.zero_count += 1
        else:
            index = math.ceil(math.log(x) / self._log_gamma)
            self.buckets[index] = self.buckets.get(index, 0) + 1
            if len(self.buckets) > self.max_buckets:
                self._collapse()
        self.count += 1
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    def add_many(self, values: Iterable[float]) -> None:
        """Count every value of ``values``."""
        for x in values:
            self.add(float(x))

    def merge(self, other: QuantileSketch) -> None:
        """Fold another sketch with the same parameters into this one."""
        if (other.relative_accuracy, other.min_value, other.max_buckets) != (
            self.relative_accuracy,
            self.min_value,
            self.max_buckets,
        ):
            raise ValueError("cannot merge sketches with different parameters")
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        if len(self.buckets) > self.max_buckets:
            self._collapse()
        self.zero_count += other.zero_count
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float:
        """Return the q-quantile (0 ≤ q ≤ 1) within the relative error bound; empty raises."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile {q} is not in [0, 1]")
        if self.count == 0:
            raise ValueError("the sketch is empty")
        rank = q * (self.count - 1)  # 0-based rank of the answer, as numpy's "lower"
        if self.zero_count > rank:
            return 0.0
        seen = self.zero_count
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen > rank:
                estimate = 2 * self._gamma**index / (self._gamma + 1)
                # The exact extremes are known, so the answer never leaves [min, max].
                return min(max(estimate, self.min), self.max)
        return self.max  # unreachable unless counts are inconsistent

    def _collapse(self) -> None:
        # Fold the lowest buckets into the lowest one kept, as DDSketch bounds its size.
        ordered = sorted(self.buckets)
        excess = len(ordered) - self.max_buckets
        keep = ordered[excess]
        folded = sum(self.buckets.pop(index) for index in ordered[:excess])
        self.buckets[keep] += folded

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe mapping for a table value (bucket indexes as string keys)."""
        return {
            "relative_accuracy": self.relative_accuracy,
            "min_value": self.min_value,
            "max_buckets": self.max_buckets,
            "zero_count": self.zero_count,
            "count": self.count,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "buckets": {str(index): n for index, n in sorted(self.buckets.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantileSketch:
        """Rebuild from :meth:`to_dict` output."""
        sketch = cls(
            float(data["relative_accuracy"]),
            min_value=float(data["min_value"]),
            max_buckets=int(data["max_buckets"]),
        )
        sketch.zero_count = int(data["zero_count"])
        sketch.count = int(data["count"])
        sketch.buckets = {int(index): int(n) for index, n in data["buckets"].items()}
        if sketch.zero_count + sum(sketch.buckets.values()) != sketch.count:
            raise ValueError("sketch counts do not add up to its count")
        if sketch.count:
            sketch.min, sketch.max = float(data["min"]), float(data["max"])
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __repr__(self) -> str:
        return (
            f"QuantileSketch(relative_accuracy={self.relative_accuracy}, count={self.count}, "
            f"buckets={len(self.buckets)})"
        )
