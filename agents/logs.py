"""Structured logs: ``LEARNOPS_LOG_FORMAT=json`` prints one JSON object per line.

The project's log lines are ``event key=value key=value …`` (``dead_letter
stage=crl topic=… partition=3 offset=1200 …``); in JSON each pair becomes a
field, so a log pipeline can filter on stage, topic, partition and offset
without parsing text. Values stay strings: a line is never dropped for a value
that does not parse. Lines of other libraries (Faust, aiokafka) keep their text
in ``message``.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson

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
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document).decode()


def use_json_logs() -> None:
    """Give every handler of the root logger the JSON formatter (after Faust set them up)."""
    formatter = JsonFormatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
