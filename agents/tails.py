"""What is last on a compacted topic per doer, as the stage that publishes it reads it back.

Compaction keeps a doer's last record, and a client that starts reads only that
one. A record written there by anyone else (an older signed record sent again, a
forged or an empty one) would be what starting clients follow, so the stages
that publish learning.policy-changes and learning.bandit-allocations also read
them and send the doer's current state again once the doer's last records
have not been the current state for ``STALE_AFTER_S`` (agents/policy.py,
agents/bandit.py). The time counts from the first such record, not the latest:
a record sent again every few seconds would otherwise never stay last long
enough to be answered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from learning.signing import SigningKey, TrustedKeys, verify_event
from models.base import Event

log = logging.getLogger("learnops.tails")

#: How often a stage looks at what is last for each doer, and how long a record that is not
#: the doer's current state may stay last before the state is sent again.
STALE_CHECK_S = 5.0
STALE_AFTER_S = 30.0


class Tails:
    """Each doer's last record read back, not yet judged: since when, the record, trusted.

    ``model`` is the topic's event (with ``doer`` and ``sequence``), ``kind`` its
    signature kind (learning.signing) and ``key`` the worker's signing key (None:
    a local setup that publishes unsigned, where every valid record is trusted).
    """

    def __init__(self, model: type[Event], kind: str, key: SigningKey | None) -> None:
        self.model = model
        self.kind = kind
        self.key = key
        self.own = TrustedKeys()
        if key is not None:
            self.own.add(key.public_key)
        self.clock: Callable[[], float] = time.monotonic  # a test may set it
        # doer -> (pending since, notes so far, its last record or None, whether trusted)
        self.last: dict[str, tuple[float, int, Any, bool]] = {}

    async def note(self, event: Any) -> None:
        """Note the record read back for its doer (a record without a key is no doer's)."""
        message = event.message
        if message.key is None:
            return
        doer = message.key.decode("utf-8", "replace")
        record: Any = None
        trusted = False
        if message.value is not None:  # an empty one (a tombstone) is neither
            try:
                record = self.model.model_validate_json(message.value)
            except ValueError:
                record = None
            if record is not None and record.doer != doer:
                record = None
            if record is not None:
                trusted = self.signed_by_us(record)
        pending = self.last.get(doer)
        # Pending since the first record not yet judged: later ones do not restart the wait.
        since, notes = (self.clock(), 0) if pending is None else pending[:2]
        self.last[doer] = (since, notes + 1, record, trusted)

    def signed_by_us(self, record: Event) -> bool:
        """Whether this worker's own key signed ``record``.

        Not any key of the keyring: it holds the policy signers' keys too, and a
        review found a record one of them signed (numbered at the doer's last, or
        past it) left last for good. A record another worker of the app id signed
        with a key of its own is sent again once, numbered after it (workers of
        one app id share a key: docs/security.md). The worker's own key counts
        even when the keyring lacks it (or retired, or revoked it): otherwise each
        of its own records would read as foreign and be sent again, forever.
        """
        if self.key is None:
            return True  # a local setup: records go out unsigned
        return bool(verify_event(self.kind, record.model_dump(mode="json"), self.own))

    async def stale(
        self,
        now: float | None,
        handle: Callable[[str, Any, bool, float], Awaitable[bool | None]],
        what: str,
    ) -> None:
        """Hand each doer's last record to ``handle`` once it is ``STALE_AFTER_S`` pending.

        ``handle(doer, record, trusted, now)`` gets the last record read (None: empty,
        invalid or another doer's) and decides whether it is the doer's current
        state; it returns True to be asked again at the next tick (a record of its
        own is on its way). Not sooner: the stage reads its own records back a
        moment after sending them, and a newer one may be on its way. A doer is
        forgotten once handled, unless another record came meanwhile; one whose
        handling failed is kept for the next tick, and does not hold up the others.
        """
        now = self.clock() if now is None else now
        for doer, (since, notes, record, trusted) in list(self.last.items()):
            if now - since < STALE_AFTER_S:
                continue
            try:
                again = await handle(doer, record, trusted, now)
            except Exception:
                log.exception("%s_reassert_failed doer=%s", what, doer)
                continue
            if not again and self.last.get(doer, (None, None))[1] == notes:
                del self.last[doer]
