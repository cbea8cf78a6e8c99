"""Experiments, offline replays, their tasks and the content-addressed blobs (006_experiments.sql).

Every write is idempotent: a replay's id and its tasks' ids are functions of
what is replayed (learning.replay), a task's result is taken once per attempt
(by run id), a replay completes once (its row is locked and its status checked),
and an experiment moves only along learning.experiments' lifecycle, each move
appending one history row.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from learning.experiments import OPEN, may_move
from learning.replay import (
    ReplayRule,
    decide_from_losses,
    fold_task_losses,
    replay_id,
    summarize,
    task_id,
)
from learning.signing import canonical_json
from models.base import name_problem
from models.datasets import DEFAULT_TENANT
from models.events import CRLComputed, ExperimentChanged, ReplayTask
from models.ids import experiment_event_id
from storage.skills import close_request

log = logging.getLogger("learnops.experiments")

_LOCK_SPACE = 0x65787072  # "expr": advisory locks on a replay id


class ReplayError(RuntimeError):
    """A replay cannot start: unknown policy, dataset or an empty dataset; the message says why."""


# --------------------------------------------------------------------------- blobs


async def put_blob(conn: Any, content: bytes, media_type: str = "application/json") -> str:
    """Store bytes under their SHA-256 (once); returns the hex digest."""
    digest = hashlib.sha256(content).hexdigest()
    await conn.execute(
        "INSERT INTO blobs (sha256, content, media_type) VALUES ($1, $2, $3) "
        "ON CONFLICT (sha256) DO NOTHING",
        digest,
        content,
        media_type,
    )
    return digest


async def get_blob(pool: Any, digest: str) -> bytes | None:
    """The bytes stored under ``digest``, or None."""
    content = await pool.fetchval("SELECT content FROM blobs WHERE sha256 = $1", digest)
    return bytes(content) if content is not None else None


# --------------------------------------------------------------------------- resolving inputs


@dataclass(frozen=True)
class Golden:
    """A frozen golden dataset version and its samples (id → redacted content)."""

    name: str
    version: int
    dataset: str
    manifest_hash: str
    samples: dict[str, str]
    tenant_id: str = DEFAULT_TENANT  # whose samples: a golden dataset holds one tenant's

    @property
    def phase(self) -> str:
        """The phase of the dataset it was frozen from (``{tenant}/{doer}/{phase}``)."""
        return self.dataset.rsplit("/", 1)[-1]

    @property
    def doer(self) -> str:
        """The doer of the dataset it was frozen from (``{tenant}/{doer}/{phase}``)."""
        parts = self.dataset.split("/")
        return parts[-2] if len(parts) >= 2 else ""

    def mismatch(self, doer: str, phase: str | None = None) -> str | None:
        """Why this golden dataset cannot test ``doer``'s policy (in ``phase``), or None.

        Its samples are another doer's tasks (a replay of them scores nothing this
        doer does, and a replay id names no doer: one doer's results would be read
        as another's), or another phase's.
        """
        named = f"golden dataset {self.name}@{self.version}"
        if self.doer != doer:
            return f"{named} was frozen from {self.dataset}, {self.doer}'s tasks, not {doer}'s"
        if phase is not None and phase != self.phase:
            return f"{named} holds {self.phase} tasks ({self.dataset}), not {phase}"
        return None


async def find_golden(
    pool: Any, name: str | None, version: int | None = None, *, dataset: str | None = None
) -> Golden | None:
    """A golden dataset version (latest unless ``version``), by name or by source dataset.

    ``dataset`` is ``tenant/doer/phase``, or ``doer/phase`` for the latest
    golden dataset of that doer and phase when one tenant has them; a
    ``ValueError`` when several tenants have, rather than pick one of them.
    Naming nothing finds nothing (never the newest golden dataset of anyone).
    """
    if name is None and dataset is None:
        return None
    if dataset is not None and dataset.count("/") == 1:
        tenants = await pool.fetch(
            "SELECT DISTINCT tenant_id FROM golden_datasets"
            " WHERE substr(dataset, strpos(dataset, '/') + 1) = $1 ORDER BY 1",
            dataset,
        )
        if len(tenants) > 1:
            raise ValueError(
                f"golden datasets of {dataset} were frozen for {len(tenants)} tenants; "
                "name one (the experiment's dataset, tenant/doer/phase)"
            )
    row = await pool.fetchrow(
        """
        SELECT name, version, dataset, manifest_hash, tenant_id FROM golden_datasets
        WHERE ($1::text IS NULL OR name = $1) AND ($2::integer IS NULL OR version = $2)
          AND ($3::text IS NULL OR dataset = $3
               OR substr(dataset, strpos(dataset, '/') + 1) = $3)
        ORDER BY frozen_at DESC, version DESC LIMIT 1
        """,
        name,
        version,
        dataset,
    )
    if row is None:
        return None
    samples = await pool.fetch(
        "SELECT sample_id, content FROM golden_dataset_samples "
        "WHERE golden_name = $1 AND golden_version = $2 ORDER BY sample_id",
        row["name"],
        row["version"],
    )
    return Golden(
        name=row["name"],
        version=row["version"],
        dataset=row["dataset"],
        manifest_hash=row["manifest_hash"],
        samples={s["sample_id"]: s["content"] for s in samples},
        tenant_id=row["tenant_id"],
    )


async def find_policy_row(pool: Any, policy_id: str, version: int | None = None) -> Any:
    """A stored policy version with its canonical artifact bytes (latest unless ``version``)."""
    return await pool.fetchrow(
        """
        SELECT policy_id, version, doer, status, content_hash, artifact, artifact_canonical
        FROM policies WHERE policy_id = $1 AND ($2::integer IS NULL OR version = $2)
        ORDER BY version DESC LIMIT 1
        """,
        policy_id,
        version,
    )


async def active_policy_row(pool: Any, doer: str) -> Any:
    """The doer's active policy (with its canonical bytes), or None."""
    return await pool.fetchrow(
        "SELECT policy_id, version, doer, status, content_hash, artifact, artifact_canonical "
        "FROM policies WHERE doer = $1 AND status = 'active'",
        doer,
    )


