"""What was published against what was stored and counted: losses and double counts, exactly.

Sources of truth, read after a run has settled:

* PostgreSQL: ``crl_results`` (one row per run), ``learning_progress`` (runs per
  doer and day, kept by a trigger), ``deployment_routings`` and
  ``deployment_decisions``, ``policy_promotions``;
* the Faust tables, read from their changelog topics (the last record per key
  wins; windowed keys are ``[key, [start, end]]``): ``crl-daily-doer``,
  ``crl-daily-phase``, ``crl-daily-policy`` and ``canary-deployments``;
* ``learning.dlq``: dead letters, each naming its source topic, partition and offset;
* the consumer group's committed offsets against the end of each input partition.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from agents.tables import HISTORY_DAYS
from learning.canary import ArmStats
from learning.samples import is_live, with_content
from learning.trends import DailyCRL
from models.bandit import BanditAllocations
from models.events import DeadLetter, RunCompleted
from models.ids import experiment_event_id, sample_id

#: Topics a worker consumes with its group (its own outputs included).
CONSUMED_TOPICS = (
    "learning.run-completed",
    "learning.task-routed",
    "learning.crl-computed",
    "learning.commands",
    "learning.decisions",
    "learning.samples",
    "learning.alerts",
    "learning.policy-changes",
    "learning.bandit-controls",
    "learning.bandit-allocations",
    "learning.dlq",
)


@dataclass
class Row:
    """One line of the report: a store or an aggregate, and what went wrong in it."""

    check: str
    published: int | str = "-"
    stored: int | str = "-"
    lost: int = 0
    duplicated: int = 0
    over: int = 0
    under: int = 0
    dead_letters: int | str = "-"
    detail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.over or self.under)


@dataclass
class Report:
    """Every check of a fault run, and the recovery times it measured."""

    title: str
    rows: list[Row] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def fail(self, message: str) -> None:
        """A failed check that is not a count (a crash loop, an offset left behind)."""
        self.failures.append(message)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and not self.failures

    def render(self) -> str:
        """The report as a fixed-width table, then recovery times, notes and failures."""
        head = ("check", "published", "stored", "lost", "dup", "over", "under", "DLQ")
        lines = [f"== {self.title}"]
        table = [head] + [
            (
                r.check,
                str(r.published),
                str(r.stored),
                str(r.lost),
                str(r.duplicated),
                str(r.over),
                str(r.under),
                str(r.dead_letters),
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        for i, row in enumerate(table):
            lines.append(
                "  ".join(
                    cell.ljust(w) if j == 0 else cell.rjust(w)
                    for j, (cell, w) in enumerate(zip(row, widths, strict=True))
                )
            )
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        if self.recovery_s:
            ordered = sorted(self.recovery_s)
            lines.append(
                f"recovery: n={len(ordered)} median={ordered[len(ordered) // 2]:.1f}s "
                f"max={ordered[-1]:.1f}s min={ordered[0]:.1f}s"
            )
        lines += [f"note: {n}" for n in self.notes]
        for r in self.rows:
            lines += [f"  {r.check}: {d}" for d in r.detail[:20]]
        lines += [f"FAILED: {f}" for f in self.failures]
        lines.append("RESULT: " + ("OK (0 lost, 0 double-counted)" if self.ok else "FAILED"))
        return "\n".join(lines)


# --- reading Kafka ----------------------------------------------------------------


async def read_topic(bootstrap: str, topic: str, *, timeout: float = 120.0) -> list[Any]:
    """Every record now in ``topic``, from the beginning; an error if it cannot all be read."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        for _ in range(50):
            if partitions:
                break
            await consumer._client.force_metadata_update()
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: read {len(records)} records in {timeout}s, not all")
            for batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                records.extend(
                    r for r in batch if r.offset < ends[TopicPartition(topic, r.partition)]
                )
    finally:
        await consumer.stop()


async def table_state(bootstrap: str, app_id: str, table: str) -> dict[Any, Any]:
    """A Faust table's contents from its changelog: the last value per key (JSON decoded)."""
    state: dict[Any, Any] = {}
    for record in await read_topic(bootstrap, f"{app_id}-{table}-changelog"):
        key = json.loads(record.key)
        if isinstance(key, list):  # windowed: [key, [start, end]]
            key = (key[0], datetime.fromtimestamp(key[1][0], UTC).date())
        if record.value is None:
            state.pop(key, None)
        else:
            state[key] = json.loads(record.value)
    return state


