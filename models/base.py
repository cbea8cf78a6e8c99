"""The base of every event on every topic, the field types they share, and readable errors.

Every model of the wire contract is strict in the same way: unknown fields are
rejected (a typo is an error, not a silently ignored field), floats must be
finite (NaN and infinities are rejected, never propagated into a loss or a
mean), and instances are immutable.  Nothing is coerced: ``"1"`` is not 1 and
``1`` is not ``true``; only timestamps, dates and UUIDs are read from ISO or
UUID text, because JSON has no type of its own for them.

What PostgreSQL would refuse is refused here first, so an event either has
all its effects or none and one dead letter: integers fit the column that
holds them (``integer`` unless stated) and no text, at any depth, carries a
NUL character or an unpaired surrogate.

Timestamps must carry a timezone and are normalised to UTC.  A naive
timestamp is *rejected*, not assumed to be UTC: day buckets, trends and
windows depend on it, and a producer in another zone would otherwise shift
every run silently by hours.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar, Self
from uuid import UUID, uuid4

import jiter
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    Strict,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

# Error types raised by our own validators start with this prefix, so the
# error describer knows their message is already written for a person.
_OWN_ERROR = "learnops_"


def identifier_problem(value: str) -> str | None:
    """Why ``value`` is not an identifier (docs/security.md, "Names"), or None.

    An identifier (a deployment id, an actor, a run id, a gate or model name)
    may be any printable Unicode text in NFC form, with no leading or trailing
    white space and no invisible or control character inside (a zero-width
    space, a no-break space, a tab): two identifiers that look the same are
    the same. The reason names the rule and a position, never the text.
    """
    if value != value.strip():
        return "has leading or trailing whitespace"
    if value.isascii() and value.isprintable():
        return None  # U+0020-U+007E: in NFC, and only the space is invisible (allowed inside)
    if unicodedata.normalize("NFC", value) != value:
        return "is not in Unicode NFC form (compose it first: an identifier is compared as stored)"
    for position, character in enumerate(value, 1):
        if character != " " and unicodedata.category(character) in _INVISIBLE:
            return (
                f"has an invisible or control character (U+{ord(character):04X}) at position "
                f"{position}; an identifier is printable text, spaces only between words"
            )
    return None


def _identifier(value: str) -> str:
    problem = identifier_problem(value)
    if problem is not None:
        raise PydanticCustomError(f"{_OWN_ERROR}identifier", problem, {})
    return value


#: The rule of a name (doer, phase, policy id): docs/security.md, "Names".
NAME_RULE = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_RULE)
_NAME_CHARACTERS = re.compile(r"[A-Za-z0-9._-]")
_INVISIBLE = frozenset({"Cf", "Zs", "Zl", "Zp", "Cc"})


def name_problem(value: str) -> str | None:
    """Why ``value`` is not a name (ASCII letters, digits, ``.``, ``_``, ``-``), or None.

    The reason names the broken rule and a position, never the text itself
    (it may travel to a dead letter). Non-ASCII is refused outright: a name
    becomes a Kafka key, a table key and part of a dataset's name, where
    look-alike letters (Cyrillic ``а`` for Latin ``a``), zero-width
    characters or a ``/`` would make two different names read the same.
    """
    if _NAME.fullmatch(value):
        return None  # the common case, in one match
    if not value:
        return "is empty"
    if len(value) > 128:
        return f"is {len(value)} characters long; a name has at most 128"
    for position, character in enumerate(value, start=1):
        if _NAME_CHARACTERS.fullmatch(character):
            continue
        code = f"U+{ord(character):04X}"
        if character == "/":
            kind = "a '/', which separates a dataset's doer and phase"
        elif unicodedata.category(character) in _INVISIBLE or character.isspace():
            kind = f"an invisible or space character ({code})"
        elif not character.isascii():
            kind = f"a non-ASCII character ({code}; look-alikes of ASCII letters are refused)"
        else:
            kind = f"the character {code}"
        return f"has {kind} at position {position}; a name matches {NAME_RULE}"
    if not _NAME.fullmatch(value):
        return f"must start with a letter or digit; a name matches {NAME_RULE}"
    return None


def _name(value: str) -> str:
    problem = name_problem(unicodedata.normalize("NFC", value))
    if problem is not None:
        raise PydanticCustomError(f"{_OWN_ERROR}name", problem, {})
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00+01:00 is a valid ISO timestamp whose UTC is year 0.
        raise PydanticCustomError(
            f"{_OWN_ERROR}datetime_range",
            "is outside the years 1 to 9999 once converted to UTC",
            {},
        ) from None


# A date or timestamp as JSON text starts with the calendar date; anything else
# (a number, "1700000000") would be read as Unix time by pydantic's lax mode.
_ISO_DATE_START = re.compile(r"\d{4}-\d{2}-\d{2}")
_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)


def _iso_text_or(kind: type, what: str) -> Any:
    def check(value: object) -> object:
        if isinstance(value, kind):
            return value
        if isinstance(value, str) and _ISO_DATE_START.match(value):
            return value
        raise PydanticCustomError(
            f"{_OWN_ERROR}{what}_type",
            "must be an ISO 8601 {what} as text (e.g. {example}), not {type}",
            {
                "what": what,
                "example": _EXAMPLES[what],
                "type": _json_type(value, "text in another form"),
            },
        )

    return check


def _uuid_text(value: object) -> object:
    if isinstance(value, UUID) or (isinstance(value, str) and _UUID_TEXT.fullmatch(value)):
        return value
    raise PydanticCustomError(
        f"{_OWN_ERROR}uuid_type",
        "must be a UUID as text (e.g. 123e4567-e89b-12d3-a456-426614174000), not {type}",
        {"type": _json_type(value, "text in another form")},
    )


_EXAMPLES = {"timestamp": "2026-03-01T12:00:00Z", "date": "2026-03-01"}


def _json_type(value: object, text: str = "text") -> str:
    """Name the JSON type of ``value`` (never its content: the reason may be logged)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return text
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _sha256_hex(value: str) -> str:
    if not _SHA256_HEX.fullmatch(value):
        raise PydanticCustomError(
            f"{_OWN_ERROR}sha256",
            "is not a sha256 digest (64 lowercase hex characters)",
            {},
        )
    return value


