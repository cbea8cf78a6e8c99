"""A record read by several stages of one worker is checked and parsed once (agents/stage.py)."""

from __future__ import annotations

from typing import Any

import pytest
from faust.types import Message

from agents.app import create_app
from agents.crl import CRLStage
from agents.curator import _parse
from agents.settings import Settings
from learnops.simulation.orchestrator import NoteMix, Orchestrator
from models.events import RunCompleted


class _Event:
    def __init__(self, message: Message) -> None:
        self.message = message


def _message(value: bytes, key: bytes = b"DecodeDoer", offset: int = 7) -> Message:
    return Message("learning.run-completed", 0, offset, 0.0, 0, None, key, value, None)


@pytest.fixture
def crl() -> CRLStage:
    app = create_app(Settings(learnops_app_id="decode-once", learnops_web_enabled=False), stages=[])
    return CRLStage(app)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every value RunCompleted.model_validate_json is called on."""
    seen: list[bytes] = []
    original = RunCompleted.model_validate_json

    def counting(value: Any, *args: Any, **kwargs: Any) -> RunCompleted:
        seen.append(value)
        return original(value, *args, **kwargs)

    monkeypatch.setattr(RunCompleted, "model_validate_json", counting)
    return seen


def _bundle() -> bytes:
    return Orchestrator(seed=3).bundle("DecodeDoer", notes=NoteMix()).to_json()


async def test_the_crl_and_curator_stages_share_one_parse_of_a_record(
    crl: CRLStage, parses: list[bytes]
) -> None:
    message = _message(_bundle())
    first = await crl.decode(_Event(message), RunCompleted)
    second = _parse(crl.app, _Event(message))
    assert first is not None
    assert second is first
    assert len(parses) == 1


async def test_another_delivery_of_the_same_bytes_is_parsed_again(
    crl: CRLStage, parses: list[bytes]
) -> None:
    value = _bundle()
    first = await crl.decode(_Event(_message(value)), RunCompleted)
    again = await crl.decode(_Event(_message(value)), RunCompleted)
    assert first == again
    assert again is not first
    assert len(parses) == 2


async def test_a_refused_record_is_not_kept_and_each_reader_refuses_it(
    crl: CRLStage, parses: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    letters: list[tuple[str, str]] = []

    async def dead_letter(event: Any, *, error_type: str, reason: str, **_: Any) -> None:
        letters.append((error_type, reason))

    monkeypatch.setattr(crl, "dead_letter", dead_letter)
    repeated = _message(b'{"doer": "DecodeDoer", "doer": "Other"}')
    assert await crl.decode(_Event(repeated), RunCompleted) is None
    assert await crl.decode(_Event(repeated), RunCompleted) is None
    assert [kind for kind, _ in letters] == ["json", "json"]
    assert "repeats a key" in letters[0][1]
    assert _parse(crl.app, _Event(repeated)) is None
    assert parses == []  # the duplicate key is refused before any parse

    # A record whose key is not its doer is refused by each reader, also when
    # an earlier reader parsed it.
    wrong_key = _message(_bundle(), key=b"SomeoneElse")
    assert await crl.decode(_Event(wrong_key), RunCompleted) is None
    assert _parse(crl.app, _Event(wrong_key)) is None
    assert [kind for kind, _ in letters] == ["json", "json", "key"]


async def test_a_stand_in_record_without_weak_references_is_parsed_each_time(
    crl: CRLStage, parses: list[bytes]
) -> None:
    class StandIn:
        __slots__ = ("key", "offset", "partition", "topic", "value")

    message = StandIn()
    message.key, message.value = b"DecodeDoer", _bundle()
    first = await crl.decode(_Event(message), RunCompleted)  # type: ignore[arg-type]
    second = await crl.decode(_Event(message), RunCompleted)  # type: ignore[arg-type]
    assert first == second
    assert len(parses) == 2