async def committed_behind(bootstrap: str, group: str) -> dict[str, int]:
    """Per partition the group consumes, how far its committed offset is from the end (non-zero).

    A partition with records and no commit at all counts from its first offset.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [
            TopicPartition(topic, p)
            for topic in CONSUMED_TOPICS
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
    unknown = sorted({tp.topic for tp in committed} - set(CONSUMED_TOPICS))
    if unknown:
        # A stage reads a topic this list lacks: the run would neither start its
        # group after that topic's history nor check its commits.
        raise AssertionError(f"group {group} commits {unknown}; add them to CONSUMED_TOPICS")
    behind = {}
    for tp in tps:
        at = committed[tp].offset if tp in committed else starts[tp]
        if ends[tp] != at:
            behind[f"{tp.topic}#{tp.partition}"] = ends[tp] - at
    return behind


async def caught_up(bootstrap: str, group: str, *, timeout: float = 300.0) -> float:
    """Wait until the group has committed every partition it consumes to the end; seconds taken."""
    started = time.monotonic()
    behind = await committed_behind(bootstrap, group)
    while behind:
        if time.monotonic() - started > timeout:
            raise TimeoutError(
                f"consumer group {group} still behind after {timeout:.0f}s: {behind}"
            )
        await asyncio.sleep(1.0)
        behind = await committed_behind(bootstrap, group)
    return time.monotonic() - started


async def dead_letters(bootstrap: str, app_id: str) -> list[DeadLetter]:
    """The dead letters this consumer group's stages wrote."""
    letters = [
        DeadLetter.model_validate_json(r.value) for r in await read_topic(bootstrap, "learning.dlq")
    ]
    return [d for d in letters if d.consumer == app_id]


# --- checks -----------------------------------------------------------------------


def _day(at: datetime) -> date:
    return at.astimezone(UTC).date()


async def crl_rows(pool: Any, doers: Iterable[str]) -> list[Any]:
    """This run's crl_results rows."""
    return list(
        await pool.fetch(
            "SELECT run_id, doer, phase, policy_id, policy_version, occurred_at, replay_id, "
            "shadow, deployment_id, arm FROM crl_results WHERE doer = ANY($1::text[])",
            list(doers),
        )
    )


def check_runs(
    report: Report, runs: dict[str, RunCompleted], rows: list[Any], dlq: int = 0
) -> None:
    """crl_results holds each published run once, and nothing else."""
    _once_each(report, "crl_results", "run", set(runs), [r["run_id"] for r in rows], dlq=dlq)


def _once_each(
    report: Report,
    check: str,
    what: str,
    expected: set[str],
    stored: list[str],
    *,
    dlq: int | str = "-",
) -> None:
    """A row of ``check``: every expected key stored once, and no other key."""
    found = Counter(stored)
    lost = sorted(expected - set(found))
    unexpected = sorted(set(found) - expected)
    twice = sorted(k for k, n in found.items() if n > 1)
    row = report.add(
        Row(
            check,
            published=len(expected),
            stored=len(stored),
            lost=len(lost),
            duplicated=len(twice) + len(unexpected),
            dead_letters=dlq,
        )
    )
    row.detail += [f"lost {what} {k}" for k in lost] + [
        f"unexpected {what} {k}" for k in unexpected
    ]


async def sample_ids(pool: Any, doers: Iterable[str]) -> list[str]:
    """This run's dataset_samples rows, by sample id."""
    rows = await pool.fetch(
        "SELECT sample_id FROM dataset_samples WHERE doer = ANY($1::text[])", list(doers)
    )
    return [r["sample_id"] for r in rows]


def check_samples(report: Report, runs: dict[str, RunCompleted], stored: list[str]) -> None:
    """dataset_samples holds one curated sample per artifact with content of each live run.

    The curator's verdict rows and the datasets stage's inserts are keyed by
    sample id, so a run curated twice shows as nothing more here; what this
    catches is a bundle a kill made the curator skip, or a sample not stored.
    """
    expected = {
        sample_id(run.tenant_id, run.doer, run.run_id, artifact.artifact_id)
        for run in runs.values()
        if is_live(run)
        for artifact in with_content(run)
    }
    _once_each(report, "dataset_samples", "sample", expected, stored)


