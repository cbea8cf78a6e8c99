"""Canaries simulated as the canary stage runs them: routed one result at a time, judged after each.

:func:`simulate_flow` routes each result to the candidate with the current
step's share, recomputes both arms' count, mean and variance, and applies the
rules of :func:`learning.canary.look_statistics` and
:func:`learning.canary.advance` after every result: roll back, step up (after
``min_sample_size`` runs per arm in the step, on evidence or by dwell as the
config says), promote at the last step. It is vectorised over canaries and
over blocks of results, so a table of 2,000 canaries × 100,000 results runs in
seconds to minutes; ``tests/unit/test_canary_flow.py`` checks it against
:func:`learning.canary.evaluate` and :func:`learning.canary.advance` called one
result at a time.

The loss shapes are those production has (issue 16): a run that meets every
objective scores exactly 0, and the rest is right-skewed with rare large values.

* :func:`heavy` — lognormal (σ_log = 1), 5 % zeros, 1 % of runs ×10;
* :func:`zero_inflated` — a share of zeros, else lognormal (σ_log = 1).

A candidate's losses are the control's scaled by ``effect`` (1.08 = 8 % worse).
``rule="t_test"`` replaces the always-valid test with the naive one (Welch's
t-test at level ``alpha`` after every result) in the same flow, as the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from learning.canary import CanaryConfig, look_statistics

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
LossShape = Callable[[np.random.Generator, tuple[int, int]], FloatArray]
Rule = Literal["canary", "t_test"]


def heavy(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """Lognormal(0, 1) losses with 5 % exact zeros and 1 % of runs ten times larger."""
    x = rng.lognormal(0.0, 1.0, shape)
    u = rng.random(shape)
    x[u < 0.05] = 0.0
    x[u > 0.99] *= 10.0
    return x


def zero_inflated(zeros: float) -> LossShape:
    """Losses that are 0 with probability ``zeros``, else lognormal(0, 1)."""

    def draw(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
        x = rng.lognormal(0.0, 1.0, shape)
        x[rng.random(shape) < zeros] = 0.0
        return x

    return draw


SHAPES: dict[str, LossShape] = {
    "heavy": heavy,
    "zeros 90 %": zero_inflated(0.90),
    "zeros 98 %": zero_inflated(0.98),
}


@dataclass(frozen=True)
class FlowResult:
    """Per canary: the outcome, and the results, candidate runs and step at that moment.

    ``action`` is ``"promote"``, ``"rollback"`` or ``"continue"`` (undecided
    when the results ran out); the counts are taken at the decision, or at the end.
    """

    action: npt.NDArray[np.str_]
    results: IntArray
    candidate_runs: IntArray
    step: IntArray

    def rate(self, action: str, *, by: int | None = None) -> float:
        """Share of canaries whose outcome is ``action`` (within ``by`` results when given)."""
        hit = self.action == action
        if by is not None:
            hit &= self.results <= by
        return float(np.mean(hit))

    def median_results(self, action: str) -> float | None:
        """Median results to ``action`` over the canaries that took it (None if none did)."""
        hit = self.action == action
        return float(np.median(self.results[hit])) if hit.any() else None

    @staticmethod
    def concat(parts: list[FlowResult]) -> FlowResult:
        """One result of several chunks of canaries."""
        return FlowResult(
            action=np.concatenate([p.action for p in parts]),
            results=np.concatenate([p.results for p in parts]),
            candidate_runs=np.concatenate([p.candidate_runs for p in parts]),
            step=np.concatenate([p.step for p in parts]),
        )


class _Prefix:
    """Prefix sums of one arm's losses per canary, for the mean and variance of any first n."""

    def __init__(self, x: FloatArray) -> None:
        self.origin = x[:, :1].copy()  # sums around the first loss, against cancellation
        shifted = x - self.origin
        canaries, runs = x.shape
        self.s1 = np.zeros((canaries, runs + 1))
        self.s2 = np.zeros((canaries, runs + 1))
        np.cumsum(shifted, axis=1, out=self.s1[:, 1:])
        np.cumsum(np.square(shifted, out=shifted), axis=1, out=self.s2[:, 1:])

    def at(self, rows: IntArray, n: IntArray) -> tuple[FloatArray, FloatArray]:
        """Mean and variance (ddof 1; 0 below two runs) of the first ``n`` losses of ``rows``."""
        # Indexed in place: ``self.s1[rows]`` copied every row's whole prefix per look.
        s1 = self.s1[rows[:, None], n]
        s2 = self.s2[rows[:, None], n]
        safe = np.maximum(n, 1)
        mean = s1 / safe
        var = np.where(n > 1, np.maximum(s2 - s1 * mean, 0.0) / np.maximum(n - 1, 1), 0.0)
        return mean + self.origin[rows], var


