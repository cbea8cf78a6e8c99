"""PII and secret redaction, sample labels and the exact-dedup key of a curated sample.

``redact(text)`` finds personal data and credentials in a run artifact and
replaces each with a typed placeholder (``[EMAIL]``, ``[PHONE]``, …) before the
sample is stored anywhere.  Every detector validates what its pattern found
(phone numbers by libphonenumber, cards by Luhn and issuer prefix, IBANs by
mod-97 and the country's length, IP addresses by :mod:`ipaddress`, JWTs by
decoding their header), because the look-alikes — order numbers, dates,
versions, ISBNs, UUIDs, hashes — are far more common in agent artifacts than
the real thing.  The rules, their trade-offs and the measured precision and
recall are in ``docs/curation.md``.

``label_sample(...)`` turns plain values the lead maps from a run bundle into
:class:`SampleLabels`; ``content_hash(text)`` is the exact-duplicate key.

Pure logic: no I/O, no Faust, no Kafka, no database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

import phonenumbers

from models.addresses import email_spans

# --------------------------------------------------------------------------------------
# Kinds, placeholders and the priority that settles overlapping findings
# --------------------------------------------------------------------------------------

#: Every kind of finding, most specific first.  When two findings overlap the
#: longer one wins; at equal length the earlier kind in this tuple wins (a
#: structurally validated secret beats a context rule, a checksum beats a
#: plain pattern, an IP beats a phone number).
KINDS: Final[tuple[str, ...]] = (
    "PRIVATE_KEY",
    "JWT",
    "API_KEY",
    "BEARER_TOKEN",
    "BASIC_AUTH",
    "URL_CREDENTIALS",
    "SECRET",
    "IBAN",
    "CARD",
    "EMAIL",
    "SSN",
    "IPV6",
    "IPV4",
    "PHONE",
)
_PRIORITY: Final[dict[str, int]] = {kind: rank for rank, kind in enumerate(KINDS)}

#: The placeholder that replaces a finding of each kind.
PLACEHOLDERS: Final[dict[str, str]] = {kind: f"[{kind}]" for kind in KINDS}

#: Phone numbers written without a leading ``+`` are parsed as national numbers
#: of each of these regions in turn (ISO 3166 alpha-2).
DEFAULT_PHONE_REGIONS: Final[tuple[str, ...]] = ("US", "GB", "DE", "FR", "IN")


@dataclass(frozen=True)
class Finding:
    """One piece of PII or one secret: its kind and its span ``[start, end)`` in the input."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Redaction:
    """The redacted text and what was replaced, with offsets into the original text."""

    text: str
    findings: tuple[Finding, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Number of findings per kind."""
        return dict(Counter(f.kind for f in self.findings))


# --------------------------------------------------------------------------------------
# Small validators
# --------------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn (mod 10) check (ISO/IEC 7812-1 annex B)."""
    if not digits or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Issuer identification number ranges (first digits) and the lengths each scheme
# issues, from the card schemes' published IIN ranges.
_CARD_SCHEMES: Final[tuple[tuple[int, int, frozenset[int]], ...]] = (
    # (low prefix, high prefix, lengths); prefixes compared on the same number of digits
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),  # American Express
    (6011, 6011, frozenset({16, 17, 18, 19})),  # Discover
    (644, 649, frozenset({16, 17, 18, 19})),  # Discover
    (65, 65, frozenset({16, 17, 18, 19})),  # Discover
    (300, 305, frozenset({14, 15, 16, 17, 18, 19})),  # Diners Club
    (36, 36, frozenset({14, 15, 16, 17, 18, 19})),  # Diners Club
    (38, 39, frozenset({14, 15, 16, 17, 18, 19})),  # Diners Club
    (3528, 3589, frozenset({16, 17, 18, 19})),  # JCB
    (62, 62, frozenset({16, 17, 18, 19})),  # UnionPay
    (50, 50, frozenset({13, 14, 15, 16, 17, 18, 19})),  # Maestro
    (56, 58, frozenset({13, 14, 15, 16, 17, 18, 19})),  # Maestro
    (639, 639, frozenset({13, 14, 15, 16, 17, 18, 19})),  # Maestro
    (67, 67, frozenset({13, 14, 15, 16, 17, 18, 19})),  # Maestro
)


def card_issuer_plausible(digits: str) -> bool:
    """Whether a digit string starts with a known card issuer prefix at a length it issues."""
    n = len(digits)
    for low, high, lengths in _CARD_SCHEMES:
        width = len(str(low))
        if n in lengths and low <= int(digits[:width]) <= high:
            return True
    return False


#: IBAN length per country (ISO 13616 registry, SWIFT's IBAN registry).
IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_checksum_valid(iban: str) -> bool:
    """Whether a compact IBAN passes the ISO 7064 mod 97-10 check used by ISO 13616."""
    if len(iban) < 5 or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    # Letters count as two digits, A = 10 … Z = 35.
    numeric = "".join(str(int(ch, 36)) for ch in rearranged.upper())
    return int(numeric) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """Whether an SSN's parts are ones the SSA issues (no 000, 666 or 9xx area; no 00; no 0000)."""
    return (
        area not in ("000", "666")
        and not area.startswith("9")
        and group != "00"
        and serial != "0000"
    )


def _shannon_bits_per_char(value: str) -> float:
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _starts_word(text: str, start: int, also: str = "") -> bool:
    """Whether nothing alphanumeric (nor a character of ``also``) touches ``start`` from the left.

    Checked in Python rather than with a leading look-behind: a pattern that
    starts with a literal or a character class lets the regex engine skip
    ahead, which makes the detectors several times faster on long texts.
    """
    if start == 0:
        return True
    before = text[start - 1]
    return not (before.isalnum() or before in also)


