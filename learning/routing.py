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
from typing import Literal, Protocol

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
