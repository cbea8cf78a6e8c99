"""Sequential sample-ratio-mismatch test that may be checked after every routing.

A fixed-level chi-square repeated at every routing pauses healthy canaries
(one routing to a 5 % arm already gives p ≈ 1e-5). This module keeps a
**Beta-binomial (two-arm Dirichlet-multinomial) mixture SPRT** instead:

    Lindon, Malek, "Anytime-valid inference for multinomial count data",
    NeurIPS 2022 (arXiv:2011.03567) — the Dirichlet-multinomial Bayes factor
    against the intended split is a test martingale; Optimizely's and Eppo's
    engines use it for SRM.

For routings made while the candidate's intended share is ``p`` (the allocation
in force, recorded on every ``TaskRouted``), with ``m`` of ``n`` routed to the
candidate and a prior ``θ ~ Beta(k·p, k·(1−p))`` of concentration ``k``:

    BF_p = B(k·p + m, k·(1−p) + n − m) / B(k·p, k·(1−p)) / (p^m (1−p)^(n−m)).

Under the null (every routing goes to the candidate with the probability in
force) each routing multiplies the product ``Π_p BF_p`` by a factor of
conditional mean 1 — the mixture's predictive probability over the null's —
so the product over allocations is a test martingale even when the allocation
changes with the data or returns to an earlier value; an intended change of
split is a new factor, never a mismatch. By Ville's inequality
``P(sup BF ≥ 1/threshold) ≤ threshold`` over the whole canary, all steps
included. The always-valid p-value is ``min(1, 1 / max_so_far BF)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and scipy load in first_pause only: the CLI imports this module
    import numpy as np
    import numpy.typing as npt

DEFAULT_CONCENTRATION = 100.0
ARMS = ("control", "candidate")


def log_bayes_factor(
    candidate: int, control: int, allocation: float, concentration: float
) -> float:
    """Log Beta-binomial Bayes factor of the counts against the intended candidate share.

    Lindon & Malek 2022, eq. for the Dirichlet-multinomial marginal with two
    categories; the prior is centred on the intended split.
    """
    if not 0.0 < allocation < 1.0:
        raise ValueError(f"allocation {allocation} is not strictly between 0 and 1")
    a = concentration * allocation
    b = concentration * (1.0 - allocation)
    mixture = _betaln(a + candidate, b + control) - _betaln(a, b)
    null = candidate * math.log(allocation) + control * math.log1p(-allocation)
    return float(mixture - null)


def _betaln(a: float, b: float) -> float:
    """log B(a, b), from the standard library's log-gamma."""
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _key(allocation: float) -> str:
    return f"{allocation:.6g}"


@dataclass
class SequentialSRM:
    """Routed counts per allocation in force and the running maximum of the Bayes factor.

    Serialisable for one table value (``to_dict`` / ``from_dict``); keep it in
    the same value as the deployment's other canary state.
    """

    concentration: float = DEFAULT_CONCENTRATION
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    max_log_bf: float = 0.0

    def __post_init__(self) -> None:
        if not self.concentration > 0.0:
            raise ValueError(f"concentration {self.concentration} is not positive")

    def add(self, arm: str, allocation: float) -> None:
        """Count one routing to ``arm`` made while the candidate's share was ``allocation``."""
        if arm not in ARMS:
            raise ValueError(f"arm {arm!r} is not 'control' or 'candidate'")
        if not 0.0 < allocation < 1.0:
            # A share of 0 or 1 routes deterministically: nothing to test.
            return
        row = self.counts.setdefault(_key(allocation), dict.fromkeys(ARMS, 0))
        row[arm] += 1
        self.max_log_bf = max(self.max_log_bf, self.log_bf)

    @property
    def log_bf(self) -> float:
        """Log of the current Bayes factor, the product over allocations."""
        return sum(
            log_bayes_factor(row["candidate"], row["control"], float(key), self.concentration)
            for key, row in self.counts.items()
        )

    @property
    def p_value(self) -> float:
        """Always-valid p-value: ``min(1, 1 / running max of the Bayes factor)``."""
        return min(1.0, math.exp(-self.max_log_bf))

    def mismatch(self, threshold: float) -> bool:
        """Whether the always-valid p-value has fallen below ``threshold``."""
        return self.p_value < threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for a table value."""
        return {
            "concentration": self.concentration,
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "max_log_bf": self.max_log_bf,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SequentialSRM:
        """Rebuild from :meth:`to_dict` output (missing keys take their defaults)."""
        counts = {
            str(k): {arm: int(v.get(arm, 0)) for arm in ARMS}
            for k, v in dict(data.get("counts", {})).items()
        }
        return cls(
            concentration=float(data.get("concentration", DEFAULT_CONCENTRATION)),
            counts=counts,
            max_log_bf=float(data.get("max_log_bf", 0.0)),
        )


def first_pause(
    to_candidate: npt.NDArray[np.bool_],
    allocation: npt.ArrayLike,
    *,
    threshold: float = 0.001,
    concentration: float = DEFAULT_CONCENTRATION,
) -> npt.NDArray[np.int64]:
    """Index of the routing at which each row first pauses, or −1 (vectorised SequentialSRM).

    ``to_candidate`` is (replications, routings); ``allocation`` the share in
    force at each routing (shared by all rows). Used by the simulations.
    """
    import numpy as np
    from scipy.special import betaln

    routed = np.atleast_2d(np.asarray(to_candidate, dtype=bool))
    shares = np.broadcast_to(np.asarray(allocation, dtype=float), routed.shape[1:])
    log_bf = np.zeros(routed.shape, dtype=float)
    for share in np.unique(shares):
        if not 0.0 < share < 1.0:
            continue
        here = shares == share
        m = np.cumsum(routed & here, axis=1)
        n = np.cumsum(np.broadcast_to(here, routed.shape), axis=1)
        a, b = concentration * share, concentration * (1.0 - share)
        log_bf += (
            betaln(a + m, b + n - m)
            - betaln(a, b)
            - m * math.log(share)
            - (n - m) * math.log1p(-share)
        )
    crossed = log_bf >= math.log(1.0 / threshold)
    first = np.argmax(crossed, axis=1)
    return np.where(crossed.any(axis=1), first, -1).astype(np.int64)


__all__ = ["DEFAULT_CONCENTRATION", "SequentialSRM", "first_pause", "log_bayes_factor"]
