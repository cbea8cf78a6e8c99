"""Faust tables keyed by doer that can be written once per batch, not once per event.

Faust sends a table change to the changelog partition of the event being
processed (``current_event()``), so that a partition's state is recovered by the
worker that owns the partition. A batch body (``stream.take_events``) has no
current event, and Faust refuses the write. Every key of ours starts with the
doer, and every topic is keyed by doer, so the right partition is known: the
one this doer's events arrived on. The agent records it per event (``seen``)
and the table uses it, whatever partitioner the producer used.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from faust.tables.table import Table
from prometheus_client import Counter

from learning.moments import Moments
from learning.trends import DailyCRL, days_back

log = logging.getLogger("learnops.tables")

SEPARATOR = "/"
HISTORY_DAYS = 30  # how long daily aggregates are kept


def day_start(day: date) -> float:
    """The POSIX time a UTC day starts at: how a tumbling daily window is addressed."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


#: The key, in a table value, of the highest source offset folded into it, per partition.
SOURCE_OFFSETS = "source_offsets"


def folded_up_to(value: Any, source: int | str) -> int:
    """The highest offset of ``source`` (a partition) already folded into a table value (-1: none).

    A value and its mark are one changelog record, so they are written together
    or not at all: after a kill -9 the redelivered records at or below the mark
    are the ones this value already holds (docs/operations.md, "Exactly once").
    """
    if not value:
        return -1
    return int((value.get(SOURCE_OFFSETS) or {}).get(str(source), -1))


def marked(value: dict[str, Any], source: int | str, offset: int) -> dict[str, Any]:
    """``value`` with the mark of ``source`` (a partition) moved up to ``offset``."""
    marks = dict(value.get(SOURCE_OFFSETS) or {})
    marks[str(source)] = max(offset, int(marks.get(str(source), -1)))
    return {**value, SOURCE_OFFSETS: marks}


def history(
    table: Any, key: str, today: date, days: int = HISTORY_DAYS, *, sketches: bool = True
) -> dict[date, DailyCRL]:
    """The key's daily CRL aggregates for the ``days`` ending today (days with data only).

    ``sketches=False`` reads the moments alone and leaves each day's quantile
    sketch empty: enough for the regression rule, and the sketches' decoding
    was most of its cost.
    """
    found: dict[date, DailyCRL] = {}
    for day in days_back(today, days):
        value = table.relative_to(day_start(day))[key].value()
        if value:
            found[day] = (
                DailyCRL.from_dict(value)
                if sketches
                else DailyCRL(moments=Moments.from_dict(value["moments"]))
            )
    return found


def doer_of(key: Any) -> str:
    """The doer a table key belongs to: the part before the first '/' (windowed keys too)."""
    if isinstance(key, tuple | list):  # (key, window_range) of a windowed table
        key = key[0]
    return str(key).split(SEPARATOR, 1)[0]


PARTITION_CHANGES = Counter(
    "learnops_doer_partition_changes_total",
    "Events of a doer on another partition than its earlier ones in this worker: a producer "
    "placing doers by another partition count or partitioner (docs/operations.md, "
    '"Changing the partition count")',
)


class DoerPartitions:
    """Which source partition each doer's events arrived on, as the agent saw them.

    A doer's partition never changes while a worker runs (every topic is keyed by
    doer); when it does, a producer places it by another count or partitioner
    (one whose metadata predates a repartition), and its table state is read and
    written on two partitions: counted and logged, once per doer.
    """

    def __init__(self) -> None:
        self._partitions: dict[str, int] = {}
        self._warned: set[str] = set()

    def seen(self, doer: str, partition: int) -> None:
        """Record the partition of an event of this doer."""
        was = self._partitions.get(doer)
        if was != partition:
            if was is not None:
                PARTITION_CHANGES.inc()
                if doer not in self._warned:
                    self._warned.add(doer)
                    log.warning(
                        "doer_partition_changed doer=%r was=%d now=%d hint='a producer places "
                        "this doer by another partition count or partitioner: restart the "
                        "orchestrator's producers (after a repartition: docs/operations.md, "
                        "Changing the partition count)'",
                        doer,
                        was,
                        partition,
                    )
            self._partitions[doer] = partition

    def of(self, key: Any) -> int:
        """The partition of the doer a key belongs to; an error if none was seen."""
        doer = doer_of(key)
        try:
            return self._partitions[doer]
        except KeyError:
            raise RuntimeError(
                f"no event of doer {doer!r} seen yet: cannot place its table change"
            ) from None


class DoerTable(Table):
    """A table whose changelog partition follows the doer in the key."""

    partitions_of: DoerPartitions
    #: Its values name the doer's source partition (plus one, 0 for none): what
    #: ``learnops topics repartition`` rewrites when it moves the doer (agents/repartition.py).
    holds_partition: bool = False

    def partition_for_key(self, key: Any) -> int | None:
        """The partition of the key's doer (so batch bodies can write)."""
        return self.partitions_of.of(key)


def doer_table(
    app: Any,
    name: str,
    partitions: DoerPartitions,
    *,
    default: Any,
    help_: str,
    window: timedelta | None = None,
    expires: timedelta | None = None,
    holds_partition: bool = False,
) -> Any:
    """Register a DoerTable on the app; tumbling-windowed when ``window`` is given."""
    table = DoerTable(
        app, name=name, default=default, partitions=app.catalog.partitions, help=help_
    )
    table.partitions_of = partitions
    table.holds_partition = holds_partition
    app.tables.add(table)
    return table.tumbling(window, expires=expires) if window else table
