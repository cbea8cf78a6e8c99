"""skill_cards and experiment_requests: each tenant's card of each doer, its history, requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from models.events import SkillCard

# Serialises writers of one tenant's card of a doer (two workers' timers in a rebalance).
_CARD_LOCK = "SELECT pg_advisory_xact_lock(hashtext('skill_cards/' || $1 || '/' || $2))"


async def store_card(pool: Any, card: SkillCard) -> bool:
    """Make ``card`` its tenant's current card of the doer; False (no write) if unchanged."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_CARD_LOCK, card.tenant_id, card.doer)
        current = await conn.fetchval(
            "SELECT content_hash FROM skill_cards"
            " WHERE tenant_id = $1 AND doer = $2 AND is_current",
            card.tenant_id,
            card.doer,
        )
        if current == card.content_hash:
            return False
        await conn.execute(
            "UPDATE skill_cards SET is_current = false, superseded_at = $3 "
            "WHERE tenant_id = $1 AND doer = $2 AND is_current",
            card.tenant_id,
            card.doer,
            card.occurred_at,
        )
        await conn.execute(
            """
            INSERT INTO skill_cards (
                doer, event_id, as_of, content_hash, runs, gate_pass_rate, mean_crl,
                delta_7d, delta_30d, policy_id, policy_version, card, computed_at, tenant_id
            ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13, $14)
            ON CONFLICT (event_id) DO NOTHING
            """,
            card.doer,
            card.event_id,
            card.as_of,
            card.content_hash,
            card.runs,
            card.gate_pass_rate,
            card.mean_crl,
            card.delta_7d,
            card.delta_30d,
            card.policy_id,
            card.policy_version,
            card.model_dump(mode="json"),
            card.occurred_at,
            card.tenant_id,
        )
        return True


def _card(row: Any) -> SkillCard:
    # The column is the truth for a card stored before 024 (its JSON has no tenant).
    return SkillCard.model_validate({**row["card"], "tenant_id": row["tenant_id"]})


async def current_card(pool: Any, doer: str, tenant: str) -> SkillCard | None:
    """``tenant``'s current card of ``doer``, or None when there is none."""
    found = await current_cards(pool, tenant, doer=doer)
    return found[0] if found else None


async def current_cards(
    pool: Any, tenant: str | None = None, *, doer: str | None = None
) -> list[SkillCard]:
    """The current cards by doer then tenant; only ``tenant``'s, or ``doer``'s, when named."""
    rows = await pool.fetch(
        "SELECT card, tenant_id FROM skill_cards WHERE is_current"
        " AND ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR doer = $2)"
        " ORDER BY doer, tenant_id",
        tenant,
        doer,
    )
    return [_card(r) for r in rows]


async def carded_doers(pool: Any) -> list[str]:
    """Every doer with a current card (of any tenant)."""
    rows = await pool.fetch("SELECT DISTINCT doer FROM skill_cards WHERE is_current ORDER BY doer")
    return [r["doer"] for r in rows]


async def card_history(pool: Any, doer: str, tenant: str, limit: int = 20) -> list[SkillCard]:
    """``tenant``'s cards of ``doer``, newest first (the current one first)."""
    rows = await pool.fetch(
        "SELECT card, tenant_id FROM skill_cards WHERE tenant_id = $1 AND doer = $2"
        " ORDER BY id DESC LIMIT $3",
        tenant,
        doer,
        limit,
    )
    return [_card(r) for r in rows]


async def active_policy(pool: Any, doer: str) -> tuple[str, int] | None:
    """The doer's active policy (policy_id, version) from the policy store, if it has one."""
    row = await pool.fetchrow(
        "SELECT policy_id, version FROM policies WHERE doer = $1 AND status = 'active'", doer
    )
    return None if row is None else (row["policy_id"], row["version"])


_EXPERIMENT_FIELDS = (
    "experiment_id",
    "experiment_type",
    "phase",
    "status",
    "policy_id",
    "policy_version",
    "created_at",
    "concluded_at",
)


