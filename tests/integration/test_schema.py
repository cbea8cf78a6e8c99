"""The seed's schema, complete: every table, view and trigger, read back from PostgreSQL's catalog.

The session database is built by the same migrations `learnops db migrate` applies.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

TABLES = {
    "crl_results",
    "policies",
    "policy_promotions",
    "experiments",
    "offline_replays",
    "shadow_deployments",
    "deployment_routings",
    "skill_cards",
    "golden_datasets",
    "learning_progress",
    "dataset_samples",
    "crl_daily",
}
VIEWS = {
    "v_crl_trend_by_doer",
    "v_policy_performance",
    "v_experiment_success_rate",
    # The console's (migration 017).
    "v_crl_trend_by_phase",
    "v_crl_trend_by_doer_phase",
    "v_crl_trend_by_policy",
    "v_doers_latest",
    "v_experiment_success_by_type",
    "v_promoted_experiments",
    "v_experiment_improvement_by_type",
    "v_active_policies",
    "v_policy_moves_per_week",
    "v_skill_card_ranking",
    "v_failure_modes",
}
TRIGGERS = {
    "trigger_policy_updated": "policies",
    "trigger_crl_progress": "crl_results",
    "trigger_crl_daily_fold": "crl_results",
}


async def test_every_table_of_the_schema_exists(db: Any) -> None:
    rows = await db.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    missing = TABLES - {r["table_name"] for r in rows}
    assert not missing, f"tables missing: {sorted(missing)}"


async def test_every_view_exists_and_can_be_queried(db: Any) -> None:
    rows = await db.fetch(
        "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'"
    )
    missing = VIEWS - {r["table_name"] for r in rows}
    assert not missing, f"views missing: {sorted(missing)}"
    for view in sorted(VIEWS):
        # A view whose query no longer matches its tables fails here, not in a report.
        assert await db.fetchval(f"SELECT count(*) FROM {view}") >= 0


async def test_every_trigger_exists_on_its_table(db: Any) -> None:
    rows = await db.fetch(
        "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE NOT t.tgisinternal"
    )
    found = {r["tgname"]: r["relname"] for r in rows}
    for trigger, table in TRIGGERS.items():
        assert found.get(trigger) == table, f"{trigger} is not on {table}: {found.get(trigger)}"


async def test_skill_cards_keep_one_current_card_per_tenant_and_doer(db: Any) -> None:
    # The database, not only the code, refuses a second current card of a tenant's doer.
    indexes = await db.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'skill_cards'"
    )
    defs = {r["indexname"]: r["indexdef"] for r in indexes}
    unique = defs["skill_cards_one_current_per_tenant_doer"]
    assert "UNIQUE" in unique and "(tenant_id, doer)" in unique
    assert "WHERE is_current" in unique


async def test_a_second_current_card_of_one_tenant_is_refused_and_another_tenant_has_its_own(
    db: Any,
) -> None:
    import asyncpg

    doer = f"Schema{uuid.uuid4().hex[:8]}"
    insert = (
        "INSERT INTO skill_cards (tenant_id, doer, event_id, as_of, content_hash, runs, card,"
        " computed_at) VALUES ($1, $2, $3, CURRENT_DATE, repeat('a', 64), 0, '{}', now())"
    )
    # In a transaction rolled back: no test after this one meets these bare rows.
    async with db.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(insert, "acme", doer, uuid.uuid4())
            await conn.execute(insert, "globex", doer, uuid.uuid4())
            # Each refused INSERT in a savepoint, rolled back alone.
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute(insert, "acme", doer, uuid.uuid4())
            with pytest.raises(asyncpg.CheckViolationError):
                async with conn.transaction():
                    await conn.execute(insert, "not/a-name", doer, uuid.uuid4())
        finally:
            await transaction.rollback()
