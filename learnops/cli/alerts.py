"""`learnops alerts list|show`: the alerts the stages raised, from a terminal.

The alerts stage records every alert of learning.alerts in PostgreSQL
(``alerts``, migration 015): regressions of a doer's CRL, canary rollbacks and
approvals needed, contamination, sample-ratio mismatches, refused signatures
and commands, missing data. The console's live page follows the same table;
these commands answer "what alerted, for whom, since when" without a browser.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import orjson

from learnops.cli.main import (
    GroupedCommand,
    command,
    database,
    event_id_start,
    fail,
    group,
    json_option,
    limit_option,
    listed_note,
    nothing_listed,
    table,
    usage_error,
)
from storage.alerts import AlertRecord, alert_names, find_alerts, list_alerts

SEVERITIES = ("info", "warning", "critical")
_AGO = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@group("Alerts the stages raised (regressions, rollbacks, contamination, refusals): list, show.")
def alerts() -> None:
    pass


def since_time(text: str, now: datetime) -> datetime:
    """``--since``: an age (``90m``, ``12h``, ``7d``, ``2w``) before ``now``, or an ISO time.

    A time without a timezone is read as UTC, the times the table shows.
    """
    ago = _AGO.fullmatch(text.strip().lower())
    if ago:
        try:
            return now - timedelta(**{_UNITS[ago[2]]: int(ago[1])})
        except OverflowError:
            usage_error(f"--since {text!r} reaches before the year 1")
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        usage_error(
            f"--since {text!r} is neither an age (90m, 12h, 7d, 2w) nor an ISO 8601 time "
            "(2026-03-03 or 2026-03-03T14:03:00+00:00)"
        )
    return at if at.utcoffset() is not None else at.replace(tzinfo=UTC)


def _row(alert: AlertRecord) -> dict[str, Any]:
    """The alert's record as JSON-ready values."""
    return {
        **asdict(alert),
        "event_id": str(alert.event_id),
        "occurred_at": alert.occurred_at.isoformat(),
        "recorded_at": alert.recorded_at.isoformat(),
    }


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


@command(
    alerts,
    "list",
    click.option("--doer", help="Only alerts of this doer."),
    click.option("--kind", help="Only alerts of this kind (crl_regression, canary_rollback, …)."),
    click.option("--severity", type=click.Choice(SEVERITIES), help="Only alerts of this severity."),
    click.option("--since", help="Only alerts since then: an age (90m, 12h, 7d) or an ISO time."),
    limit_option(20),
    json_option,
)
async def alerts_list(
    self: GroupedCommand,
    doer: str | None,
    kind: str | None,
    severity: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List alerts, latest first: who, what kind, how severe, the measured value and why."""
    start = since_time(since, datetime.now(UTC)) if since is not None else None
    async with database(self) as pool:
        found = await list_alerts(
            pool, doer=doer, kind=kind, severity=severity, since=start, limit=limit
        )
        empty: tuple[set[str], set[str]] = (set(), set())
        doers, kinds = await alert_names(pool) if not found and (doer or kind) else empty
    if as_json:
        self.say(orjson.dumps([_row(a) for a in found], option=orjson.OPT_INDENT_2).decode())
        return
    if not found:
        filters = (("doer", doer, doers), ("kind", kind, kinds))
        filtered = severity is not None or start is not None or bool(doer or kind)
        self.say(nothing_listed("alerts", filters, filtered))
        return
    from rich.markup import escape

    shown = table("event id", "when", "doer", "kind", "severity", "value", "threshold", "message")
    for a in found:
        message = a.message if len(a.message) <= 160 else a.message[:159] + "…"
        shown.add_row(
            str(a.event_id),
            a.occurred_at.isoformat(timespec="seconds"),
            escape(a.doer),
            escape(a.kind),
            a.severity,
            _figure(a.value),
            _figure(a.threshold),
            escape(message),  # free text: "[…]" would read as markup
        )
    self.console().print(shown)
    hint = "`learnops alerts show ID` shows an alert whole, with its evidence."
    self.say(listed_note(len(found), limit, hint))


@command(alerts, "show", click.argument("event_id"), json_option)
async def alerts_show(self: GroupedCommand, event_id: str, as_json: bool) -> None:
    """Show an alert (its event id, or the start of it) whole, with its evidence."""
    event_id = event_id_start(event_id, "alert")
    async with database(self) as pool:
        found = await find_alerts(pool, event_id)
    if not found:
        fail(
            f"no alert with event id {event_id!r} (`learnops alerts list` shows the latest; an "
            "alert is in the table once the alerts stage of a worker has read it)"
        )
    if len(found) > 1:
        fail(f"{event_id!r} starts more than one alert's event id: give more of it")
    row = _row(found[0])
    if as_json:
        self.say(orjson.dumps(row, option=orjson.OPT_INDENT_2).decode())
        return
    evidence = row.pop("evidence")
    width = max(len(k) for k in row)
    for key, value in row.items():
        if value is not None:
            self.say(f"{key.replace('_', ' '):<{width}}  {value}")
    if evidence:
        self.say("evidence:")
        self.say(orjson.dumps(evidence, option=orjson.OPT_INDENT_2).decode())
