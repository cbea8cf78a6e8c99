"""The migration runner against real PostgreSQL: once each, recorded, checksum-guarded."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from learning.signing import canonical_json, content_digest, generate_key, sign
from storage import signing_keys as keys_store
from storage.migrate import MIGRATIONS_DIR, MigrationError, discover, migrate
from storage.verification import verify_live

ADVISORY_LOCKS_HELD = """
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND a.datname = current_database()
"""


async def test_migrations_apply_once_and_are_recorded_with_checksums(empty_db: Any) -> None:
    first = await migrate(empty_db)
    # migrate's session lock is released: the pool sends no reset query (storage.pool).
    assert await empty_db.fetchval(ADVISORY_LOCKS_HELD) == 0
    assert first.applied == [m.path.name for m in discover()]
    second = await migrate(empty_db)
    assert second.applied == []
    assert second.already == first.applied
    rows = await empty_db.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["checksum"]) for r in rows] == [
        (m.version, m.checksum) for m in discover()
    ]


async def test_an_edited_applied_migration_stops_the_run(empty_db: Any, tmp_path: Path) -> None:
    for path in MIGRATIONS_DIR.glob("*.sql"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    await migrate(empty_db, tmp_path)
    first = sorted(tmp_path.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match="was edited after it was applied"):
        await migrate(empty_db, tmp_path)


async def test_a_failing_migration_leaves_nothing_behind(empty_db: Any, tmp_path: Path) -> None:
    for path in MIGRATIONS_DIR.glob("*.sql"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    next_version = max(m.version for m in discover(tmp_path)) + 1  # versions may have gaps
    (tmp_path / f"{next_version:03d}_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(MigrationError, match=f"{next_version:03d}_broken.sql failed"):
        await migrate(empty_db, tmp_path)
    assert await empty_db.fetchval("SELECT to_regclass('half_done')") is None
    assert await empty_db.fetchval("SELECT max(version) FROM schema_migrations") == next_version - 1
    assert await empty_db.fetchval(ADVISORY_LOCKS_HELD) == 0


def test_two_files_with_one_version_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="share version 001"):
        discover(tmp_path)


async def _migrate_before(db: Any, folder: Path, version: int) -> None:
    """Apply the project's migrations numbered below ``version`` (a database of that time)."""
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if int(path.name[:3]) < version:
            (folder / path.name).write_bytes(path.read_bytes())
    await migrate(db, folder)


async def test_versions_stored_before_identity_signing_still_verify_flagged_as_format_1(
    empty_db: Any, tmp_path: Path
) -> None:
    await _migrate_before(empty_db, tmp_path, 16)
    key = generate_key()
    await keys_store.add_signing_key(empty_db, key.public_key, created_by="tests")
    artifact = {"prompts": {"system": "Stored before migration 016."}}
    legacy = sign(artifact, key)  # what every signer made then: the artifact alone
    await empty_db.execute(
        "INSERT INTO policies (policy_id, version, doer, status, artifact, artifact_canonical, "
        "content_hash, signature, key_id, created_by, registered_by) "
        "VALUES ('old', 1, 'Old', 'active', convert_from($1, 'UTF8')::jsonb, $1, $2, $3, $4, "
        "'tests', $5)",
        canonical_json(artifact),
        content_digest(artifact),
        legacy.value_b64,
        key.key_id,
        uuid.uuid4(),
    )
    await migrate(empty_db)
    assert await empty_db.fetchval("SELECT signature_format FROM policies") == 1
    [check] = await verify_live(empty_db)
    assert check.ok and check.legacy, check
    assert "format 1" in check.reason and "old@1 of doer Old" in check.reason
    await keys_store.revoke_signing_key(empty_db, key.key_id, actor="tests")
    [revoked] = await verify_live(empty_db)
    assert not revoked.ok and revoked.key_status == "revoked"


