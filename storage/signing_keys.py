"""The trusted keyring: the public keys whose signatures let a policy version be deployed.

A key's row never changes but for ``retired_at`` and ``revoked_at``, which a
trigger sets from the key's append-only history (``signing_key_events``, with
the actor); see migration 021 and docs/security.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from learning.signing import PublicKey, TrustedKey, TrustedKeys
from storage.policies import record_of


@dataclass(frozen=True)
class KeyRecord:
    """A public key in the trusted keyring."""

    key_id: str
    public_key: bytes
    note: str
    created_by: str
    created_at: datetime
    retired_at: datetime | None
    revoked_at: datetime | None

    @property
    def status(self) -> str:
        """``revoked``, ``retired`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        return "retired" if self.retired_at is not None else "active"


async def add_signing_key(
    pool: Any, public_key: PublicKey, *, created_by: str, note: str = ""
) -> KeyRecord:
    """Trust a public key; adding one already present returns it unchanged."""
    await pool.execute(
        """
        INSERT INTO signing_keys (key_id, public_key, created_by, note)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (key_id) DO NOTHING
        """,
        public_key.key_id,
        public_key.raw,
        created_by,
        note,
    )
    row = await pool.fetchrow("SELECT * FROM signing_keys WHERE key_id = $1", public_key.key_id)
    return _key(row)


@dataclass(frozen=True)
class KeyEvent:
    """One entry of a key's append-only history: added, retired or revoked, by whom."""

    id: int
    key_id: str
    action: str
    actor: str
    note: str
    at: datetime
    db_role: str


async def retire_signing_key(
    pool: Any, key_id: str, *, actor: str, note: str = ""
) -> KeyRecord | None:
    """Stop a key vouching for new registrations; what it signed before keeps verifying."""
    return await _record_event(pool, key_id, "retired", actor=actor, note=note)


async def revoke_signing_key(
    pool: Any, key_id: str, *, actor: str, note: str = ""
) -> KeyRecord | None:
    """Distrust a key entirely: nothing it signed moves to shadow, canary or active again."""
    return await _record_event(pool, key_id, "revoked", actor=actor, note=note)


async def _record_event(
    pool: Any, key_id: str, action: str, *, actor: str, note: str
) -> KeyRecord | None:
    # The event sets the keyring's timestamp (migration 021's trigger); a key
    # already retired or revoked gets no second event, so a repeat is a no-op.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO signing_key_events (key_id, action, actor, note)
            SELECT key_id, $2, $3, $4 FROM signing_keys
            WHERE key_id = $1
              AND (CASE WHEN $2 = 'retired' THEN retired_at ELSE revoked_at END) IS NULL
            """,
            key_id,
            action,
            actor,
            note,
        )
        row = await conn.fetchrow("SELECT * FROM signing_keys WHERE key_id = $1", key_id)
    return _key(row) if row else None


async def key_history(pool: Any, key_id: str | None = None) -> list[KeyEvent]:
    """Every status change of one key (or of all keys), oldest first."""
    rows = await pool.fetch(
        """
        SELECT * FROM signing_key_events
        WHERE $1::text IS NULL OR key_id = $1
        ORDER BY id
        """,
        key_id,
    )
    return [record_of(KeyEvent, row) for row in rows]


async def signing_keys(pool: Any) -> list[KeyRecord]:
    """Every key of the keyring, oldest first."""
    rows = await pool.fetch("SELECT * FROM signing_keys ORDER BY created_at, key_id")
    return [_key(row) for row in rows]


async def find_signing_key(pool: Any, key_id: str) -> KeyRecord | None:
    """The keyring's entry for a key id, or None."""
    row = await pool.fetchrow("SELECT * FROM signing_keys WHERE key_id = $1", key_id)
    return _key(row) if row else None


async def load_keyring(conn: Any) -> TrustedKeys:
    """The trusted keyring as it is now in the database."""
    return TrustedKeys(
        TrustedKey(
            PublicKey(key.public_key),
            added_at=key.created_at,
            retired_at=key.retired_at,
            revoked=key.revoked_at is not None,
            revoked_at=key.revoked_at,
            note=key.note,
        )
        for key in await signing_keys(conn)
    )


def _key(row: Any) -> KeyRecord:
    return replace(record_of(KeyRecord, row), public_key=bytes(row["public_key"]))