# --------------------------------------------------------------------------- replays


@dataclass
class ReplayStart:
    """What starting (or asking again for) a replay did, and the tasks to publish."""

    replay_id: str
    status: str
    attempt: int
    from_record: bool  # answered from the recorded replay; nothing to run
    tasks: list[ReplayTask] = field(default_factory=list)


async def start_replay(
    pool: Any,
    *,
    policy: Any,
    golden: Golden,
    seeds: Sequence[int],
    requested_by: uuid.UUID,
    actor: str,
    timeout_s: float,
    force: bool,
    phase: str | None = None,
    control_replay_id: str | None = None,
) -> ReplayStart:
    """Record a replay of ``policy`` on ``golden`` under ``seeds``; the tasks to publish, if any.

    A replay already complete or running is answered from its record (no
    tasks) unless ``force``; an incomplete one, or a forced one, starts the
    next attempt with every task again. The same request delivered twice
    publishes the same tasks again (same ids), so a crash between the commit
    and the sends loses nothing.
    """
    if not golden.samples:
        raise ReplayError(f"golden dataset {golden.name}@{golden.version} has no samples")
    if name_problem(golden.tenant_id) is not None:
        raise ReplayError(
            f"golden dataset {golden.name}@{golden.version} mixes tenants (frozen before "
            "tenants were kept apart); freeze a new one from one tenant's dataset"
        )
    seed_set = sorted(set(seeds))
    policy_hash = policy["content_hash"]
    rid = replay_id(policy_hash, golden.manifest_hash, seed_set)
    phase = phase or golden.phase
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_SPACE, rid)
        row = await conn.fetchrow("SELECT * FROM offline_replays WHERE replay_id = $1", rid)
        if row is not None and row["control_replay_id"] != control_replay_id:
            # Compared against another control than before: that comparison is new.
            await conn.execute(
                "UPDATE offline_replays SET control_replay_id = $2, verdict = NULL "
                "WHERE replay_id = $1",
                rid,
                control_replay_id,
            )
        redelivered = row is not None and row["requested_by"] == requested_by
        if row is not None and not force and row["status"] != "incomplete" and not redelivered:
            return ReplayStart(rid, row["status"], row["attempt"], from_record=True)
        if row is not None and redelivered and row["status"] != "running":
            return ReplayStart(rid, row["status"], row["attempt"], from_record=True)
        deadline = now + timedelta(seconds=timeout_s)
        if row is None:
            attempt = 1
            await put_blob(conn, bytes(policy["artifact_canonical"]))
            await conn.execute(
                """
                INSERT INTO offline_replays (
                    replay_id, doer, phase, policy_id, policy_version, policy_hash, dataset_name,
                    dataset_version, manifest_hash, seeds, status, attempt, requested_by, actor,
                    task_count, timeout_s, started_at, deadline, control_replay_id
                ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'running', 1, $11, $12, $13,
                          $14, $15, $16, $17)
                """,
                rid,
                policy["doer"],
                phase,
                policy["policy_id"],
                policy["version"],
                policy_hash,
                golden.name,
                golden.version,
                golden.manifest_hash,
                seed_set,
                requested_by,
                actor,
                len(golden.samples) * len(seed_set),
                timeout_s,
                now,
                deadline,
                control_replay_id,
            )
        elif redelivered:
            attempt = row["attempt"]
        else:
            attempt = row["attempt"] + 1
            # The replays judged incomplete only for want of this one as their control
            # (their own tasks all returned) are judged again once it finishes (a new
            # comparison; the old one is kept).
            await conn.execute(
                "UPDATE offline_replays SET verdict = NULL WHERE control_replay_id = $1 "
                "AND replay_id <> $1 AND status = 'complete' "
                "AND (verdict ->> 'incomplete')::boolean",
                rid,
            )
            await conn.execute(
                """
                UPDATE offline_replays SET status = 'running', attempt = $2, requested_by = $3,
                    actor = $4, timeout_s = $5, started_at = $6, deadline = $7,
                    completed_at = NULL, per_seed = NULL, mean_crl = NULL, std_crl = NULL,
                    stability = NULL, runs = NULL, result_hash = NULL, missing_tasks = NULL,
                    verdict = NULL
                WHERE replay_id = $1
                """,
                rid,
                attempt,
                requested_by,
                actor,
                timeout_s,
                now,
                deadline,
            )
        if row is not None:
            # Tasks named as before 2026-12-06, of (policy, manifest, sample, seed) alone: a
            # new attempt gives them their ids of this replay (migration 031 has the why).
            await conn.execute(
                "DELETE FROM offline_replay_tasks WHERE replay_id = $1 AND NOT task_id = ANY($2)",
                rid,
                [task_id(rid, s, seed) for seed in seed_set for s in golden.samples],
            )
        tasks = []
        for seed in seed_set:
            for sample_id in sorted(golden.samples):
                content = golden.samples[sample_id]
                input_hash = await put_blob(conn, content.encode("utf-8"), "text/plain")
                tid = task_id(rid, sample_id, seed)
                run_id = f"replay:{tid}:{attempt}"
                await conn.execute(
                    """
                    INSERT INTO offline_replay_tasks
                        (task_id, replay_id, sample_id, seed, input_hash, run_id)
                    VALUES ($1, $2, $3, $4, $5, $6)
                    ON CONFLICT (task_id) DO UPDATE SET run_id = EXCLUDED.run_id,
                        loss = NULL, output_hash = NULL, completed_at = NULL
                    WHERE offline_replay_tasks.run_id <> EXCLUDED.run_id
                    """,
                    tid,
                    rid,
                    sample_id,
                    seed,
                    input_hash,
                    run_id,
                )
                tasks.append(
                    ReplayTask(
                        event_id=experiment_event_id("replay-task", run_id),
                        doer=policy["doer"],
                        replay_id=rid,
                        task_id=tid,
                        sample_id=sample_id,
                        seed=seed,
                        phase=phase,
                        policy_id=policy["policy_id"],
                        policy_version=policy["version"],
                        input=content,
                        input_hash=input_hash,
                        run_id=run_id,
                        policy_hash=policy_hash,
                        manifest_hash=golden.manifest_hash,
                        tenant_id=golden.tenant_id,
                    )
                )
    return ReplayStart(rid, "running", attempt, from_record=False, tasks=tasks)


