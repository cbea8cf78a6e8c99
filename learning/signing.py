"""Canonical JSON, content hashes, Ed25519 signatures and key rotation for policy artifacts.

A policy artifact is a JSON value (normally an object). Everything here works on
its *canonical* form, so two artifacts that mean the same JSON have the same
hash and the same signature however their keys were ordered or their numbers
spelled.

Canonical form — RFC 8785, JSON Canonicalization Scheme (JCS),
https://www.rfc-editor.org/rfc/rfc8785 :

- object members sorted by their names compared as UTF-16 code units
  (RFC 8785 §3.2.3), which differs from code-point order once characters
  outside the Basic Multilingual Plane appear (U+1F600 sorts before U+FB33);
- no insignificant whitespace; output encoded as UTF-8;
- strings written as ECMAScript ``JSON.stringify`` writes them (§3.2.2.2):
  only ``"``, ``\\`` and U+0000–U+001F are escaped (``\\b \\t \\n \\f \\r``
  by name, the rest as lowercase ``\\u00hh``); every other character, emoji
  included, is written as itself, never ``\\u``-escaped;
- numbers written as ECMAScript ``Number.prototype.toString`` writes an
  IEEE-754 double (§3.2.2.3): shortest round-trip digits, ``1.0`` → ``1``,
  ``-0.0`` → ``0``, ``1e21`` → ``1e+21``, ``1e-7`` → ``1e-7``,
  ``0.000001`` → ``0.000001``. Python's ``repr`` of a float gives the same
  shortest, closest digits; only the layout is rearranged here.

Where Python allows what I-JSON (RFC 7493) and hence JCS forbid, the value is
rejected with :class:`CanonicalJSONError` rather than silently changed: NaN and
infinities, strings with lone surrogates, integers beyond ±(2**53 − 1) that
reading as a double would change (2**53 + 1 would come out as
9007199254740992; 10**21, which a double holds, is written ``1e+21``, as JCS
writes that double), non-string object keys, cycles, and every non-JSON type
(bytes, sets, datetimes, Decimals, numpy integers …). Tuples are accepted as
arrays and any ``Mapping`` as an object, as ``json.dumps`` does.

Signatures are Ed25519 (RFC 8032) over the canonical bytes exactly, with no
prefix, so any JCS + Ed25519 tool can check them. A signature carries the id
of its key (the first 16 hex digits of SHA-256 of the raw 32-byte public key)
so that keys can rotate: :class:`TrustedKeys` maps key ids to public keys that
are active, retired (still verify old signatures, never sign new ones) or
revoked (never verify).

A *policy* signature covers more than the artifact: :func:`policy_payload`
is ``{"format": "learnops.policy-signature/2", "doer": …, "policy_id": …,
"version": …, "content_hash": "sha256:<hex of the artifact's canonical JSON>"}``,
signed in its canonical form, so the signature binds the artifact to the one
doer, policy id and version it was made for (docs/security.md#signatures).
Format 1, before that, signed the artifact's canonical JSON alone; the
policy store accepts it only for versions it stored before format 2.

Nothing here reads or writes files: keys and keyrings convert to and from
bytes (PEM, base64, JSON) and the caller stores them.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

ALGORITHM = "ed25519"
KEYRING_FORMAT = "learnops.keyring/1"
#: The ``format`` member of the payload a policy signature covers (:func:`policy_payload`).
POLICY_SIGNATURE_FORMAT = "learnops.policy-signature/2"
#: The reason :func:`verify` and :meth:`TrustedKeys.verify` give when the key is right
#: but the signed bytes are not these.
SIGNATURE_MISMATCH = "signature does not match the artifact"

# I-JSON (RFC 7493 §2.2): integers beyond this magnitude are not exact in a double.
MAX_SAFE_INTEGER = 2**53 - 1

_KEY_ID = re.compile(r"[0-9a-f]{16}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_STRING_ESCAPES: dict[int, str] = {code: f"\\u{code:04x}" for code in range(0x20)}
_STRING_ESCAPES.update(
    {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}
)


class CanonicalJSONError(ValueError):
    """A value has no RFC 8785 canonical form; the message names where and why."""


# --------------------------------------------------------------------------- canonical JSON


def canonical_json(artifact: object) -> bytes:
    """Return the RFC 8785 (JCS) canonical UTF-8 bytes of a JSON value.

    Raises :class:`CanonicalJSONError` naming the JSON path of the first value
    that has no canonical form (NaN, a set, a lone surrogate, …).
    """
    parts: list[str] = []
    _write(artifact, "$", parts, set())
    return "".join(parts).encode("utf-8")


def content_hash(artifact: object) -> str:
    """Return ``"sha256:"`` followed by the hex SHA-256 of the artifact's canonical JSON."""
    return "sha256:" + content_digest(artifact)