def _ascii_folded(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """A ``(?i)`` pattern whose literals are lower case, made case-sensitive for lower-cased text.

    On ASCII text, ``_finditer_folded`` with it gives the spans the original
    gives, several times faster: the regex engine cannot skip ahead on
    case-insensitive literals (tests/unit/test_curation.py checks the spans).
    """
    source = pattern.pattern
    if not source.startswith("(?i)"):
        raise ValueError(f"not a case-insensitive pattern: {source[:20]}")
    return re.compile(source.removeprefix("(?i)"))


def _finditer_folded(
    pattern: re.Pattern[str], folded: re.Pattern[str], text: str
) -> Iterator[re.Match[str]]:
    """The matches of the ``(?i)`` ``pattern`` in ``text`` (take values from ``text``)."""
    if text.isascii():
        return folded.finditer(text.lower())
    return pattern.finditer(text)


def _b64url_json(segment: str) -> object:
    padded = segment + "=" * (-len(segment) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
        return json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


# --------------------------------------------------------------------------------------
# Detectors: each yields candidate findings; overlaps are settled afterwards
# --------------------------------------------------------------------------------------

_PEM_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9]+(?: [A-Z0-9]+)* )?PRIVATE KEY-----")
_PEM_BODY_LINE = re.compile(r"[ \t]*(?:[A-Za-z0-9+/=\\]+|[A-Za-z-]+:[^\n]*)[ \t]*\r?")


def _find_private_keys(text: str) -> list[Finding]:
    out: list[Finding] = []
    pos = 0
    while (m := _PEM_BEGIN.search(text, pos)) is not None:
        label = m.group(1) or ""
        end_marker = f"-----END {label}PRIVATE KEY-----"
        end = text.find(end_marker, m.end())
        if end >= 0:
            stop = end + len(end_marker)
        else:
            # A truncated block: take every following line that looks like PEM
            # body (base64 or an RFC 1421 header) so no key material survives.
            lines = text[m.end() :].split("\n")
            stop = m.end()
            for i, line in enumerate(lines):
                if i > 0 and not line.strip():
                    break
                if line.strip() and not _PEM_BODY_LINE.fullmatch(line):
                    break
                stop += len(line) + (1 if i > 0 else 0)  # and the newline before it
        out.append(Finding("PRIVATE_KEY", m.start(), stop))
        pos = stop
    return out


_JWT = re.compile(
    r"(eyJ[A-Za-z0-9_-]{4,})\.([A-Za-z0-9_-]{2,})\.([A-Za-z0-9_-]*)"
    r"(?![A-Za-z0-9_-]|\.[A-Za-z0-9_-])"
)


def _find_jwts(text: str) -> list[Finding]:
    out: list[Finding] = []
    if "eyJ" not in text:
        return out
    for m in _JWT.finditer(text):
        if not _starts_word(text, m.start(), "_-"):
            continue
        header = _b64url_json(m.group(1))
        if isinstance(header, dict) and "alg" in header:
            out.append(Finding("JWT", m.start(), m.end()))
    return out


# Well-known credential formats; each must also contain a digit (see
# _find_api_keys), which real random keys of these lengths almost always do.
_API_KEY = re.compile(
    "(?:"
    + "|".join(
        (
            r"sk-[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic (sk-ant-…), DeepSeek, …
            r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe secret / restricted
            r"whsec_[A-Za-z0-9]{24,}",  # Stripe webhook secret
            r"gh[pousr]_[A-Za-z0-9]{36,}",  # GitHub tokens
            r"github_pat_[A-Za-z0-9_]{40,}",  # GitHub fine-grained PAT
            r"(?:AKIA|ASIA)[A-Z0-9]{16}",  # AWS access key id
            r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
            r"AIza[0-9A-Za-z_-]{35}",  # Google API key
            r"glpat-[A-Za-z0-9_-]{20,}",  # GitLab PAT
            r"npm_[A-Za-z0-9]{36}",  # npm
            r"hf_[A-Za-z0-9]{30,}",  # Hugging Face
            r"SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}",  # SendGrid
        )
    )
    + ")(?![A-Za-z0-9_-])"
)
# The literal each alternative of _API_KEY starts with: a text with none of them
# is not searched (the alternation is the slowest scan of a note without keys).
_API_KEY_PREFIXES: Final = (
    "sk-", "sk_", "rk_", "whsec_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    "AKIA", "ASIA", "xox", "AIza", "glpat-", "npm_", "hf_", "SG.",
)  # fmt: skip
# A secret-looking value right after a key name: ``api_key=…``, ``"token": "…"``.
_KEY_CONTEXT = re.compile(
    r"(?i)(?:api[_-]?key|apikey|secret[_-]?key|client[_-]?secret|secret"
    r"|access[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token|private[_-]?token"
    r"|token)[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9_\-+/.=]{20,})"
)
_KEY_CONTEXT_FOLDED = _ascii_folded(_KEY_CONTEXT)
_CONTEXT_SECRET_MIN_BITS: Final = 3.5


def _looks_random(value: str) -> bool:
    return (
        any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and value.count("/") <= 2
        and "://" not in value
        and _shannon_bits_per_char(value) >= _CONTEXT_SECRET_MIN_BITS
    )