async def record_result(pool: Any, result: CRLComputed) -> str | None:
    """Take a replay bundle's scored result for its task; the replay id if it just completed.

    A result whose run id is not a task's current attempt (a stale or unknown
    run), or that was taken before, changes nothing.
    """
    output = canonical_json(
        {
            "run_id": result.run_id,
            "loss": result.loss,
            "terms": result.terms.model_dump(mode="json"),
            "contributions": result.contributions,
            "weights_version": result.weights_version,
        }
    )
    async with pool.acquire() as conn, conn.transaction():
        rid = await conn.fetchval(
            "SELECT replay_id FROM offline_replay_tasks WHERE run_id = $1 AND replay_id = $2",
            result.run_id,
            result.replay_id,
        )
        if rid is None:
            return None
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_SPACE, rid)
        output_hash = await put_blob(conn, output)
        taken = await conn.execute(
            """
            UPDATE offline_replay_tasks SET loss = $2, output_hash = $3, completed_at = now()
            WHERE run_id = $1 AND loss IS NULL
            """,
            result.run_id,
            result.loss,
            output_hash,
        )
        if taken != "UPDATE 1":
            return None
        replay = await conn.fetchrow(
            "SELECT status FROM offline_replays WHERE replay_id = $1 FOR UPDATE", rid
        )
        if replay["status"] != "running":
            return None
        open_tasks = await conn.fetchval(
            "SELECT count(*) FROM offline_replay_tasks WHERE replay_id = $1 AND loss IS NULL", rid
        )
        if open_tasks:
            return None
        if await conn.fetchval(_SCORED_SHORT, rid):
            # Fewer tasks of its own than it names: started by the code before tasks were
            # the replay's (migration 031) while an earlier replay held some. It ends at its
            # deadline, incomplete, listing them; a complete one would be judged on fewer.
            return None
        await _complete(conn, rid)
        return str(rid)


async def _complete(conn: Any, rid: str) -> None:
    rows = await conn.fetch(
        "SELECT seed, sample_id, loss FROM offline_replay_tasks WHERE replay_id = $1", rid
    )
    per_seed = fold_task_losses((r["seed"], r["sample_id"], r["loss"]) for r in rows)
    summary = summarize(per_seed)
    per_seed_json = {
        str(seed): {"mean_crl": r.mean_crl, "runs": r.runs} for seed, r in per_seed.items()
    }
    result_hash = await put_blob(
        conn,
        canonical_json(
            {
                "replay_id": rid,
                "per_seed": per_seed_json,
                "mean_crl": summary.mean_crl,
                "std_crl": summary.std_crl,
                "stability": summary.stability,
                "runs": summary.runs,
            }
        ),
    )
    await conn.execute(
        """
        UPDATE offline_replays SET status = 'complete', completed_at = now(), per_seed = $2,
            mean_crl = $3, std_crl = $4, stability = $5, runs = $6, result_hash = $7
        WHERE replay_id = $1
        """,
        rid,
        per_seed_json,
        summary.mean_crl,
        summary.std_crl,
        summary.stability,
        summary.runs,
        result_hash,
    )


# Whether a replay has fewer scored tasks of its own than it names.
_SCORED_SHORT = """
SELECT r.task_count > (SELECT count(*) FROM offline_replay_tasks AS t
                       WHERE t.replay_id = r.replay_id AND t.loss IS NOT NULL)
FROM offline_replays AS r WHERE r.replay_id = $1
"""

