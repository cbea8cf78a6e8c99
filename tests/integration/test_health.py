"""The worker's /healthz, /readyz and /metrics, on a real worker; readiness reasons in process."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agents.app import create_app
from agents.health import readiness
from agents.settings import Settings
from tests.integration.kafka_io import eventually


def _get(port: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_a_running_worker_is_live_ready_and_serves_its_metrics(
    worker: Any, settings_env: dict[str, str], producer: Any
) -> None:
    port = settings_env["LEARNOPS_WEB_PORT"]
    status, body = await asyncio.to_thread(_get, port, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    async def ready() -> tuple[int, bytes]:
        return await asyncio.to_thread(_get, port, "/readyz")

    status, body = await eventually(ready, lambda r: r[0] == 200, timeout=60)
    assert (status, json.loads(body)) == (200, {"status": "ready"})

    # An undecodable bundle: the crl stage takes it in and dead-letters it.
    await producer.send_and_wait("learning.run-completed", b"{not json", key=b"HealthDoer")

    async def metrics() -> str:
        return (await asyncio.to_thread(_get, port, "/metrics"))[1].decode()

    text = await eventually(
        metrics,
        lambda t: 'learnops_dead_letters_total{error_type="json",stage="crl"}' in t,
        timeout=60,
    )
    assert 'learnops_dead_letters_total{error_type="json",stage="crl"}' in text
    for name in (
        "learnops_events_in_total",
        "learnops_batch_size_bucket",
        "learnops_batch_duration_seconds_bucket",
        "learnops_consumer_lag",
        "learnops_table_recovery",
        "learnops_postgres_retries_total",
    ):
        assert name in text, name
    # Readiness, checked at the scrape: an outage shows with no traffic flowing.
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name in ("learnops_ready", "learnops_dependency_up")
        for sample in family.samples
    }
    assert samples == {
        ("learnops_ready", ()): 1.0,
        ("learnops_dependency_up", (("dependency", "kafka"),)): 1.0,
        ("learnops_dependency_up", (("dependency", "postgres"),)): 1.0,
    }, samples
    # Faust's own sensor is served beside ours.
    assert "messages_received" in text
    # The session worker logs in as learnops_worker: no owner warning (see test_cli.py).
    assert "database_role_is_owner" not in worker.log_path.read_text(errors="replace")
    # Every input partition has a lag series, committed on or not yet (a partition
    # of a quiet topic has no commit: it lags by what lies past its log start).
    lagging = {
        (sample.labels["topic"], sample.labels["partition"])
        for family in text_string_to_metric_families(text)
        if family.name == "learnops_consumer_lag"
        for sample in family.samples
    }
    for topic in ("learning.run-completed", "learning.decisions", "learning.commands"):
        assert {p for t, p in lagging if t == topic} == {"0", "1", "2", "3"}, (topic, lagging)
    assert not any(t.endswith("-changelog") for t, _ in lagging)


async def test_readiness_names_what_is_missing_before_the_worker_starts() -> None:
    app = create_app(Settings(learnops_app_id="readiness-test"), stages=["crl"])
    reasons = await readiness(app)
    assert "the PostgreSQL pool is not open yet" in reasons
    assert "the Kafka producer has not started" in reasons
    assert any("recovering" in reason for reason in reasons)


async def test_postgresql_that_does_not_answer_is_down_in_the_metrics(database_url: str) -> None:
    import socket

    import asyncpg
    from prometheus_client import REGISTRY

    app = create_app(Settings(learnops_app_id="readiness-down"), stages=["crl"])
    up = {"dependency": "postgres"}
    # A real pool whose server is gone: a port held here and never listened on refuses
    # every connection.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        gone = await asyncpg.create_pool(f"postgresql://nobody@127.0.0.1:{port}/x", min_size=0)
        app.use_pool(gone)
        try:
            reasons = await readiness(app)
            assert any(r.startswith("PostgreSQL does not answer") for r in reasons), reasons
            assert REGISTRY.get_sample_value("learnops_dependency_up", up) == 0
        finally:
            await gone.close()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    app.use_pool(pool)
    try:
        reasons = await readiness(app)
        assert not any(r.startswith("PostgreSQL") for r in reasons), reasons
        assert REGISTRY.get_sample_value("learnops_dependency_up", up) == 1
    finally:
        await pool.close()


async def test_the_schema_owner_is_told_from_the_worker_role(
    db: Any, role_urls: dict[str, str]
) -> None:
    """What a worker checks at start (a production worker refuses to run as the owner:
    tests/unit/test_settings.py). A member of the owner role or a superuser counts as the
    owner too; the tests' server lets no test login create such a role."""
    import asyncpg

    from storage.pool import schema_owner_role

    async with db.acquire() as conn:
        owner = await schema_owner_role(conn)
        assert owner == await conn.fetchval("SELECT current_user")
    assert "worker" in role_urls, "the tests need scripts/postgres.sh's learnops_worker login"
    conn = await asyncpg.connect(role_urls["worker"])
    try:
        assert await schema_owner_role(conn) is None
    finally:
        await conn.close()