def content_digest(artifact: object) -> str:
    """Return the bare 64-hex SHA-256 of the canonical JSON: ``content_hash`` without its prefix.

    This is the form of the ``Sha256Hex`` fields in ``models`` (``RegisterPolicy.content_hash``).
    """
    return hashlib.sha256(canonical_json(artifact)).hexdigest()


def _utf16_key(name: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly as the sequence of code units does.
    return name.encode("utf-16-be", "surrogatepass")


def _write(value: object, path: str, out: list[str], active: set[int]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int) and not isinstance(value, bool):
        out.append(_integer(value, path))
    elif isinstance(value, float):
        out.append(_number(float(value), path))
    elif isinstance(value, str):
        out.append(_string(value, path))
    elif isinstance(value, Mapping):
        _enter(value, path, active)
        names = list(value.keys())
        for name in names:
            if not isinstance(name, str):
                raise CanonicalJSONError(
                    f"{path} has key {name!r} of type {type(name).__name__}; "
                    "JSON object keys must be strings"
                )
        out.append("{")
        for i, name in enumerate(sorted(names, key=_utf16_key)):
            if i:
                out.append(",")
            child = _child_path(path, name)
            out.append(_string(name, child))
            out.append(":")
            _write(value[name], child, out, active)
        out.append("}")
        active.discard(id(value))
    elif isinstance(value, list | tuple):
        _enter(value, path, active)
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, f"{path}[{i}]", out, active)
        out.append("]")
        active.discard(id(value))
    else:
        raise CanonicalJSONError(
            f"{path} is a {type(value).__module__}.{type(value).__qualname__}, "
            "which JSON cannot represent (use null, bool, int, float, str, list or dict)"
        )


def _enter(container: object, path: str, active: set[int]) -> None:
    if id(container) in active:
        raise CanonicalJSONError(f"{path} refers back to one of its own parents (a cycle)")
    active.add(id(container))


def _integer(value: int, path: str) -> str:
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return int.__repr__(value)
    # JSON numbers are doubles under JCS. A larger integer is accepted when reading it
    # as a double loses nothing: the double equals it (10**21, written 1e+21), or its
    # digits are exactly how JCS writes that double (57442245040387630). Canonical text
    # read back by json.loads gives such integers, so they must canonicalise again.
    try:
        as_double = float(value)
    except OverflowError:
        as_double = math.inf
    if math.isfinite(as_double):
        text = _number(as_double, path)
        if int(as_double) == value or text == int.__repr__(value):
            return text
    raise CanonicalJSONError(
        f"{path} is the integer {value}, which no IEEE-754 double represents, so JCS "
        "would change it (RFC 8785 §3.2.2.3, RFC 7493 §2.2); store it as a string"
    )


