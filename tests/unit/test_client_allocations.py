"""The Router-side allocation client: options picked by share, deterministic per task id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from learning.bandit_book import BanditBook, BookConfig
from learning.signing import BANDIT_ALLOCATIONS_KIND, SigningKey, generate_key, sign_event
from learnops.client.allocations import Allocations, choose, option_for, probes_for
from models.bandit import BanditAllocations, ParameterAllocation


def _allocations(doer: str, sequence: int, small: float) -> BanditAllocations:
    return BanditAllocations(
        doer=doer,
        sequence=sequence,
        allocations=[
            ParameterAllocation(
                phase="draft",
                parameter="router.model",
                policy_id="p",
                policy_version=1,
                shares={"large": 1 - small, "small": small},
                sequence=sequence,
            )
        ],
    )


WORKER = generate_key()


def _signed(allocations: BanditAllocations, key: SigningKey = WORKER) -> bytes:
    signature = sign_event(BANDIT_ALLOCATIONS_KIND, allocations.model_dump(mode="json"), key)
    return allocations.model_copy(update={"signature": signature}).to_json()


def test_with_pinned_keys_only_signed_records_under_their_doer_in_sequence_are_taken() -> None:
    client = Allocations("unused:9092", trusted_keys=[WORKER.public_key])
    assert client.apply(_signed(_allocations("Doer", 5, 0.9)), b"Doer") is not None
    refusals = {
        "signature": [
            (_allocations("Doer", 6, 0.1).to_json(), b"Doer"),  # unsigned
            (_signed(_allocations("Doer", 6, 0.1), generate_key()), b"Doer"),  # unpinned key
        ],
        "key": [(_signed(_allocations("Doer", 6, 0.1)), b"Other")],
        "sequence": [(_signed(_allocations("Doer", 4, 0.1)), b"Doer")],
    }
    for kind, records in refusals.items():
        for value, key in records:
            assert client.apply(value, key) is None, kind
        assert client.refused[kind] == len(records)
    # Altered after signing: the shares moved, the signature no longer covers them.
    altered = BanditAllocations.from_json(_signed(_allocations("Doer", 7, 0.9)))
    moved = altered.allocations[0].model_copy(update={"shares": {"large": 0.9, "small": 0.1}})
    assert (
        client.apply(altered.model_copy(update={"allocations": [moved]}).to_json(), b"Doer") is None
    )
    assert client.refused["signature"] == 3
    held = client.latest("Doer")
    assert held is not None and held.sequence == 5 and held.allocations[0].shares["small"] == 0.9


@given(st.floats(min_value=0, max_value=0.999999))
def test_choose_gives_an_option_for_every_point(point: float) -> None:
    assert choose({"a": 0.25, "b": 0.75}, point) == ("a" if point < 0.25 else "b")


def test_tasks_get_options_in_proportion_to_their_shares_and_always_the_same_one() -> None:
    allocations = _allocations("Doer", 3, 0.8)
    picks = [option_for(allocations, "draft", "router.model", f"t{i}") for i in range(5000)]
    assert picks.count("small") / len(picks) == pytest.approx(0.8, abs=0.02)
    again = [option_for(allocations, "draft", "router.model", f"t{i}") for i in range(5000)]
    assert picks == again


def test_probes_are_asked_on_their_share_of_tasks_and_left_out_of_records_without_them() -> None:
    plain = _allocations("Doer", 3, 0.02)
    assert b"probes" not in plain.to_json()  # records signed before probes still verify
    found = plain.allocations[0]
    asking = plain.model_copy(
        update={
            "allocations": [found.model_copy(update={"probes": ["small"], "probe_share": 0.25})]
        }
    )
    tasks = [f"task-{i}" for i in range(4000)]
    probed = [probes_for(asking, "draft", "router.model", t) for t in tasks]
    assert {tuple(p) for p in probed} == {(), ("small",)}
    assert sum(bool(p) for p in probed) / len(tasks) == pytest.approx(0.25, abs=0.03)
    assert probed == [probes_for(asking, "draft", "router.model", t) for t in tasks]
    assert probes_for(plain, "draft", "router.model", "task-1") == []
    client = Allocations("unused:9092", trusted_keys=[WORKER.public_key])
    assert client.apply(_signed(asking), b"Doer") is not None
    assert client.probes("Doer", "draft", "router.model", tasks[0]) == probed[0]
    assert client.probes("Other", "draft", "router.model", tasks[0]) == []
    # A task on a canary's candidate arm is never probed: its live run is not the bandit's.
    assert all(
        client.probes("Doer", "draft", "router.model", t, arm="candidate") == [] for t in tasks
    )
    assert client.probes("Doer", "draft", "router.model", tasks[0], arm="control") == probed[0]
    with pytest.raises(
        ValueError, match=r"probes \['large2'\] of draft/router.model have no share"
    ):
        ParameterAllocation.model_validate({**found.model_dump(), "probes": ["large2"]})


def test_an_unpinned_client_is_refused_unless_unverified_is_asked_for() -> None:
    with pytest.raises(ValueError, match="Allocations needs trusted_keys"):
        Allocations("unused:9092")


def test_an_older_sequence_never_replaces_a_newer_one() -> None:
    client = Allocations("unused:9092", allow_unverified=True)
    client.apply(_allocations("Doer", 5, 0.9).to_json())
    assert client.apply(_allocations("Doer", 4, 0.1).to_json()) is None
    held = client.latest("Doer")
    assert held is not None and held.sequence == 5
    assert client.option("Doer", "draft", "other", "t1") is None
    assert client.apply(b"{not json") is None and client.skipped == 1


def test_an_allocation_of_another_version_than_the_routed_one_gives_the_default() -> None:
    """After a promotion the held record is the old version's until the bandit publishes
    the new one's; its options may not be the new version's, so none is given."""
    client = Allocations("unused:9092", allow_unverified=True)
    client.apply(_allocations("Doer", 3, 0.9).to_json())  # of p@1
    tasks = [f"t{i}" for i in range(50)]
    assert all(
        client.option("Doer", "draft", "router.model", t, policy=("p", 2)) is None for t in tasks
    )
    assert all(
        client.option("Doer", "draft", "router.model", t, policy=("q", 1)) is None for t in tasks
    )
    assert client.probes("Doer", "draft", "router.model", "t1", policy=("p", 2)) == []
    routed = [client.option("Doer", "draft", "router.model", t, policy=("p", 1)) for t in tasks]
    assert set(routed) == {"large", "small"}
    # Not told the routed version, the client answers as before.
    assert [client.option("Doer", "draft", "router.model", t) for t in tasks] == routed
    # The choice is the same option with the sequence of the allocation that chose it.
    chosen = [client.choice("Doer", "draft", "router.model", t, policy=("p", 1)) for t in tasks]
    assert [c.option for c in chosen if c] == routed and {c.sequence for c in chosen if c} == {3}
    assert client.choice("Doer", "draft", "router.model", "t1", policy=("p", 2)) is None


def test_shares_that_do_not_sum_to_one_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to"):
        ParameterAllocation(
            phase="d",
            parameter="p",
            policy_id="p",
            policy_version=1,
            shares={"a": 0.5, "b": 0.6},
            sequence=1,
        )


def test_an_empty_book_publishes_no_allocation_and_config_names_unknown_keys() -> None:
    assert BanditBook().event("Doer").allocations == []
    assert BookConfig.from_dict({"every": 5, "min_share": 0.1}).bandit.min_share == 0.1
    with pytest.raises(ValueError, match="unknown setting"):
        BookConfig.from_dict({"evry": 5})
