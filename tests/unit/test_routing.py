"""Hash routing: deterministic, nested across allocations, uniform, independent per salt."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from learning.routing import RouteSpec, assign, bucket, new_salt

N_IDS = 100_000
SALT = "5f2a9c0e7d4b4c1a9e3f2b6d8a1c0e7f"


@pytest.fixture(scope="module")
def buckets() -> np.ndarray:
    return np.array([bucket(f"task-{i}", SALT) for i in range(N_IDS)])


def spec(allocation: float, salt: str = SALT) -> RouteSpec:
    return RouteSpec("dep-1", salt, allocation, "policy-control", "policy-candidate")


def test_same_task_and_salt_always_get_the_same_arm() -> None:
    deployment = spec(0.3)
    first = [assign(f"t{i}", deployment) for i in range(2_000)]
    again = [assign(f"t{i}", spec(0.3)) for i in range(2_000)]
    assert first == again
    assert {"control", "candidate"} == set(first)


def test_bucket_matches_the_documented_formula() -> None:
    salt, task = "sälz:1", "task:ü"
    message = f"{len(salt.encode())}:{salt}:{task}".encode()
    expected = (int.from_bytes(hashlib.sha256(message).digest()[:8], "big") >> 11) / 2**53
    assert bucket(task, salt) == expected
    assert 0.0 <= expected < 1.0


def test_salt_length_prefix_keeps_encodings_apart() -> None:
    assert bucket("b:c", "a") != bucket("c", "a:b")


def test_allocation_zero_and_one_route_everything_one_way() -> None:
    ids = [f"t{i}" for i in range(500)]
    assert {assign(t, spec(0.0)) for t in ids} == {"control"}
    assert {assign(t, spec(1.0)) for t in ids} == {"candidate"}


@given(
    task_id=st.text(min_size=0, max_size=40),
    salt=st.text(min_size=1, max_size=40),
    low=st.floats(min_value=0.0, max_value=1.0),
    high=st.floats(min_value=0.0, max_value=1.0),
)
def test_candidate_at_a_lower_allocation_stays_candidate_at_a_higher_one(
    task_id: str, salt: str, low: float, high: float
) -> None:
    low, high = min(low, high), max(low, high)
    if assign(task_id, spec(low, salt)) == "candidate":
        assert assign(task_id, spec(high, salt)) == "candidate"
    if assign(task_id, spec(high, salt)) == "control":
        assert assign(task_id, spec(low, salt)) == "control"


@pytest.mark.parametrize("allocation", [0.05, 0.10, 0.25, 0.50])
def test_candidate_share_matches_the_allocation(buckets: np.ndarray, allocation: float) -> None:
    candidates = int((buckets < allocation).sum())
    observed = [N_IDS - candidates, candidates]
    expected = [N_IDS * (1 - allocation), N_IDS * allocation]
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_buckets_are_uniform_over_twenty_bins(buckets: np.ndarray) -> None:
    counts = np.bincount((buckets * 20).astype(int), minlength=20)
    assert stats.chisquare(counts).pvalue > 0.001


def test_assign_agrees_with_bucket_threshold(buckets: np.ndarray) -> None:
    deployment = spec(0.25)
    arms = [assign(f"task-{i}", deployment) for i in range(5_000)]
    assert arms == ["candidate" if u < 0.25 else "control" for u in buckets[:5_000]]


def test_different_salts_split_tasks_independently(buckets: np.ndarray) -> None:
    other = np.array([bucket(f"task-{i}", "another-salt") for i in range(20_000)])
    a, b = buckets[:20_000] < 0.5, other < 0.5
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    assert stats.chi2_contingency(table).pvalue > 0.001
    assert abs(float(np.corrcoef(buckets[:20_000], other)[0, 1])) < 0.03


def test_route_spec_serves_the_arms_policy_and_keeps_its_salt_when_stepping_up() -> None:
    deployment = spec(0.05, new_salt())
    wider = deployment.with_allocation(0.5)
    assert wider.salt == deployment.salt
    for i in range(1_000):
        task = f"t{i}"
        arm = assign(task, deployment)
        assert deployment.policy_for(task) == f"policy-{arm}"
        if arm == "candidate":
            assert assign(task, wider) == "candidate"


@pytest.mark.parametrize("allocation", [-0.1, 1.5])
def test_route_spec_rejects_an_allocation_outside_zero_to_one(allocation: float) -> None:
    with pytest.raises(ValueError, match="not between 0 and 1"):
        spec(allocation)


def test_route_spec_rejects_an_empty_salt() -> None:
    with pytest.raises(ValueError, match="salt is empty"):
        spec(0.1, "")
