"""agents.logs: JSON log lines carry the key=value fields of the project's log lines."""

from __future__ import annotations

import logging

import orjson
import pytest
from pydantic import ValidationError

from agents.logs import JsonFormatter, ValueFreeTracebacks, fields_of
from models.base import describe_exception
from models.events import RunCompleted


def test_a_project_line_becomes_fields() -> None:
    line = (
        "dead_letter stage=crl error_type=json topic=learning.run-completed "
        "partition=3 offset=12 fields='a; b'"
    )
    assert fields_of(line) == {
        "event": "dead_letter",
        "stage": "crl",
        "error_type": "json",
        "topic": "learning.run-completed",
        "partition": "3",
        "offset": "12",
        "fields": "a; b",
    }


def test_other_text_has_no_fields() -> None:
    assert fields_of("[^Worker]: Ready") == {}
    assert fields_of("Starting consumer") == {}


def test_the_formatter_writes_one_json_object_with_level_logger_and_fields() -> None:
    record = logging.LogRecord(
        "learnops.crl", logging.WARNING, __file__, 1, "batch_rejected rows=%d", (5,), None
    )
    document = orjson.loads(JsonFormatter().format(record))
    assert document["level"] == "warning"
    assert document["logger"] == "learnops.crl"
    assert document["message"] == "batch_rejected rows=5"
    assert (document["event"], document["rows"]) == ("batch_rejected", "5")
    assert document["time"].endswith("+00:00")


SECRET = "Hunter2Secret!"


def _raised(error: ValueError) -> ValueError:
    try:
        raise error
    except ValueError as caught:
        return caught


def _logged_line(formatter: logging.Formatter, error: BaseException) -> str:
    record = logging.LogRecord(
        "learnops.stage", logging.ERROR, __file__, 1, "internal_error stage=crl", (), None
    )
    record.exc_info = (type(error), error, error.__traceback__)
    handler = logging.Handler()
    handler.setFormatter(formatter)
    handler.addFilter(ValueFreeTracebacks())
    assert handler.filter(record)
    return handler.format(record)


def test_a_logged_traceback_keeps_frames_and_types_but_not_the_message() -> None:
    try:
        try:
            int(SECRET)
        except ValueError as inner:
            raise RuntimeError(f"could not read {SECRET}") from inner
    except RuntimeError as outer:
        error = outer
    for formatter in (logging.Formatter(), JsonFormatter()):
        line = _logged_line(formatter, error)
        assert SECRET not in line
        assert "ValueError" in line and "RuntimeError" in line
        assert "direct cause" in line
        assert "test_logs.py" in line


def test_a_logged_validation_error_names_the_rule_and_field_not_the_value() -> None:
    with pytest.raises(ValidationError) as caught:
        RunCompleted.model_validate({"doer": "PRDWriter", "run_id": 5, "phase": [SECRET]})
    line = _logged_line(logging.Formatter(), caught.value)
    assert SECRET not in line
    assert "ValidationError: " in line
    assert "phase: must be text, not an array" in line


def test_describe_exception_keeps_only_the_type_and_sqlstate() -> None:
    class FakePostgresError(Exception):
        sqlstate = "22P02"

    assert describe_exception(_raised(ValueError(SECRET))) == "ValueError"
    assert describe_exception(FakePostgresError(f'invalid input: "{SECRET}"')) == (
        "FakePostgresError (SQLSTATE 22P02)"
    )


def test_a_repeated_kafka_client_error_passes_once_a_while_with_a_count() -> None:
    """An outage made aiokafka log the same error ~75 times a second; other lines pass."""
    from agents.logs import RepeatsOnceAWhile

    now = [0.0]
    repeats = RepeatsOnceAWhile(every_s=30.0, clock=lambda: now[0])

    def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, args, None)

    unable = "Unable connect to node with id %s: %s"
    passed = [repeats.filter(record("aiokafka.client", unable, 1, f"try {i}")) for i in range(100)]
    assert passed == [True] + [False] * 99
    assert repeats.filter(record("aiokafka.client", "Unable to update metadata from %s", [1]))
    assert repeats.filter(record("learnops.crl", "dead_letter stage=crl"))  # not the client's
    assert repeats.filter(record("aiokafka.conn", "connected", level=logging.INFO))
    now[0] = 31.0
    later = record("aiokafka.client", unable, 1, "try 100")
    assert repeats.filter(later)
    assert later.getMessage() == (
        "Unable connect to node with id 1: try 100 (and 99 more like it in 30s, left out)"
    )
    assert not repeats.filter(record("aiokafka.client", unable, 1, "try 101"))


