"""The least-privilege database roles (migration 021) on real PostgreSQL, logged in as each."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest

from learning.signing import generate_key
from storage import repartitions
from storage import signing_keys as keys_store
from storage.dead_letters import Replay, record_replays, replayed_among
from storage.migrate import MIGRATIONS_DIR, migrate
from storage.pool import create_pool
from tests.services import run_learnops


@pytest.fixture(scope="module")
def urls(role_urls: dict[str, str]) -> dict[str, str]:
    missing = {"worker", "reader", "keyadmin"} - set(role_urls)
    assert not missing, (
        f"no login for {sorted(missing)}: run the tests on scripts/postgres.sh's cluster, or set "
        "LEARNOPS_WORKER_/_READER_/_KEYADMIN_DATABASE_URL beside DATABASE_URL"
    )
    return role_urls


async def _as(url: str) -> Any:
    return await asyncpg.connect(url)


async def _refused(conn: Any, *statements: str, match: str | None = None) -> None:
    """Every statement is refused for want of a privilege (``match``: in the message)."""
    for statement in statements:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=match):
            await conn.execute(statement)


async def test_the_worker_cannot_disable_the_append_only_triggers(urls: dict[str, str]) -> None:
    conn = await _as(urls["worker"])
    try:
        for table in ("policy_promotions", "signing_key_events", "experiment_history"):
            await _refused(
                conn,
                f"ALTER TABLE {table} DISABLE TRIGGER ALL",
                f"ALTER TABLE {table} DISABLE TRIGGER USER",
                match="must be owner",
            )
    finally:
        await conn.close()


async def test_the_worker_cannot_rewrite_the_audit_log_or_the_key_history(
    urls: dict[str, str],
) -> None:
    conn = await _as(urls["worker"])
    try:
        await _refused(
            conn,
            "UPDATE policy_promotions SET reason = 'rewritten'",
            "DELETE FROM policy_promotions",
            "UPDATE signing_key_events SET actor = 'nobody'",
            "DELETE FROM signing_key_events",
            "UPDATE signing_keys SET revoked_at = NULL",
            "INSERT INTO signing_key_events (key_id, action, actor) "
            "SELECT key_id, 'retired', 'worker' FROM signing_keys",
            "DELETE FROM schema_migrations",
            # An operator key the worker enrolled could grant it any role.
            "INSERT INTO operator_key_events (key_id, kind, doer_pattern, role, actor) "
            "VALUES ('00000000000000aa', 'grant', '*', 'owner', 'worker')",
            match="permission denied",
        )
        # What the worker does need, it has.
        assert await conn.fetchval("SELECT count(*) FROM signing_keys") >= 0
    finally:
        await conn.close()


async def test_the_worker_cannot_move_a_sequence_of_policy_changes_back_or_far(
    urls: dict[str, str],
) -> None:
    """Found by a red-team trial: as the worker, deleting a doer's row restarted its
    numbering at 1 (and setting it high jumped it), so running Routers refused the doer's
    later changes, an emergency rollback among them. The number now only rises by one."""
    from storage.deployments import next_change_sequence

    doer = f"Seq{datetime.now(UTC).strftime('%H%M%S%f')}"
    conn = await _as(urls["worker"])
    try:
        assert [await next_change_sequence(conn, doer) for _ in range(3)] == [1, 2, 3]
        for statement, match in (
            ("DELETE FROM policy_change_sequences WHERE doer = $1", "is kept"),
            ("UPDATE policy_change_sequences SET sequence = 1 WHERE doer = $1", "only 4"),
            ("UPDATE policy_change_sequences SET sequence = 2147483647 WHERE doer = $1", "only 4"),
        ):
            with pytest.raises(asyncpg.PostgresError, match=match):
                await conn.execute(statement, doer)
        with pytest.raises(asyncpg.CheckViolationError, match="starts at 1"):
            await conn.execute(
                "INSERT INTO policy_change_sequences (doer, sequence) VALUES ($1, 9)", doer + "x"
            )
        assert await next_change_sequence(conn, doer) == 4
    finally:
        await conn.close()


async def test_the_worker_cannot_drop_truncate_or_create(urls: dict[str, str]) -> None:
    conn = await _as(urls["worker"])
    try:
        await _refused(conn, "DROP TABLE crl_results", match="must be owner")
        await _refused(
            conn,
            "TRUNCATE crl_results",
            "CREATE TABLE sneaky (id int)",
            "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        )
    finally:
        await conn.close()


async def test_the_reader_reads_and_cannot_write(urls: dict[str, str]) -> None:
    conn = await _as(urls["reader"])
    try:
        assert await conn.fetchval("SELECT count(*) FROM policies") >= 0
        assert await conn.fetchval("SELECT count(*) FROM v_crl_trend_overall") >= 0
        await _refused(
            conn,
            "INSERT INTO alerts DEFAULT VALUES",
            "UPDATE policies SET status = 'archived'",
            "DELETE FROM crl_results",
            "TRUNCATE dead_letters",
            "INSERT INTO signing_key_events (key_id, action, actor) VALUES ('x', 'revoked', 'r')",
        )
    finally:
        await conn.close()


async def test_a_revocation_is_recorded_with_its_actor_and_cannot_be_undone(
    urls: dict[str, str], db: Any
) -> None:
    admin = await create_pool(urls["keyadmin"], min_size=1, max_size=1)
    try:
        key = generate_key()
        await keys_store.add_signing_key(admin, key.public_key, created_by="alice", note="ci")
        await keys_store.retire_signing_key(admin, key.key_id, actor="bob", note="rotated")
        revoked = await keys_store.revoke_signing_key(
            admin, key.key_id, actor="carol", note="laptop lost"
        )
        assert revoked is not None and revoked.status == "revoked"
        # A second revoke changes nothing and records nothing.
        again = await keys_store.revoke_signing_key(admin, key.key_id, actor="dave")
        assert again is not None and again.revoked_at == revoked.revoked_at
        history = await keys_store.key_history(db, key.key_id)
        assert [(e.action, e.actor, e.note, e.db_role) for e in history] == [
            ("added", "alice", "ci", "learnops_keyadmin"),
            ("retired", "bob", "rotated", "learnops_keyadmin"),
            ("revoked", "carol", "laptop lost", "learnops_keyadmin"),
        ]
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await admin.execute(
                "UPDATE signing_keys SET revoked_at = NULL WHERE key_id = $1", key.key_id
            )
    finally:
        await admin.close()
    # Not even the owner undoes it, moves it, or erases the history with plain SQL.
    for statement in (
        "UPDATE signing_keys SET revoked_at = NULL WHERE key_id = $1",
        "UPDATE signing_keys SET revoked_at = now() - interval '1 day' WHERE key_id = $1",
        "DELETE FROM signing_keys WHERE key_id = $1",
        "DELETE FROM signing_key_events WHERE key_id = $1",
        "UPDATE signing_key_events SET action = 'added' WHERE key_id = $1",
    ):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError):
            await db.execute(statement, key.key_id)
    record = await keys_store.find_signing_key(db, key.key_id)
    assert record is not None and record.revoked_at == revoked.revoked_at


async def test_the_worker_cannot_touch_the_keyring(urls: dict[str, str]) -> None:
    worker = await create_pool(urls["worker"], min_size=1, max_size=1)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await keys_store.add_signing_key(worker, generate_key().public_key, created_by="w")
    finally:
        await worker.close()


async def test_the_worker_reads_the_repartition_journal_and_cannot_write_it(
    urls: dict[str, str], db: Any
) -> None:
    # A worker that could mark a move finished, or delete its row, could start under the
    # new app id with part of the state (038; 039 takes the writes away).
    moved = f"roles-move-{uuid.uuid4().hex[:8]}"
    await repartitions.record_started(db, moved, "roles-old", 4, 8)
    worker = await _as(urls["worker"])
    try:
        seen = await repartitions.repartition_of(worker, moved)
        assert seen is not None and seen.finished_at is None
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await repartitions.record_finished(worker, moved)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await repartitions.record_started(worker, f"{moved}-2", "roles-old", 4, 8)
        await _refused(worker, f"DELETE FROM repartitions WHERE to_app_id = '{moved}'")
    finally:
        await worker.close()
    await repartitions.record_finished(db, moved)
    done = await repartitions.repartition_of(db, moved)
    assert done is not None and done.finished_at is not None


async def test_the_replay_journal_is_append_only_and_no_worker_writes_it(
    urls: dict[str, str], db: Any
) -> None:
    # A worker that could write it could mark a refused run replayed, and it would wait in
    # the dead-letter queue for good (040). Nobody rewrites or removes a row of it.
    replay = Replay(
        topic="learning.run-completed",
        partition=2,
        offset=10_000_000 + uuid.uuid4().int % 1_000_000,
        doer="RolesReplay",
        error_types=("partition",),
        new_partition=1,
        new_offset=7,
        actor="oncall",
    )
    async with db.acquire() as conn:
        await record_replays(conn, [replay])
        assert await replayed_among(conn, [(replay.topic, replay.partition, replay.offset)])
        where = f"WHERE topic = '{replay.topic}' AND \"offset\" = {replay.offset}"
        for statement in (
            f"UPDATE dead_letter_replays SET actor = 'someone' {where}",
            f"DELETE FROM dead_letter_replays {where}",
        ):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
                await conn.execute(statement)
    worker = await _as(urls["worker"])
    try:
        assert await replayed_among(worker, [(replay.topic, replay.partition, replay.offset)])
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await record_replays(worker, [replace(replay, offset=replay.offset + 1)])
    finally:
        await worker.close()


def _on(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def test_a_table_a_later_migration_adds_is_usable_by_the_worker_and_the_reader(
    empty_db: Any, urls: dict[str, str], tmp_path: Path
) -> None:
    for path in MIGRATIONS_DIR.glob("*.sql"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "999_later_table.sql").write_text(
        "CREATE TABLE later_things (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " name text NOT NULL);\n"
        "CREATE TABLE later_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text);\n"
        "CREATE TRIGGER later_log_append_only BEFORE UPDATE OR DELETE ON later_log\n"
        "    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();\n"
    )
    report = await migrate(empty_db, tmp_path)
    fresh_database = await empty_db.fetchval("SELECT current_database()")
    assert "999_later_table.sql" in report.applied
    worker = await _as(_on(urls["worker"], fresh_database))
    reader = await _as(_on(urls["reader"], fresh_database))
    try:
        await worker.execute("INSERT INTO later_things (name) VALUES ('a')")
        await worker.execute("UPDATE later_things SET name = 'b'")
        await worker.execute("INSERT INTO later_log (what) VALUES ('x')")
        assert await reader.fetchval("SELECT name FROM later_things") == "b"
        # The later table's append-only trigger costs the worker UPDATE and DELETE too.
        await _refused(worker, "DELETE FROM later_log", "UPDATE later_log SET what = 'y'")
        await _refused(reader, "INSERT INTO later_things (name) VALUES ('c')")
    finally:
        await worker.close()
        await reader.close()


async def test_a_login_without_a_password_is_refused(
    urls: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    for url in (urls["worker"], urls["reader"]):
        parts = urlsplit(url)
        for user in (parts.username, "postgres", "learnops"):
            with pytest.raises(
                (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
            ):
                await asyncpg.connect(
                    host=parts.hostname,
                    port=parts.port,
                    user=user,
                    database=parts.path.lstrip("/"),
                    passfile=str(tmp_path / "no-pgpass"),
                )


async def test_the_session_worker_runs_the_pipeline_as_learnops_worker(
    worker: Any, db: Any, database_url: str
) -> None:
    """The worker every pipeline test uses is logged in as learnops_worker, not the owner."""
    assert urlsplit(worker.env["DATABASE_URL"]).username == "learnops_worker"
    users = await db.fetch(
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = $1",
        urlsplit(database_url).path.lstrip("/"),
    )
    assert "learnops_worker" in {row["usename"] for row in users}


async def test_keys_history_shows_who_revoked_a_key_through_the_cli(
    settings_env: dict[str, str], db: Any
) -> None:
    key = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="erin", note="ci signer")
    revoked = await asyncio.to_thread(
        run_learnops,
        settings_env,
        *("policy", "keys", "revoke", key.key_id, "--reason", "leaked", "--actor", "frank"),
    )
    assert revoked.returncode == 0, revoked.stderr
    shown = await asyncio.to_thread(
        run_learnops, settings_env, "policy", "keys", "history", key.key_id, "--json"
    )
    assert shown.returncode == 0, shown.stderr
    events = orjson.loads(shown.stdout)
    assert [(e["action"], e["actor"], e["note"], e["db_role"]) for e in events] == [
        ("added", "erin", "ci signer", "learnops"),
        ("revoked", "frank", "leaked", "learnops_keyadmin"),
    ]


async def test_a_key_the_database_refuses_leaves_no_private_key_file_behind(
    settings_env: dict[str, str], urls: dict[str, str], tmp_path: Path
) -> None:
    # As the reader, the keyring refuses the INSERT: the private half written first
    # is removed again, so the retry with the right role meets no 'exists'.
    as_reader = {**settings_env, "LEARNOPS_KEYADMIN_DATABASE_URL": urls["reader"]}
    for command in (
        ("policy", "keys", "generate", "--note", "refused"),
        ("operator", "keys", "add", "--operator", "refused", "--generate"),
    ):
        out = tmp_path / f"{command[0]}.pem"
        refused = await asyncio.to_thread(run_learnops, as_reader, *command, "--out", str(out))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "permission denied" in refused.stderr, refused.stderr
        assert not out.exists(), command
        retried = await asyncio.to_thread(run_learnops, settings_env, *command, "--out", str(out))
        assert retried.returncode == 0, retried.stderr
        assert out.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


async def test_the_key_admin_cannot_back_date_a_retirement_or_name_another_role(
    urls: dict[str, str], db: Any
) -> None:
    """Migration 032: the role and the time of a key event are the inserting role's and
    now, whatever the INSERT says (a retirement back-dated to 2020 would let the key
    vouch for nothing since then; one dated 2099 for everything until then)."""
    from storage import operator_keys as operator_store

    admin = await create_pool(urls["keyadmin"], min_size=1, max_size=1)
    try:
        key = generate_key()
        await keys_store.add_signing_key(admin, key.public_key, created_by="alice")
        await admin.execute(
            "INSERT INTO signing_key_events (key_id, action, actor, at, db_role) "
            "VALUES ($1, 'retired', 'mallory', '2020-01-01T00:00:00Z', 'learnops_migrate')",
            key.key_id,
        )
        row = await db.fetchrow(
            "SELECT at, db_role FROM signing_key_events WHERE key_id = $1 AND action = 'retired'",
            key.key_id,
        )
        assert row["db_role"] == "learnops_keyadmin"
        assert row["at"] > datetime.now(UTC) - timedelta(minutes=1)
        retired_at = await db.fetchval(
            "SELECT retired_at FROM signing_keys WHERE key_id = $1", key.key_id
        )
        assert retired_at == row["at"]
        # Migration 033: nor does it choose a new key's times (retired in 2099, say).
        forged = generate_key()
        await admin.execute(
            "INSERT INTO signing_keys (key_id, public_key, created_by, created_at, retired_at) "
            "VALUES ($1, $2, 'mallory', '2020-01-01T00:00:00Z', '2099-01-01T00:00:00Z')",
            forged.key_id,
            forged.public_key.raw,
        )
        times = await db.fetchrow(
            "SELECT created_at, retired_at FROM signing_keys WHERE key_id = $1", forged.key_id
        )
        assert times["retired_at"] is None
        assert times["created_at"] > datetime.now(UTC) - timedelta(minutes=1)
        operator = generate_key()
        await operator_store.add_operator_key(
            admin, operator.public_key, operator="oscar", actor="claimed"
        )
        assert (
            await db.fetchval(
                "SELECT db_role FROM operator_key_events WHERE key_id = $1", operator.key_id
            )
            == "learnops_keyadmin"
        )
    finally:
        await admin.close()
