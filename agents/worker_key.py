"""The worker's own operator key: how a stage signs the commands it sends itself.

The experiments stage starts the shadow or canary of a candidate whose offline
replay passed; that command goes through the policy stage like an operator's
and must be signed. The worker's key (``LEARNOPS_WORKER_KEY``, a PEM file) is
registered as an operator key like any other, by convention under the name
``worker`` with the ``operator`` role: it may start shadows and canaries, never
register, promote or archive (docs/security.md#commands).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from learning.command_signing import sign_command
from learning.signing import SigningKey
from models.base import Event

if TYPE_CHECKING:
    from agents.settings import Settings

log = logging.getLogger("learnops.worker_key")

E = TypeVar("E", bound=Event)


@lru_cache(maxsize=4)
def _key(path: Path) -> SigningKey:
    return SigningKey.from_pem(path.read_bytes())


def worker_signed(settings: Settings, command: E) -> E:
    """The command signed with the worker's key; unsigned (and logged) when none is set.

    An unsigned command is refused by the policy stage with an alert naming why,
    which is where the missing key shows.
    """
    path = settings.learnops_worker_key
    if path is None:
        log.warning(
            "worker_key_missing command=%s doer=%s: set LEARNOPS_WORKER_KEY",
            getattr(command, "command", "?"),
            command.doer,
        )
        return command
    return sign_command(
        command,
        _key(path),
        now=datetime.now(UTC),
        ttl=timedelta(seconds=settings.learnops_command_ttl_s),
    )
