"""A worker that has lost its place in its consumer group exits instead of lingering.

* **Static membership** (``LEARNOPS_GROUP_INSTANCE_ID``, Kafka's
  ``group.instance.id``). A process started under the id of a live worker takes
  its place, and the replaced worker's next heartbeat is answered
  ``UNKNOWN_MEMBER_ID``; left to aiokafka it would rejoin under the same id and
  take the partitions back, the two trading them for as long as both run, every
  table counting twice. So a worker with an id whose heartbeat, group sync or
  offset commit, sent with the member id and generation it still holds, is
  answered ``UNKNOWN_MEMBER_ID`` or ``FENCED_INSTANCE_ID`` exits at once. A
  worker whose session expired (it stalled for longer than the session timeout,
  and its partitions went to others) exits the same way; its supervisor starts
  it again and it rejoins as a new member.
* **A dead coordination task.** aiokafka hands the errors it expects to the
  consumer; its coordination task ends only on others (a newcomer's Faust
  assignor asserting that a stored assignment names its own URL, for one), and
  the consumer then fetches nothing while the process stays up and looks
  healthy. The worker exits instead, saying why.

It exits with :func:`os._exit`, as a kill would stop it: offsets not committed
are read again and every effect is idempotent (docs/operations.md, "Exactly
once", where "Static membership" also tells what was measured); a graceful stop
could block on the very group that no longer answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any, NoReturn

from aiokafka.errors import UnknownMemberIdError
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.protocol.group import HeartbeatRequest, SyncGroupRequest

log = logging.getLogger(__name__)

#: Kafka's error codes that tell a member it is no longer the one the group knows
#: (aiokafka has no error class for FENCED_INSTANCE_ID).
UNKNOWN_MEMBER_ID = UnknownMemberIdError.errno
FENCED_INSTANCE_ID = 82
#: The worker's exit status when it leaves for either reason (EX_TEMPFAIL: start it again).
EXIT_STATUS = 75

_GUARDED_REQUESTS = (HeartbeatRequest, SyncGroupRequest, OffsetCommitRequest)


def sent_as(request: Any) -> tuple[str, int]:
    """The member id and generation a heartbeat, group sync or offset commit request carries."""
    if isinstance(request, OffsetCommitRequest):
        return request._consumer_id, request._consumer_group_generation_id
    return request._member_id, request._generation_id


def response_errors(response: Any) -> set[int]:
    """The error codes of a heartbeat, group sync or offset commit response."""
    codes: set[int] = set()
    code = getattr(response, "error_code", None)
    if isinstance(code, int):
        codes.add(code)
    # OffsetCommitResponse: topics = [(topic, [(partition, error_code), …]), …]
    for _topic, partitions in getattr(response, "topics", None) or ():
        codes.update(error for _partition, error in partitions)
    return codes


def lost_place(request: Any, response: Any, member_id: str) -> int | None:
    """The error code by which ``response`` tells the member ``member_id`` it is no longer in
    its group, or None.

    Only an answer to a request sent as that member counts: after aiokafka resets
    the membership (an ILLEGAL_GENERATION, say), Faust's commit on revocation goes
    out with no member id and is refused UNKNOWN_MEMBER_ID, as a plain member's is;
    and a request built before the worker rejoined carries an id it no longer holds.
    """
    if not isinstance(request, _GUARDED_REQUESTS):
        return None
    lost = response_errors(response) & {UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID}
    sent_member, generation = sent_as(request)
    if lost and sent_member and generation >= 0 and sent_member == member_id:
        return min(lost)
    return None


def exit_now(message: str) -> NoReturn:
    """Log ``message`` as critical and end the process at once, as a kill would (75)."""
    log.critical(message)
    logging.shutdown()  # flushes the log's handlers
    os._exit(EXIT_STATUS)


def guard_membership(
    consumer: Any, instance_id: str | None, *, leave: Callable[[str], Any] = exit_now
) -> None:
    """Make ``consumer`` (a started AIOKafkaConsumer of a group) ``leave`` once it loses its place.

    ``leave`` is called with the reason; the worker's logs it and exits at once.
    """
    coordinator = consumer._coordinator
    group = coordinator.group_id
    if instance_id:
        send = coordinator._send_req

        async def guarded_send(request: Any) -> Any:
            response = await send(request)
            error = lost_place(request, response, coordinator.member_id)
            if error is not None:
                leave(
                    f"the broker no longer knows this worker as group instance "
                    f"{instance_id!r} of group {group!r} (error {error} on "
                    f"{type(request).__name__}): another worker started with the same "
                    "LEARNOPS_GROUP_INSTANCE_ID, or this one stalled past its session "
                    "timeout. Exiting so that it is not counted twice; give every live "
                    "worker its own id"
                )
            return response

        coordinator._send_req = guarded_send

    def coordination_ended(task: asyncio.Task[Any]) -> None:
        if task.cancelled() or coordinator._closing.done():
            return
        error = task.exception()
        if error is None:
            return
        # The errors aiokafka expects reach the consumer; the task itself ends on the others.
        hint = ""
        if instance_id and isinstance(error.__cause__, AssertionError):
            hint = (
                f"; as group instance {instance_id!r} it was handed an assignment made for "
                "another worker's URL: keep a static worker's LEARNOPS_WEB_HOST and "
                "LEARNOPS_WEB_PORT across restarts, or start it again after the session "
                "timeout, or check that no other live worker has its id"
            )
        leave(f"the consumer of group {group!r} stopped coordinating ({error!r}){hint}")

    coordinator._coordination_task.add_done_callback(coordination_ended)
