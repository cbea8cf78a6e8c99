"""Structured logs: ``LEARNOPS_LOG_FORMAT=json`` prints one JSON object per line.

The project's log lines are ``event key=value key=value …`` (``dead_letter
stage=crl topic=… partition=3 offset=1200 …``); in JSON each pair becomes a
field, so a log pipeline can filter on stage, topic, partition and offset
without parsing text. Values stay strings: a line is never dropped for a value
that does not parse. Lines of other libraries (Faust, aiokafka) keep their text
in ``message``.

Tracebacks are printed without exception messages (:class:`ValueFreeTracebacks`):
a message often quotes the input it was raised about, and logs must carry no
payload text, secret or personal data. The frames, the exception types and the
rule a validation error names stay, which is what a fix needs.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from models.base import describe_exception

# key=value, key='quoted value' or key="quoted value"; keys are identifiers.
_PAIR = re.compile(r"""(?P<key>[a-z_][a-z0-9_]*)=(?P<value>'[^']*'|"[^"]*"|\S+)""")
_EVENT = re.compile(r"^(?P<event>[a-z_][a-z0-9_]*)(?:\s|$)")


def fields_of(message: str) -> dict[str, str]:
    """The ``event`` and the key=value pairs of a project log line (none for other text)."""
    head = _EVENT.match(message)
    if head is None or "=" not in message:
        return {}
    found = {"event": head["event"]}
    for match in _PAIR.finditer(message):
        found[match["key"]] = match["value"].strip("'\"")
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            **fields_of(message),
        }
        if record.exc_info:
            document["exception"] = record.exc_text or self.formatException(record.exc_info)
        return orjson.dumps(document).decode()


def value_free_traceback(error: BaseException) -> str:
    """The traceback of ``error`` and its causes: frames and source lines, no messages."""
    # Walk from the exception logged to its first cause; print in Python's order,
    # the first cause first.
    blocks: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_tb(current.__traceback__))
        blocks.append(f"Traceback (most recent call last):\n{frames}{describe_exception(current)}")
        if current.__cause__ is not None:
            blocks.append(_CAUSE)
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            blocks.append(_CONTEXT)
            current = current.__context__
        else:
            current = None
    return "\n\n".join(reversed(blocks))


_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"


class ValueFreeTracebacks(logging.Filter):
    """A handler filter that gives a record's exception a traceback without messages.

    Formatters print ``record.exc_text`` when it is set, so every formatter of
    the handler (Faust's, the JSON one) prints the value-free form.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = value_free_traceback(record.exc_info[1])
        return True


#: The client libraries whose repeated warnings and errors pass once a while.
CLIENT_LOGGERS: Final = ("aiokafka", "asyncpg.pool")


class RepeatsOnceAWhile(logging.Filter):
    """A logger filter that passes each repeated client line once per ``every_s``.

    While the broker is away aiokafka logs the same error for every connection
    attempt of every client (about 1,500 lines in a 20 s outage of one worker);
    the first of each kind passes, then one per interval saying how many like it
    were left out. Only the ``aiokafka`` loggers' lines are counted, by their
    format string (``Unable connect to node with id %s: %s``), not their values;
    and asyncpg's pool, which logs a traceback each time it fails to reconnect
    its floor of connections while PostgreSQL is away: that line loses its
    traceback for the exception's type.
    """

    def __init__(self, every_s: float = 30.0, clock: Any = None) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock or time.monotonic
        self.seen: dict[tuple[str, int, str], OnceAWhile] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(CLIENT_LOGGERS) or record.levelno < logging.WARNING:
            return True
        if record.msg == _COORDINATOR_LOOKUP and _coordinator_starting(record.args):
            # The first consumer of a fresh cluster asks before the broker has made its
            # offsets topic; aiokafka retries, and an ERROR read as a fault to operators.
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = (
                f"{_COORDINATOR_LOOKUP} (the broker is still starting the group's "
                "coordinator; retried)"
            )
            return True
        if record.name == "asyncpg.pool" and record.exc_info and record.exc_info[1] is not None:
            # "Failed to restore the pool connection floor; retrying" carries the refused
            # connect's whole traceback, at every retry while PostgreSQL is away: its type
            # says as much (the readiness page and the stages' own lines say the rest).
            record.msg = f"{record.msg} ({type(record.exc_info[1]).__name__})"
            record.exc_info = record.exc_text = None
        key = (record.name, record.levelno, str(record.msg))
        left_out = self.seen.setdefault(key, OnceAWhile(self.every_s)).due(self.clock())
        if left_out is None:
            return False
        if left_out:
            record.msg = (
                f"{record.msg} (and {left_out} more like it in {self.every_s:g}s, left out)"
            )
        return True


_COORDINATOR_LOOKUP: Final = "Group Coordinator Request failed: %s"


def _coordinator_starting(args: Any) -> bool:
    """Whether aiokafka's failed coordinator lookup is a retriable 'not available yet'."""
    from aiokafka.errors import CoordinatorNotAvailableError

    error = args[0] if isinstance(args, tuple) and args else None
    return isinstance(error, CoordinatorNotAvailableError) and bool(error.retriable)


class OnceAWhile:
    """Whether a repeated line is due: the first of a run, then one per ``every_s``."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.logged_at: float | None = None
        self.left_out = 0

    def due(self, now: float) -> int | None:
        """The lines left out since the last one when this one is due, else None."""
        if self.logged_at is not None and now - self.logged_at < self.every_s:
            self.left_out += 1
            return None
        left_out, self.left_out, self.logged_at = self.left_out, 0, now
        return left_out

    def reset(self) -> None:
        """A success ends the run: the next failure is logged at once."""
        self.logged_at, self.left_out = None, 0


def quiet_repeats() -> None:
    """Give every ``aiokafka`` logger and asyncpg's pool one shared :class:`RepeatsOnceAWhile`.

    On the loggers, not on the handlers: a logger's filters see each record once,
    before any handler, so the count it adds is written once and every handler
    prints the same line. aiokafka names a logger per module, all made at import.
    """
    import aiokafka  # noqa: F401  (its loggers exist once it is imported)

    repeats = RepeatsOnceAWhile()
    names = [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] == "aiokafka"]
    for name in ["aiokafka", *names, "asyncpg.pool"]:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatsOnceAWhile) for f in logger.filters):
            logger.addFilter(repeats)


class FastTimerOverlaps(logging.Filter):
    """Leave out mode's "Timer … is overlapping" warning for timers under a second.

    mode warns whenever a timer's tick ran longer than its interval. The stages'
    fast timers (the CRL stage writes due folds every ~0.1 s) run longer than
    that whenever their PostgreSQL write waits for a busy loop, which is normal
    under load: the next tick simply comes later. The warning, a line per tick,
    read as a fault to operators. Timers of a second or more keep it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Timer %s is overlapping") and len(record.args or ()) >= 2:
            interval = record.args[1]  # type: ignore[index]
            return not (isinstance(interval, int | float) and interval < 1.0)
        return True


def quiet_fast_timers() -> None:
    """Give mode's timer logger :class:`FastTimerOverlaps` (once)."""
    logger = logging.getLogger("mode.timers")
    if not any(isinstance(f, FastTimerOverlaps) for f in logger.filters):
        logger.addFilter(FastTimerOverlaps())


def hide_exception_values() -> None:
    """Make every handler of the root logger print tracebacks without exception messages."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ValueFreeTracebacks) for f in handler.filters):
            handler.addFilter(ValueFreeTracebacks())


def use_json_logs() -> None:
    """Give every handler of the root logger the JSON formatter (after Faust set them up)."""
    formatter = JsonFormatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