# A replay's missing tasks: its own without a result, then the (sample, seed) pairs it
# has no task for (task_id null; see _SCORED_SHORT), by seed and sample.
_MISSING = """
SELECT task_id, sample_id, seed FROM offline_replay_tasks WHERE replay_id = $1 AND loss IS NULL
UNION ALL
SELECT NULL, g.sample_id, s.seed
FROM offline_replays AS r
CROSS JOIN unnest(r.seeds) AS s (seed)
JOIN golden_dataset_samples AS g
  ON g.golden_name = r.dataset_name AND g.golden_version = r.dataset_version
WHERE r.replay_id = $1 AND NOT EXISTS (
    SELECT 1 FROM offline_replay_tasks AS t
    WHERE t.replay_id = r.replay_id AND t.sample_id = g.sample_id AND t.seed = s.seed)
ORDER BY seed, sample_id
"""


async def expire_replays(pool: Any, now: datetime | None = None) -> list[str]:
    """Mark running replays past their deadline incomplete, listing their missing tasks."""
    now = now or datetime.now(UTC)
    expired = []
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT replay_id FROM offline_replays WHERE status = 'running' AND deadline < $1 "
            "FOR UPDATE SKIP LOCKED",
            now,
        )
        for row in rows:
            missing = await conn.fetch(_MISSING, row["replay_id"])
            await conn.execute(
                "UPDATE offline_replays SET status = 'incomplete', completed_at = $2, "
                "missing_tasks = $3 WHERE replay_id = $1",
                row["replay_id"],
                now,
                [dict(m) for m in missing],
            )
            expired.append(str(row["replay_id"]))
    return expired


def verdict_of(
    row: Any,
    control: Any | None,
    rule: ReplayRule,
    losses: tuple[list[tuple[int, str, float]], list[tuple[int, str, float]]],
) -> dict[str, Any]:
    """The verdict of a finished replay against its finished control (or the lack of one).

    ``losses`` are the candidate's and the control's task losses, (seed,
    sample id, loss) each (:func:`task_losses`), read only when both replays
    completed: the verdict rests on the (seed, sample) pairs they share.
    """
    if row["status"] == "incomplete":
        missing = len(row["missing_tasks"])
        return {
            "passed": False,
            "incomplete": True,
            "reason": f"replay incomplete: {missing} of {row['task_count']} tasks did not return",
            "numbers": {"missing_tasks": missing, "task_count": row["task_count"]},
        }
    if control is None:
        return {
            "passed": False,
            "incomplete": False,
            "reason": "no control: the doer had no active policy to replay against",
            "numbers": {"candidate_mean_crl": row["mean_crl"]},
        }
    if control["status"] == "incomplete":
        return {
            "passed": False,
            "incomplete": True,
            "reason": f"control replay {control['replay_id']} incomplete: "
            f"{len(control['missing_tasks'])} of {control['task_count']} tasks did not return",
            "numbers": {"control_missing_tasks": len(control["missing_tasks"])},
        }
    decided = decide_from_losses(*losses, rule)
    return {
        "passed": decided.passed,
        "incomplete": False,
        "reason": decided.reason,
        "numbers": decided.numbers,
    }


async def task_losses(conn: Any, rid: str) -> list[tuple[int, str, float]]:
    """A replay's scored tasks as (seed, sample id, loss), in that order."""
    rows = await conn.fetch(
        "SELECT seed, sample_id, loss FROM offline_replay_tasks "
        "WHERE replay_id = $1 AND loss IS NOT NULL ORDER BY seed, sample_id",
        rid,
    )
    return [(r["seed"], r["sample_id"], r["loss"]) for r in rows]


@dataclass(frozen=True)
class CompletePair:
    """Two complete replays' task losses, read together, and which attempts they are."""

    candidate: list[tuple[int, str, float]]
    control: list[tuple[int, str, float]]
    attempts: dict[str, Any]  # each side's attempt and result blob: what was judged


async def complete_pair_losses(pool: Any, rid: str, control_rid: str) -> CompletePair | None:
    """Both replays' task losses if both are complete now, else None (one is running again).

    Read in one transaction with both rows locked against a new attempt (which
    resets a replay's task losses before its tasks come back), so the losses are
    those of the attempts named, every task of each answered.
    """
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT replay_id, status, attempt, result_hash FROM offline_replays"
            " WHERE replay_id = ANY($1::text[]) FOR SHARE",
            [rid, control_rid],
        )
        found = {r["replay_id"]: r for r in rows}
        if len(found) != len({rid, control_rid}) or any(r["status"] != "complete" for r in rows):
            return None
        return CompletePair(
            await task_losses(conn, rid),
            await task_losses(conn, control_rid),
            {
                "candidate_attempt": found[rid]["attempt"],
                "candidate_result_hash": found[rid]["result_hash"],
                "control_attempt": found[control_rid]["attempt"],
                "control_result_hash": found[control_rid]["result_hash"],
            },
        )


