"""A pooled connection comes back from release without asyncpg's reset query, and clean.

storage.pool skips asyncpg's default reset round trip (docs in its create_pool).
What a later caller must never inherit is still undone by asyncpg before the
pool's reset hook runs: an open transaction is rolled back, its row locks and
transaction-scoped advisory locks with it.
"""

from __future__ import annotations

from storage.pool import create_pool


async def test_a_release_sends_no_reset_query_and_rolls_back_what_was_left_open(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("CREATE TABLE IF NOT EXISTS pool_release_probe (n int)")
            await conn.execute("TRUNCATE pool_release_probe")
            # Left open on purpose, with a transaction-scoped advisory lock held.
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO pool_release_probe VALUES (1)")
            await conn.execute("SELECT pg_advisory_xact_lock(424242)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend  # the same connection
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM pool_release_probe") == 0
            locks = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", backend
            )
            assert locks == 0
            # Session state set here on purpose stays with the connection: no RESET ALL ran.
            await conn.execute("SET application_name = 'left-by-a-caller'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "left-by-a-caller"
    finally:
        async with pool.acquire() as conn:
            await conn.execute("DROP TABLE IF EXISTS pool_release_probe")
        await pool.close()
