"""The DDSketch-style quantile sketch: its error bound, exact merges and serialisation."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from learning.sketch import QuantileSketch

QUANTILES = [0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0]
# Slack for floating-point rounding of log() at bucket boundaries.
ROUNDING = 1e-9


def distributions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20260301)
    return {
        "lognormal": rng.lognormal(mean=0.5, sigma=1.5, size=20_000),
        "exponential": rng.exponential(scale=2.0, size=20_000),
        "uniform": rng.uniform(0.0, 10.0, size=20_000),
        "pareto": rng.pareto(1.5, size=20_000),
        "crl_like": np.where(rng.random(20_000) < 0.2, 0.0, rng.gamma(2.0, 1.5, size=20_000)),
        "few": rng.exponential(size=7),
    }


def assert_within_bound(sketch: QuantileSketch, values: np.ndarray) -> None:
    alpha = sketch.relative_accuracy
    for q in QUANTILES:
        # The sketch answers the value of rank floor(q·(n−1)): numpy's "lower" method.
        exact = float(np.quantile(values, q, method="lower"))
        estimate = sketch.quantile(q)
        if exact < sketch.min_value:
            assert estimate <= sketch.min_value, (q, exact, estimate)
        else:
            assert abs(estimate - exact) <= (alpha + ROUNDING) * exact, (q, exact, estimate)


@pytest.mark.parametrize("name", sorted(distributions()))
@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_quantiles_are_within_the_relative_error_bound(name: str, alpha: float) -> None:
    values = distributions()[name]
    sketch = QuantileSketch(alpha)
    sketch.add_many(values)
    assert sketch.count == len(values)
    assert_within_bound(sketch, values)


@given(
    st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=300),
    st.floats(min_value=0, max_value=1),
)
def test_error_bound_holds_for_any_data(values: list[float], q: float) -> None:
    sketch = QuantileSketch(0.01)
    sketch.add_many(values)
    exact = float(np.quantile(np.array(values), q, method="lower"))
    estimate = sketch.quantile(q)
    bound = max((0.01 + ROUNDING) * exact, sketch.min_value)
    assert abs(estimate - exact) <= bound


@pytest.mark.parametrize("name", ["lognormal", "crl_like"])
def test_merge_equals_the_sketch_of_the_concatenation(name: str) -> None:
    values = distributions()[name]
    left, right, whole = QuantileSketch(), QuantileSketch(), QuantileSketch()
    left.add_many(values[:7_000])
    right.add_many(values[7_000:])
    whole.add_many(values)
    left.merge(right)
    assert left == whole
    assert_within_bound(left, values)


def test_memory_grows_with_the_range_not_the_count() -> None:
    sketch = QuantileSketch(0.01)
    sketch.add_many(distributions()["lognormal"])
    sketch.add_many(distributions()["lognormal"])
    assert sketch.count == 40_000
    assert len(sketch.buckets) < 1_000


def test_collapsing_keeps_the_upper_quantiles_within_bound() -> None:
    values = np.geomspace(1e-6, 1e6, 5_000)
    sketch = QuantileSketch(0.01, max_buckets=200)
    sketch.add_many(values)
    assert len(sketch.buckets) == 200
    for q in (0.95, 0.99, 1.0):
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(sketch.quantile(q) - exact) <= (0.01 + ROUNDING) * exact


def test_serialisation_round_trips_through_json() -> None:
    sketch = QuantileSketch(0.02)
    sketch.add_many(distributions()["crl_like"])
    restored = QuantileSketch.from_dict(orjson.loads(orjson.dumps(sketch.to_dict())))
    assert restored == sketch
    assert [restored.quantile(q) for q in QUANTILES] == [sketch.quantile(q) for q in QUANTILES]
    empty = QuantileSketch.from_dict(orjson.loads(orjson.dumps(QuantileSketch().to_dict())))
    assert empty.count == 0


def test_inconsistent_serialised_counts_are_rejected() -> None:
    data = QuantileSketch().to_dict() | {"count": 3}
    with pytest.raises(ValueError, match="do not add up"):
        QuantileSketch.from_dict(data)


def test_zeros_are_answered_exactly() -> None:
    sketch = QuantileSketch()
    sketch.add_many([0.0] * 90 + [5.0] * 10)
    assert sketch.quantile(0.5) == 0.0
    assert sketch.quantile(0.95) == pytest.approx(5.0, rel=0.01)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_negative_and_non_finite_values_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="finite, non-negative"):
        QuantileSketch().add(bad)


def test_empty_sketch_has_no_quantile() -> None:
    with pytest.raises(ValueError, match="empty"):
        QuantileSketch().quantile(0.5)


def test_sketches_with_different_accuracy_do_not_merge() -> None:
    with pytest.raises(ValueError, match="different parameters"):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))
