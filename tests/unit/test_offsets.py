"""The offset guard: no fetched record is skipped unseen, real gaps still commit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.faust_internals.offsets import Decision, OffsetGuard, Verdict

TP = ("learning.task-routed", 0)
OTHER = ("learning.task-routed", 1)


def fresh(
    guard: OffsetGuard[object], offsets: list[int], tp: object = TP, start: int | None = None
) -> list[Decision]:
    """Judge records of one fetch that started now, at ``start`` (default: its first record)."""
    fetched = guard.epochs()
    guard.fetched(tp, offsets, fetched, offsets[0] if start is None else start)
    return [guard.judge(tp, offset, fetched) for offset in offsets]


def test_consecutive_records_are_delivered() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 100})
    assert [d.verdict for d in fresh(guard, [100, 101, 102])] == [Verdict.DELIVER] * 3


def skipping(guard: OffsetGuard[object], offsets: list[int], seen: list[int]) -> list[Decision]:
    """A fetch from ``offsets[0]`` returned ``offsets``; only ``seen`` reached the guard."""
    fetched = guard.epochs()
    guard.fetched(TP, offsets, fetched, offsets[0])
    return [guard.judge(TP, offset, fetched) for offset in seen]


def test_a_partition_never_sought_starts_wherever_its_first_record_is() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    assert [d.verdict for d in fresh(guard, [7, 8])] == [Verdict.DELIVER] * 2
    # …and from then on it is held to that sequence.
    assert skipping(guard, [9, 10], [10]) == [Decision(Verdict.REWIND, 9)]


def test_a_record_skipped_before_the_guard_is_fetched_again() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 100})
    found = skipping(guard, [100, 101, 102, 103], [100, 103])
    assert found == [Decision(Verdict.DELIVER), Decision(Verdict.REWIND, 101)]
    # The refetch starts where the jump was: everything is delivered in order.
    assert [d.verdict for d in fresh(guard, [101, 102, 103])] == [Verdict.DELIVER] * 3


def test_a_jump_between_records_fetched_one_after_the_other_is_a_gap() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 100})
    # Compaction left 101–102 empty: the broker returned 103 right after 100.
    assert fresh(guard, [100, 103, 104]) == [
        Decision(Verdict.DELIVER),
        Decision(Verdict.GAP, 101),
        Decision(Verdict.DELIVER),
    ]


def test_records_fetched_before_a_rewind_are_dropped_without_seeking_again() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 100})
    before = guard.epochs()
    assert guard.judge(TP, 102, before) == Decision(Verdict.REWIND, 100)
    assert guard.judge(TP, 103, before) == Decision(Verdict.STALE)
    assert guard.judge(TP, 104, before) == Decision(Verdict.STALE)
    assert [d.verdict for d in fresh(guard, [100, 101])] == [Verdict.DELIVER] * 2


def test_a_fetch_from_the_expected_offset_that_starts_later_shows_a_gap() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 100})
    # Fetched from 100 and the log starts at 105: 100–104 hold nothing.
    assert fresh(guard, [105, 106], start=100) == [
        Decision(Verdict.GAP, 100),
        Decision(Verdict.DELIVER),
    ]


def test_a_fetch_that_began_past_the_expected_offset_is_no_gap() -> None:
    """The kill -9 case: committed at 3, the first records handed over began at 64."""
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 3})
    assert fresh(guard, [64, 65], start=64)[0] == Decision(Verdict.REWIND, 3)
    assert [d.verdict for d in fresh(guard, [3, 4, 5])] == [Verdict.DELIVER] * 3


def test_a_fetch_whose_start_is_unknown_shows_no_gap() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 100})
    fetched = guard.epochs()
    guard.fetched(TP, [105], fetched, None)
    assert guard.judge(TP, 105, fetched) == Decision(Verdict.REWIND, 100)


def test_a_partition_committed_at_zero_is_held_to_zero() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 0})
    assert fresh(guard, [64], start=64) == [Decision(Verdict.REWIND, 0)]


def test_a_partition_never_committed_is_expected_from_its_first_fetch() -> None:
    """Records fetched from the reset position and dropped unseen are fetched again."""
    guard: OffsetGuard[object] = OffsetGuard()
    fetched = guard.epochs()
    guard.fetched(TP, [0, 1, 2], fetched, 0)  # Faust dropped all three (partition inactive)
    assert guard.rewinds() == {TP: 0}
    assert [d.verdict for d in fresh(guard, [0, 1, 2])] == [Verdict.DELIVER] * 3


def test_the_origin_of_a_partition_is_its_first_fetch_without_a_commit_until_revoked() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({OTHER: 40})
    fresh(guard, [7, 8], start=7)
    fresh(guard, [9], start=9)
    fresh(guard, [40], tp=OTHER)
    assert (guard.origin(TP), guard.origin(OTHER)) == (7, None)  # OTHER has a commit
    guard.forget({TP})
    assert guard.origin(TP) is None


def test_a_jump_is_no_gap_when_records_of_its_fetch_before_it_were_not_judged() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 100})
    # The fetch returned 100–104, but 100–102 never reached the guard.
    assert skipping(guard, [100, 101, 102, 103, 104], [103]) == [Decision(Verdict.REWIND, 100)]


def test_records_fetched_before_a_seek_of_their_partition_are_fetched_again() -> None:
    """The restart case: records fetched while Faust seeks to the committed offsets."""
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 40_400})
    assert [d.verdict for d in fresh(guard, [40_400, 40_401])] == [Verdict.DELIVER] * 2
    in_flight = guard.epochs()
    guard.sought({TP: 40_491, OTHER: 5})  # perform_seek: committed offsets
    # A record fetched before that seek is not delivered: the guard seeks back once…
    assert guard.judge(TP, 40_493, in_flight) == Decision(Verdict.REWIND, 40_491)
    assert guard.judge(TP, 40_494, in_flight) == Decision(Verdict.STALE)
    # …and the refetch delivers 40 491 onwards, none skipped.
    offsets = list(range(40_491, 40_500))
    assert [d.verdict for d in fresh(guard, offsets)] == [Verdict.DELIVER] * len(offsets)


def test_a_seek_of_one_partition_leaves_the_others_alone() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 10, OTHER: 20})
    in_flight = guard.epochs()
    guard.sought({TP: 5})
    assert guard.judge(OTHER, 20, in_flight) == Decision(Verdict.DELIVER)
    assert guard.judge(TP, 10, in_flight).verdict is Verdict.REWIND


def test_an_unknown_position_keeps_what_the_guard_expected() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 10})
    fresh(guard, [10, 11])
    guard.sought({TP: None, OTHER: -1})  # no committed offset: aiokafka does not move them
    assert fresh(guard, [12]) == [Decision(Verdict.DELIVER)]
    assert skipping(guard, [13, 14], [14]) == [Decision(Verdict.REWIND, 13)]


def test_records_already_seen_are_passed_on() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 10})
    fresh(guard, [10, 11, 12])
    # Faust's delivery loop drops offsets it has read; the guard does not hold them back.
    assert fresh(guard, [11, 12, 13]) == [Decision(Verdict.DELIVER)] * 3


def test_a_poll_cut_short_at_its_end_is_fetched_again() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 10})
    fetched = guard.epochs()
    guard.fetched(TP, [10, 11, 12, 13], fetched, 10)
    # Faust handed out 10 and 11, then stopped: 12 and 13 were never judged.
    assert [guard.judge(TP, o, fetched).verdict for o in (10, 11)] == [Verdict.DELIVER] * 2
    assert guard.rewinds() == {TP: 12}
    assert [d.verdict for d in fresh(guard, [12, 13])] == [Verdict.DELIVER] * 2
    # A poll handed out in full needs nothing.
    assert [d.verdict for d in fresh(guard, [14, 15])] == [Verdict.DELIVER] * 2
    assert guard.rewinds() == {}


def test_a_revoked_partition_is_forgotten() -> None:
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 10})
    guard.forget({TP})
    assert fresh(guard, [500]) == [Decision(Verdict.DELIVER)]


@settings(max_examples=300, deadline=None)
@given(
    log=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    drops=st.lists(st.booleans(), min_size=1, max_size=40),
    jumps=st.lists(st.integers(0, 3), max_size=40),
    batch=st.integers(1, 8),
)
def test_every_stored_record_is_delivered_exactly_in_order(
    log: list[int], drops: list[bool], jumps: list[int], batch: int
) -> None:
    """A log with holes (compaction), a fetcher that loses records: all arrive, gaps are real.

    ``log`` gives the holes before each stored record; ``drops`` says which
    fetched records the consumer loses before the guard sees them (as Faust did
    around a seek); ``jumps`` moves the fetcher's position ahead unseen before a
    fetch (records fetched and dropped where the guard does not look, as at a
    restart). The simulated fetcher serves ``batch`` records from its position
    and moves past what it served, as aiokafka does.
    """
    stored: list[int] = []
    offset = 0
    for hole in log:
        offset += hole
        stored.append(offset)
        offset += 1
    guard: OffsetGuard[object] = OffsetGuard()
    guard.sought({TP: 0})
    position = 0
    delivered: list[int] = []
    gaps: list[tuple[int, int]] = []
    lost = iter(drops)
    skips = iter(jumps)
    for _ in range(20 * len(stored) + 40):
        for sought in guard.rewinds().values():
            position = sought
        jump = next(skips, 0)
        if stored[-1] >= position + jump:  # a later record shows a jump; none swallows the end
            position += jump
        served = [o for o in stored if o >= position][:batch]
        if not served:
            break
        fetched = guard.epochs()
        guard.fetched(TP, served, fetched, position)
        position = served[-1] + 1
        for record in served:
            if next(lost, False):
                continue  # fetched, then lost before the guard saw it
            decision = guard.judge(TP, record, fetched)
            if decision.verdict is Verdict.REWIND:
                assert decision.offset is not None
                position = decision.offset
            elif decision.verdict is Verdict.GAP:
                assert decision.offset is not None
                gaps.append((decision.offset, record))
                delivered.append(record)
            elif decision.verdict is Verdict.DELIVER:
                delivered.append(record)
    assert [o for o in sorted(set(delivered))] == stored
    first_seen = {o: i for i, o in reversed(list(enumerate(delivered)))}
    assert sorted(first_seen, key=first_seen.__getitem__) == stored  # in log order
    for begin, end in gaps:
        assert not [o for o in stored if begin <= o < end]  # a gap holds no record
