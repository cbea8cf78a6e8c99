"""Which fetched records the consumer may hand to the streams: none skipped unseen.

Faust's consumer assumes a fetched record whose offset jumps past the last one
it delivered means the log holds nothing in between (compaction, transaction
markers): it records the jump as a *gap*, and gap offsets count as acked, so
the next commit moves past them. But a jump also happens when records were
fetched and then dropped before delivery, and Faust drops them in several
places without moving the fetch position back:

* the recovery service resumes the flow to read changelogs, then resumes the
  input partitions and seeks them to their committed offsets while that flow
  is on; records fetched before the seek reach the streams, records fetched
  around it are lost between the two, and the first one delivered after it
  lands past them (seen after every worker restart under traffic:
  ``tests/integration/test_canary.py``);
* ``Consumer.getmany`` stops handing out a fetched batch when the flow stops
  or the group generation changes; the rest of the batch is gone, while the
  fetch position is already past it.

Those records were never processed, and the gap commits past them: a silent
loss. The guard sits between the fetched records and Faust's delivery loop
and keeps, per partition, the offset it expects next:

* a record at the expected offset (or of a partition it knows nothing about)
  is delivered, and the expectation moves past it;
* a record before it is delivered (Faust itself drops what it has read);
* a record fetched before the latest seek of its partition is dropped
  (:attr:`Verdict.STALE`), once the guard has sought the partition back to
  the expected offset (:attr:`Verdict.REWIND`): it will be fetched again;
* a record past the expected offset is a gap in the log (compaction,
  transaction markers: :attr:`Verdict.GAP`, its offsets counted as acked) only
  if the guard has judged every record its fetch returned before it, and that
  fetch is known to have begun at or before the expected offset (the
  consumer's position when the records were handed over, which aiokafka
  keeps equal to where their fetch began). Otherwise records were skipped:
  the guard seeks the partition back to the expected offset
  (:attr:`Verdict.REWIND`) and they are fetched again. A poll whose records
  were not all judged is sought back before the next one
  (:meth:`OffsetGuard.rewinds`).

The guard expects, per partition, the committed offset it was sought to (0
included: aiokafka does not move a partition committed at 0, but that is
where it reads from), or, for a partition with no commit, the position its
first fetch began at (where the reset policy put it). A kill -9 test found
the hole this closes: a partition committed at 0 was never sought, the
guard expected nothing, a restarted worker's first fetch handed over
records 64… while 3…63 had been fetched and dropped during start-up, and
the CRL aggregates' source marks jumped past runs they never folded.

A partition with no commit has no committed offset to seek back to when Faust
seeks every partition after a recovery: records delivered before it and
dropped with the streams' queues were then never fetched again, and the
partition's commit stood behind them until a restart (an upgrade trial found
it on a topic the group had never committed, read with a backlog). The guard
keeps where such a partition's first fetch began (:meth:`OffsetGuard.origin`),
and the transport seeks it back there, as a commit at that offset would.

No record is judged while a seek of every partition (Faust's ``perform_seek``)
is under way: the transport waits for it to end, so the guard knows which
partitions it moved. The guard is pure bookkeeping; agents/faust_internals/transport.py feeds
it the seeks and the records and acts on its verdicts.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

#: A partition as the consumer names it (Faust's TP).
P = TypeVar("P", bound=Hashable)


class Verdict(Enum):
    """What to do with one fetched record."""

    DELIVER = "deliver"  #: hand it to the streams
    STALE = "stale"  #: fetched before a seek that is already in place: drop, it comes again
    REWIND = "rewind"  #: seek the partition back to ``Decision.offset``, drop the record
    GAP = "gap"  #: deliver; ``Decision.offset`` up to the record hold nothing: a gap


@dataclass(frozen=True)
class Decision:
    """A verdict; for REWIND the offset to seek to, for GAP the first offset of the gap."""

    verdict: Verdict
    offset: int | None = None


class OffsetGuard(Generic[P]):
    """Per partition: the next offset the streams must see, and the seeks that moved it."""

    def __init__(self) -> None:
        self._expected: dict[P, int] = {}
        self._epoch: dict[P, int] = {}
        # Partitions sought back to their expected offset, with the epoch of that seek.
        self._rewound: dict[P, tuple[int, int]] = {}
        # The offsets the latest poll returned, the epoch it was fetched in, and
        # how many of them have been judged (records are judged in fetch order).
        self._fetched: dict[P, tuple[list[int], int]] = {}
        self._judged: dict[P, int] = {}
        # Where the latest poll's fetch of each partition began (None: unknown).
        self._start: dict[P, int | None] = {}
        # Where the first fetch of a partition with no commit began.
        self._origin: dict[P, int] = {}

    def sought(self, positions: Mapping[P, int | None]) -> None:
        """These partitions will be fetched from these offsets (None: position unchanged)."""
        for tp, offset in positions.items():
            if offset is None or offset < 0:
                continue
            self._epoch[tp] = self._epoch.get(tp, 0) + 1
            self._expected[tp] = offset

    def expected(self, tp: P) -> int | None:
        """The next offset the streams must see of ``tp`` (None: nothing known yet)."""
        return self._expected.get(tp)

    def epochs(self) -> dict[P, int]:
        """Taken when a fetch starts: its records are stale if their partition was sought since."""
        return dict(self._epoch)

    def fetched(
        self, tp: P, offsets: list[int], fetched: Mapping[P, int], start: int | None
    ) -> None:
        """The poll begun at ``fetched`` returned the records of ``tp`` at ``offsets``.

        ``start`` is the consumer's position for ``tp`` when they were handed
        over: where their fetch began (None when unknown). A partition the guard
        expects nothing of (never committed) is expected from there on.
        """
        self._fetched[tp] = (offsets, fetched.get(tp, 0))
        self._judged[tp] = 0
        self._start[tp] = start
        if start is not None and start >= 0 and tp not in self._expected:
            self._expected[tp] = start
            self._origin.setdefault(tp, start)

    def origin(self, tp: P) -> int | None:
        """Where the first fetch of ``tp`` began, if the guard had no commit of it then."""
        return self._origin.get(tp)

    def judge(self, tp: P, offset: int, fetched: Mapping[P, int]) -> Decision:
        """What to do with the record at ``offset`` of ``tp``, from a fetch begun at ``fetched``."""
        epoch = self._epoch.get(tp, 0)
        expected = self._expected.get(tp)
        if fetched.get(tp, 0) != epoch:  # fetched before the partition was sought
            if expected is None or self._rewound.get(tp) == (expected, epoch):
                return Decision(Verdict.STALE)
            return self._rewind(tp, expected)
        # Is it the next record of its fetch, with every one before it judged?
        offsets, _ = self._fetched.get(tp, ((), 0))
        judged = self._judged.get(tp, 0)
        in_order = judged < len(offsets) and offsets[judged] == offset
        if in_order:
            self._judged[tp] = judged + 1
        if expected is None or offset == expected:
            self._expected[tp] = offset + 1
            self._rewound.pop(tp, None)
            return Decision(Verdict.DELIVER)
        if offset < expected:  # already seen: Faust drops what it has read
            return Decision(Verdict.DELIVER)
        start = self._start.get(tp)
        if in_order and (judged > 0 or (start is not None and start <= expected)):
            # Returned right after the record judged last, or first by a fetch
            # that began at or before `expected`: the log holds nothing in between.
            self._expected[tp] = offset + 1
            self._rewound.pop(tp, None)
            return Decision(Verdict.GAP, expected)
        return self._rewind(tp, expected)

    def rewinds(self) -> dict[P, int]:
        """Before the next poll: partitions to seek back, because records fetched were not judged.

        Faust stops handing out a polled batch when the flow stops or the group
        generation changes; the fetch position is past those records already.
        Those with no record judged after them are found here.
        """
        found: dict[P, int] = {}
        for tp, (offsets, epoch) in self._fetched.items():
            expected = self._expected.get(tp)
            if expected is None or not offsets or offsets[-1] < expected:
                continue
            if epoch != self._epoch.get(tp, 0):
                continue  # fetched before a seek that is in place: they come again
            self._rewind(tp, expected)
            found[tp] = expected
        self._fetched.clear()
        self._judged.clear()
        self._start.clear()
        return found

    def forget(self, tps: set[P]) -> None:
        """These partitions are no longer ours."""
        for tp in tps:
            self._expected.pop(tp, None)
            self._rewound.pop(tp, None)
            self._fetched.pop(tp, None)
            self._judged.pop(tp, None)
            self._start.pop(tp, None)
            self._origin.pop(tp, None)

    def _rewind(self, tp: P, expected: int) -> Decision:
        """Seek back to ``expected``; the records of earlier fetches are stale from now on."""
        self.sought({tp: expected})
        self._rewound[tp] = (expected, self._epoch[tp])
        return Decision(Verdict.REWIND, expected)
