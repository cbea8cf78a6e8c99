"""Operator keys, their roles per doer pattern, and the commands applied (migration 018).

Every change is a row of the append-only ``operator_key_events``; the keys and
grants in force are the views ``operator_keys`` and ``operator_grants``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from learning.command_signing import Grant, OperatorKey, Role, Verdict
from learning.signing import PublicKey
from models.commands import SignedCommand


@dataclass(frozen=True)
class OperatorKeyRecord:
    """A registered operator key as ``learnops operator keys list`` shows it."""

    key_id: str
    operator: str
    added_by: str
    added_at: datetime
    revoked_at: datetime | None
    grants: list[tuple[str, str]]  # (doer pattern, role)


async def add_operator_key(
    pool: Any, public_key: PublicKey, *, operator: str, actor: str, note: str = ""
) -> bool:
    """Register an operator's public key; False if that key was already registered."""
    status = await pool.execute(
        """
        INSERT INTO operator_key_events (key_id, kind, operator, public_key, actor, note)
        VALUES ($1, 'add', $2, $3, $4, $5)
        ON CONFLICT (key_id) WHERE kind = 'add' DO NOTHING
        """,
        public_key.key_id,
        operator,
        public_key.raw,
        actor,
        note,
    )
    return bool(status.endswith(" 1"))


async def grant_role(
    pool: Any, key_id: str, doer_pattern: str, role: Role | str, *, actor: str
) -> None:
    """Give a key a role on the doers matching a pattern (``none`` withdraws it)."""
    await pool.execute(
        """
        INSERT INTO operator_key_events (key_id, kind, doer_pattern, role, actor)
        VALUES ($1, 'grant', $2, $3, $4)
        """,
        key_id,
        doer_pattern,
        role,
        actor,
    )


async def revoke_operator_key(pool: Any, key_id: str, *, actor: str, note: str = "") -> None:
    """Distrust a key: nothing it signs is applied from now on."""
    await pool.execute(
        "INSERT INTO operator_key_events (key_id, kind, actor, note) VALUES ($1, 'revoke', $2, $3)",
        key_id,
        actor,
        note,
    )


async def operator_keyring(pool: Any) -> tuple[dict[str, OperatorKey], list[Grant]]:
    """The registered keys by id and their grants, as :func:`authorise` takes them."""
    keys = {
        row["key_id"]: OperatorKey(
            row["key_id"],
            row["operator"],
            PublicKey(bytes(row["public_key"])),
            revoked=row["revoked_at"] is not None,
        )
        for row in await pool.fetch("SELECT * FROM operator_keys")
    }
    grants = [
        Grant(row["key_id"], row["doer_pattern"], row["role"])
        for row in await pool.fetch("SELECT key_id, doer_pattern, role FROM operator_grants")
    ]
    return keys, grants


async def list_operator_keys(pool: Any) -> list[OperatorKeyRecord]:
    """Every registered key with its grants, oldest first."""
    grants: dict[str, list[tuple[str, str]]] = {}
    for row in await pool.fetch("SELECT * FROM operator_grants ORDER BY key_id, doer_pattern"):
        grants.setdefault(row["key_id"], []).append((row["doer_pattern"], row["role"]))
    return [
        OperatorKeyRecord(
            row["key_id"],
            row["operator"],
            row["added_by"],
            row["added_at"],
            row["revoked_at"],
            grants.get(row["key_id"], []),
        )
        for row in await pool.fetch("SELECT * FROM operator_keys ORDER BY added_at, key_id")
    ]


async def operator_of(pool: Any, key_id: str) -> str | None:
    """The operator a registered key belongs to, or None."""
    operator: str | None = await pool.fetchval(
        "SELECT operator FROM operator_keys WHERE key_id = $1", key_id
    )
    return operator


#: Where a command was read: topic, partition, offset.
Source = tuple[str, int, int]


async def applied_at(pool: Any, event_id: Any) -> tuple[datetime, Source | None] | None:
    """When the command with this event id was applied and where it was read; None if never.

    The place is None for commands recorded before migration 041 (or without one).
    """
    row = await pool.fetchrow(
        "SELECT applied_at, source_topic, source_partition, source_offset"
        " FROM applied_commands WHERE event_id = $1",
        event_id,
    )
    if row is None:
        return None
    place = (row["source_topic"], row["source_partition"], row["source_offset"])
    return row["applied_at"], (None if None in place else place)


async def record_applied_command(
    pool: Any, command: SignedCommand, verdict: Verdict, source: Source | None = None
) -> None:
    """Remember that a verified command was applied (signer, reason, where it was read).

    Never to apply it again: a record read again at ``source`` is its redelivery,
    anywhere else a replay.
    """
    topic, partition, offset = source if source is not None else (None, None, None)
    await pool.execute(
        """
        INSERT INTO applied_commands
            (event_id, action, doer, key_id, operator, approver, issued_at, expires_at, reason,
             source_topic, source_partition, source_offset)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        ON CONFLICT (event_id) DO NOTHING
        """,
        command.event_id,
        command.command,  # type: ignore[attr-defined]  # every concrete command has one
        command.doer,
        verdict.key_id,
        verdict.operator,
        verdict.approver,
        command.issued_at,
        command.expires_at,
        command.reason,
        topic,
        partition,
        offset,
    )
