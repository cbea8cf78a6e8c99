"""Running count, mean and variance that merge exactly and fit in a table row.

Welford's update for one value and Chan, Golub and LeVeque's pairwise merge
(Chan et al., "Algorithms for computing the sample variance", 1983; the same
formulas as numpy's ``var`` up to rounding).  Only sufficient statistics are
kept: ``count``, ``mean`` and ``m2`` (the sum of squared deviations).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class Moments:
    """Count, mean and sum of squared deviations of the values seen so far."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        """Fold one finite value into the statistics (Welford's update)."""
        if not math.isfinite(x):
            raise ValueError(f"value {x!r} is not a finite number")
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def add_many(self, values: npt.ArrayLike | Iterable[float]) -> None:
        """Fold an array of finite values in at once (one merge, vectorised)."""
        arr = np.asarray(
            values if isinstance(values, np.ndarray | list | tuple) else list(values),  # type: ignore[arg-type]
            dtype=float,
        )
        if arr.size == 0:
            return
        if not np.all(np.isfinite(arr)):
            raise ValueError("values contain NaN or infinity")
        batch_mean = float(arr.mean())
        batch = Moments(
            count=int(arr.size),
            mean=batch_mean,
            m2=float(((arr - batch_mean) ** 2).sum()),
        )
        self.merge(batch)

    def merge(self, other: Moments) -> None:
        """Fold another set of statistics into this one (Chan's pairwise merge)."""
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / total
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total

    @property
    def variance(self) -> float:
        """Sample variance (ddof = 1); 0 with fewer than two values."""
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof = 1)."""
        return math.sqrt(self.variance)

    def to_dict(self) -> dict[str, float | int]:
        """Plain mapping for a table value or a JSON record."""
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Moments:
        """Rebuild from :meth:`to_dict` output."""
        return cls(count=int(data["count"]), mean=float(data["mean"]), m2=float(data["m2"]))