async def recent_experiments(pool: Any, doer: str, limit: int = 5) -> list[dict[str, Any]]:
    """The doer's latest experiments, newest first, each with the request it answers, if any.

    Empty while there is no experiments table.
    The experiment registry has its own migration; a card is still built on a
    database without it, and reads only the columns listed above that exist.
    """
    if await pool.fetchval("SELECT to_regclass('experiments')") is None:
        return []
    try:
        # The request each answers (experiments.request_id, migration 008), read
        # through to_jsonb so a database without that column still gives cards.
        rows = await pool.fetch(
            "SELECT to_jsonb(e) AS row, q.request_id, q.reason AS request_reason "
            "FROM experiments e LEFT JOIN experiment_requests q "
            "ON q.request_id = (to_jsonb(e) ->> 'request_id')::uuid "
            "WHERE e.doer = $1 ORDER BY e.created_at DESC LIMIT $2",
            doer,
            limit,
        )
    except asyncpg.UndefinedColumnError:
        return []
    found = []
    for r in rows:
        item = {k: r["row"][k] for k in _EXPERIMENT_FIELDS if k in r["row"]}
        if r["request_id"] is not None:
            item["request_id"] = str(r["request_id"])
            item["request_reason"] = r["request_reason"]
        found.append(item)
    return found


@dataclass(frozen=True)
class OpenRequest:
    """The open experiment request of a doer and reason, and whether this call opened it."""

    request_id: UUID
    opened: bool  # this call created it (False: it was open already)
    published: bool  # its RequestExperiment was acknowledged by Kafka


async def open_request(
    pool: Any,
    *,
    doer: str,
    reason: str,
    hypothesis: str,
    message: str,
    evidence: dict[str, Any],
    source_event_id: UUID | None = None,
) -> OpenRequest:
    """Open a request for (doer, reason), or return the one already open (the dedup).

    The partial unique index on open requests decides between concurrent
    callers: the loser's insert becomes an update of ``last_triggered_at``.
    """
    row = await pool.fetchrow(
        """
        INSERT INTO experiment_requests AS r (
            request_id, doer, reason, hypothesis, message, evidence, source_event_id
        ) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
        ON CONFLICT (doer, reason) WHERE status = 'open'
        DO UPDATE SET last_triggered_at = now()
        RETURNING request_id, request_id = $1 AS opened, published_at IS NOT NULL AS published
        """,
        uuid4(),
        doer,
        reason,
        hypothesis,
        message,
        evidence,
        source_event_id,
    )
    return OpenRequest(row["request_id"], row["opened"], row["published"])


async def request_row(pool: Any, request_id: UUID) -> Any:
    """The stored request (a record), for building its event."""
    return await pool.fetchrow(
        "SELECT * FROM experiment_requests WHERE request_id = $1", request_id
    )


async def find_requests(pool: Any, prefix: str) -> list[Any]:
    """The requests whose id starts with ``prefix`` (dashes ignored), at most two."""
    from storage.pool import rows_by_event_id_start

    return await rows_by_event_id_start(
        pool, "experiment_requests", "*", prefix, id_column="request_id"
    )


async def mark_published(pool: Any, request_id: UUID) -> None:
    """Record that the request's event was acknowledged by Kafka."""
    await pool.execute(
        "UPDATE experiment_requests SET published_at = now() "
        "WHERE request_id = $1 AND published_at IS NULL",
        request_id,
    )


async def close_request(
    pool: Any, request_id: UUID, *, reason: str, experiment_id: str | None = None
) -> bool:
    """Close an open request (answered by an experiment, or dismissed); False if not open.

    ``pool`` may be a connection inside a transaction (the experiments stage
    closes a request in the transaction that creates its experiment). After
    this the same doer and reason can raise a new request.
    """
    status = await pool.execute(
        "UPDATE experiment_requests SET status = 'closed', closed_at = now(), "
        "closed_reason = $2, experiment_id = coalesce($3, experiment_id) "
        "WHERE request_id = $1 AND status = 'open'",
        request_id,
        reason,
        experiment_id,
    )
    return bool(status == "UPDATE 1")


async def open_requests(pool: Any, doer: str | None = None) -> list[Any]:
    """Open requests (of one doer, or all), oldest first."""
    return list(
        await pool.fetch(
            "SELECT * FROM experiment_requests WHERE status = 'open' "
            "AND ($1::text IS NULL OR doer = $1) ORDER BY opened_at, doer, reason",
            doer,
        )
    )


async def list_requests(
    pool: Any, *, doer: str | None = None, include_closed: bool = False, limit: int = 100
) -> list[Any]:
    """Experiment requests (open ones, or all), newest first, with the experiment answering each.

    ``answered_status`` is the status of the experiment that closed the request, if one did.
    """
    return list(
        await pool.fetch(
            """
            SELECT r.*, e.status AS answered_status
            FROM experiment_requests AS r
            LEFT JOIN experiments AS e ON e.experiment_id = r.experiment_id
            WHERE ($1::text IS NULL OR r.doer = $1) AND ($2 OR r.status = 'open')
            ORDER BY r.opened_at DESC, r.doer, r.reason LIMIT $3
            """,
            doer,
            include_closed,
            limit,
        )
    )
