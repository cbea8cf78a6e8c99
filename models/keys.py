"""The Kafka key is part of the contract: every record on every topic is keyed by its doer.

A record keyed otherwise (or not at all) lands on whichever partition the
producer picks, so one doer's state splits across workers and its counts
across changelog partitions.  ``key_problem`` is the check every stage makes
after the value has validated.
"""

from __future__ import annotations

from models.base import Event

_RULE = "every record is keyed by its doer (UTF-8)"
# learning.skill-cards is compacted and holds one card per tenant and doer.
_CARD_RULE = "a skill card is keyed by its tenant and doer, 'tenant/doer' (UTF-8)"


def key_problem(key: bytes | None, event: Event) -> str | None:
    """Return why ``key`` is not the key of ``event``, or None when it is the event's doer.

    The reason names the rule, never the key's bytes: a wrong key may be any
    payload text, and the reason is logged and kept in the dead letter (which
    keeps the original key bytes for whoever may read them).
    """
    if key is None:
        return f"the record has no key; {_RULE}"
    if not key:
        return f"the record's key is empty; {_RULE}"
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return f"the record's key ({len(key)} bytes) is not UTF-8 text; {_RULE}"
    if text == event.record_key():
        return None
    if event.record_key() == event.doer:
        return f"the record's key ({len(key)} bytes) is not the event's doer; {_RULE}"
    return f"the record's key ({len(key)} bytes) is not the card's tenant/doer; {_CARD_RULE}"