def _compare(row: Row, expected: Counter[Any], found: dict[Any, int]) -> None:
    for key in sorted(set(expected) | set(found), key=str):
        want, got = expected.get(key, 0), found.get(key, 0)
        if got > want:
            row.over += 1
            row.detail.append(f"{key}: counted {got}, stored {want} (+{got - want})")
        elif got < want:
            row.under += 1
            row.detail.append(f"{key}: counted {got}, stored {want} ({got - want})")


def _kept_from() -> date:
    """The oldest day the daily Faust tables surely still keep."""
    return datetime.now(UTC).date() - timedelta(days=HISTORY_DAYS - 1)


def live_counts(rows: list[Any], *, kept_only: bool = False) -> dict[str, Counter[Any]]:
    """Live runs (no replay, no shadow) per aggregate key, as the CRL stage keys its tables.

    ``kept_only``: days the Faust tables no longer keep are left out (Faust expires a
    day's window by the wall clock once it is ``HISTORY_DAYS`` old; an upgrade trial's
    bandit demo runs dated five weeks back counted 500 of 1,200), a day's margin included.
    """
    counts: dict[str, Counter[Any]] = {
        "crl-daily-doer": Counter(),
        "crl-daily-phase": Counter(),
        "crl-daily-policy": Counter(),
    }
    kept_from = _kept_from()
    for r in rows:
        if r["replay_id"] is not None or r["shadow"]:
            continue
        day = _day(r["occurred_at"])
        if kept_only and day < kept_from:
            continue
        counts["crl-daily-doer"][(r["doer"], day)] += 1
        counts["crl-daily-phase"][(f"{r['doer']}/{r['phase']}", day)] += 1
        counts["crl-daily-policy"][
            (f"{r['doer']}/{r['policy_id']}@{r['policy_version']}", day)
        ] += 1
    return counts


async def check_aggregates(
    report: Report, pool: Any, bootstrap: str, app_id: str, rows: list[Any], doers: set[str]
) -> None:
    """learning_progress and the three daily Faust aggregates count every stored live run once."""
    expected = live_counts(rows)
    progress = await pool.fetch(
        "SELECT doer, day, runs FROM learning_progress WHERE doer = ANY($1::text[])", list(doers)
    )
    row = report.add(Row("learning_progress", published=sum(expected["crl-daily-doer"].values())))
    found = {(p["doer"], p["day"]): int(p["runs"]) for p in progress}
    row.stored = sum(found.values())
    _compare(row, expected["crl-daily-doer"], found)
    for table, want in live_counts(rows, kept_only=True).items():
        state = await table_state(bootstrap, app_id, table)
        counted = {
            key: DailyCRL.from_dict(value).count
            for key, value in state.items()
            if isinstance(key, tuple)
            and str(key[0]).split("/", 1)[0] in doers
            and not (isinstance(key[1], date) and key[1] < _kept_from())
        }
        row = report.add(Row(f"faust {table}", published=sum(want.values())))
        row.stored = sum(counted.values())
        _compare(row, want, counted)


async def check_bandit(
    report: Report,
    bootstrap: str,
    pool: Any,
    app_id: str,
    published: Mapping[str, RunCompleted],
    rows: list[Any],
    doer: str | None,
) -> None:
    """The bandit doer's book counts each stored live run once, under the option it named.

    The book (one Faust table value per doer, with its source mark) keeps each
    option's run count across change restarts and reallocations, so it must
    equal the stored runs naming that option: a run folded twice after a kill
    shows as over, one never folded as under.
    """
    if doer is None:
        return
    expected: Counter[Any] = Counter()
    for r in rows:
        if r["doer"] != doer or r["replay_id"] is not None or r["shadow"]:
            continue
        run = published.get(r["run_id"])
        if run is not None and run.options:
            for parameter, option in run.options.items():
                expected[(f"{r['phase']}/{parameter}", option)] += 1
    book = (await table_state(bootstrap, app_id, "bandit-books")).get(doer) or {}
    counted: dict[Any, int] = {}
    for key, bandit in (book.get("bandits") or {}).items():
        for option, stats in bandit["state"]["options"].items():
            counted[(key, option)] = int(stats["runs"])
    row = report.add(Row("faust bandit-books", published=sum(expected.values())))
    row.stored = sum(counted.values())
    _compare(row, expected, counted)
    await _check_bandit_rows(report, bootstrap, pool, doer)


