"""What the membership guard (agents/faust_internals/membership.py) reads from the coordinator.

The guard itself is tried on a real broker in tests/integration/test_static_membership.py.
"""

from __future__ import annotations

from aiokafka.protocol.commit import OffsetCommitRequest, OffsetCommitResponse_v3
from aiokafka.protocol.group import (
    HeartbeatRequest,
    HeartbeatResponse_v1,
    SyncGroupRequest,
    SyncGroupResponse_v1,
)

from agents.faust_internals.membership import (
    FENCED_INSTANCE_ID,
    UNKNOWN_MEMBER_ID,
    lost_place,
    response_errors,
)


def test_a_heartbeat_or_sync_answer_gives_its_one_error_code() -> None:
    assert response_errors(HeartbeatResponse_v1(0, 0)) == {0}
    assert response_errors(HeartbeatResponse_v1(0, UNKNOWN_MEMBER_ID)) == {UNKNOWN_MEMBER_ID}
    assert response_errors(SyncGroupResponse_v1(0, FENCED_INSTANCE_ID, b"")) == {FENCED_INSTANCE_ID}


def test_an_offset_commit_answer_gives_every_partitions_error_code() -> None:
    answer = OffsetCommitResponse_v3(
        0, [("learning.run-completed", [(0, 0), (1, UNKNOWN_MEMBER_ID)]), ("x", [(0, 27)])]
    )
    assert response_errors(answer) == {0, UNKNOWN_MEMBER_ID, 27}


HELD = "worker-0-2f1c"


def test_an_answer_to_the_membership_the_worker_holds_says_it_lost_its_place() -> None:
    beat = HeartbeatRequest("g", 3, HELD)
    assert lost_place(beat, HeartbeatResponse_v1(0, UNKNOWN_MEMBER_ID), HELD) == UNKNOWN_MEMBER_ID
    sync = SyncGroupRequest("g", 3, HELD, "worker-0", [])
    assert (
        lost_place(sync, SyncGroupResponse_v1(0, FENCED_INSTANCE_ID, b""), HELD)
        == FENCED_INSTANCE_ID
    )
    commit = OffsetCommitRequest("g", 3, HELD, -1, [("t", [(0, 10, "")])])
    refused = OffsetCommitResponse_v3(0, [("t", [(0, UNKNOWN_MEMBER_ID)])])
    assert lost_place(commit, refused, HELD) == UNKNOWN_MEMBER_ID
    # Other refusals are aiokafka's to handle (a rebalance, a coordinator moving).
    assert lost_place(beat, HeartbeatResponse_v1(0, 27), HELD) is None
    assert lost_place(beat, HeartbeatResponse_v1(0, 0), HELD) is None


def test_a_refusal_of_a_membership_the_worker_no_longer_holds_is_not_a_lost_place() -> None:
    # After aiokafka resets the membership, Faust's commit on revocation goes out with no
    # member id and generation -1: the broker refuses it UNKNOWN_MEMBER_ID, as for any member.
    commit = OffsetCommitRequest("g", -1, "", -1, [("t", [(0, 10, "")])])
    refused = OffsetCommitResponse_v3(0, [("t", [(0, UNKNOWN_MEMBER_ID)])])
    assert lost_place(commit, refused, "") is None
    # A heartbeat built before the worker rejoined under a new member id.
    stale = HeartbeatRequest("g", 3, "worker-0-old")
    assert lost_place(stale, HeartbeatResponse_v1(0, UNKNOWN_MEMBER_ID), HELD) is None
    # A request of another kind (a JoinGroup's errors reach the consumer through aiokafka).
    assert lost_place(object(), HeartbeatResponse_v1(0, UNKNOWN_MEMBER_ID), HELD) is None
