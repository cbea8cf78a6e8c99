"""A dead letter always fits in a Kafka record: big values become a prefix with size and hash."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import (
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_MAX_KEY,
    DEAD_LETTER_MAX_REASON,
    UNKNOWN_DOER,
    DeadLetter,
)

MIB = 1024 * 1024


def capture(value: bytes, **overrides: Any) -> DeadLetter:
    arguments: dict[str, Any] = {
        "value": value,
        "key": b"PRDWriter",
        "topic": "learning.run-completed",
        "partition": 1,
        "offset": 9,
        "reason": "Invalid JSON: EOF while parsing",
        "stage": "crl",
        "error_type": "json",
        "consumer": "learnops",
    }
    return DeadLetter.capture(**{**arguments, **overrides})


@pytest.mark.parametrize("size", [MIB, 5 * MIB])
def test_a_large_payload_gives_a_letter_under_the_limit_with_its_size_and_hash(size: int) -> None:
    value = os.urandom(size)
    letter = capture(value)
    wire = letter.to_json()
    assert len(wire) <= DEAD_LETTER_MAX_BYTES
    again = DeadLetter.from_json(wire)
    assert again.truncated
    assert again.payload_size == size
    assert again.payload_sha256 == hashlib.sha256(value).hexdigest()
    assert value.startswith(again.value)
    assert len(again.value) > DEAD_LETTER_MAX_BYTES // 2  # as much as fits, not a token prefix
    # The metadata is all there.
    assert (again.topic, again.partition, again.offset) == ("learning.run-completed", 1, 9)
    assert (again.doer, again.key, again.stage, again.error_type) == (
        "PRDWriter",
        b"PRDWriter",
        "crl",
        "json",
    )


def test_a_small_payload_is_kept_whole_with_its_size_and_hash() -> None:
    letter = DeadLetter.from_json(capture(b'{"doer": 1').to_json())
    assert not letter.truncated
    assert letter.value == b'{"doer": 1'
    assert letter.payload_size == 10
    assert letter.payload_sha256 == hashlib.sha256(b'{"doer": 1').hexdigest()


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=3_000), st.integers(min_value=2_000, max_value=20_000))
def test_every_letter_fits_its_limit_and_is_whole_when_it_can_be(size: int, limit: int) -> None:
    value = b"v" * size
    letter = capture(value, max_bytes=limit)
    assert len(letter.to_json()) <= limit
    whole = capture(value, max_bytes=10**9)
    if len(whole.to_json()) <= limit:
        assert (letter.value, letter.truncated) == (value, False)
    else:
        assert letter.truncated and value.startswith(letter.value)
        # One more base64 quantum (4 characters) would not have fitted ("true" is one
        # character shorter than the "false" the room was measured with).
        assert len(letter.to_json()) + 5 > limit


def test_the_limit_is_configurable() -> None:
    letter = capture(b"x" * 100_000, max_bytes=10_000)
    assert letter.truncated and len(letter.to_json()) <= 10_000


def test_a_long_reason_is_cut() -> None:
    letter = capture(b"{}", reason="field: is wrong; " * 10_000)
    assert len(letter.reason) == DEAD_LETTER_MAX_REASON
    assert letter.reason.endswith("…")


def test_a_reason_with_a_nul_or_a_surrogate_is_still_captured() -> None:
    letter = capture(b"{}", reason="bad \x00 byte and \ud800")
    assert "\x00" not in letter.reason
    assert DeadLetter.from_json(letter.to_json()).reason == letter.reason
    assert capture(b"{}", reason="").reason == "no reason given"


def test_a_huge_key_is_kept_as_a_prefix_with_its_size() -> None:
    key = b"k" * (2 * MIB)
    letter = capture(b"{}", key=key)
    assert len(letter.to_json()) <= DEAD_LETTER_MAX_BYTES
    assert letter.truncated and letter.key == key[:DEAD_LETTER_MAX_KEY]
    assert letter.key_size == 2 * MIB
    assert letter.value == b"{}"


def test_a_key_with_a_nul_gives_the_unknown_doer() -> None:
    assert capture(b"{}", key=b"PRD\x00Writer").doer == UNKNOWN_DOER


def test_a_letter_written_before_the_size_fields_still_reads() -> None:
    old = {
        "event_id": "6f1c1f54-4a43-4f0a-9a0e-3a7d1b0b5d6e",
        "occurred_at": "2026-03-01T12:00:00Z",
        "schema_version": 1,
        "doer": "PRDWriter",
        "value_b64": base64.b64encode(b"raw").decode(),
        "key_b64": None,
        "topic": "learning.run-completed",
        "partition": 0,
        "offset": 3,
        "reason": "bad",
        "stage": "crl",
        "error_type": "json",
    }
    letter = DeadLetter.from_json(orjson.dumps(old))
    assert (letter.truncated, letter.payload_size, letter.payload_sha256) == (False, None, None)
    assert letter.value == b"raw"
