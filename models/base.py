"""The base of every event on every topic, the field types they share, and readable errors.

Every model of the wire contract is strict in the same way: unknown fields are
rejected (a typo is an error, not a silently ignored field), floats must be
finite (NaN and infinities are rejected, never propagated into a loss or a
mean), and instances are immutable.

Timestamps must carry a timezone and are normalised to UTC.  A naive
timestamp is *rejected*, not assumed to be UTC: day buckets, trends and
windows depend on it, and a producer in another zone would otherwise shift
every run silently by hours.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self
from uuid import UUID, uuid4

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

# Error types raised by our own validators start with this prefix, so the
# error describer knows their message is already written for a person.
_OWN_ERROR = "learnops_"


def _identifier(value: str) -> str:
    if value != value.strip():
        raise PydanticCustomError(
            f"{_OWN_ERROR}identifier",
            "has leading or trailing whitespace",
            {},
        )
    return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _sha256_hex(value: str) -> str:
    if not _SHA256_HEX.fullmatch(value):
        raise PydanticCustomError(
            f"{_OWN_ERROR}sha256",
            "is not a sha256 digest (64 lowercase hex characters)",
            {},
        )
    return value


# An id or name: non-empty, no surrounding whitespace (it becomes a Kafka key or
# a database key, where " PRDWriter" and "PRDWriter" would silently differ).
Identifier = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_identifier)]
# Timezone-aware, normalised to UTC; naive timestamps are rejected (see module docstring).
UTCDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
# A rate or score in [0, 1].
UnitFloat = Annotated[float, Field(ge=0, le=1)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
Version = Annotated[int, Field(ge=1)]
Sha256Hex = Annotated[
    str,
    AfterValidator(_sha256_hex),
    WithJsonSchema({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
]


def sha256_hex(text: str) -> str:
    """Return the sha256 hex digest of ``text`` encoded as UTF-8 (the contract's content hash)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ContractModel(BaseModel):
    """A part of the wire contract: unknown fields rejected, finite floats, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Event(ContractModel):
    """One message on a topic, keyed by ``doer``.

    ``schema_version`` defaults to 1, the version producers wrote before they
    sent one.  A subclass lists the versions it reads in ``SCHEMA_VERSIONS``;
    when it moves past version 1 it also overrides the field's default.
    """

    SCHEMA_VERSIONS: ClassVar[frozenset[int]] = frozenset({1})

    event_id: UUID = Field(default_factory=uuid4)
    occurred_at: UTCDatetime = Field(default_factory=lambda: datetime.now(UTC))
    schema_version: int = Field(default=1, validate_default=True)
    doer: Identifier

    @field_validator("schema_version")
    @classmethod
    def _supported_schema_version(cls, value: int) -> int:
        if value not in cls.SCHEMA_VERSIONS:
            raise PydanticCustomError(
                f"{_OWN_ERROR}schema_version",
                "version {version} is not supported by {model} (supported: {supported})",
                {
                    "version": value,
                    "model": cls.__name__,
                    "supported": ", ".join(str(v) for v in sorted(cls.SCHEMA_VERSIONS)),
                },
            )
        return value

    def to_json(self) -> bytes:
        """Return the event as compact UTF-8 JSON bytes (orjson), as it goes on the wire."""
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Return the event parsed and validated from JSON; raises ``ValidationError``."""
        return cls.model_validate_json(data)


def describe_validation_error(error: ValidationError) -> str:
    """Return one line a person can act on, naming every invalid field and why.

    For example ``qav.grounding_score: 1.4 is above 1; doer: is required``.
    Numbers are quoted from the input; text never is, because the reason is
    logged and may be read by people who must not see the payload's content.
    """
    return "; ".join(_describe_one(item) for item in error.errors(include_url=False))


def _describe_one(item: Any) -> str:
    where = _location(item["loc"])
    message = _message(item)
    return f"{where}: {message}" if where else message


def _location(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _message(item: Any) -> str:
    kind: str = item["type"]
    ctx: dict[str, Any] = item.get("ctx") or {}
    value = item.get("input")
    bounds = {
        "less_than_equal": ("is above", "le"),
        "less_than": ("is not below", "lt"),
        "greater_than_equal": ("is below", "ge"),
        "greater_than": ("is not above", "gt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"{_show(value)} {words} {_show(ctx.get(key))}"
    if kind == "finite_number":
        return f"{_show(value)} is not a finite number"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind.startswith(_OWN_ERROR):
        return str(item["msg"])
    message = str(item["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    # Only numbers are echoed: the reason goes to logs and the DLQ record, and
    # text from the payload (or the raw JSON) may carry PII or secrets.
    if isinstance(value, int | float) and kind not in ("value_error", "assertion_error"):
        return f"{message} (input {_show(value)})"
    return message


def _show(value: Any, limit: int = 60) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"