def _find_api_keys(text: str) -> list[Finding]:
    out: list[Finding] = []
    matches = _API_KEY.finditer(text) if any(p in text for p in _API_KEY_PREFIXES) else ()
    for m in matches:
        if _starts_word(text, m.start(), "_-") and any(c.isdigit() for c in m.group()):
            out.append(Finding("API_KEY", m.start(), m.end()))
    lowered = text.lower()
    if "key" not in lowered and "secret" not in lowered and "token" not in lowered:
        return out
    for m in _finditer_folded(_KEY_CONTEXT, _KEY_CONTEXT_FOLDED, text):
        if not _starts_word(text, m.start()):
            continue
        value = text[m.start(1) : m.end(1)].rstrip(".")
        if _looks_random(value):
            out.append(Finding("API_KEY", m.start(1), m.start(1) + len(value)))
    return out


# RFC 6750 b64token, then a boundary; "Bearer " itself is kept.
_BEARER = re.compile(r"[Bb](?i:earer)[ \t]+([A-Za-z0-9\-._~+/]{16,}=*)(?![A-Za-z0-9=])")


def _find_bearer_tokens(text: str) -> list[Finding]:
    out: list[Finding] = []
    if "earer" not in text and "EARER" not in text:
        return out
    for m in _BEARER.finditer(text):
        if not _starts_word(text, m.start()):
            continue
        token = m.group(1).rstrip(".")
        if any(c.isdigit() for c in token) and any(c.isalpha() for c in token):
            out.append(Finding("BEARER_TOKEN", m.start(1), m.start(1) + len(token)))
    return out


# Credentials by the name they are given: ``password=…``, ``"client_secret": "…"``,
# ``DB_PASSWORD: …``, ``X-Api-Key: …``.  The name must *end* in a credential word
# (``max_tokens``, ``token_count`` and ``password_min_length`` are not credentials).
_CREDENTIAL_NAME = re.compile(
    r"(?i)(password|passwd|passphrase|pwd|secret|token|credentials?"
    r"|api[_-]?key|access[_-]?key|private[_-]?key|secret[_-]?key|signing[_-]?key)"
    r"([\"']?)[ \t]*(?::=|=|:)[ \t]*"
)
_CREDENTIAL_NAME_FOLDED = _ascii_folded(_CREDENTIAL_NAME)
_CREDENTIAL_WORDS: Final = ("pass", "pwd", "secret", "token", "key", "credential")
# An unquoted value runs to white space, a quote or markup; a ",", ";" or "&"
# ends it only where a sentence, a list or a query string goes on after it
# ("a=1, b", "a=1;b=2", "?token=x&page=2"), so "Tr0ub4dor&3" stays whole.
_UNQUOTED_VALUE = re.compile(r"[^\s\"'`<>]+")
_VALUE_ENDS = re.compile(r"[,;](?=\s|$)|[,;&](?=[A-Za-z_][\w.-]*=)")
# Values that name a credential rather than hold one (templates, references,
# masks, literals, types), so ``password: ${DB_PASSWORD}`` or ``token: null`` stay.
_NOT_A_VALUE_START: Final = ("$", "%(", "{", "<", "[")
_NOT_A_VALUE: Final = frozenset(
    {
        "null", "none", "nil", "true", "false", "undefined", "empty", "redacted", "hidden",
        "masked", "required", "optional", "str", "string", "bytes", "secretstr", "secretbytes",
        "any", "int", "text",
    }
)  # fmt: skip
_MASK = re.compile(r"[*xX•#.\-_]+")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
_CALL_OR_INDEX = re.compile(r"[A-Za-z_][\w.]*[(\[].*")
_BARE_NAME = re.compile(r"[A-Za-z_][A-Za-z_]*")
_CREDENTIAL_MIN_LENGTH: Final = 3
_OPENER: Final = {")": "(", "]": "[", "}": "{"}


def _credential_value(text: str, pos: int, quote: str) -> tuple[int, int]:
    """The span of the value that starts at ``pos`` (quoted by ``quote``, or bare)."""
    if quote:
        end = pos
        while end < len(text) and text[end] not in (quote, "\n"):
            end += 2 if text[end] == "\\" else 1
        return pos, min(end, len(text))
    m = _UNQUOTED_VALUE.match(text, pos)
    if m is None:
        return pos, pos
    cut = _VALUE_ENDS.search(m.group())
    value = m.group() if cut is None else m.group()[: cut.start()]
    end = pos + len(value)
    # A full stop that ends a sentence, as the other context rules read it.
    if value.endswith(".") and (end == len(text) or text[end].isspace()):
        value, end = value[:-1], end - 1
    # A closing bracket that opened before the value: "(password=abc123)".
    while (
        value and value[-1] in _OPENER and value.count(value[-1]) > value.count(_OPENER[value[-1]])
    ):
        value, end = value[:-1], end - 1
    return pos, end


def _names_a_credential(value: str) -> bool:
    """Whether ``value`` is a template, reference, mask, literal or type, not a secret."""
    lowered = value.lower()
    if lowered in _NOT_A_VALUE or value.startswith(_NOT_A_VALUE_START) or _MASK.fullmatch(value):
        return True
    if _DOTTED_NAME.fullmatch(value) or _CALL_OR_INDEX.fullmatch(value):
        return True  # settings.api_key, os.environ["TOKEN"], getpass()
    # A variable or placeholder name: password=password, token: YOUR_TOKEN_HERE.
    return bool(_BARE_NAME.fullmatch(value)) and any(w in lowered for w in _CREDENTIAL_WORDS)


