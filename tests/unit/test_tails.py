"""agents.tails: a doer's last record on a compacted topic is answered within STALE_AFTER_S.

Found by a red-team trial (2026-12-06): the wait restarted at every record read,
so an older signed record sent again every 20 s was never answered, and after
compaction it was all a starting Router saw.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from agents.tails import STALE_AFTER_S, Tails
from models.base import Event


class Record(Event):
    """A record of a compacted topic as the stages read it back: a doer and a sequence."""

    sequence: int
    frozen: bool = False


def _read(doer: str, value: bytes | None) -> Any:
    return SimpleNamespace(message=SimpleNamespace(key=doer.encode(), value=value))


def _tails() -> tuple[Tails, list[float]]:
    tails = Tails(Record, "test", None)  # no key: every valid record is trusted
    now = [1000.0]
    tails.clock = lambda: now[0]
    return tails, now


async def test_a_record_sent_again_and_again_is_answered_within_the_wait_of_the_first() -> None:
    tails, now = _tails()
    handled: list[tuple[str, Any, bool]] = []

    async def handle(doer: str, record: Any, trusted: bool, now: float) -> None:
        handled.append((doer, record, trusted))

    old = Record(doer="D", sequence=1).to_json()
    for _ in range(3):  # the same old record every 20 s
        await tails.note(_read("D", old))
        await tails.stale(now[0], handle, "test")
        assert handled == []
        now[0] += 0.4 * STALE_AFTER_S
    # 1.2 × the wait after the first one, 0.4 × after the last: answered now.
    await tails.stale(now[0], handle, "test")
    assert [(d, r.sequence, t) for d, r, t in handled] == [("D", 1, True)]
    assert "D" not in tails.last


async def test_the_handler_judges_the_latest_record_and_a_record_during_it_is_kept() -> None:
    tails, now = _tails()
    seen: list[Any] = []

    async def handle(doer: str, record: Any, trusted: bool, now: float) -> None:
        seen.append(record)
        # Another record arrives while the stage answers the first: it is judged next.
        if len(seen) == 1:
            await tails.note(_read(doer, None))

    await tails.note(_read("D", Record(doer="D", sequence=1).to_json()))
    now[0] += STALE_AFTER_S / 2
    await tails.note(_read("D", Record(doer="D", sequence=2, frozen=True).to_json()))
    now[0] += STALE_AFTER_S / 2
    await tails.stale(now[0], handle, "test")
    assert [(r.sequence, r.frozen) for r in seen] == [(2, True)]
    assert "D" in tails.last  # the empty record that came during the answer
    now[0] += STALE_AFTER_S
    await tails.stale(now[0], handle, "test")
    assert seen[1] is None and "D" not in tails.last


async def test_a_record_naming_another_doer_or_garbled_is_handed_over_as_none() -> None:
    tails, now = _tails()
    seen: list[Any] = []

    async def handle(doer: str, record: Any, trusted: bool, now: float) -> None:
        seen.append((doer, record, trusted))

    await tails.note(_read("D", Record(doer="E", sequence=9).to_json()))
    await tails.note(_read("F", b"{not json"))
    await tails.stale(now[0] + STALE_AFTER_S, handle, "test")
    assert sorted(seen) == [("D", None, False), ("F", None, False)]


async def test_a_handler_that_asks_again_is_asked_at_the_next_tick() -> None:
    """The policy stage asks again while its own last change may still be on its way back,
    instead of answering a record its send already answers with a number more."""
    tails, now = _tails()
    answers = [True, False]
    asked: list[float] = []

    async def handle(doer: str, record: Any, trusted: bool, at: float) -> bool:
        asked.append(at)
        return answers[len(asked) - 1]

    await tails.note(_read("D", Record(doer="D", sequence=1).to_json()))
    await tails.stale(now[0] + STALE_AFTER_S, handle, "test")
    assert "D" in tails.last
    await tails.stale(now[0] + STALE_AFTER_S + 5, handle, "test")
    assert asked == [now[0] + STALE_AFTER_S, now[0] + STALE_AFTER_S + 5]
    assert "D" not in tails.last
