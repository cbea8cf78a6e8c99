"""What the membership guard (agents/faust_internals/membership.py) reads from the coordinator.

The guard itself is tried on a real broker in tests/integration/test_static_membership.py.
"""

from __future__ import annotations

from aiokafka.protocol.commit import OffsetCommitResponse_v3
from aiokafka.protocol.group import HeartbeatResponse_v1, SyncGroupResponse_v1

from agents.faust_internals.membership import (
    FENCED_INSTANCE_ID,
    UNKNOWN_MEMBER_ID,
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