def _t_test(
    n_c: IntArray, m_c: FloatArray, v_c: FloatArray, n_t: IntArray, m_t: FloatArray,
    v_t: FloatArray, config: CanaryConfig,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:  # fmt: skip
    """Rollback and promote of Welch's t-test at level alpha, repeated at every look."""
    from scipy import stats  # the baseline only

    se2_c = v_c / np.maximum(n_c, 1)
    se2_t = v_t / np.maximum(n_t, 1)
    se2 = se2_c + se2_t
    delta = m_t - m_c
    with np.errstate(divide="ignore", invalid="ignore"):
        t = delta / np.sqrt(se2)
        df = se2**2 / (se2_c**2 / np.maximum(n_c - 1, 1) + se2_t**2 / np.maximum(n_t - 1, 1))
        p = 2.0 * stats.t.sf(np.abs(t), np.nan_to_num(df, nan=1.0))
    ready = (n_c >= config.min_sample_size) & (n_t >= config.min_sample_size)
    significant = ready & (p < config.alpha) & (se2 > 0)
    return significant & (delta > 0), significant & (delta < 0)


def judge_flow(
    control: FloatArray,
    candidate: FloatArray,
    routing: FloatArray,
    config: CanaryConfig,
    *,
    rule: Rule = "canary",
    block: int = 2_000,
) -> FlowResult:
    """Outcomes of canaries given their losses and routing draws (canaries × results arrays).

    Result ``r`` of canary ``i`` goes to the candidate when ``routing[i, r]`` is
    below the share of the step in force; the arms take their losses in order
    from ``control[i]`` and ``candidate[i]``, which need as many columns as
    ``routing``. After each result the rules are applied as the canary stage
    does: rollback, then a step-up or promotion once the step has
    ``min_sample_size`` runs per arm.
    """
    size, results = routing.shape
    if control.shape != routing.shape or candidate.shape != routing.shape:
        raise ValueError("control, candidate and routing must have the same shape")
    arms = _Prefix(control), _Prefix(candidate)
    steps = np.asarray(config.steps)
    last_step = len(steps) - 1
    pos = np.zeros(size, np.int64)  # results consumed
    n_c = np.zeros(size, np.int64)
    n_t = np.zeros(size, np.int64)
    in_c = np.zeros(size, np.int64)
    in_t = np.zeros(size, np.int64)
    step = np.zeros(size, np.int64)
    action = np.full(size, "continue", dtype="<U8")
    done = np.zeros(size, bool)
    while True:
        rows = np.flatnonzero(~done & (pos < results))
        if rows.size == 0:
            break
        length = int(min(block, results - pos[rows].min()))
        cols = np.minimum(pos[rows, None] + np.arange(length), results - 1)
        draws = routing[rows[:, None], cols]
        to_candidate = draws < steps[step[rows]][:, None]
        took_t = np.cumsum(to_candidate, axis=1)
        took_c = np.arange(1, length + 1) - took_t
        ct, cc = n_t[rows, None] + took_t, n_c[rows, None] + took_c
        it, ic = in_t[rows, None] + took_t, in_c[rows, None] + took_c
        valid = pos[rows, None] + np.arange(1, length + 1) <= results
        m_c, v_c = arms[0].at(rows, np.minimum(cc, results))
        m_t, v_t = arms[1].at(rows, np.minimum(ct, results))
        if rule == "canary":
            look = look_statistics(cc, m_c, v_c, ct, m_t, v_t, config)
            rollback, promote = look.rollback, look.promote
        else:
            rollback, promote = _t_test(cc, m_c, v_c, ct, m_t, v_t, config)
        rollback = rollback & valid
        dwelt = np.minimum(ic, it) >= config.min_sample_size
        at_last = (step[rows] == last_step)[:, None]
        promote_now = promote & dwelt & at_last & valid
        step_now = dwelt & ~at_last & ~rollback & valid
        if config.step_up == "evidence":
            step_now &= promote
        event = rollback | promote_now | step_now
        first = event.argmax(axis=1)
        k = np.arange(rows.size)
        hit = event[k, first]
        j = np.where(hit, first, np.minimum(length, results - pos[rows]) - 1)
        pos[rows] += j + 1
        n_c[rows], n_t[rows] = cc[k, j], ct[k, j]
        in_c[rows], in_t[rows] = ic[k, j], it[k, j]
        ended_back = hit & rollback[k, j]
        ended_prom = hit & ~ended_back & promote_now[k, j]
        stepped = hit & ~ended_back & ~ended_prom
        action[rows[ended_back]] = "rollback"
        action[rows[ended_prom]] = "promote"
        done[rows[ended_back | ended_prom]] = True
        up = rows[stepped]
        step[up] += 1
        in_c[up] = 0
        in_t[up] = 0
    return FlowResult(action=action, results=pos, candidate_runs=n_t, step=step)


def simulate_flow(
    shape: LossShape,
    config: CanaryConfig,
    *,
    effect: float = 1.0,
    canaries: int,
    results: int,
    seed: int,
    share: float | None = None,
    rule: Rule = "canary",
    chunk: int = 100,
    block: int = 2_000,
) -> FlowResult:
    """Outcomes of ``canaries`` canaries judged after every one of up to ``results`` results.

    ``share`` fixes the candidate's share (one step, never stepped up);
    otherwise the config's steps are followed. ``max_duration`` is not simulated.
    """
    if share is not None:
        config = replace(config, steps=(share,))
    if not math.isfinite(effect) or effect <= 0:
        raise ValueError(f"effect {effect} must be a positive factor")
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, canaries, chunk):
        size = (min(chunk, canaries - start), results)
        control, candidate = shape(rng, size), shape(rng, size) * effect
        parts.append(
            judge_flow(control, candidate, rng.random(size), config, rule=rule, block=block)
        )
    return FlowResult.concat(parts)


def previous(config: CanaryConfig) -> CanaryConfig:
    """``config`` with the rule that was in force before issue 16, for comparisons."""
    return replace(config, variance_guard=False, harm_alpha=None, step_up="evidence")


__all__ = [
    "SHAPES",
    "FlowResult",
    "LossShape",
    "heavy",
    "judge_flow",
    "previous",
    "simulate_flow",
    "zero_inflated",
]
