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

# What after an alphabetic TLD says the name goes on (so it was no TLD): a letter or digit
# ("comx", "step1000"), a hyphen and a letter (a label: "eu-west-1"), or a dot and more.
# A hyphen and a digit or another hyphen ends the address ("…@acme-corp.com-0",
# "…@example.org--old" in ids and notes): until 2026-12-08 such an address was left whole.
_CONTINUES: Final = r"[A-Za-z0-9]|-[A-Za-z]|\.[A-Za-z0-9]"
_DOMAIN: Final = r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24})"

# RFC 5322's dot-atom local part (the common subset) at a DNS name with an
# alphabetic TLD.
EMAIL: Final = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    + _DOMAIN
    + r"(?!"
    + _CONTINUES
    + r")"
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


# For ids: an address anywhere, also glued after a long id ("run-<uuid>-<time>-carol@…",
# whose local part no start boundary precedes within 64 characters).
_IN_ID: Final = re.compile(r"([A-Za-z0-9._%+-]{1,64})" + _DOMAIN + r"(?!" + _CONTINUES + r")")
# Names that hold an at sign and a dotted name but no one's address: cluster-local and
# reserved names, file and language endings, and git's remote user.
_NOT_PUBLIC: Final = frozenset(
    {"local", "localhost", "localdomain", "internal", "lan", "home", "arpa", "test"}
    | {"invalid", "svc", "cluster", "js", "ts", "py", "gz", "tgz", "zip", "tar", "json"}
    | {"yaml", "yml", "toml", "md", "txt", "git", "onion"}
)


def holds_email(text: str) -> bool:
    """Whether an id or name holds an email address (``models.bundle`` refuses such ids).

    Stricter about what is an address than redaction (a refused bundle costs more than
    a placeholder): ``git@github.com:…``, ``svc@cluster.local`` or ``tests@node.js``
    are no one's; but it finds an address however much id precedes it. Look-alike
    characters (a fullwidth at sign) are compatibility-normalised first.
    """
    if "@" not in text and text.isascii():
        return False
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    for m in _IN_ID.finditer(text):
        tld = m.group(2).lower()
        if tld in FILE_ENDINGS or tld in _NOT_PUBLIC or m.group(1).lower() == "git":
            continue
        if ".." not in m.group(1) and not m.group(1).endswith("."):
            return True
    return False