# PostgreSQL's integer (int4) and bigint (int8) ranges: a value past them is
# refused by the contract, not by an INSERT after the event was counted.
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
INT8_MAX = 2**63 - 1

# An id or name: non-empty, no surrounding whitespace (it becomes a Kafka key or
# a database key, where " PRDWriter" and "PRDWriter" would silently differ).
Identifier = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_identifier)]
# A doer, phase or policy id: ASCII letters, digits, ".", "_", "-", starting with a letter
# or digit, at most 128 characters (NAME_RULE); no "/", no invisible or look-alike characters.
Name = Annotated[
    str,
    AfterValidator(_name),
    WithJsonSchema({"type": "string", "pattern": f"^{NAME_RULE}$"}),
]
# Timezone-aware, normalised to UTC; naive timestamps are rejected (see module docstring).
# Read from ISO 8601 text (JSON has no timestamp type); never from a number.
UTCDatetime = Annotated[
    AwareDatetime,
    Strict(False),
    BeforeValidator(_iso_text_or(datetime, "timestamp")),
    AfterValidator(_utc),
]
# A timestamp whose zone the producer may omit (stored records, not wire events).
TextDatetime = Annotated[
    datetime, Strict(False), BeforeValidator(_iso_text_or(datetime, "timestamp"))
]
# A calendar day, from ISO 8601 text ("2026-03-01").
TextDate = Annotated[date, Strict(False), BeforeValidator(_iso_text_or(date, "date"))]
# A UUID, from its text form.
TextUUID = Annotated[UUID, Strict(False), BeforeValidator(_uuid_text)]
# A rate or score in [0, 1].
UnitFloat = Annotated[float, Field(ge=0, le=1)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
# Integers stored in an ``integer`` column (counts, versions, steps, seeds).
Int4 = Annotated[int, Field(ge=INT4_MIN, le=INT4_MAX)]
Count = Annotated[int, Field(ge=0, le=INT4_MAX)]
Version = Annotated[int, Field(ge=1, le=INT4_MAX)]
# A Kafka offset (int64).
Offset = Annotated[int, Field(ge=0, le=INT8_MAX)]
Sha256Hex = Annotated[
    str,
    AfterValidator(_sha256_hex),
    WithJsonSchema({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
]


def sha256_hex(text: str) -> str:
    """Return the sha256 hex digest of ``text`` encoded as UTF-8 (the contract's content hash)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# orjson's integer range, which the jsonb columns are written with.
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def storable_text_problem(value: object) -> str | None:
    """Return why PostgreSQL could not store the text in ``value`` (at any depth), else None.

    PostgreSQL refuses NUL in ``text`` and ``jsonb`` (keys too), and an
    unpaired surrogate cannot be encoded as UTF-8 at all.  An integer beyond
    64 bits is refused too: the jsonb encoder (orjson) cannot write it, so it
    would fail where the value is stored rather than here.  Models are not
    entered: each nested model checks its own fields.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if not _INT64_MIN <= item <= _UINT64_MAX:
                return "holds an integer beyond 64 bits, which cannot be stored as JSON here"
        elif isinstance(item, str):
            if "\x00" in item:
                return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return "contains an unpaired surrogate, which is not valid UTF-8"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return None


# Every str of the contract matches this (pydantic-core checks it, in Rust).
_NO_NUL = r"^[^\x00]*$"
_NUL_MESSAGE = "contains a NUL character (\\u0000), which PostgreSQL cannot store"
_CHECKED = "learnops_storable_json"


def _make_text_storable(schema: Any) -> None:
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if kind == "str" and "pattern" not in node:
            node["pattern"] = _NO_NUL
        elif kind == "model-fields":
            for field in node["fields"].values():
                _check_free_json(field)
        stack.extend(value for key, value in node.items() if key != "metadata")


def _check_free_json(field: dict[str, Any]) -> None:
    """Wrap a model field that may hold free JSON in a check of all its text."""
    inner = field["schema"]
    target, key = (inner, "schema") if inner.get("type") == "default" else (field, "schema")
    if target[key].get("metadata", {}).get(_CHECKED) or not _holds_free_json(target[key]):
        return
    target[key] = core_schema.no_info_after_validator_function(
        _storable_json, target[key], metadata={_CHECKED: True}
    )


def _holds_free_json(schema: Any) -> bool:
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in ("any", "json-or-python") or (
                kind == "definition-ref" and "JsonValue" in str(node.get("schema_ref"))
            ):
                return True
            if kind != "model":  # a nested model checks its own fields
                stack.extend(value for key, value in node.items() if key != "metadata")
    return False


def _storable_json(value: Any) -> Any:
    problem = storable_text_problem(value)
    if problem is not None:
        raise PydanticCustomError(f"{_OWN_ERROR}text", problem, {})
    return value


class ContractModel(BaseModel):
    """A part of the wire contract: strict types, no unknown fields, finite floats, storable text.

    Instances are immutable.
    """

    # defer_build: a model's validator is built on first use, not at import, so a
    # process that imports the contract but uses a few models (the Router) starts fast.
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, strict=True, defer_build=True
    )

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[BaseModel], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        # Storable text is checked where it is cheap: every str (fields, list items,
        # dict keys) gets a no-NUL pattern checked by pydantic-core; a field that
        # holds free JSON (JsonValue, Any) gets one Python check of its whole value.
        schema = handler(source)
        _make_text_storable(schema)
        return schema

    def to_json(self) -> bytes:
        """Return the model as compact UTF-8 JSON bytes, as an event goes on the wire.

        pydantic-core's serializer writes the bytes directly: the same bytes as
        ``orjson.dumps(model_dump(mode="json"))`` (tests/unit/test_models_events.py
        checks one event of each kind, simulated bundles and their CRL results,
        and generated floats, text and free JSON), without the intermediate dict:
        about 1.7x faster on a CRL result.
        """
        return self.__pydantic_serializer__.to_json(self)


class Event(ContractModel):
    """One message on a topic, keyed by ``doer``.

    ``schema_version`` defaults to 1, the version producers wrote before they
    sent one.  A subclass lists the versions it reads in ``SCHEMA_VERSIONS``;
    when it moves past version 1 it also overrides the field's default.
    """

    SCHEMA_VERSIONS: ClassVar[frozenset[int]] = frozenset({1})

    event_id: TextUUID = Field(default_factory=uuid4)
    occurred_at: UTCDatetime = Field(default_factory=lambda: datetime.now(UTC))
    schema_version: int = Field(default=1, validate_default=True)
    doer: Name

    @field_validator("schema_version")
    @classmethod
    def _supported_schema_version(cls, value: int) -> int:
        if value not in cls.SCHEMA_VERSIONS:
            raise PydanticCustomError(
                f"{_OWN_ERROR}schema_version",
                "version {version} is not supported by {model} (supported: {supported})",
                {
                    "version": _show(value),
                    "model": cls.__name__,
                    "supported": ", ".join(str(v) for v in sorted(cls.SCHEMA_VERSIONS)),
                },
            )
        return value

    def record_key(self) -> str:
        """The Kafka key of the event's record: its doer (the skill card differs)."""
        return self.doer

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Return the event parsed and validated from JSON; raises ``ValidationError``."""
        return cls.model_validate_json(data)


_DUPLICATE_KEY = "Detected duplicate key"


def left_out_when_empty(value: object) -> bool:
    """``Field(exclude_if=…)`` of a field added to a signed record: left out while empty or 0.

    Signatures cover the record's JSON (``learning.signing.event_payload``), so a
    record signed before the field existed dumps, and so verifies, as it was.
    """
    return not value


def duplicate_key_problem(data: bytes | str) -> str | None:
    """Return where a JSON object in ``data`` repeats a key, else None.

    Every parser keeps the last of two equal keys silently, so ``{"version": 1,
    "version": 2}`` reads as 2 here and as 1 elsewhere. jiter (the parser
    pydantic-core is built on) finds repeats while it parses; the key itself is
    not quoted. Invalid JSON gives None: the validation that follows names it.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    try:
        jiter.from_json(raw, catch_duplicate_keys=True, cache_mode=False)
    except ValueError as exc:
        message = str(exc)
        if message.startswith(_DUPLICATE_KEY):
            where = message.rsplit(" at ", 1)[-1] if " at line " in message else "some object"
            return f"an object repeats a key at {where}; JSON keys must be unique (RFC 8259 §4)"
    return None


def describe_validation_error(error: ValidationError) -> str:
    """Return one line a person can act on, naming every invalid field and why.

    For example ``qav.grounding_score: 1.4 is above 1; doer: is required``.
    Numbers are quoted from the input; text never is, because the reason is
    logged and may be read by people who must not see the payload's content.
    """
    items = error.errors(include_url=False)
    described = [_describe_one(item) for item in items[:_MAX_DESCRIBED]]
    if len(items) > _MAX_DESCRIBED:
        described.append(f"and {len(items) - _MAX_DESCRIBED} more")
    return "; ".join(described)


def describe_exception(error: BaseException) -> str:
    """Return what went wrong in ``error`` without any value it was raised about.

    An exception's own message often quotes its input (pydantic's
    ``input_value=…``, ``invalid literal for int(): '…'``, PostgreSQL's
    ``invalid input syntax for type uuid: "…"``), and a reason is logged and
    kept in the DLQ. So only what names the rule survives: a ValidationError
    as :func:`describe_validation_error` words it, an error with a SQLSTATE by
    that code, anything else by its type.
    """
    name = type(error).__name__
    if isinstance(error, ValidationError):
        return f"{name}: {describe_validation_error(error)}"
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str):
        return f"{name} (SQLSTATE {sqlstate})"
    return name


def validation_messages(error: ValidationError) -> list[tuple[tuple[str | int, ...], str]]:
    """Return each error's location and its message, worded as describe_validation_error does."""
    return [(tuple(item["loc"]), _message(item)) for item in error.errors(include_url=False)]


# A reason names at most this many errors: it travels in a dead letter and a log
# line, and an array of 100,000 bad items must not make it megabytes long.
_MAX_DESCRIBED = 10

# What a strict type error expected, in words (the input's own text is never quoted).
_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "uuid_type": "a UUID as text",
    "datetime_type": "an ISO 8601 timestamp as text",
    "date_type": "an ISO 8601 date as text",
}