def _find_named_credentials(text: str) -> list[Finding]:
    out: list[Finding] = []
    lowered = text.lower()
    if not any(word in lowered for word in _CREDENTIAL_WORDS):
        return out
    for m in _finditer_folded(_CREDENTIAL_NAME, _CREDENTIAL_NAME_FOLDED, text):
        # Any prefix may come before the word (DB_PASSWORD, dbPassword, PGPASSWORD,
        # csrftoken): the name ends in it, and that is what makes it a credential.
        # A quote right after the name must be the one that closed it ("password": …),
        # and then the value may be quoted too.
        pos = m.end()
        quote = ""
        if pos < len(text) and text[pos] in "\"'":
            quote, pos = text[pos], pos + 1
        value_start, value_end = _credential_value(text, pos, quote)
        value = text[value_start:value_end]
        if len(value) < _CREDENTIAL_MIN_LENGTH or _names_a_credential(value):
            continue
        out.append(Finding("SECRET", value_start, value_end))
    return out


# The user information of a URL (RFC 3986 §3.2.1) when it holds a password:
# ``https://user:pass@host/``.  A user name alone (``ssh://git@host``) is left.
_URL_USERINFO = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://([A-Za-z0-9\-._~%!$&'()*+,;=]*:[A-Za-z0-9\-._~%!$&'()*+,;=:]+)@"
)


def _find_url_credentials(text: str) -> list[Finding]:
    if "://" not in text or "@" not in text:
        return []
    return [
        Finding("URL_CREDENTIALS", m.start(1), m.end(1))
        for m in _URL_USERINFO.finditer(text)
        if not _PLACEHOLDER_VALUE.fullmatch(m.group(1))
    ]


# An HTTP Authorization (or Proxy-Authorization) header, RFC 9110 §11.6.2, as a
# header line, a JSON/YAML field or a curl argument: the scheme is kept, the
# credentials are replaced.
_AUTHORIZATION = re.compile(
    r"(?i)(?<![A-Za-z0-9_-])(?:proxy-)?authorization([\"']?)[ \t]*[:=][ \t]*([\"']?)"
    r"([A-Za-z][A-Za-z0-9_-]*)[ \t]+"
)
# IANA's HTTP Authentication Scheme Registry, and schemes common in the wild.
_AUTH_SCHEMES: Final = frozenset(
    {
        "basic", "bearer", "digest", "hoba", "mutual", "negotiate", "ntlm", "oauth",
        "scram-sha-1", "scram-sha-256", "vapid", "dpop", "privatetoken", "concealed",
        "aws4-hmac-sha256", "token", "apikey", "api-key", "key", "sso-key", "splunk",
        "gssapi", "kerberos",
    }
)  # fmt: skip
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_PLACEHOLDER_VALUE = re.compile(r"\[[A-Z_]+\]")


def _find_authorization_headers(text: str) -> list[Finding]:
    out: list[Finding] = []
    if "uthorization" not in text and "UTHORIZATION" not in text:
        return out
    for m in _AUTHORIZATION.finditer(text):
        scheme = m.group(3).lower()
        if scheme not in _AUTH_SCHEMES:
            continue
        pos = m.end()
        if scheme in ("basic", "bearer"):
            token = _TOKEN68.match(text, pos)
            if token is None:
                continue
            end = token.end()
            if text[end - 1] == "." and (end == len(text) or text[end].isspace()):
                end -= 1  # a full stop that ends a sentence
            kind = "BASIC_AUTH" if scheme == "basic" else "BEARER_TOKEN"
            if end > pos:
                out.append(Finding(kind, pos, end))
            continue
        # Other schemes (Digest username="…", AWS4-HMAC-SHA256 Credential=…): the
        # rest of the header, up to the quote that opened it or the end of the line.
        closing = m.group(2) or m.group(1)
        end = pos
        while end < len(text) and text[end] not in "\r\n" and text[end] != (closing or "\n"):
            end += 1
        value = text[pos:end].rstrip()
        if value and not _PLACEHOLDER_VALUE.fullmatch(value):
            out.append(Finding("SECRET", pos, pos + len(value)))
    return out


_IBAN_START = re.compile(r"([A-Z]{2})(\d{2})(?=[ ]?[A-Z0-9])")


def _find_ibans(text: str) -> list[Finding]:
    out: list[Finding] = []
    for m in _IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(m.group(1))
        if length is None or not _starts_word(text, m.start()):
            continue
        # Collect the rest of the IBAN: alphanumerics, single spaces allowed
        # between characters (the printed form groups by four).
        chars = [m.group(1), m.group(2)]
        need = length - 4
        i = m.end()
        while need and i < len(text):
            ch = text[i]
            if ch == " " and i + 1 < len(text) and text[i + 1].isalnum() and text[i + 1].isascii():
                i += 1
                continue
            if not (ch.isascii() and ch.isalnum()):
                break
            chars.append(ch.upper())
            need -= 1
            i += 1
        if need or (i < len(text) and text[i].isascii() and text[i].isalnum()):
            continue
        if iban_checksum_valid("".join(chars)):
            out.append(Finding("IBAN", m.start(), i))
    return out


# The start of an IBAN-shaped string ("GB63 JIAU ", "AT06 "): digits right
# after it belong to an IBAN whose checksum failed, not to a card or a phone.
_IBAN_HEAD_BEFORE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4})*[ ]?$")
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}(?![\w-]|[.,]\d)")


def _find_cards(text: str) -> list[Finding]:
    out: list[Finding] = []
    for m in _CARD.finditer(text):
        if not _starts_word(text, m.start(), "_.,/-"):
            continue
        raw = m.group()
        digits = raw.replace(" ", "").replace("-", "")
        separators = {c for c in raw if not c.isdigit()}
        if len(separators) > 1:
            continue
        if separators:
            groups = [len(g) for g in re.split(r"[ -]", raw)]
            # 4-4-4-4(-3), Amex 4-6-5, Diners 4-6-4: a first group of four, none
            # shorter than three or longer than six.
            if groups[0] != 4 or any(g < 3 or g > 6 for g in groups):
                continue
        if _IBAN_HEAD_BEFORE.search(text, max(0, m.start() - 40), m.start()):
            continue  # the digits of an IBAN whose checksum failed
        if luhn_valid(digits) and card_issuer_plausible(digits):
            out.append(Finding("CARD", m.start(), m.end()))
    return out