async def _check_bandit_rows(report: Report, bootstrap: str, pool: Any, doer: str) -> None:
    """Each allocation record sent for the doer is one row of bandit_allocations, and no more.

    The stage stores a record before it sends it, and a record sent again after a
    kill is the same row: a row missing is lost, a row never sent is over.
    Compaction may have removed records older than the oldest left on the topic.
    """
    sent = {
        (record.sequence, record.frozen)
        for record in (
            BanditAllocations.model_validate_json(r.value)
            for r in await read_topic(bootstrap, "learning.bandit-allocations")
            if r.key == doer.encode()
        )
    }
    stored = {
        (r["sequence"], r["frozen"])
        for r in await pool.fetch(
            "SELECT sequence, frozen FROM bandit_allocations WHERE doer = $1", doer
        )
    }
    oldest = min((sequence for sequence, _ in sent), default=0)
    row = report.add(Row("postgres bandit_allocations", published=len(sent), stored=len(stored)))
    row.lost = len(sent - stored)
    row.over = len({s for s in stored - sent if s[0] >= oldest})
    if row.lost or row.over:
        row.detail.append(f"sent not stored {sorted(sent - stored)[:5]}")
        row.detail.append(f"stored not sent {sorted(stored - sent)[:5]}")


#: Where an experiment rests once the fault traffic's steps are all taken: failed at its
#: replay (or refused by the policy store), or following its candidate's shadow.
EXPERIMENT_ENDS = ("failed", "shadow", "canary", "promoted", "rolled_back")


async def experiment_rows(pool: Any, ids: Iterable[str]) -> list[Any]:
    """The experiments' rows with their last history seq and their deployment's audit rows."""
    return list(
        await pool.fetch(
            """
            SELECT e.experiment_id, e.status, e.published_seq, e.deploy_command_id,
                   e.deploy_sent_at,
                   (SELECT max(h.seq) FROM experiment_history AS h
                    WHERE h.experiment_id = e.experiment_id) AS last_seq,
                   (SELECT count(*) FROM policy_promotions AS p
                    WHERE p.event_id = e.deploy_command_id) AS deploy_outcomes
            FROM experiments AS e WHERE e.experiment_id = ANY($1::text[])
            """,
            list(ids),
        )
    )


def experiments_settled(rows: list[Any], expected: int) -> bool:
    """Every experiment created, at rest, and its transitions acknowledged by the broker."""
    return len(rows) == expected and all(
        r["status"] in EXPERIMENT_ENDS and r["published_seq"] == r["last_seq"] for r in rows
    )


async def check_experiments(
    report: Report, pool: Any, bootstrap: str, published: Mapping[str, Any]
) -> None:
    """Each published experiment created once and at rest; every transition on the topic.

    An experiment's transitions are recorded in ``experiment_history`` and each is
    published on learning.experiments under an id derived from (experiment, seq):
    one missing from the topic is lost (a kill between the record and the send
    that nothing sent again); one sent twice carries the same id, which a
    consumer drops, and is noted, not failed. An experiment left replaying (a
    deployment command recorded and never sent again, a replay never judged) is
    under. One whose recorded command never reached the policy store may have
    moved on with its candidate, deployed by another experiment's command
    (a kill between recording it and sending it; noted).
    """
    if not published:
        return
    rows = await experiment_rows(pool, published)
    row = report.add(Row("experiments", published=len(published), stored=len(rows)))
    row.lost = len(set(published) - {r["experiment_id"] for r in rows})
    sent: Counter[str] = Counter()
    for record in await read_topic(bootstrap, "learning.experiments"):
        change = json.loads(record.value)
        if change.get("experiment_id") in published:
            sent[str(change["event_id"])] += 1
    expected = {
        str(experiment_event_id("experiment", r["experiment_id"], seq))
        for r in rows
        for seq in range(int(r["last_seq"]) + 1)
    }
    missing = expected - set(sent)
    topic = report.add(
        Row("learning.experiments", published=len(expected), stored=sum(sent.values()))
    )
    topic.lost = len(missing)
    topic.detail += [f"transition {m} never published" for m in sorted(missing)[:5]]
    again = sum(n - 1 for n in sent.values() if n > 1)
    if again:
        report.notes.append(f"{again} experiment transitions sent again (same event ids)")
    for r in rows:
        if r["status"] not in EXPERIMENT_ENDS:
            row.under += 1
            row.detail.append(f"{r['experiment_id']} left {r['status']}")
        if r["deploy_command_id"] is not None and r["deploy_outcomes"] != 1:
            report.notes.append(
                f"{r['experiment_id']} is {r['status']}; its own deployment command was "
                "never applied or refused (its candidate was deployed by another's)"
            )
    ends = Counter(r["status"] for r in rows)
    report.notes.append(
        "experiments: " + ", ".join(f"{n} {status}" for status, n in sorted(ends.items()))
    )