async def settle_verdicts(pool: Any, finished: str, rule: ReplayRule) -> list[str]:
    """Give a verdict to every replay that waited on ``finished`` (itself or as its control).

    Each verdict is also recorded in ``replay_comparisons`` (append-only), with
    both replays' attempts and result blobs: the shared replay row keeps only
    the latest comparison, the comparison rows keep every one.
    """
    settled = []
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT * FROM offline_replays WHERE (replay_id = $1 OR control_replay_id = $1) "
            "AND verdict IS NULL AND status <> 'running' FOR UPDATE",
            finished,
        )
        for row in rows:
            control = None
            if row["control_replay_id"] is not None:
                control = await conn.fetchrow(
                    "SELECT * FROM offline_replays WHERE replay_id = $1", row["control_replay_id"]
                )
                if control["status"] == "running":
                    continue
            losses: tuple[list[tuple[int, str, float]], list[tuple[int, str, float]]] = ([], [])
            if control is not None and row["status"] == control["status"] == "complete":
                losses = (
                    await task_losses(conn, row["replay_id"]),
                    await task_losses(conn, control["replay_id"]),
                )
            verdict = verdict_of(row, control, rule, losses)
            await conn.execute(
                "UPDATE offline_replays SET verdict = $2 WHERE replay_id = $1",
                row["replay_id"],
                verdict,
            )
            await conn.execute(
                """
                INSERT INTO replay_comparisons (
                    replay_id, attempt, control_replay_id, control_attempt, verdict,
                    result_hash, control_result_hash
                ) VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT DO NOTHING
                """,
                row["replay_id"],
                row["attempt"],
                row["control_replay_id"],
                control["attempt"] if control is not None else None,
                verdict,
                row["result_hash"],
                control["result_hash"] if control is not None else None,
            )
            settled.append(str(row["replay_id"]))
    return settled


async def get_replay(
    pool: Any, rid: str, *, comparison_id: int | None = None, result_hash: str | None = None
) -> Any:
    """A replay's row, or None; as it stood for one comparison or one result, when named.

    The row is shared by every experiment that replays the same policy, dataset
    and seeds, and holds the latest comparison and attempt only.  With
    ``comparison_id`` (an experiment's, see :func:`experiment_comparison`) the
    row's ``control_replay_id``, ``verdict``, ``attempt`` and figures are those
    that comparison recorded, plus its ``control_result_hash``; with
    ``result_hash`` (a comparison's ``control_result_hash``) the figures are
    those of that result.  Figures come from the content-addressed result blob.
    """
    row = await pool.fetchrow("SELECT * FROM offline_replays WHERE replay_id = $1", rid)
    if row is None or (comparison_id is None and result_hash is None):
        return row
    replay = dict(row)
    if comparison_id is not None:
        comparison = await pool.fetchrow(
            "SELECT * FROM replay_comparisons WHERE id = $1 AND replay_id = $2",
            comparison_id,
            rid,
        )
        if comparison is None:
            raise ValueError(f"comparison {comparison_id} is not one of replay {rid}")
        replay.update(
            control_replay_id=comparison["control_replay_id"],
            verdict=comparison["verdict"],
            attempt=comparison["attempt"],
            control_attempt=comparison["control_attempt"],
            control_result_hash=comparison["control_result_hash"],
        )
        result_hash = comparison["result_hash"]
        if result_hash is None and comparison["attempt"] != row["attempt"]:
            # That attempt ended incomplete; a later one has replaced its figures.
            nothing = ("per_seed", "mean_crl", "std_crl", "stability", "runs", "result_hash")
            replay.update(dict.fromkeys(nothing), status="incomplete")
    if result_hash is not None and result_hash != row["result_hash"]:
        replay.update(await _figures(pool, result_hash), result_hash=result_hash)
    return replay


async def _figures(pool: Any, result_hash: str) -> dict[str, Any]:
    """The per-seed results and summary a replay result blob holds (see :func:`_complete`)."""
    blob = await get_blob(pool, result_hash)
    if blob is None:
        raise ValueError(f"result blob {result_hash} is missing")
    result = orjson.loads(blob)
    figures = ("per_seed", "mean_crl", "std_crl", "stability", "runs")
    return {name: result[name] for name in figures} | {"status": "complete"}


async def experiment_comparison(pool: Any, experiment_id: str) -> Any:
    """The comparison an experiment was decided on (both replays, attempts, verdict), or None.

    Captured when the decision was recorded and never changed afterwards, unlike
    the shared replay row's latest ``control_replay_id`` and ``verdict``.
    """
    return await pool.fetchrow(
        """
        SELECT c.* FROM experiments AS e JOIN replay_comparisons AS c ON c.id = e.comparison_id
        WHERE e.experiment_id = $1
        """,
        experiment_id,
    )


async def latest_comparison(pool: Any, rid: str) -> Any:
    """The last verdict given on a replay (both replays, attempts, result blobs), or None.

    The shared row's ``verdict`` is that one's; the control's row may have moved on
    since (a forced attempt rewrites its figures), so what the verdict stood on is here.
    """
    return await pool.fetchrow(
        "SELECT * FROM replay_comparisons WHERE replay_id = $1 ORDER BY id DESC LIMIT 1", rid
    )


async def replay_tasks(pool: Any, rid: str) -> list[Any]:
    """A replay's tasks, by seed and sample."""
    return list(
        await pool.fetch(
            "SELECT * FROM offline_replay_tasks WHERE replay_id = $1 ORDER BY seed, sample_id", rid
        )
    )


async def list_replays(pool: Any, limit: int = 50) -> list[Any]:
    """The latest replays, newest first."""
    return list(
        await pool.fetch("SELECT * FROM offline_replays ORDER BY started_at DESC LIMIT $1", limit)
    )


# --------------------------------------------------------------------------- experiments