def _find_emails(text: str) -> list[Finding]:
    return [Finding("EMAIL", start, end) for start, end in email_spans(text)]


# Not the tail or head of a longer group sequence ("+55 800 12 3604").
_SSN = re.compile(
    r"(\d{3})(?<![\w-]\d{3})(?<!\d[ -]\d{3})([- ])(\d{2})\2(\d{4})(?![\w-])(?![ -]\d)"
)
_SSN_BARE_IN_CONTEXT = re.compile(
    r"(?i)(?:ssn|social[ -]security(?:[ -](?:number|no\.?))?)"
    r"\s*(?:#|no\.?|number)?\s*[:=#]?\s*(\d{3})(\d{2})(\d{4})(?!\d)"
)


def _find_ssns(text: str) -> list[Finding]:
    out = [
        Finding("SSN", m.start(), m.end())
        for m in _SSN.finditer(text)
        if ssn_valid(m.group(1), m.group(3), m.group(4))
    ]
    lowered = text.lower()
    if "ssn" in lowered or "social" in lowered:
        out.extend(
            Finding("SSN", m.start(1), m.end(3))
            for m in _SSN_BARE_IN_CONTEXT.finditer(text)
            if _starts_word(text, m.start()) and ssn_valid(m.group(1), m.group(2), m.group(3))
        )
    return out


_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w-]|\.\d)")
# A dotted quad after these words is a version or build number, not an address.
_VERSION_CONTEXT = re.compile(
    r"(?i)(?:\bversions?|\bver\.?|\breleases?|\bbuild|\bfirmware|\bkernel|\bv)\s*[:=]?\s*$"
)


def _is_netmask(address: ipaddress.IPv4Address) -> bool:
    value = int(address)
    inverted = ~value & 0xFFFFFFFF
    return value != 0 and (inverted & (inverted + 1)) == 0 and value >= 0xFF000000


def _find_ipv4(text: str) -> list[Finding]:
    out: list[Finding] = []
    for m in _IPV4.finditer(text):
        if not _starts_word(text, m.start(), "_.:-"):
            continue
        try:
            address = ipaddress.IPv4Address(m.group())
        except ipaddress.AddressValueError:
            continue
        if address.is_loopback or address.is_unspecified or _is_netmask(address):
            continue
        if _VERSION_CONTEXT.search(text, max(0, m.start() - 24), m.start()):
            continue
        out.append(Finding("IPV4", m.start(), m.end()))
    return out


_IPV6_HINT = re.compile(r"::|[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:")
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f:.]*::|(?:[0-9A-Fa-f]{1,4}:){2})"
    r"[0-9A-Fa-f:]{2,39}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?![\w:]|\.\d)"
)


def _find_ipv6(text: str) -> list[Finding]:
    out: list[Finding] = []
    if not _IPV6_HINT.search(text):
        return out
    for m in _IPV6.finditer(text):
        raw = m.group()
        if not any(c.isdigit() for c in raw):
            continue
        try:
            address = ipaddress.IPv6Address(raw)
        except ipaddress.AddressValueError:
            continue
        if address.is_loopback or address.is_unspecified:
            continue
        groups = [g for g in raw.split(":") if g]
        # "1::2" (a Python slice) and "12:30::45" are valid addresses too; a real
        # one either has a group of three or more hex digits or is written out.
        if "::" in raw and not any(len(g) >= 3 for g in groups):
            continue
        out.append(Finding("IPV6", m.start(), m.end()))
    return out


# Digit runs worth handing to libphonenumber: six or more digits, possibly
# separated by spaces, dots, dashes, slashes and parentheses.
_PHONE_WINDOW = re.compile(r"[+(]?\d[\d \t().\-/]{4,}\d\)?")
_PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|fax|sms|whatsapp|dial)\b"
)
_BARE_PHONE_MAX_DIGITS: Final = 13
# The longest national numbers of the default regions, trunk prefix included
# (German 0800 numbers), have 14 digits.
_NATIONAL_PHONE_MAX_DIGITS: Final = 14
_ISO_DATE_OR_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?|\d{1,2}:\d{2}(?::\d{2})?"
)


def _find_phones(
    text: str,
    regions: Sequence[str],
    leniency: tuple[int, int],
    taken: Sequence[Finding],
) -> list[Finding]:
    """Phone numbers by libphonenumber, in windows of digits no other detector claimed.

    ``leniency`` is (for numbers written with a leading "+", for national numbers).
    """
    out: list[Finding] = []
    seen: set[tuple[int, int]] = set()
    for w in _PHONE_WINDOW.finditer(text):
        if sum(c.isdigit() for c in w.group()) < 6:
            continue
        if _ISO_DATE_OR_TIME.fullmatch(w.group().strip()):
            continue
        if any(f.start <= w.start() and w.end() <= f.end for f in taken):
            continue
        if _IBAN_HEAD_BEFORE.search(text, max(0, w.start() - 40), w.start()):
            continue
        # libphonenumber looks a few characters either side of a candidate to
        # reject things like "abc123"; give it that much context.
        lo, hi = max(0, w.start() - 8), min(len(text), w.end() + 8)
        if not _may_start_phone(text, lo, hi):
            continue
        window = text[lo:hi]
        digits_in_window = sum(c.isdigit() for c in w.group())
        covered = 0
        # A leading "+" makes the region irrelevant: one parse is enough.
        international = w.group().startswith("+")
        level = leniency[0] if international else leniency[1]
        for region in regions[:1] if international else regions:
            for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=level):
                if not _written_as_phone(match):
                    continue
                start, end = lo + match.start, lo + match.end
                if text[start] == "(" and ")" not in text[start:end]:
                    start += 1  # libphonenumber keeps an unbalanced opening bracket
                if any(f.start < end and start < f.end for f in taken):
                    continue  # digits another detector already validated
                if (start, end) in seen or not _phone_context_ok(text, start, end):
                    continue
                seen.add((start, end))
                out.append(Finding("PHONE", start, end))
                covered += sum(c.isdigit() for c in match.raw_string)
            if covered >= digits_in_window:
                break
    return out