async def check_canary(
    report: Report,
    pool: Any,
    bootstrap: str,
    app_id: str,
    patient: Any | None,
    published_routings: dict[str, Any],
    doers: set[str],
) -> None:
    """Routings stored once each; the patient canary's arm counts equal its stored runs per arm;
    no deployment stepped up, promoted or rolled back twice."""
    routings = await pool.fetch(
        "SELECT event_id::text AS event_id, task_id, deployment_id, arm FROM deployment_routings "
        "WHERE doer = ANY($1::text[])",
        list(doers),
    )
    stored_ids = Counter(r["event_id"] for r in routings)
    tasks = Counter((r["deployment_id"], r["task_id"]) for r in routings)
    lost = set(published_routings) - set(stored_ids)
    row = report.add(
        Row(
            "deployment_routings",
            published=len(published_routings),
            stored=len(routings),
            lost=len(lost),
            duplicated=sum(n - 1 for n in tasks.values() if n > 1)
            + len(set(stored_ids) - set(published_routings)),
        )
    )
    row.detail += [f"lost routing {e}" for e in sorted(lost)]
    if patient is not None and patient.deployment_id:
        states = await table_state(bootstrap, app_id, "canary-deployments")
        state = states.get(f"{patient.doer}/{patient.deployment_id}") or {}
        counted = {arm: ArmStats.from_dict(s).count for arm, s in (state.get("arms") or {}).items()}
        per_arm = Counter(r["arm"] for r in routings if r["deployment_id"] == patient.deployment_id)
        runs = await pool.fetch(
            "SELECT arm, count(*) AS n FROM crl_results WHERE deployment_id = $1 AND NOT shadow "
            "GROUP BY arm",
            patient.deployment_id,
        )
        stored_runs = {r["arm"]: int(r["n"]) for r in runs}
        row = report.add(
            Row(
                "canary arms (patient)",
                published=sum(per_arm.values()),
                stored=sum(counted.values()),
            )
        )
        _compare(row, Counter(per_arm), counted)
        # Routed tasks of the current step (the SRM and missing-data guards read them).
        routed = {arm: int(n) for arm, n in (state.get("routed") or {}).items() if n}
        row = report.add(
            Row(
                "canary routed (patient)",
                published=sum(per_arm.values()),
                stored=sum(routed.values()),
            )
        )
        _compare(row, Counter(per_arm), routed)
        if stored_runs != dict(per_arm):
            row.detail.append(
                f"runs stored per arm {stored_runs} != routings per arm {dict(per_arm)}"
            )
    decisions = await pool.fetch(
        "SELECT deployment_id, action, step, count(*) AS n FROM deployment_decisions "
        "WHERE doer = ANY($1::text[]) AND action IN ('step_up', 'promote', 'rollback', 'pause') "
        "GROUP BY 1, 2, 3",
        list(doers),
    )
    promotions = await pool.fetch(
        "SELECT deployment_id, action, count(*) AS n FROM policy_promotions "
        "WHERE doer = ANY($1::text[]) AND source = 'decision' GROUP BY 1, 2",
        list(doers),
    )
    final_per_deployment = Counter(
        r["deployment_id"]
        for r in decisions
        for _ in range(int(r["n"]))
        if r["action"] in ("promote", "rollback")
    )
    row = report.add(
        Row(
            "decisions/promotions",
            published="-",
            stored=sum(int(r["n"]) for r in decisions),
            duplicated=sum(int(r["n"]) - 1 for r in decisions if r["n"] > 1)
            + sum(n - 1 for n in final_per_deployment.values() if n > 1)
            + sum(int(r["n"]) - 1 for r in promotions if r["n"] > 1),
        )
    )
    row.detail += [
        f"{r['deployment_id']} {r['action']} step {r['step']} decided {r['n']} times"
        for r in decisions
        if r["n"] > 1
    ] + [
        f"{r['deployment_id']} {r['action']} applied {r['n']} times"
        for r in promotions
        if r["n"] > 1
    ]
    reasons = await pool.fetch(
        "SELECT doer, action, step, reason FROM deployment_decisions "
        "WHERE doer = ANY($1::text[]) AND action <> 'report' ORDER BY decided_at",
        list(doers),
    )
    report.notes += [f"{r['doer']} {r['action']}@{r['step']}: {r['reason']}" for r in reasons]
    report.notes.append(
        "decisions: "
        + ", ".join(
            f"{r['action']}@{r['step']}" for r in sorted(decisions, key=lambda r: r["action"])
        )
        + "; promotions by decision: "
        + ", ".join(f"{r['action']}x{r['n']}" for r in promotions)
    )


