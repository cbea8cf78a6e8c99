"""Which arm of a deployment a task goes to, decided by a hash so that everyone agrees.

The orchestrator, the service and a replay compute the same arm from the task
id and the deployment's salt alone, without talking to each other:

    u = (first 8 bytes of SHA-256(f"{len(salt)}:{salt}:{task_id}") as a big-endian
         unsigned integer, shifted right by 11 bits) / 2**53      ∈ [0, 1)
    arm = "candidate" if u < allocation else "control"

``len(salt)`` is the length of the salt's UTF-8 bytes, and the message is UTF-8
bytes; the length prefix makes the encoding unambiguous whatever characters the
salt holds. Keeping the top 53 bits makes u an exact double strictly below 1.

Because the candidate arm is ``u < allocation``, raising the allocation only
moves tasks from control to candidate: a task in the candidate arm at 5 % stays
there at 10 %. A new salt per deployment makes each deployment's split
independent of the others'.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # the Router's import stays free of pydantic until it reads a record
    from models.policy_change import PolicyChange

Arm = Literal["control", "candidate"]


class Routable(Protocol):
    """Anything with a salt and a candidate traffic share (a deployment)."""

    @property
    def salt(self) -> str: ...

    @property
    def allocation(self) -> float: ...


def bucket(task_id: str, salt: str) -> float:
    """The task's uniform number u in [0, 1) under ``salt`` (formula in the module notes)."""
    salt_bytes = salt.encode()
    message = b"%d:%s:%s" % (len(salt_bytes), salt_bytes, task_id.encode())
    top = int.from_bytes(hashlib.sha256(message).digest()[:8], "big") >> 11
    return top / 2**53


def assign(task_id: str, deployment: Routable) -> Arm:
    """``"candidate"`` if the task's bucket is below the deployment's allocation, else control."""
    allocation = deployment.allocation
    if not 0.0 <= allocation <= 1.0:
        raise ValueError(f"allocation {allocation} is not between 0 and 1")
    return "candidate" if bucket(task_id, deployment.salt) < allocation else "control"


def new_salt() -> str:
    """A fresh random salt for a new deployment (128 bits, hex)."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class RouteSpec:
    """What routing needs to know about a deployment."""

    deployment_id: str
    salt: str
    allocation: float
    control_policy_id: str
    candidate_policy_id: str

    def __post_init__(self) -> None:
        if not self.salt:
            raise ValueError(f"deployment {self.deployment_id}: salt is empty")
        if not 0.0 <= self.allocation <= 1.0:
            raise ValueError(
                f"deployment {self.deployment_id}: allocation {self.allocation} "
                "is not between 0 and 1"
            )

    def policy_for(self, task_id: str) -> str:
        """Policy id that serves the task."""
        arm = assign(task_id, self)
        return self.candidate_policy_id if arm == "candidate" else self.control_policy_id

    def with_allocation(self, allocation: float) -> RouteSpec:
        """The same deployment at another traffic share (same salt, so assignments nest)."""
        return replace(self, allocation=allocation)


@dataclass(frozen=True)
class Route:
    """How one task runs: the policy that serves it, its arm, and whether to mirror it.

    ``deployment_id`` is None when the doer has no live deployment (``arm`` is
    then None too). In a shadow every task is served by the control; ``mirror``
    says whether to run it under the candidate as well (a shadow run).
    """

    policy_id: str
    version: int
    deployment_id: str | None = None
    arm: Arm | None = None
    step: int = 0
    allocation: float = 0.0
    mirror: bool = False
    candidate_policy_id: str | None = None
    candidate_version: int | None = None


def route(change: PolicyChange, task_id: str) -> Route:
    """The route of a task under a doer's live state (its latest ``PolicyChange``)."""
    live = change.deployment
    if live is None:
        return Route(change.policy_id, change.version)
    arm = assign(task_id, live)
    common: dict[str, Any] = {
        "deployment_id": live.deployment_id,
        "step": live.step,
        "allocation": live.allocation,
        "candidate_policy_id": live.candidate_policy_id,
        "candidate_version": live.candidate_version,
    }
    if change.status == "shadow":
        return Route(
            change.policy_id, change.version, arm="control", mirror=arm == "candidate", **common
        )
    if arm == "candidate":
        return Route(live.candidate_policy_id, live.candidate_version, arm=arm, **common)
    return Route(change.policy_id, change.version, arm=arm, **common)