_PHONE_SEPARATORS: Final = frozenset(" \t-./()")


def _written_as_phone(match: phonenumbers.PhoneNumberMatch) -> bool:
    """Whether a match is a valid number, or one written as a number is (grouped after its
    country code).

    A number in a range libphonenumber does not list as assigned (new ranges, or
    reserved ones such as the UK's 07700 900xxx) is only *possible* for it; at
    the VALID leniency "+44 7700 900123" was kept while "07700 900123" was
    redacted. Possible numbers count when grouped like a phone number, so a
    "+1234567" (a delta, a count) is not taken for one.
    """
    if phonenumbers.is_valid_number(match.number):
        return True
    # Grouped after its country code ("+44 7700 …"), not just somewhere: "+2024-01-15" (a
    # changelog line of a diff), "+4096 8192" or "+12 345 678" tokens are no phone numbers.
    raw = match.raw_string.lstrip("+(")
    code = str(match.number.country_code)
    return raw.startswith(code) and raw[len(code) : len(code) + 1] in _PHONE_SEPARATORS


# What a candidate of libphonenumber's matcher starts with: an opening bracket,
# a plus sign or a digit (phonenumbermatcher's _LEAD_CLASS, then \d); the
# numbers it gives back start at or after the start of their candidate.
_PHONE_LEAD: Final = "([\uff08\uff3b+\uff0b"
_NOT_BEFORE_PHONE: Final = "-#_/.:"


def _may_start_phone(text: str, lo: int, hi: int) -> bool:
    """Whether a number libphonenumber finds in ``text[lo:hi]`` may pass ``_phone_context_ok``.

    It could not when every position from the first possible candidate start
    on follows a letter, a digit or a character of ``-#_/.:`` (an id such as
    ``run-00000123``), so the parse, the costliest step of redaction, is skipped.
    """
    first = next((i for i in range(lo, hi) if text[i].isdigit() or text[i] in _PHONE_LEAD), None)
    if first is None:
        return False
    if first == 0:
        return True  # the start of the text is a boundary
    return any(
        not (text[i - 1].isalnum() or text[i - 1] in _NOT_BEFORE_PHONE)
        for i in range(first, hi + 1)
    )


_DECIMAL = re.compile(r"\d+\.\d+")


