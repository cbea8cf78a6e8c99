"""agents.logs: JSON log lines carry the key=value fields of the project's log lines."""

from __future__ import annotations

import logging

import orjson

from agents.logs import JsonFormatter, fields_of


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