async def insert_experiment(
    pool: Any,
    *,
    experiment_id: str,
    created_by: uuid.UUID,
    experiment_type: str,
    doer: str,
    phase: str,
    hypothesis: str,
    actor: str,
    reason: str,
    golden: Golden | None,
    seeds: Sequence[int],
    policy_id: str,
    policy_version: int,
    control: Any | None,
    deploy: str,
    plan: dict[str, Any],
    created_at: datetime,
    request: Any | None = None,
) -> bool:
    """Record a new experiment as ``created`` (with its first history row); False if it exists.

    With ``request`` (an ``experiment_requests`` row of the same doer) the
    experiment answers it: the link is stored and the request, if still open,
    is closed with the experiment's id, in the same transaction.
    """
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.execute(
            """
            INSERT INTO experiments (
                experiment_id, created_by, experiment_type, doer, phase, hypothesis, actor,
                reason, dataset_name, dataset_version, seeds, policy_id, policy_version,
                control_policy_id, control_version, deploy, plan, status, created_at, request_id,
                history_seq
            ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                      $17, 'created', $18, $19, 0)
            ON CONFLICT DO NOTHING
            """,
            experiment_id,
            created_by,
            experiment_type,
            doer,
            phase,
            hypothesis,
            actor,
            reason,
            golden.name if golden else None,
            golden.version if golden else None,
            sorted(set(seeds)),
            policy_id,
            policy_version,
            control["policy_id"] if control else None,
            control["version"] if control else None,
            deploy,
            plan,
            created_at,
            request["request_id"] if request is not None else None,
        )
        if inserted != "INSERT 0 1":
            return False
        evidence: dict[str, Any] = {"actor": actor, "event_id": str(created_by)}
        if request is not None:
            evidence["request"] = {
                "request_id": str(request["request_id"]),
                "reason": request["reason"],
                "message": request["message"],
                "evidence": request["evidence"],
            }
            await close_request(
                conn,
                request["request_id"],
                reason=f"answered by experiment {experiment_id}",
                experiment_id=experiment_id,
            )
        await conn.execute(
            "INSERT INTO experiment_history (experiment_id, seq, from_status, to_status, reason, "
            "evidence, occurred_at) VALUES ($1, 0, NULL, 'created', $2, $3, $4)",
            experiment_id,
            reason,
            evidence,
            created_at,
        )
        return True


async def move_experiment(
    pool: Any,
    experiment_id: str,
    to_status: str,
    reason: str,
    evidence: dict[str, Any] | None = None,
    **updates: Any,
) -> ExperimentChanged | None:
    """Move an experiment (if its lifecycle allows), append the history row; the event to send."""
    columns = {"replay_id", "control_replay_id", "deploy_command_id", "deployment_id", "outcome"}
    unknown = set(updates) - columns
    if unknown:
        raise ValueError(f"cannot set {', '.join(sorted(unknown))} on an experiment")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM experiments WHERE experiment_id = $1 FOR UPDATE", experiment_id
        )
        if row is None or not may_move(row["status"], to_status):
            return None
        seq = await conn.fetchval(
            "SELECT max(seq) + 1 FROM experiment_history WHERE experiment_id = $1", experiment_id
        )
        if seq is None:
            # Every experiment learnops creates has its history from seq 0: one without
            # is a row written around it (a red-team trial's forgery). Left as it is,
            # rather than failing every move of its doer's deployments (NOT NULL seq).
            log.warning("experiment_without_history experiment=%s not moved", experiment_id)
            return None
        sets = ["status = $2", "updated_at = now()", "history_seq = $3"]
        values: list[Any] = [experiment_id, to_status, seq]
        if to_status in ("promoted", "rolled_back", "failed"):
            sets.append("concluded_at = now()")
        for name, value in updates.items():
            values.append(value)
            sets.append(f"{name} = ${len(values)}")
        await conn.execute(
            f"UPDATE experiments SET {', '.join(sets)} WHERE experiment_id = $1", *values
        )
        occurred = await conn.fetchval(
            "INSERT INTO experiment_history (experiment_id, seq, from_status, to_status, reason, "
            "evidence) VALUES ($1, $2, $3, $4, $5, $6) RETURNING occurred_at",
            experiment_id,
            seq,
            row["status"],
            to_status,
            reason,
            evidence or {},
        )
        moved = await conn.fetchrow(
            "SELECT * FROM experiments WHERE experiment_id = $1", experiment_id
        )
    return change_event(moved, seq, row["status"], reason, occurred, evidence or {})


def change_event(
    row: Any,
    seq: int,
    previous: str | None,
    reason: str,
    occurred_at: datetime,
    evidence: dict[str, Any],
) -> ExperimentChanged:
    """The learning.experiments event of one history row (its id derives from the row)."""
    return ExperimentChanged(
        event_id=experiment_event_id("experiment", row["experiment_id"], seq),
        occurred_at=occurred_at,
        doer=row["doer"],
        experiment_id=row["experiment_id"],
        status=row["status"] if seq >= 0 else "created",
        previous_status=previous,
        hypothesis=row["hypothesis"],
        experiment_type=row["experiment_type"],
        phase=row["phase"],
        policy_id=row["policy_id"],
        policy_version=row["policy_version"],
        deployment_id=row["deployment_id"],
        replay_id=row["replay_id"],
        actor=row["actor"],
        reason=reason,
        outcome=orjson.loads(orjson.dumps(evidence)),
        request_id=row["request_id"],
    )