def _phone_context_ok(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    # Part of an identifier: ORD-2024-000123, #5551234, id_5551234567, 12345.678
    if before.isalnum() or before in _NOT_BEFORE_PHONE or after.isalnum() or after in "-_":
        return False
    raw = text[start:end]
    if _DECIMAL.fullmatch(raw):
        return False  # 0.168067, 12.5000001: a fraction, as scores and JSON floats print
    digits = sum(c.isdigit() for c in raw)
    if not raw.startswith(("+", "00")) and digits > _NATIONAL_PHONE_MAX_DIGITS:
        return False  # card-shaped: 4-4-4-4 groups are no national number
    bare = raw.replace("(", "").replace(")", "")
    if bare.isdigit():
        # A bare digit run is a phone number only when the text says so, and
        # never longer than a national number with its trunk prefix.
        return len(bare) <= _BARE_PHONE_MAX_DIGITS and (
            _PHONE_CONTEXT.search(text, max(0, start - 32), start) is not None
        )
    return True


# --------------------------------------------------------------------------------------
# Resolution and replacement
# --------------------------------------------------------------------------------------


def _resolve(candidates: Iterable[Finding]) -> list[Finding]:
    """Non-overlapping findings: longest first, then by kind priority, then leftmost.

    A candidate inside a chosen finding is dropped; one that overlaps a chosen
    finding only partly widens it (keeping the chosen kind), so no fragment of
    a secret survives between two placeholders.
    """
    ordered = sorted(set(candidates), key=lambda f: (f.start - f.end, _PRIORITY[f.kind], f.start))
    chosen: list[Finding] = []
    for cand in ordered:
        overlapping = [c for c in chosen if c.start < cand.end and cand.start < c.end]
        if not overlapping:
            chosen.append(cand)
            continue
        if any(c.start <= cand.start and cand.end <= c.end for c in overlapping):
            continue
        # Partial overlap: merge everything that touches into the best-ranked one.
        winner = overlapping[0]
        merged = Finding(
            winner.kind,
            min(cand.start, *(c.start for c in overlapping)),
            max(cand.end, *(c.end for c in overlapping)),
        )
        chosen = [c for c in chosen if c not in overlapping]
        chosen.append(merged)
    return sorted(chosen, key=lambda f: f.start)


# Digits in the sense of the detectors' patterns (\d): a text with none holds no
# number any of them can find, nor a key or token they accept.
_DIGIT = re.compile(r"\d")
# What each detector that needs no digit looks for before anything else
# (a PEM header, a JWT header, an address or URL credentials, an Authorization
# header); credential names are looked for in the lower-cased text.
_NO_DIGIT_MARKERS: Final = ("@", "eyJ", "-----BEGIN", "uthorization", "UTHORIZATION")


def _may_hold_pii(text: str, digits: bool) -> bool:
    """Whether any detector could find something in ``text``: most names and many documents
    hold none of what the detectors first look for, and are dismissed here."""
    return (
        digits
        or any(marker in text for marker in _NO_DIGIT_MARKERS)
        or any(word in text.lower() for word in _CREDENTIAL_WORDS)
    )


class Redactor:
    """Finds PII and secrets in text and replaces them with typed placeholders."""

    def __init__(
        self,
        phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
        international_leniency: int = phonenumbers.Leniency.POSSIBLE,
        national_leniency: int = phonenumbers.Leniency.STRICT_GROUPING,
    ) -> None:
        unknown = [r for r in phone_regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown or not phone_regions:
            raise ValueError(
                f"phone regions {unknown or '(none)'} are not regions libphonenumber knows"
            )
        self.phone_regions = tuple(phone_regions)
        self.phone_leniency = (international_leniency, national_leniency)

    def findings(self, text: str) -> list[Finding]:
        """Every finding in ``text``, non-overlapping, in order of position."""
        digits = _DIGIT.search(text) is not None
        if not _may_hold_pii(text, digits):
            return []
        candidates: list[Finding] = []
        candidates += _find_private_keys(text)
        candidates += _find_jwts(text)
        if digits:  # every API key and bearer token found holds a digit
            candidates += _find_api_keys(text)
            candidates += _find_bearer_tokens(text)
        candidates += _find_authorization_headers(text)
        candidates += _find_named_credentials(text)
        userinfo = _find_url_credentials(text)
        candidates += userinfo
        # In https://user:pass@host the "pass@host" is no address: the host stays readable.
        candidates += [
            e for e in _find_emails(text) if not any(u.start < e.start < u.end for u in userinfo)
        ]
        if digits:
            candidates += _find_ibans(text)
            candidates += _find_cards(text)
            candidates += _find_ssns(text)
            candidates += _find_ipv6(text)
            candidates += _find_ipv4(text)
            candidates += _find_phones(text, self.phone_regions, self.phone_leniency, candidates)
        return _resolve(candidates)

    def redact(self, text: str) -> Redaction:
        """``text`` with each finding replaced by its placeholder, and the findings."""
        return replace_findings(text, self.findings(text))


def replace_findings(text: str, found: Sequence[Finding]) -> Redaction:
    """``text`` with each of ``found`` (non-overlapping, in order) replaced by its placeholder."""
    parts: list[str] = []
    pos = 0
    for f in found:
        parts.append(text[pos : f.start])
        parts.append(PLACEHOLDERS[f.kind])
        pos = f.end
    parts.append(text[pos:])
    return Redaction(text="".join(parts), findings=tuple(found))


_DEFAULT_REDACTOR = Redactor()


def redact(text: str) -> Redaction:
    """``text`` with PII and secrets replaced by typed placeholders, and what was found.

    Findings carry offsets into the original ``text``.  Phone numbers are read
    as national numbers of :data:`DEFAULT_PHONE_REGIONS`; build a
    :class:`Redactor` for other regions.
    """
    return _DEFAULT_REDACTOR.redact(text)


def findings_only(text: str) -> list[Finding]:
    """The findings :func:`redact` would replace, without building the redacted text."""
    return _DEFAULT_REDACTOR.findings(text)


def contains_pii(text: str) -> bool:
    """Whether any detector finds PII or a secret in ``text`` (the last scan before storage)."""
    return bool(_DEFAULT_REDACTOR.findings(text))


def pii_values(text: str) -> set[str]:
    """The PII values and secrets themselves that :func:`redact` would replace in ``text``.

    For scans of what was stored: a value found in the input must not appear
    verbatim anywhere downstream.  Never log or print what this returns.
    """
    return {text[f.start : f.end] for f in _DEFAULT_REDACTOR.findings(text)}


# --------------------------------------------------------------------------------------
# Exact-dedup key
# --------------------------------------------------------------------------------------


def content_hash(text: str) -> str:
    """SHA-256 hex digest of the NFC-normalised UTF-8 text: the exact-duplicate key."""
    return hashlib.sha256(unicodedata.normalize("NFC", text).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------

Origin = Literal["human", "ai-generated", "hybrid"]
ORIGINS: Final[tuple[str, ...]] = ("human", "ai-generated", "hybrid")


@dataclass(frozen=True)
class SampleLabels:
    """The labels a curated sample carries (rules in :func:`label_sample`)."""

    grounding: float | None
    contradiction: float
    specificity: float
    correctness: float | None
    origin: Origin
    synthetic_confidence: float


_SPECIFIC_TOKEN = re.compile(
    r"""
      .*\d.*                                   # numbers, versions, ids
    | [A-Za-z_][A-Za-z0-9]*_[A-Za-z0-9_]+      # snake_case
    | [a-z]+[A-Z][A-Za-z0-9]*                  # camelCase
    | [A-Za-z_]\w*(?:\.\w+)+(?:\(\))?          # dotted.path, module.func()
    | \w+\(\)                                  # call()
    | `[^`]+`                                  # `inline code`
    | [A-Z]{2,}s?                              # acronyms: API, SLOs
    """,
    re.X,
)
_PLACEHOLDER_TOKEN = re.compile(r"\[(?:" + "|".join(KINDS) + r")\]")
_SENTENCE_END = (".", "!", "?", ":", ";")
_TOKEN_CACHE_SIZE: Final = 1 << 16
_CACHED_TOKEN_LENGTH: Final = 64

#: A text whose share of specific tokens reaches this scores full density.
SPECIFIC_SHARE_FOR_FULL_SCORE: Final = 0.25
#: Texts shorter than this many tokens are scaled down linearly.
TOKENS_FOR_FULL_LENGTH: Final = 40


@lru_cache(maxsize=_TOKEN_CACHE_SIZE)
def _token_class(raw: str) -> tuple[bool, bool, bool]:
    """Whether a token is specific inside a sentence, at its start, and whether it ends one.

    Tokens repeat (words of a language, names of a code base), so this is
    cached: it is most of what :func:`specificity` costs.
    """
    token = raw.strip("\"'()[]{}<>,;:!?")
    ends_sentence = raw.endswith(_SENTENCE_END)
    if not token or _PLACEHOLDER_TOKEN.fullmatch(raw.strip(",;:!?.")):
        return False, False, ends_sentence
    bare = token.rstrip(".")
    if _SPECIFIC_TOKEN.fullmatch(bare):
        return True, True, ends_sentence
    # A capitalised word that does not start a sentence: a cheap named entity.
    return bare[:1].isupper() and bare[1:].islower(), False, ends_sentence


def specificity(text: str) -> float:
    """Share of concrete tokens in ``text``, scaled to [0, 1] and damped for very short texts.

    A token counts as specific when it holds a digit (numbers, versions, ids),
    looks like code (snake_case, camelCase, dotted.path, call(), `code`), is an
    acronym, or is a capitalised word that does not start a sentence (a cheap
    stand-in for a named entity).  Redaction placeholders do not count.
    ``score = min(1, share / 0.25) · min(1, tokens / 40)``.
    """
    tokens = text.split()
    if not tokens:
        return 0.0
    specific = 0
    sentence_start = True
    for raw in tokens:
        # Long tokens (a pasted blob) are rare and would fill the cache.
        classify = _token_class if len(raw) <= _CACHED_TOKEN_LENGTH else _token_class.__wrapped__
        inside, first, ends_sentence = classify(raw)
        specific += first if sentence_start else inside
        sentence_start = ends_sentence
    share = specific / len(tokens)
    density = min(1.0, share / SPECIFIC_SHARE_FOR_FULL_SCORE)
    length = min(1.0, len(tokens) / TOKENS_FOR_FULL_LENGTH)
    return round(density * length, 6)


def _unit(name: str, value: float) -> float:
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} {value!r} is not in [0, 1]")
    return float(value)


def _count(name: str, value: int) -> int:
    if value < 0:
        raise ValueError(f"{name} {value} is negative")
    return value


def label_sample(
    *,
    text: str,
    grounding_score: float | None,
    contradiction_count: int,
    claim_count: int,
    gates_passed: int,
    gates_failed: int,
    artifact_origin: Origin,
    produced_by_our_policy: bool,
    matches_our_output: bool = False,
    specificity_of_text: float | None = None,
) -> SampleLabels:
    """Labels of one sample, from plain values the caller maps from the run bundle.

    ``specificity_of_text`` is :func:`specificity` of ``text`` when the caller
    has it already (the curator computes it with the redacted text, in its
    curation processes).

    Rules:

    - ``grounding`` = ``grounding_score`` (the share of claims backed by a
      cited source, in [0, 1]); ``None`` when no grounding check ran.
    - ``contradiction`` = ``contradiction_count / claim_count``, capped at 1;
      0 when the artifact makes no claims.
    - ``specificity`` = :func:`specificity` of ``text``.
    - ``correctness`` = ``gates_passed / (gates_passed + gates_failed)``;
      ``None`` when no gate ran.
    - ``origin``: what the orchestrator reports (``human`` wrote it, an agent
      wrote it: ``ai-generated``, an agent's text edited by a person or the
      reverse: ``hybrid``), except that an artifact our own policy produced is
      never ``human``: it becomes ``hybrid`` if reported human, because a
      person at least touched it.
    - ``synthetic_confidence`` (how sure we are the text is machine-written):
      1.0 when our policy produced it and it is ``ai-generated``; otherwise
      0.9 for ``ai-generated``, 0.5 for ``hybrid``, 0.0 for ``human``; raised
      to at least 0.8 when the text matches something our policies generated
      (``matches_our_output``, from the self-loop guard).
    """
    if artifact_origin not in ORIGINS:
        raise ValueError(f"artifact_origin {artifact_origin!r} is not one of {', '.join(ORIGINS)}")
    grounding = None if grounding_score is None else _unit("grounding_score", grounding_score)
    claims = _count("claim_count", claim_count)
    contradictions = _count("contradiction_count", contradiction_count)
    contradiction = 0.0 if claims == 0 else min(1.0, contradictions / claims)
    passed = _count("gates_passed", gates_passed)
    failed = _count("gates_failed", gates_failed)
    correctness = None if passed + failed == 0 else passed / (passed + failed)

    origin: Origin = artifact_origin
    if produced_by_our_policy and origin == "human":
        origin = "hybrid"
    if origin == "ai-generated":
        synthetic = 1.0 if produced_by_our_policy else 0.9
    elif origin == "hybrid":
        synthetic = 0.5
    else:
        synthetic = 0.0
    if matches_our_output:
        synthetic = max(synthetic, 0.8)
    return SampleLabels(
        grounding=grounding,
        contradiction=contradiction,
        specificity=specificity(text) if specificity_of_text is None else specificity_of_text,
        correctness=correctness,
        origin=origin,
        synthetic_confidence=synthetic,
    )