async def test_crl_daily_is_rebuilt_per_tenant_from_the_runs_stored_before_migration_025(
    empty_db: Any, tmp_path: Path
) -> None:
    await _migrate_before(empty_db, tmp_path, 25)
    runs = [("acme", 0.2), ("acme", 0.4), ("globex", 0.9), ("acme", 0.6)]
    for n, (tenant, loss) in enumerate(runs):
        await empty_db.execute(
            "INSERT INTO crl_results (run_id, event_id, source_event_id, doer, phase, policy_id,"
            " policy_version, tenant_id, occurred_at, loss, terms, contributions,"
            " weights_version) VALUES ($1, $2, $3, 'Doer', 'plan', 'p', 1, $4,"
            " '2026-12-01T12:00:00Z', $5, '{}', '{}', 'v1')",
            f"r{n}",
            uuid.uuid4(),
            uuid.uuid4(),
            tenant,
            loss,
        )
    # Before 025 the day is one row of both tenants' runs.
    assert await empty_db.fetchval("SELECT runs FROM crl_daily") == 4
    await migrate(empty_db)
    rows = await empty_db.fetch("SELECT tenant_id, runs, mean_crl FROM crl_daily ORDER BY 1")
    assert [(r["tenant_id"], r["runs"]) for r in rows] == [("acme", 3), ("globex", 1)]
    assert [r["mean_crl"] for r in rows] == pytest.approx([0.4, 0.9])
    # And the trigger folds new runs per tenant from then on.
    await empty_db.execute(
        "INSERT INTO crl_results (run_id, event_id, source_event_id, doer, phase, policy_id,"
        " policy_version, tenant_id, occurred_at, loss, terms, contributions, weights_version)"
        " VALUES ('r9', $1, $2, 'Doer', 'plan', 'p', 1, 'globex', '2026-12-01T13:00:00Z', 0.5,"
        " '{}', '{}', 'v1')",
        uuid.uuid4(),
        uuid.uuid4(),
    )
    globex = await empty_db.fetchrow(
        "SELECT runs, mean_crl FROM crl_daily WHERE tenant_id = 'globex'"
    )
    assert (globex["runs"], globex["mean_crl"]) == (2, pytest.approx(0.7))


async def test_experiments_recorded_before_the_outbox_count_as_sent(
    empty_db: Any, tmp_path: Path
) -> None:
    """Migration 029: what the stage sent before it had an outbox is not sent again, and
    the timer's look for unsent transitions finds none of it."""
    from storage import experiments as store
    from tests.integration.test_experiment_evidence import make_doer

    await _migrate_before(empty_db, tmp_path, 29)
    doer = await make_doer(empty_db)
    waiting, deployed, unanswered = (f"{doer.name}-{n}" for n in ("w", "d", "u"))
    for experiment_id in (waiting, deployed, unanswered):  # as the stage of that time wrote them
        await empty_db.execute(
            "INSERT INTO experiments (experiment_id, created_by, experiment_type, doer, phase, "
            "hypothesis, actor, reason, dataset_name, dataset_version, seeds, policy_id, "
            "policy_version, control_policy_id, control_version, deploy, status, created_at) "
            "VALUES ($1, $2, "
            "'prompt_synthesis', $3, 'draft', 'h', 'tests', 'r', $4, $5, '{1,2,3}', $6, 2, $6, 1, "
            "'shadow', 'created', now())",
            experiment_id,
            uuid.uuid4(),
            doer.name,
            doer.golden.name,
            doer.golden.version,
            doer.name.lower(),
        )
        await empty_db.execute(
            "INSERT INTO experiment_history (experiment_id, seq, from_status, to_status, reason) "
            "VALUES ($1, 0, NULL, 'created', 'created')",
            experiment_id,
        )
    # The second and third moved on and recorded their deployment; only the second's
    # reached the policy store (the third's was lost to a kill, before the outbox).
    applied = uuid.uuid4()
    for experiment_id, command_id in ((deployed, applied), (unanswered, uuid.uuid4())):
        await empty_db.execute(
            "INSERT INTO experiment_history (experiment_id, seq, from_status, to_status, reason) "
            "VALUES ($1, 1, 'created', 'replaying', 'replaying')",
            experiment_id,
        )
        await empty_db.execute(
            "UPDATE experiments SET status = 'replaying', deploy_command_id = $2, "
            "updated_at = now() - interval '1 hour' WHERE experiment_id = $1",
            experiment_id,
            command_id,
        )
    await empty_db.execute(
        "INSERT INTO policy_promotions (event_id, source, action, doer, policy_id, version, "
        "from_status, to_status, requested_status, outcome, actor, reason, verdict, occurred_at) "
        "VALUES ($1, 'command', 'start_shadow', $2, $3, 2, 'draft', 'shadow', 'shadow', "
        "'applied', 'experiments', 'r', 'v', now())",
        applied,
        doer.name,
        doer.name.lower(),
    )
    await migrate(empty_db)
    rows = {
        r["experiment_id"]: r
        for r in await empty_db.fetch(
            "SELECT experiment_id, history_seq, published_seq, deploy_sent_at, updated_at "
            "FROM experiments"
        )
    }
    assert (rows[waiting]["history_seq"], rows[waiting]["published_seq"]) == (0, 0)
    assert rows[waiting]["deploy_sent_at"] is None
    assert (rows[deployed]["history_seq"], rows[deployed]["published_seq"]) == (1, 1)
    assert rows[deployed]["deploy_sent_at"] == rows[deployed]["updated_at"]
    later = datetime.now(UTC) + timedelta(days=1)
    assert await store.unpublished_experiments(empty_db, later) == []
    # The command the store never answered is sent again; the applied one is not.
    unsent = await store.deployments_unsent(empty_db, later)
    assert [r["experiment_id"] for r in unsent] == [unanswered]
    # A move from then on is unsent until the stage marks it published.
    await store.move_experiment(empty_db, waiting, "failed", "withdrawn")
    assert await store.unpublished_experiments(empty_db, later) == [waiting]
    await store.mark_published(empty_db, waiting, 1)
    assert await store.unpublished_experiments(empty_db, later) == []