async def unpublished_events(pool: Any, experiment_id: str) -> list[tuple[int, ExperimentChanged]]:
    """The transitions the broker has not acknowledged yet (after ``published_seq``), in order.

    Each with its history seq, for :func:`mark_published` once it is acknowledged;
    the event of a row is the same whenever it is made (its id derives from the row).
    """
    row = await get_experiment(pool, experiment_id)
    if row is None:
        return []
    return [
        (
            h["seq"],
            change_event(
                {**dict(row), "status": h["to_status"]},
                h["seq"],
                h["from_status"],
                h["reason"],
                h["occurred_at"],
                h["evidence"],
            ),
        )
        for h in await experiment_history(pool, experiment_id)
        if h["seq"] > row["published_seq"]
    ]


async def mark_published(pool: Any, experiment_id: str, seq: int) -> None:
    """Record that the broker acknowledged the experiment's transitions up to ``seq``."""
    await pool.execute(
        "UPDATE experiments SET published_seq = greatest(published_seq, $2) "
        "WHERE experiment_id = $1",
        experiment_id,
        seq,
    )


async def get_experiment(pool: Any, experiment_id: str) -> Any:
    """An experiment's row, or None."""
    return await pool.fetchrow("SELECT * FROM experiments WHERE experiment_id = $1", experiment_id)


async def experiment_history(pool: Any, experiment_id: str) -> list[Any]:
    """An experiment's transitions, oldest first."""
    return list(
        await pool.fetch(
            "SELECT * FROM experiment_history WHERE experiment_id = $1 ORDER BY seq", experiment_id
        )
    )


async def list_experiments(
    pool: Any, *, doer: str | None = None, status: str | None = None, limit: int = 100
) -> list[Any]:
    """Experiments, newest first, optionally of one doer or in one status."""
    return list(
        await pool.fetch(
            """
            SELECT * FROM experiments
            WHERE ($1::text IS NULL OR doer = $1) AND ($2::text IS NULL OR status = $2)
            ORDER BY created_at DESC LIMIT $3
            """,
            doer,
            status,
            limit,
        )
    )


async def experiments_waiting_on(pool: Any, rid: str) -> list[Any]:
    """Experiments replaying ``rid`` (as candidate or control) that have not deployed yet."""
    return list(
        await pool.fetch(
            "SELECT * FROM experiments WHERE status = 'replaying' AND deploy_command_id IS NULL "
            "AND (replay_id = $1 OR control_replay_id = $1)",
            rid,
        )
    )


async def resumable_experiments(
    pool: Any, *, rid: str | None = None, now: datetime | None = None
) -> list[Any]:
    """Incomplete experiments whose replays run again: neither is incomplete any more.

    Only while the candidate's replay is still compared with the experiment's own
    control: a replay row is shared, and one now compared with another control
    (a later active policy) cannot decide this experiment. With ``rid``, those
    on that replay (the stage, when it starts a new attempt); with ``now``, those
    that ended incomplete more than ``SETTLE_AFTER`` before it (the timer's
    backstop, for a worker killed between the new attempt and the move).
    """
    conditions = [
        "e.status = 'incomplete'",
        "r.status <> 'incomplete'",
        "(c.replay_id IS NULL OR c.status <> 'incomplete')",
        "r.control_replay_id IS NOT DISTINCT FROM e.control_replay_id",
    ]
    values: list[Any] = []
    if rid is not None:
        values.append(rid)
        conditions.append(f"(e.replay_id = ${len(values)} OR e.control_replay_id = ${len(values)})")
    if now is not None:
        values.append(now - SETTLE_AFTER)
        conditions.append(f"e.updated_at < ${len(values)}")
    return list(
        await pool.fetch(
            "SELECT e.* FROM experiments AS e "
            "JOIN offline_replays AS r ON r.replay_id = e.replay_id "
            "LEFT JOIN offline_replays AS c ON c.replay_id = e.control_replay_id "
            f"WHERE {' AND '.join(conditions)} ORDER BY e.updated_at",
            *values,
        )
    )


#: How long an unfinished step is left to the path that took it before a timer takes it
#: up: longer than any batch, so the two never race for the same step.
SETTLE_AFTER = timedelta(seconds=30)


async def replays_ended_without_verdict(pool: Any, now: datetime | None = None) -> list[str]:
    """Replays that ended (complete or incomplete) a while ago and still have no verdict.

    Left so by a worker killed between recording the result (or the expiry) and
    settling the verdicts: a redelivered result is already taken, and the expiry
    timer looks at running replays only, so nothing else would settle them. One
    whose control is running (a first or a new attempt) has no verdict yet by
    rule and is left out until the control ends.
    """
    cutoff = (now or datetime.now(UTC)) - SETTLE_AFTER
    rows = await pool.fetch(
        "SELECT r.replay_id FROM offline_replays AS r WHERE r.status <> 'running' "
        "AND r.verdict IS NULL AND r.completed_at < $1 AND NOT EXISTS (SELECT 1 FROM "
        "offline_replays AS c WHERE c.replay_id = r.control_replay_id AND c.status = 'running') "
        "ORDER BY r.completed_at",
        cutoff,
    )
    return [str(r["replay_id"]) for r in rows]


