"""The CRL stage: learning.run-completed → the run's loss, daily aggregates, regression alerts.

Decode → score (learning.crl) → fold into the daily tables (learning.trends) →
emit learning.crl-computed, and learning.alerts when a doer's day regresses.
Replay and shadow runs are scored and emitted like any run but never folded
into the live aggregates.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from agents.app import app
from agents.codecs import decode
from agents.dlq import dead_letter, guarded
from learning.crl import BundleError, score_bundle
from learning.trends import DailyCRL, check_regression, day_of, days_back
from models.events import Alert, CRLComputed, RunCompleted

log = logging.getLogger("learnops.crl")

run_completed = app.topic("learning.run-completed", key_type=bytes, value_type=bytes)
crl_computed = app.topic("learning.crl-computed", key_type=bytes, value_type=bytes)
alerts = app.topic("learning.alerts", key_type=bytes, value_type=bytes)

DAY = timedelta(days=1)
HISTORY_DAYS = 30


def _daily_table(name: str, help_: str) -> Any:
    # One DailyCRL (Moments + quantile sketch) per key and UTC day, kept 30 days;
    # with no key or value type, Faust serialises keys and values as JSON.
    return app.Table(
        name,
        default=dict,
        partitions=app.catalog.partitions,
        help=help_,
    ).tumbling(DAY, expires=timedelta(days=HISTORY_DAYS))


by_doer = _daily_table("crl-daily-doer", "Daily CRL per doer")
by_phase = _daily_table("crl-daily-phase", "Daily CRL per doer and phase")
by_policy = _daily_table("crl-daily-policy", "Daily CRL per doer and policy version")
# Runs already folded, by run id, over the same 30-day horizon as the aggregates:
# a redelivered bundle must not be counted twice (older duplicates would only
# touch expired days anyway).
folded: Any = app.Table(
    "crl-folded-runs",
    default=bool,
    partitions=app.catalog.partitions,
    help="Run ids already folded into the daily aggregates",
).tumbling(DAY, expires=timedelta(days=HISTORY_DAYS))
# Which doer-days have already raised a regression alert (one alert per doer and day).
alerted = app.Table(
    "crl-alerted",
    default=bool,
    partitions=app.catalog.partitions,
)


def _day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def fold(table: Any, key: str, result: CRLComputed) -> None:
    """Add the result's loss to the key's aggregate for the run's day."""
    at = table.relative_to(result.run_occurred_at)
    current = at[key].value()
    daily = DailyCRL.from_dict(current) if current else DailyCRL()
    daily.add(result.loss)
    at[key] = daily.to_dict()


def history(table: Any, key: str, today: date) -> dict[date, DailyCRL]:
    """The key's daily aggregates for the 30 days ending today (days with data only)."""
    days: dict[date, DailyCRL] = {}
    for day in days_back(today, HISTORY_DAYS):
        value = table.relative_to(_day_start(day))[key].value()
        if value:
            days[day] = DailyCRL.from_dict(value)
    return days


def counts_toward_live(result: CRLComputed) -> bool:
    """Replays and shadow runs never move live statistics."""
    return result.replay_id is None and not result.shadow


async def _maybe_alert(result: CRLComputed) -> None:
    today = day_of(result.run_occurred_at)
    flag = f"{result.doer}|{today.isoformat()}"
    if alerted[flag]:
        return
    check = check_regression(history(by_doer, result.doer, today), today, app.learning.trends)
    if not check.regressed:
        return
    alerted[flag] = True
    alert = Alert(
        doer=result.doer,
        kind="crl_regression",
        severity="warning",
        message=check.reason,
        value=check.measured,
        baseline=check.baseline,
        threshold=check.threshold,
        evidence={
            "day": today.isoformat(),
            "today_count": check.today_count,
            "baseline_count": check.baseline_count,
            "baseline_days": app.learning.trends.baseline_days,
        },
    )
    await alerts.send(key=result.doer.encode(), value=alert.to_json())
    log.warning(
        "crl_regression doer=%s day=%s measured=%.4f baseline=%.4f threshold=%.4f",
        result.doer,
        today,
        check.measured,
        check.baseline,
        check.threshold,
    )


@app.agent(run_completed, name="crl")
async def crl(stream: Any) -> None:
    """Decode → score → fold into the daily tables → emit; bad input to the DLQ."""
    async for event in stream.events():
        async with guarded(event, stage="crl"):
            await _score(event)


async def _score(event: Any) -> None:
    config = app.learning
    bundle = await decode(event, RunCompleted, stage="crl")
    if bundle is None:
        return
    try:
        result = score_bundle(bundle, config.weights, config.objectives)
    except BundleError as exc:
        await dead_letter(
            event, stage="crl", error_type="bundle", reason=exc.reason, doer=bundle.doer
        )
        return
    seen = folded.relative_to(result.run_occurred_at)
    if counts_toward_live(result) and not seen[result.run_id].value():
        seen[result.run_id] = True
        fold(by_doer, result.doer, result)
        fold(by_phase, f"{result.doer}/{result.phase}", result)
        fold(by_policy, f"{result.doer}/{result.policy_id}@{result.policy_version}", result)
        await _maybe_alert(result)
    # Emitted for duplicates too: downstream writes are idempotent by run id,
    # and a crash between the table writes and this send must not lose it.
    await crl_computed.send(key=result.doer.encode(), value=result.to_json())