def _describe_one(item: Any) -> str:
    where = _location(item["loc"])
    message = _message(item)
    return f"{where}: {message}" if where else message


# A name from the payload (an object key, a discriminator's tag) is shown only
# when it looks like a field of the contract; anything else may be a value.
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")


def shown_name(name: object) -> str:
    """Return ``name`` if it is a plain snake_case name, else ``<key>``: payload never echoes."""
    return name if isinstance(name, str) and _PLAIN_NAME.fullmatch(name) else "<key>"


def _location(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        name = str(part) if isinstance(part, int) else shown_name(part)
        if part == "[key]":  # pydantic's mark of an error in a dict key, not a value
            out += " (key)"
        else:
            out += f"[{name}]" if isinstance(part, int) else (f".{name}" if out else name)
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
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == _NO_NUL:
        return _NUL_MESSAGE
    if kind == "union_tag_invalid":
        tags = ", ".join(str(t).strip("'") for t in str(ctx.get("expected_tags", "")).split(", "))
        field = shown_name(str(ctx.get("discriminator", "")).strip("'"))
        return f"{field} must be one of {tags}"
    if kind == "union_tag_not_found":  # the field that says which kind of event it is
        field = shown_name(str(ctx.get("discriminator", "")).strip("'"))
        return f"{field} is required: it names which kind this is"
    if kind == "uuid_parsing":
        return "must be a UUID as text (e.g. 123e4567-e89b-12d3-a456-426614174000)"
    if kind == "string_unicode":
        return "contains an unpaired surrogate, which is not valid UTF-8"
    if kind in _EXPECTED:
        # Numbers are quoted (as everywhere); text, arrays and objects only by type.
        got = _show_number(value) if _is_number(value) else _json_type(value)
        return f"must be {_EXPECTED[kind]}, not {got}"
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show_number(value: int | float) -> str:
    # 1.0 stays "1.0" here: the complaint may be that it is not an integer.
    return _show(repr(value)) if isinstance(value, float) else _show(value)


def _show(value: Any, limit: int = 60) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    text = text.replace("\n", "\\n").replace("\x00", "\\u0000")
    return text if len(text) <= limit else text[: limit - 1] + "…"