async def judged_but_waiting(pool: Any, now: datetime | None = None) -> list[Any]:
    """Experiments still replaying (nothing deployed) whose replay has had a verdict a while.

    Left so by a worker killed between settling the verdicts and acting on
    them: the verdict is not settled again, so nothing else would judge them.
    Also those whose candidate's replay has a verdict against another control
    (the stage moves them to incomplete; code before 2026-12-06 left them waiting).
    """
    cutoff = (now or datetime.now(UTC)) - SETTLE_AFTER
    return list(
        await pool.fetch(
            "SELECT e.* FROM experiments e JOIN offline_replays r ON r.replay_id = e.replay_id "
            "LEFT JOIN offline_replays c ON c.replay_id = e.control_replay_id "
            "WHERE e.status = 'replaying' AND e.deploy_command_id IS NULL "
            "AND r.verdict IS NOT NULL AND r.completed_at < $1 "
            "AND (c.replay_id IS NULL OR c.completed_at < $1 "
            "     OR r.control_replay_id IS DISTINCT FROM e.control_replay_id) "
            "ORDER BY e.updated_at",
            cutoff,
        )
    )


async def unpublished_experiments(pool: Any, now: datetime | None = None) -> list[str]:
    """Experiments with transitions recorded a while ago that the broker never acknowledged.

    Left so by a worker killed (or a send that failed) between recording a move
    and publishing it: nothing else would send them.
    """
    cutoff = (now or datetime.now(UTC)) - SETTLE_AFTER
    rows = await pool.fetch(
        "SELECT experiment_id FROM experiments "
        "WHERE published_seq < history_seq AND updated_at < $1 ORDER BY updated_at",
        cutoff,
    )
    return [str(r["experiment_id"]) for r in rows]


async def record_deploy_command(
    pool: Any, experiment_id: str, command_id: uuid.UUID, evidence: dict[str, Any]
) -> bool:
    """Record the deployment command of a passing experiment; False if one was recorded before."""
    status = await pool.execute(
        "UPDATE experiments SET deploy_command_id = $2, outcome = $3, updated_at = now() "
        "WHERE experiment_id = $1 AND deploy_command_id IS NULL",
        experiment_id,
        command_id,
        evidence,
    )
    return bool(status == "UPDATE 1")


async def mark_deploy_sent(pool: Any, experiment_id: str) -> None:
    """Record that the broker acknowledged the experiment's deployment command (sent last now)."""
    await pool.execute(
        "UPDATE experiments SET deploy_sent_at = now() WHERE experiment_id = $1", experiment_id
    )


async def deployments_unsent(pool: Any, now: datetime | None = None) -> list[Any]:
    """Experiments whose recorded deployment command the broker has not acknowledged a while.

    Left so by a worker killed between recording the command and sending it: a
    redelivered input finds the command recorded and does not send it.
    """
    cutoff = (now or datetime.now(UTC)) - SETTLE_AFTER
    return list(
        await pool.fetch(
            "SELECT * FROM experiments WHERE status = 'replaying' "
            "AND deploy_command_id IS NOT NULL AND deploy_sent_at IS NULL AND updated_at < $1 "
            "ORDER BY updated_at",
            cutoff,
        )
    )


async def open_experiments(pool: Any, doer: str) -> list[Any]:
    """A doer's experiments that are not concluded."""
    return list(
        await pool.fetch(
            "SELECT * FROM experiments WHERE doer = $1 AND status = ANY($2::text[]) "
            "ORDER BY created_at",
            doer,
            sorted(OPEN),
        )
    )


async def refused_deployments(pool: Any) -> list[Any]:
    """Experiments whose deployment command the policy store refused, with its verdict."""
    return list(
        await pool.fetch(
            """
            SELECT e.experiment_id, p.verdict, p.refusal
            FROM experiments AS e JOIN policy_promotions AS p ON p.event_id = e.deploy_command_id
            WHERE e.status = 'replaying' AND p.outcome = 'refused'
            """
        )
    )


async def deployments_unanswered(pool: Any, sent_before: datetime) -> list[Any]:
    """Experiments whose deployment command was last sent before ``sent_before``, unanswered.

    The policy store records every command it applies or refuses for its
    content; one refused at its envelope (the worker's key unregistered,
    revoked or without the role; the command expired before it was read)
    leaves no row, and neither does one still waiting in a backlog.
    """
    return list(
        await pool.fetch(
            """
            SELECT e.* FROM experiments AS e
            WHERE e.status = 'replaying' AND e.deploy_sent_at < $1
              AND NOT EXISTS (SELECT 1 FROM policy_promotions AS p
                              WHERE p.event_id = e.deploy_command_id)
            ORDER BY e.updated_at
            """,
            sent_before,
        )
    )


async def policy_status(pool: Any, policy_id: str, version: int) -> str | None:
    """A policy version's status in the store."""
    status = await pool.fetchval(
        "SELECT status FROM policies WHERE policy_id = $1 AND version = $2", policy_id, version
    )
    return str(status) if status is not None else None


async def ended_experiments(pool: Any, doer: str, days: int) -> tuple[int, int]:
    """How many of a doer's experiments ended in the last ``days``, and how many of them failed."""
    row = await pool.fetchrow(
        """
        SELECT count(*) AS ended,
               count(*) FILTER (WHERE status IN ('failed', 'rolled_back', 'incomplete')) AS failed
        FROM experiments
        WHERE doer = $1
          AND status IN ('promoted', 'failed', 'rolled_back', 'incomplete')
          AND coalesce(concluded_at, updated_at) >= now() - make_interval(days => $2)
        """,
        doer,
        days,
    )
    return int(row["ended"]), int(row["failed"])
