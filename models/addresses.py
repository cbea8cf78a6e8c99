"""The shape of an email address, for the curator's redaction and the bundle's ids.

Kept in the contract's package so that the bundle can refuse an address where
only opaque ids belong (``models.bundle.RunCompleted``), by the same rule the
curator redacts addresses with (``learning.curation``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Final

# RFC 5322's dot-atom local part (the common subset) at a DNS name with an
# alphabetic TLD.
EMAIL: Final = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24})"
    # Not followed by more of a name (a letter: the TLD goes on; ".x": the domain goes on).
    # A hyphen or digit right after ("…@acme-corp.com-0" in an id) ends it: until
    # 2026-12-08 such an address was left whole.
    r"(?![A-Za-z]|\.[A-Za-z0-9])"
)
LOCAL_PART_MAX: Final = 64
# Asset names such as ``icon@2x.png`` look like addresses; these endings are no TLD.
FILE_ENDINGS: Final = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "pdf"})


def email_spans(text: str) -> Iterator[tuple[int, int]]:
    """The (start, end) of each email address in ``text``."""
    at = text.find("@")
    if at < 0:
        return
    # A local part has at most 64 characters: no address starts before that much
    # ahead of the first "@" (the look-behind still sees what precedes the start).
    for m in EMAIL.finditer(text, max(0, at - LOCAL_PART_MAX)):
        if m.group(1).lower() not in FILE_ENDINGS and ".." not in m.group():
            yield m.start(), m.end()


def holds_email(text: str) -> bool:
    """Whether ``text`` holds an email address, also written with look-alike characters
    (a fullwidth at sign: compatibility-normalised first)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return "@" in text and next(email_spans(text), None) is not None
