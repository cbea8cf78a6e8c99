"""Apply numbered SQL migrations once each, in order, each in its own transaction.

Files are ``storage/migrations/NNN_name.sql``.  Each applied file is recorded in
``schema_migrations`` with its SHA-256; a recorded file whose content has since
changed stops the run, because migrations are never edited after they land
(a change is a new file).  After every run the least-privilege roles' grants are
re-applied (``learnops_grant_roles()``, migration 021), so a table a later
migration adds is usable by the worker and readable by the reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same for every migrating process.
_LOCK_KEY = 0x6C6E6F7073  # "lnops"


class MigrationError(RuntimeError):
    """A migration file is malformed, was edited after it was applied, or failed."""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    path: Path
    checksum: str

    @property
    def sql(self) -> str:
        """The file's SQL text."""
        return self.path.read_text(encoding="utf-8")


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; malformed names and repeated versions are errors."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_lower_snake.sql")
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                path=path,
                checksum=hashlib.sha256(path.read_bytes()).hexdigest(),
            )
        )
    # Versions must be unique (two branches both adding 004 is the real danger);
    # a gap is harmless, files still apply in version order.
    seen: dict[int, str] = {}
    for migration in found:
        if migration.version in seen:
            raise MigrationError(
                f"{migration.path.name} and {seen[migration.version]} share version "
                f"{migration.version:03d}; renumber the newer one"
            )
        seen[migration.version] = migration.path.name
    return found


@dataclass(frozen=True)
class MigrationReport:
    """Which migrations this run applied and which were already there."""

    applied: list[str]
    already: list[str]


async def migrate(pool: Any, directory: Path = MIGRATIONS_DIR) -> MigrationReport:
    """Apply every pending migration; refuse if an applied file no longer matches its checksum."""
    migrations = discover(directory)
    async with pool.acquire() as conn:
        failed = True
        try:
            # Serialise concurrent migrators (two workers starting at once). Inside the try:
            # a lock granted just as the call is cancelled is still released below.
            await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
            await conn.execute(_CREATE_LEDGER)
            rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
            recorded = {row["version"]: row["checksum"] for row in rows}
            _check_recorded(recorded, migrations)
            applied = []
            for migration in migrations:
                if migration.version not in recorded:
                    await _apply(conn, migration)
                    applied.append(migration.path.name)
            # Grants follow the schema: tables added since the last run get
            # theirs (migration 021 defines what each role may do).
            if await conn.fetchval("SELECT to_regprocedure('learnops_grant_roles()')"):
                await conn.execute("SELECT learnops_grant_roles()")
            already = [m.path.name for m in migrations if m.version in recorded]
            failed = False
            return MigrationReport(applied=applied, already=already)
        finally:
            await _unlock(conn, raise_errors=not failed)


async def _unlock(conn: Any, *, raise_errors: bool) -> None:
    """Release migrate's session lock, or close the connection when that cannot be done.

    The lock outlives the migrations' transactions, and the pool no longer resets
    a released connection (storage.pool): one whose unlock did not run
    (cancelled, the server gone) must not go back to the pool holding it.
    Unlocking a lock this session does not hold (its lock call failed) is a
    server warning, not an error. While migrate's own error propagates, an error
    of the unlock is not raised over it.
    """
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    except BaseException:
        # A connection the server dropped is already out of the pool: nothing to close.
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.terminate()
        if raise_errors:
            raise


_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def _check_recorded(recorded: dict[int, str], migrations: list[Migration]) -> None:
    unknown = sorted(set(recorded) - {m.version for m in migrations})
    if unknown:
        raise MigrationError(
            f"the database has migrations {unknown} that are not on disk; "
            "is this an older checkout?"
        )
    for migration in migrations:
        checksum = recorded.get(migration.version)
        if checksum is not None and checksum != migration.checksum:
            raise MigrationError(
                f"{migration.path.name} was edited after it was applied "
                f"(recorded sha256 {checksum[:12]}…, file {migration.checksum[:12]}…); "
                "put the change in a new numbered file"
            )


async def _apply(conn: Any, migration: Migration) -> None:
    async with conn.transaction():
        try:
            await conn.execute(migration.sql)
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"{migration.path.name} failed: {exc}") from exc
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            migration.checksum,
        )