def _number(value: float, path: str) -> str:
    """ECMAScript Number::toString (ECMA-262 6th ed. §7.1.12.1, as RFC 8785 §3.2.2.3 requires)."""
    if not math.isfinite(value):
        raise CanonicalJSONError(f"{path} is {value!r}; JSON has no NaN or infinity (RFC 8785)")
    if value == 0.0:
        return "0"  # -0.0 included
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, the closest such (David Gay's
    # algorithm), which is the digit string ECMAScript asks for; only the layout differs.
    mantissa, _, exp_text = float.__repr__(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + int(exp_text or "0")  # value = 0.<digits> × 10**point
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        exponent = n - 1
        exp_sign = "+" if exponent >= 0 else "-"
        head = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{head}e{exp_sign}{abs(exponent)}"
    return sign + text


def _string(value: str, path: str) -> str:
    surrogate = _LONE_SURROGATE.search(value)
    if surrogate is not None:
        raise CanonicalJSONError(
            f"{path} holds a lone surrogate U+{ord(surrogate.group()):04X} at index "
            f"{surrogate.start()}; JSON text must be valid Unicode (RFC 7493 §2.1)"
        )
    return '"' + str.translate(value, _STRING_ESCAPES) + '"'


def _child_path(path: str, name: str) -> str:
    if _IDENTIFIER.fullmatch(name):
        return f"{path}.{name}" if path else name
    return f"{path}[{_string(name, path)}]"


# --------------------------------------------------------------------------- keys


def key_id_of(raw_public_key: bytes) -> str:
    """Return the key id of a raw 32-byte Ed25519 public key: 16 hex digits of its SHA-256."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (32 raw bytes) and the key id derived from it."""

    raw: bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            raise ValueError("an Ed25519 public key is exactly 32 raw bytes")
        object.__setattr__(self, "_key", Ed25519PublicKey.from_public_bytes(self.raw))

    @property
    def key_id(self) -> str:
        """The 16-hex-digit id that signatures made with the matching private key carry."""
        return key_id_of(self.raw)

    @classmethod
    def from_cryptography(cls, key: Ed25519PublicKey) -> PublicKey:
        """Wrap a ``cryptography`` Ed25519 public key."""
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def to_cryptography(self) -> Ed25519PublicKey:
        """Return the ``cryptography`` key object."""
        return self._key

    def to_b64(self) -> str:
        """Return the raw key as standard base64 (44 characters)."""
        return base64.b64encode(self.raw).decode("ascii")

    @classmethod
    def from_b64(cls, text: str) -> PublicKey:
        """Parse :meth:`to_b64` output; ValueError on anything else."""
        return cls(_b64decode(text, "public key"))

    def to_pem(self) -> bytes:
        """Return the key as a PEM ``PUBLIC KEY`` block (SubjectPublicKeyInfo)."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Parse a PEM ``PUBLIC KEY`` block; ValueError if it is not an Ed25519 key."""
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"PEM holds a {type(key).__name__}, not an Ed25519 public key")
        return cls.from_cryptography(key)


class SigningKey:
    """An Ed25519 private key with its public key and key id; its repr shows no secret."""

    __slots__ = ("_private", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError(f"expected an Ed25519PrivateKey, got {type(private_key).__name__}")
        self._private = private_key
        self.public_key = PublicKey.from_cryptography(private_key.public_key())

    @property
    def key_id(self) -> str:
        """The id of the public half; every signature made with this key carries it."""
        return self.public_key.key_id

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKey):
            return NotImplemented
        return self.public_key == other.public_key

    def __hash__(self) -> int:
        return hash(self.public_key)

    def to_cryptography(self) -> Ed25519PrivateKey:
        """Return the ``cryptography`` key object."""
        return self._private

    def to_pem(self, password: bytes | None = None) -> bytes:
        """Return the key as a PKCS#8 PEM block, encrypted when a password is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @classmethod
    def from_pem(cls, data: bytes, password: bytes | None = None) -> SigningKey:
        """Parse :meth:`to_pem` output; ValueError if it is not an Ed25519 private key."""
        key = serialization.load_pem_private_key(data, password=password)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"PEM holds a {type(key).__name__}, not an Ed25519 private key")
        return cls(key)

    def to_b64(self) -> str:
        """Return the raw 32-byte private seed as base64 (keep it secret)."""
        raw = self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(raw).decode("ascii")

    @classmethod
    def from_b64(cls, text: str) -> SigningKey:
        """Parse :meth:`to_b64` output; ValueError on anything else."""
        raw = _b64decode(text, "private key")
        if len(raw) != 32:
            raise ValueError("an Ed25519 private key is exactly 32 raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))


def generate_key() -> SigningKey:
    """Return a fresh random Ed25519 signing key."""
    return SigningKey(Ed25519PrivateKey.generate())


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError) as exc:
        raise ValueError(f"{what} is not valid base64: {exc}") from None


# --------------------------------------------------------------------------- signatures


@dataclass(frozen=True)
class Signature:
    """An Ed25519 signature and the id of the key that made it.

    Its text form, ``str(signature)``, is ``"ed25519:<key_id>:<base64 of 64 bytes>"``
    and :meth:`parse` reads it back.
    """

    key_id: str
    value: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or not _KEY_ID.fullmatch(self.key_id):
            raise ValueError(f"key id {self.key_id!r} is not 16 lowercase hex digits")
        if not isinstance(self.value, bytes) or len(self.value) != 64:
            raise ValueError("an Ed25519 signature is exactly 64 bytes")

    @property
    def value_b64(self) -> str:
        """The signature bytes as standard base64."""
        return base64.b64encode(self.value).decode("ascii")

    def __str__(self) -> str:
        return f"{ALGORITHM}:{self.key_id}:{self.value_b64}"

    @classmethod
    def from_parts(cls, key_id: str, value_b64: str) -> Signature:
        """Build from a key id and base64 signature stored apart (as in ``models.commands``)."""
        return cls(key_id, _b64decode(value_b64, "signature"))

    @classmethod
    def parse(cls, text: str) -> Signature:
        """Read the ``"ed25519:<key_id>:<base64>"`` form; ValueError says what is wrong."""
        if not isinstance(text, str):
            raise TypeError(f"expected a signature string, got {type(text).__name__}")
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError("a signature reads 'ed25519:<key_id>:<base64>'")
        algorithm, key_id, value = parts
        if algorithm != ALGORITHM:
            raise ValueError(f"signature algorithm {algorithm!r} is not {ALGORITHM!r}")
        return cls.from_parts(key_id, value)


def sign(artifact: object, private_key: SigningKey | Ed25519PrivateKey) -> Signature:
    """Sign the artifact's canonical JSON with Ed25519; the signature names the key id.

    Raises :class:`CanonicalJSONError` if the artifact has no canonical form.
    """
    if isinstance(private_key, Ed25519PrivateKey):
        private_key = SigningKey(private_key)
    elif not isinstance(private_key, SigningKey):
        raise TypeError(f"expected a SigningKey, got {type(private_key).__name__}")
    value = private_key.to_cryptography().sign(canonical_json(artifact))
    return Signature(private_key.key_id, value)


def policy_payload(*, doer: str, policy_id: str, version: int, content_hash: str) -> dict[str, Any]:
    """Return the JSON value a policy signature covers: the artifact's digest and its identity.

    ``content_hash`` is the bare 64-hex SHA-256 of the artifact's canonical
    JSON (:func:`content_digest`). The signed bytes are the canonical JSON of
    this object, so a signature made for one doer, policy id and version does
    not verify for any other, and the artifact is bound through its digest.
    """
    return {
        "format": POLICY_SIGNATURE_FORMAT,
        "doer": doer,
        "policy_id": policy_id,
        "version": version,
        "content_hash": "sha256:" + content_hash,
    }


#: The ``format`` member of the payload an event signature covers (:func:`event_payload`).
EVENT_SIGNATURE_FORMAT = "learnops.event-signature/1"
#: The kind a canary decision (learning.decisions) is signed as.
DECISION_KIND = "decision"
#: The kind a policy change (learning.policy-changes) is signed as.
POLICY_CHANGE_KIND = "policy-change"
#: The kind a doer's bandit allocations (learning.bandit-allocations) are signed as.
BANDIT_ALLOCATIONS_KIND = "bandit-allocations"


def event_payload(kind: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """Return the JSON value a worker's signature of an event covers.

    ``event`` is the event's JSON object (``model_dump(mode="json")``); every
    member but ``signature`` is covered, and ``kind`` (the topic) is signed
    with it, so a signed decision is never taken for a signed policy change.
    """
    return {
        "format": EVENT_SIGNATURE_FORMAT,
        "kind": kind,
        "event": {name: value for name, value in event.items() if name != "signature"},
    }


def sign_event(kind: str, event: Mapping[str, Any], key: SigningKey) -> str:
    """Return the text form of a worker's signature of an event of ``kind``."""
    return str(sign(event_payload(kind, event), key))


def verify_event(
    kind: str, event: Mapping[str, Any], keyring: TrustedKeys, *, signed_at: datetime | None = None
) -> VerifyResult:
    """Whether an event's ``signature`` member verifies against the keyring, and why not.

    With ``signed_at`` (when the event says it was made, a signed field), a key
    retired before then is refused, as :meth:`TrustedKeys.verify` says.
    """
    signature = event.get("signature")
    if not isinstance(signature, str) or not signature:
        return VerifyResult(False, f"the {kind} event is not signed")
    return keyring.verify(event_payload(kind, event), signature, signed_at=signed_at)


def signed_artifact(
    artifact: Any, key: SigningKey, *, doer: str, policy_id: str, version: int
) -> dict[str, Any]:
    """A policy registration's artifact fields: the artifact, its digest and its signature.

    The signature covers :func:`policy_payload` of this doer, policy id and
    version, so spread the fields into a ``RegisterPolicy`` with the same
    three. Raises :class:`CanonicalJSONError` if the artifact has no canonical form.
    """
    digest = content_digest(artifact)
    payload = policy_payload(doer=doer, policy_id=policy_id, version=version, content_hash=digest)
    signature = sign(payload, key)
    return {
        "artifact": artifact,
        "content_hash": digest,
        "signature": signature.value_b64,
        "signature_key_id": signature.key_id,
    }


def verify(
    artifact: object,
    signature: Signature | str,
    public_key: PublicKey | Ed25519PublicKey,
) -> bool:
    """Return whether the signature is the given key's signature of the artifact.

    False on any mismatch: a malformed signature string, another key's id, a
    changed artifact, or an artifact with no canonical form (which cannot have
    been signed). Raises TypeError only for arguments of the wrong type.
    """
    return _check(artifact, signature, public_key)[0]


def _check(
    artifact: object,
    signature: Signature | str,
    public_key: PublicKey | Ed25519PublicKey,
) -> tuple[bool, str]:
    if isinstance(public_key, Ed25519PublicKey):
        public_key = PublicKey.from_cryptography(public_key)
    elif not isinstance(public_key, PublicKey):
        raise TypeError(f"expected a PublicKey, got {type(public_key).__name__}")
    parsed = _as_signature(signature)
    if isinstance(parsed, str):
        return False, parsed
    signature = parsed
    if signature.key_id != public_key.key_id:
        return False, f"signature is by key {signature.key_id}, not {public_key.key_id}"
    try:
        message = canonical_json(artifact)
    except CanonicalJSONError as exc:
        return False, f"artifact has no canonical JSON form: {exc}"
    try:
        public_key.to_cryptography().verify(signature.value, message)
    except InvalidSignature:
        return False, SIGNATURE_MISMATCH
    return True, f"signed by key {public_key.key_id}"


def _as_signature(signature: Signature | str) -> Signature | str:
    """Return the Signature, or the reason its text form does not parse."""
    if isinstance(signature, Signature):
        return signature
    if not isinstance(signature, str):
        raise TypeError(f"expected a Signature or its text form, got {type(signature).__name__}")
    try:
        return Signature.parse(signature)
    except ValueError as exc:
        return f"malformed signature: {exc}"


# --------------------------------------------------------------------------- keyring


@dataclass(frozen=True)
class VerifyResult:
    """Whether a signature verified against the keyring, and a reason a person can read."""

    ok: bool
    reason: str
    key_id: str | None = None

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class TrustedKey:
    """One public key in a keyring and where it is in its life.

    Active: signs and verifies. Retired (``retired_at`` set): verifies
    signatures made before its retirement, signs nothing new. Revoked: verifies
    nothing, whatever the signature's date.
    """

    public_key: PublicKey
    added_at: datetime | None = None
    retired_at: datetime | None = None
    revoked: bool = False
    revoked_at: datetime | None = None
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("added_at", "retired_at", "revoked_at"):
            _require_aware(getattr(self, name), name)

    @property
    def key_id(self) -> str:
        """The public key's id."""
        return self.public_key.key_id

    @property
    def status(self) -> str:
        """``"revoked"``, ``"retired"`` or ``"active"``."""
        if self.revoked:
            return "revoked"
        return "retired" if self.retired_at is not None else "active"


class KeyNotUsableError(ValueError):
    """A key may not sign: unknown to the keyring, retired or revoked."""


class TrustedKeys:
    """A keyring: key id → public key, with retirement and revocation."""

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        self._keys: dict[str, TrustedKey] = {}
        for key in keys:
            if key.key_id in self._keys:
                raise ValueError(f"key {key.key_id} appears twice in the keyring")
            self._keys[key.key_id] = key

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[TrustedKey]:
        return iter(sorted(self._keys.values(), key=lambda k: k.key_id))

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def get(self, key_id: str) -> TrustedKey | None:
        """Return the entry for a key id, or None."""
        return self._keys.get(key_id)

    def add(
        self,
        public_key: PublicKey,
        *,
        added_at: datetime | None = None,
        note: str = "",
    ) -> TrustedKey:
        """Trust a public key; adding a key already present returns its entry unchanged."""
        existing = self._keys.get(public_key.key_id)
        if existing is not None:
            if existing.public_key != public_key:
                raise ValueError(f"key id {public_key.key_id} already names a different key")
            return existing
        entry = TrustedKey(public_key, added_at=added_at, note=note)
        self._keys[entry.key_id] = entry
        return entry

    def retire(self, key_id: str, at: datetime) -> TrustedKey:
        """Stop a key signing; its signatures made up to ``at`` keep verifying."""
        entry = self._require(key_id)
        _require_aware(at, "at")
        if entry.retired_at is not None:
            return entry
        entry = replace(entry, retired_at=at)
        self._keys[key_id] = entry
        return entry

    def revoke(self, key_id: str, *, at: datetime | None = None, note: str = "") -> TrustedKey:
        """Distrust a key entirely: no signature by it verifies any more."""
        entry = self._require(key_id)
        entry = replace(
            entry,
            revoked=True,
            revoked_at=entry.revoked_at or at,
            note=note or entry.note,
        )
        self._keys[key_id] = entry
        return entry

    def _require(self, key_id: str) -> TrustedKey:
        entry = self._keys.get(key_id)
        if entry is None:
            raise KeyError(f"unknown key id {key_id}")
        return entry

    def verify(
        self,
        artifact: object,
        signature: Signature | str,
        *,
        signed_at: datetime | None = None,
    ) -> VerifyResult:
        """Check a signature against the keyring and say why it does or does not verify.

        With ``signed_at`` (when the signature was recorded), a retired key's
        signature made after its retirement is refused; without it a retired
        key's signatures verify, since they can only be old ones.
        """
        parsed = _as_signature(signature)
        if isinstance(parsed, str):
            return VerifyResult(False, parsed)
        signature = parsed
        _require_aware(signed_at, "signed_at")
        key_id = signature.key_id
        entry = self._keys.get(key_id)
        if entry is None:
            return VerifyResult(False, f"unknown key id {key_id}", key_id)
        if entry.revoked:
            when = f" at {entry.revoked_at.isoformat()}" if entry.revoked_at else ""
            return VerifyResult(False, f"key {key_id} revoked{when}", key_id)
        retired_at = entry.retired_at
        if retired_at is not None and signed_at is not None and signed_at > retired_at:
            return VerifyResult(
                False,
                f"key {key_id} was retired at {retired_at.isoformat()}; "
                f"a signature made at {signed_at.isoformat()} is not accepted",
                key_id,
            )
        ok, reason = _check(artifact, signature, entry.public_key)
        if ok and retired_at is not None:
            reason = f"signed by retired key {key_id} (retired at {retired_at.isoformat()})"
        return VerifyResult(ok, reason, key_id)

    def check_signing_key(self, key: SigningKey) -> VerifyResult:
        """Say whether this key may sign new artifacts: known, not retired, not revoked."""
        entry = self._keys.get(key.key_id)
        if entry is None:
            return VerifyResult(False, f"unknown key id {key.key_id}", key.key_id)
        if entry.revoked:
            return VerifyResult(False, f"key {key.key_id} revoked", key.key_id)
        if entry.retired_at is not None:
            return VerifyResult(
                False,
                f"key {key.key_id} retired at {entry.retired_at.isoformat()}; "
                "it verifies old signatures but signs nothing new",
                key.key_id,
            )
        return VerifyResult(True, f"key {key.key_id} is active", key.key_id)

    def sign(self, artifact: object, key: SigningKey) -> Signature:
        """Sign with a key this keyring allows to sign; KeyNotUsableError otherwise."""
        allowed = self.check_signing_key(key)
        if not allowed:
            raise KeyNotUsableError(allowed.reason)
        return sign(artifact, key)

    def active_key_ids(self) -> list[str]:
        """Ids of the keys that may sign, sorted."""
        return [k.key_id for k in self if k.status == "active"]

    def to_json(self) -> bytes:
        """Return the keyring as canonical JSON (public keys only), for a file or a row."""
        return canonical_json(
            {
                "format": KEYRING_FORMAT,
                "keys": [
                    {
                        "key_id": k.key_id,
                        "algorithm": ALGORITHM,
                        "public_key": k.public_key.to_b64(),
                        "added_at": _iso(k.added_at),
                        "retired_at": _iso(k.retired_at),
                        "revoked": k.revoked,
                        "revoked_at": _iso(k.revoked_at),
                        "note": k.note,
                    }
                    for k in self
                ],
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> TrustedKeys:
        """Parse :meth:`to_json` output; ValueError names the first bad entry and why."""
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"keyring is not valid JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != KEYRING_FORMAT:
            raise ValueError(f"keyring must be an object with format {KEYRING_FORMAT!r}")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError("keyring 'keys' must be a list")
        keys = []
        for i, item in enumerate(entries):
            where = f"keyring keys[{i}]"
            if not isinstance(item, dict):
                raise ValueError(f"{where} is not an object")
            if item.get("algorithm", ALGORITHM) != ALGORITHM:
                raise ValueError(f"{where} algorithm {item.get('algorithm')!r} is not supported")
            public_key = PublicKey.from_b64(_field(item, "public_key", str, where))
            stated = item.get("key_id")
            if stated is not None and stated != public_key.key_id:
                raise ValueError(
                    f"{where} says key id {stated} but its public key has id {public_key.key_id}"
                )
            keys.append(
                TrustedKey(
                    public_key,
                    added_at=_parse_time(item.get("added_at"), f"{where}.added_at"),
                    retired_at=_parse_time(item.get("retired_at"), f"{where}.retired_at"),
                    revoked=bool(item.get("revoked", False)),
                    revoked_at=_parse_time(item.get("revoked_at"), f"{where}.revoked_at"),
                    note=str(item.get("note", "")),
                )
            )
        return cls(keys)


def _field(item: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = item.get(name)
    if not isinstance(value, kind):
        raise ValueError(f"{where}.{name} must be a {kind.__name__}")
    return value


def _require_aware(value: datetime | None, name: str) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where} must be an ISO 8601 string or null")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{where} {value!r} is not an ISO 8601 timestamp") from None
    if parsed.utcoffset() is None:
        raise ValueError(f"{where} {value!r} has no timezone")
    return parsed


# --------------------------------------------------------------------------- diff

_SHORT = 60  # characters of a value shown on a one-line diff entry
_LONG_TEXT = 80  # strings longer than this (or multi-line) get a unified diff


def diff_artifacts(a: object, b: object) -> list[str]:
    """Return the differences from artifact ``a`` to ``b``, one readable line each.

    Lines, in key order (UTF-16, as in the canonical form) and list order:

    - ``+ tools[3] = 'web_search'`` — added in ``b`` (index in ``b``);
    - ``- prompts.system = 'You are…'`` — removed from ``a`` (index in ``a``);
    - ``~ hyper.temperature: 0.2 → 0.4`` — changed (index in ``b``);
    - ``~ prompts.system (text):`` followed by an indented unified diff when
      either string is multi-line or longer than 80 characters.

    Lists are aligned with difflib's longest-matching-blocks so that inserting
    one tool reads as one ``+`` line, not as a change to every later index.
    Values are compared by their canonical JSON, so ``1`` and ``1.0`` are equal
    and ``true`` and ``1`` are not: the diff is empty exactly when the content
    hashes are equal. Strings show as Python literals, everything else as
    canonical JSON, cut at 60 characters.
    """
    canonical_json(a)  # the same errors, with paths, as hashing would give
    canonical_json(b)
    out: list[str] = []
    _diff(a, b, "", out)
    return out


def _canon_text(value: object) -> str:
    return canonical_json(value).decode("utf-8")


def _show(value: object) -> str:
    if isinstance(value, str):
        if len(value) <= _SHORT:
            return repr(value)
        return repr(value[: _SHORT - 1]) + f"… ({len(value)} chars)"
    text = _canon_text(value)
    return text if len(text) <= _SHORT else text[: _SHORT - 1] + "…"


def _shown_path(path: str) -> str:
    return path or "$"


def _diff(a: object, b: object, path: str, out: list[str]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for name in sorted(set(a) | set(b), key=_utf16_key):
            child = _child_path(path, name)
            if name not in b:
                out.append(f"- {child} = {_show(a[name])}")
            elif name not in a:
                out.append(f"+ {child} = {_show(b[name])}")
            else:
                _diff(a[name], b[name], child, out)
        return
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        _diff_list(a, b, path, out)
        return
    if _canon_text(a) == _canon_text(b):
        return
    if isinstance(a, str) and isinstance(b, str) and _is_long_text(a, b):
        shown = _shown_path(path)
        out.append(f"~ {shown} (text):")
        out.extend(
            "    " + line
            for line in difflib.unified_diff(
                a.splitlines(),
                b.splitlines(),
                fromfile=f"a/{shown}",
                tofile=f"b/{shown}",
                lineterm="",
                n=2,
            )
        )
        return
    out.append(f"~ {_shown_path(path)}: {_show(a)} → {_show(b)}")


def _is_long_text(a: str, b: str) -> bool:
    return max(len(a), len(b)) > _LONG_TEXT or "\n" in a or "\n" in b


def _diff_list(
    a: list[Any] | tuple[Any, ...], b: list[Any] | tuple[Any, ...], path: str, out: list[str]
) -> None:
    matcher = difflib.SequenceMatcher(
        a=[_canon_text(x) for x in a], b=[_canon_text(x) for x in b], autojunk=False
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for t in range(paired):
            _diff(a[i1 + t], b[j1 + t], f"{path}[{j1 + t}]", out)
        for i in range(i1 + paired, i2):
            out.append(f"- {path}[{i}] = {_show(a[i])}")
        for j in range(j1 + paired, j2):
            out.append(f"+ {path}[{j}] = {_show(b[j])}")
