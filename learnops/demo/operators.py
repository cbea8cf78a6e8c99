"""The demo's operator keys: an owner and a second owner who sign the demo's commands.

The demo acts as its own administrator: the first command it signs in a
process enrols both keys (``operator_key_events``, as `learnops operator keys
add` would) with the owner role on every doer, then every command goes out
signed, a forced promotion with both signatures (docs/security.md#commands).
The keys live only in this process.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from learning.command_signing import is_forced_promotion, sign_command
from learning.signing import generate_key
from models.base import Event
from storage.operator_keys import add_operator_key, grant_role

E = TypeVar("E", bound=Event)

OWNER = generate_key()
APPROVER = generate_key()
_enrolled: set[int] = set()  # the pools (by id) the keys are registered in


async def demo_signed(pool: Any, event: E) -> E:
    """The command signed by the demo's owner (and its second owner for a forced promotion)."""
    if id(pool) not in _enrolled:
        for key, operator in ((OWNER, "demo-owner"), (APPROVER, "demo-approver")):
            if await add_operator_key(pool, key.public_key, operator=operator, actor="demo"):
                await grant_role(pool, key.key_id, "*", "owner", actor="demo")
        _enrolled.add(id(pool))
    forced = is_forced_promotion(event.model_dump(mode="json"))
    return sign_command(event, OWNER, now=datetime.now(UTC), approver=APPROVER if forced else None)