async def test_replays_cut_short_by_shared_task_ids_are_reopened(
    empty_db: Any, tmp_path: Path
) -> None:
    """Migration 031: a replay that completed without the tasks an earlier replay with
    overlapping seeds had taken is marked incomplete, listing what it lacks, and its
    verdict and those of the replays compared with it are cleared for the timer."""
    from storage import experiments as store
    from tests.integration.test_experiment_evidence import RULE, make_doer, scored

    await _migrate_before(empty_db, tmp_path, 31)
    doer = await make_doer(empty_db)
    whole = await doer.replay(1, "self", 0.5)  # seeds 1-3, every task its own
    control = await doer.start(1, "self", [2, 3, 4])
    candidate = await doer.start(2, control.replay_id, [2, 3, 4])
    # As the old code left the control: no rows of its own for seeds 2 and 3, and its
    # seed-4 rows under the ids of that time.
    await empty_db.execute(
        "DELETE FROM offline_replay_tasks WHERE replay_id = $1 AND seed IN (2, 3)",
        control.replay_id,
    )
    await empty_db.execute(
        "UPDATE offline_replay_tasks SET task_id = 'old-' || task_id WHERE replay_id = $1",
        control.replay_id,
    )
    for task in [*control.tasks, *candidate.tasks]:
        await store.record_result(empty_db, scored(task, 0.3))
    # The old code completed it on the rows it had (today's waits for every task it names).
    async with empty_db.acquire() as conn, conn.transaction():
        await store._complete(conn, control.replay_id)
    for rid in (control.replay_id, candidate.replay_id):
        await store.settle_verdicts(empty_db, rid, RULE)
    before = await store.get_replay(empty_db, control.replay_id)
    assert before["status"] == "complete" and before["runs"] == 2  # seed 4 alone
    assert (await store.get_replay(empty_db, candidate.replay_id))["verdict"] is not None

    await migrate(empty_db)
    after = await store.get_replay(empty_db, control.replay_id)
    assert after["status"] == "incomplete" and after["mean_crl"] is None
    assert after["verdict"] is None
    lacking = {(m["sample_id"], m["seed"]) for m in after["missing_tasks"]}
    assert lacking == {(s, seed) for s in doer.golden.samples for seed in (2, 3)}
    assert (await store.get_replay(empty_db, candidate.replay_id))["verdict"] is None
    untouched = await store.get_replay(empty_db, whole)
    assert untouched["status"] == "complete" and untouched["verdict"] is not None
    later = datetime.now(UTC) + store.SETTLE_AFTER + timedelta(seconds=1)
    assert {control.replay_id, candidate.replay_id} <= set(
        await store.replays_ended_without_verdict(empty_db, later)
    )
    # Settled again (as the timer does), the new verdicts are recorded beside the old ones
    # (an attempt of their own), so an experiment decided now cites the incomplete one.
    assert after["attempt"] == before["attempt"] + 1
    for rid in (control.replay_id, candidate.replay_id):
        await store.settle_verdicts(empty_db, rid, RULE)
    compared = await empty_db.fetch(
        "SELECT verdict FROM replay_comparisons WHERE replay_id = $1 ORDER BY id",
        candidate.replay_id,
    )
    assert [r["verdict"]["incomplete"] for r in compared] == [False, True]
    # Its next attempt has a task of its own for every pair, the old-named rows gone.
    again = await doer.start(1, "self", [2, 3, 4])
    assert again.attempt == after["attempt"] + 1 and len(again.tasks) == 6
    rows = await store.replay_tasks(empty_db, control.replay_id)
    assert {r["task_id"] for r in rows} == {t.task_id for t in again.tasks}