async def check_offsets(report: Report, bootstrap: str, app_id: str) -> None:
    """Every partition the group consumes has its committed offset at the end."""
    behind = await committed_behind(bootstrap, app_id)
    if behind:
        report.fail(f"committed offsets behind the end: {behind}")


async def settle(
    probe: Any,
    *,
    quiet_s: float = 8.0,
    timeout: float = 300.0,
    interval: float = 1.0,
    until: Any = None,
) -> Any:
    """Wait until ``until(value)`` holds, or ``await probe()`` has not changed for ``quiet_s``,
    or ``timeout``; the last value."""
    deadline = time.monotonic() + timeout
    last = await probe()
    since = time.monotonic()
    while time.monotonic() < deadline and not (until and until(last)):
        await asyncio.sleep(interval)
        value = await probe()
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return last
    return last


def check_logs(report: Report, text: str) -> None:
    """No stage halted and no agent crashed (Faust restarts a crashed agent past its batch)."""
    halted = text.count("stage_halted")
    crashed = sum(1 for line in text.splitlines() if "crashed" in line.lower() and "Agent" in line)
    internal = text.count("internal_error stage=")
    app_crashed = text.count("Crashed reason=")
    if app_crashed:
        report.fail(f"{app_crashed} app crash lines (Crashed reason=) in the worker logs")
    if halted:
        report.fail(f"{halted} stage_halted lines in the worker logs")
    if crashed:
        report.fail(f"{crashed} agent crash lines in the worker logs")
    if internal:
        report.notes.append(f"{internal} internal_error lines in the worker logs")
    # Gaps the offset guard judged (records it counts as absent) and partitions it
    # sought back: expected around restarts and compacted topics, telling otherwise.
    gaps = [line for line in text.splitlines() if "offset_gap " in line]
    refetches = text.count("refetch topic=")
    if gaps or refetches:
        shown = "; ".join(line.split("offset_gap ", 1)[1].strip() for line in gaps[:5])
        report.notes.append(f"{len(gaps)} offset gaps ({shown}), {refetches} refetches")


def _stamp(line: str) -> datetime | None:
    try:
        return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
    except ValueError:
        return None


def startup_times(logs: Iterable[Any]) -> list[tuple[float, float]]:
    """Per worker log that reached Ready: (seconds from its first line to Ready, of which
    seconds reading the changelogs), from Faust's own log lines."""
    found = []
    for path in logs:
        first = restoring = restored = ready = None
        for line in path.read_text(errors="replace").splitlines():
            at = _stamp(line)
            if at is None:
                continue
            first = first or at
            if "Restoring state from changelog topics" in line:
                restoring = at
            elif "Done reading from changelog topics" in line:
                restored = at
            elif "[^Worker]: Ready" in line:
                ready = at
                break
        if first and ready:
            restore = (restored - restoring).total_seconds() if restoring and restored else 0.0
            found.append(((ready - first).total_seconds(), restore))
    return found


def describe_startups(report: Report, logs: Iterable[Any]) -> None:
    """A note: how long the workers took from their first log line to Ready, and the restore."""
    times = startup_times(logs)
    if not times:
        return
    ready = sorted(t for t, _ in times)
    restore = sorted(r for _, r in times)
    report.notes.append(
        f"worker start (first log line) to Ready: median {ready[len(ready) // 2]:.1f}s, "
        f"max {ready[-1]:.1f}s; of which reading the changelogs: median "
        f"{restore[len(restore) // 2]:.1f}s, max {restore[-1]:.1f}s ({len(times)} starts)"
    )