def test_asyncpgs_pool_floor_retries_pass_once_a_while_without_their_traceback() -> None:
    """While PostgreSQL was away each reconnect of the pool's floor logged a full traceback."""
    from agents.logs import RepeatsOnceAWhile

    now = [0.0]
    repeats = RepeatsOnceAWhile(every_s=30.0, clock=lambda: now[0])
    floor = "Failed to restore the pool connection floor; retrying"

    def retry() -> logging.LogRecord:
        try:
            raise ConnectionRefusedError(111, f"Connect call failed {SECRET}")
        except ConnectionRefusedError as refused:
            info = (type(refused), refused, refused.__traceback__)
        return logging.LogRecord("asyncpg.pool", logging.WARNING, __file__, 1, floor, (), info)

    first = retry()
    assert repeats.filter(first)
    assert first.getMessage() == f"{floor} (ConnectionRefusedError)"
    assert first.exc_info is None and SECRET not in logging.Formatter().format(first)
    assert [repeats.filter(retry()) for _ in range(3)] == [False] * 3
    now[0] = 31.0
    later = retry()
    assert repeats.filter(later)
    assert later.getMessage().endswith("(and 3 more like it in 30s, left out)")


def test_a_fresh_clusters_coordinator_lookup_is_info_and_other_lookup_errors_stay_errors() -> None:
    """A new operator's first worker logged [ERROR] … GroupCoordinatorNotAvailableError."""
    from aiokafka.errors import CoordinatorNotAvailableError, GroupAuthorizationFailedError

    from agents.logs import RepeatsOnceAWhile

    repeats = RepeatsOnceAWhile()
    name, lookup = "aiokafka.consumer.group_coordinator", "Group Coordinator Request failed: %s"

    def record(error: Exception) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, lookup, (error,), None)

    starting = record(CoordinatorNotAvailableError())
    assert repeats.filter(starting) and starting.levelno == logging.INFO
    assert starting.levelname == "INFO" and "still starting" in starting.getMessage()
    refused = record(GroupAuthorizationFailedError())
    assert repeats.filter(refused) and refused.levelno == logging.ERROR


def test_the_repeats_filter_sits_on_the_kafka_loggers_so_every_handler_prints_one_line() -> None:
    """On the handlers, each handler's own filter counted (and rewrote) the shared record."""
    import io

    from agents.logs import RepeatsOnceAWhile, quiet_repeats

    quiet_repeats()
    client = logging.getLogger("aiokafka")  # aiokafka.client logs under "aiokafka"
    assert sum(isinstance(f, RepeatsOnceAWhile) for f in client.filters) == 1
    shared = next(f for f in client.filters if isinstance(f, RepeatsOnceAWhile))
    assert shared in logging.getLogger("aiokafka.conn").filters
    streams = [io.StringIO(), io.StringIO()]
    handlers = [logging.StreamHandler(stream) for stream in streams]
    for handler in handlers:
        client.addHandler(handler)
    level = client.level  # a CLI test in this process may have quieted the client's logs
    client.setLevel(logging.NOTSET)
    try:
        for _ in range(5):
            client.error("Unable to update metadata from %s (test %s)", [1], id(streams))
    finally:
        client.setLevel(level)
        for handler in handlers:
            client.removeHandler(handler)
    assert [s.getvalue().count("Unable to update metadata") for s in streams] == [1, 1]


def test_mode_s_overlap_warning_is_left_out_for_sub_second_timers_only() -> None:
    from mode.timers import Timer

    from agents.logs import quiet_fast_timers

    quiet_fast_timers()
    quiet_fast_timers()  # once
    logger = logging.getLogger("mode.timers")
    assert len([f for f in logger.filters if type(f).__name__ == "FastTimerOverlaps"]) == 1
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logger.addHandler(keep)
    try:
        for interval in (0.125, 5.0):
            times = iter([0.0, 10.0, 10.0, 20.0, 20.0])  # each tick ran 10 s
            timer = Timer(interval, name=f"t{interval}", clock=times.__next__)
            timer.tick()
            timer.on_before_yield()
            timer.tick()
    finally:
        logger.removeHandler(keep)
    overlaps = [r.getMessage() for r in seen if "is overlapping" in r.getMessage()]
    assert len(overlaps) == 1 and "Timer t5.0 is overlapping" in overlaps[0], overlaps
