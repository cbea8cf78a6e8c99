"""The asyncpg connection pool every learnops process shares."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import orjson
from prometheus_client import Counter

log = logging.getLogger("learnops.storage")

POSTGRES_RETRIES = Counter(
    "learnops_postgres_retries_total",
    "Writes retried because PostgreSQL was unreachable or shutting down, by what was written.",
    ["what"],
)
T = TypeVar("T")


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON and JSONB columns travel as Python objects, encoded with orjson.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A released connection's reset beyond asyncpg's own: nothing (see below)."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any) -> Any:
    """Open a pool whose connections map JSON/JSONB to Python objects.

    A released connection goes back without asyncpg's default reset query
    (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``), one more
    round trip per release: 3.5 % of a worker's main thread at 170 runs/s,
    beside PostgreSQL's own work for it. asyncpg still rolls back a
    transaction left open (a failed one, or one begun with a raw BEGIN, too)
    before calling ``reset``. What the query undid and nothing else does is a
    session advisory lock, a cursor WITH HOLD, a server-side LISTEN and a
    session setting; learnops leaves none of them on a pooled connection: its
    advisory locks are transaction-scoped but for migrate's, which it unlocks
    in a finally and closes the connection when it could not, and it runs no
    LISTEN, session SET or ``set_config(…, false)``
    (tests/unit/test_pool_session.py reads the packages' string constants and
    the migrations to hold that). Measured on this machine, an acquire, a
    one-row query and a release took 350–490 µs of wall and 240–290 µs of the
    client's CPU without the reset query, 700–710 µs and 400–440 µs with it.
    """
    kwargs.setdefault("reset", _keep_session)
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, **kwargs
    )


# Connection trouble, a server shutting down and lost concurrency races are waited
# out and retried (the source offset does not move meanwhile): SQLSTATE class 08,
# 57P01-57P03, 53300, 40001 and 40P01, and a connection the server dropped.
# Anything else PostgreSQL refuses is a property of the data and is the caller's.
TRANSIENT_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    # A server that terminates connections mid-query leaves asyncpg's protocol in
    # a state it reports as an internal client error ("cannot switch to state
    # 12"); the next try gets a fresh connection.
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncio.TimeoutError,
)


async def durably(write: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run a database write, retrying with backoff while PostgreSQL is unreachable."""
    delay = 0.2
    while True:
        try:
            return await write()
        except TRANSIENT_ERRORS as exc:
            POSTGRES_RETRIES.labels(what).inc()
            log.warning("postgres_unavailable what=%s error=%r retry_in=%.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


#: SQLSTATE classes of a statement PostgreSQL refuses for what a row holds: data exception,
#: integrity constraint violation, program limit exceeded (a value too large). A stage finds
#: the row one by one and dead-letters it with the reason.
ROW_REFUSALS = ("22", "23", "54")
#: SQLSTATE classes no input causes: insufficient privilege and undefined tables or columns
#: (42: a role without its grants, a schema not migrated), invalid schema (3F), catalog (3D),
#: authorization (28). Every event would fail the same way, so the stage stops at once.
MISCONFIGURED = ("42", "3F", "3D", "28")


def _sqlstate_class(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")[:2]


def refused_for_its_data(exc: BaseException) -> bool:
    """Whether PostgreSQL refused a statement for what one of its rows holds."""
    return isinstance(exc, asyncpg.PostgresError) and _sqlstate_class(exc) in ROW_REFUSALS


def misconfigured(exc: BaseException) -> bool:
    """Whether PostgreSQL refused a statement for a reason no input causes (grants, schema)."""
    return isinstance(exc, asyncpg.PostgresError) and _sqlstate_class(exc) in MISCONFIGURED


async def schema_owner_role(conn: Any) -> str | None:
    """The role this connection logs in as when it can act as the schema's owner, else None.

    The owner of the table the worker's queries name (``crl_results``, found by
    the search path as they find it), a member of that role, or a superuser: any
    of them can drop a trigger or rewrite an append-only audit table, which a
    worker needs none of (learnops_worker's grants, docs/security.md).
    """
    role: str | None = await conn.fetchval(
        "SELECT current_user FROM pg_class WHERE oid = to_regclass('crl_results') "
        "AND pg_has_role(current_user, relowner, 'MEMBER')"
    )
    return role


async def rows_by_event_id_start(
    pool: Any, table: str, columns: str, start: str, id_column: str = "event_id"
) -> list[Any]:
    """The rows of ``table`` whose id (a UUID) starts with ``start`` (dashes ignored), at most two.

    Two are enough for a command to say "give more of it"; ``table``, ``columns``
    and ``id_column`` are the caller's constants, never user input.
    """
    rows: list[Any] = await pool.fetch(
        f"SELECT {columns} FROM {table}"
        f" WHERE starts_with(replace({id_column}::text, '-', ''), $1) ORDER BY {id_column} LIMIT 2",
        start.replace("-", "").lower(),
    )
    return rows
