"""The trusted keyring: the public keys whose signatures let a policy version be deployed."""

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


async def retire_signing_key(pool: Any, key_id: str) -> KeyRecord | None:
    """Stop a key vouching for new registrations; what it signed before keeps verifying."""
    row = await pool.fetchrow(
        """
        UPDATE signing_keys SET retired_at = coalesce(retired_at, now())
        WHERE key_id = $1 RETURNING *
        """,
        key_id,
    )
    return _key(row) if row else None


async def revoke_signing_key(pool: Any, key_id: str, *, note: str = "") -> KeyRecord | None:
    """Distrust a key entirely: nothing it signed moves to shadow, canary or active again."""
    row = await pool.fetchrow(
        """
        UPDATE signing_keys
        SET revoked_at = coalesce(revoked_at, now()),
            note = CASE WHEN $2 = '' THEN note ELSE $2 END
        WHERE key_id = $1 RETURNING *
        """,
        key_id,
        note,
    )
    return _key(row) if row else None


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
