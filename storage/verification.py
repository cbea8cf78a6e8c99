"""Whether stored policy versions still verify: their signatures over their identity, their keys.

The policy store checks a version's signature before every move to shadow,
canary or active (``storage.policy_commands``). This module asks the same of
what is live now — every active, shadow and canary version, for ``learnops
policy verify`` and for a key's revocation — with the keyring as it is now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from learning.promotion import (
    LEGACY_SIGNATURE_FORMAT,
    SignedIdentity,
    same_artifact,
    verify_artifact,
)
from learning.signing import TrustedKeys, VerifyResult
from models.events import Alert
from models.ids import key_revoked_alert_id
from storage.signing_keys import load_keyring

#: The ``policies`` columns :func:`verify_stored` reads.
STORED_SIGNATURE_COLUMNS = (
    "doer, policy_id, version, artifact, artifact_canonical, content_hash, signature, "
    "signature_format, key_id, created_at"
)

_LIVE = ("active", "shadow", "canary")


def verify_stored(row: Any, keyring: TrustedKeys) -> VerifyResult:
    """Whether a stored version (a row of :data:`STORED_SIGNATURE_COLUMNS`) verifies, and why not.

    Its signature is checked over its own doer, policy id and version, as of
    its ``created_at``, and its JSONB copy must be the signed JSON.
    """
    canonical = bytes(row["artifact_canonical"])
    check = verify_artifact(
        canonical,
        identity=SignedIdentity(row["doer"], row["policy_id"], row["version"]),
        content_hash=row["content_hash"],
        signature=row["signature"],
        key_id=row["key_id"],
        keyring=keyring,
        signed_at=row["created_at"],
        signature_format=row["signature_format"],
    )
    if check and not same_artifact(row["artifact"], canonical):
        return VerifyResult(
            False, "the stored artifact differs from the signed bytes", check.key_id
        )
    return check


@dataclass(frozen=True)
class LiveCheck:
    """One live version's signature check, with its key's status now."""

    doer: str
    policy_id: str
    version: int
    status: str  # active | shadow | canary
    key_id: str
    key_status: str  # active | retired | revoked | unknown
    signature_format: int
    ok: bool
    reason: str

    @property
    def ref(self) -> str:
        """``policy_id@version``."""
        return f"{self.policy_id}@{self.version}"

    @property
    def legacy(self) -> bool:
        """Whether its signature is format 1: over the artifact alone, not its identity."""
        return self.signature_format == LEGACY_SIGNATURE_FORMAT


async def verify_live(
    pool: Any, *, doer: str | None = None, key_id: str | None = None
) -> list[LiveCheck]:
    """Check every live version (of one doer, or signed by one key) against the keyring now.

    Ordered by doer, then active before its candidate.
    """
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        # One snapshot: the keyring and the versions as of the same moment.
        keyring = await load_keyring(conn)
        rows = await conn.fetch(
            f"""
            SELECT status, {STORED_SIGNATURE_COLUMNS} FROM policies
            WHERE status = ANY($1::text[])
              AND ($2::text IS NULL OR doer = $2)
              AND ($3::text IS NULL OR key_id = $3)
            ORDER BY doer, status = 'active' DESC, policy_id, version
            """,
            list(_LIVE),
            doer,
            key_id,
        )
    checks = []
    for row in rows:
        check = verify_stored(row, keyring)
        key = keyring.get(row["key_id"])
        checks.append(
            LiveCheck(
                doer=row["doer"],
                policy_id=row["policy_id"],
                version=row["version"],
                status=row["status"],
                key_id=row["key_id"],
                key_status=key.status if key is not None else "unknown",
                signature_format=row["signature_format"],
                ok=check.ok,
                reason=check.reason,
            )
        )
    return checks


def revocation_alerts(
    key_id: str, revoked_at: datetime, reason: str, actor: str, live: list[LiveCheck]
) -> list[Alert]:
    """The alerts for a revoked key: one per doer with live versions it signed (none if none).

    Each lists that doer's live versions; the ids derive from the key, its
    revocation time and the doer, so revoking again repeats the same alerts.
    """
    by_doer: dict[str, list[LiveCheck]] = {}
    for check in live:
        by_doer.setdefault(check.doer, []).append(check)
    alerts = []
    for doer, checks in by_doer.items():
        refs = [f"{c.ref} ({c.status})" for c in checks]
        only = checks[0] if len(checks) == 1 else None
        alerts.append(
            Alert(
                event_id=key_revoked_alert_id(key_id, revoked_at, doer),
                occurred_at=revoked_at,
                doer=doer,
                kind="signing_key_revoked",
                severity="critical",
                message=(
                    f"signing key {key_id} was revoked ({reason}) while it vouches for live "
                    f"{', '.join(refs)}; roll back or promote a version signed by another key"
                ),
                policy_id=only.policy_id if only else None,
                policy_version=only.version if only else None,
                evidence={
                    "key_id": key_id,
                    "revoked_at": revoked_at.isoformat(),
                    "reason": reason,
                    "actor": actor,
                    "live_versions": [
                        {"policy_id": c.policy_id, "version": c.version, "status": c.status}
                        for c in checks
                    ],
                },
            )
        )
    return alerts
