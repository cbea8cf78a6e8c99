"""The worker on a broker that wants SASL/SCRAM credentials, given them by the settings.

A second broker of scripts/kafka.sh (KAFKA_SASL=scram) on its own ports: clients
without the password are refused, and `learnops topics create` and a worker that
read KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* create the topics and score a run.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from agents.settings import Settings
from learnops.simulation.orchestrator import Orchestrator
from tests.integration.kafka_io import eventually
from tests.services import WorkerProcess, free_port, run_learnops, sasl_kafka_service


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with sasl_kafka_service(tmp_path_factory.mktemp("sasl-kafka")) as found:
        yield found


@pytest.mark.parametrize("password", [None, "not-the-password"])
async def test_a_client_without_the_scram_password_is_refused(
    sasl_broker: dict[str, str], password: str | None
) -> None:
    options: dict[str, Any] = {"bootstrap_servers": sasl_broker["KAFKA_BOOTSTRAP_SERVERS"]}
    if password is not None:
        options |= {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": sasl_broker["KAFKA_SASL_MECHANISM"],
            "sasl_plain_username": sasl_broker["KAFKA_SASL_USERNAME"],
            "sasl_plain_password": password,
        }
    producer = AIOKafkaProducer(request_timeout_ms=5000, **options)
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()


async def test_the_worker_scores_a_run_on_a_scram_broker_with_credentials_from_settings(
    sasl_broker: dict[str, str],
    settings_env: dict[str, str],
    role_urls: dict[str, str],
    db: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    assert sasl_broker["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    env = {**settings_env, **sasl_broker, "LEARNOPS_WEB_PORT": str(free_port())}
    env["LEARNOPS_DATA_DIR"] = str(tmp_path_factory.mktemp("sasl-worker-data"))
    created = await asyncio.to_thread(run_learnops, env, "topics", "create")
    assert created.returncode == 0, created.stderr

    worker_env = {**env, "DATABASE_URL": role_urls.get("worker", env["DATABASE_URL"])}
    process = WorkerProcess(
        env=worker_env, log_path=tmp_path_factory.mktemp("sasl-logs") / "worker.log"
    )
    await asyncio.to_thread(process.start)
    try:
        settings = Settings(
            kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
            kafka_security_protocol=env["KAFKA_SECURITY_PROTOCOL"],
            kafka_sasl_mechanism=env["KAFKA_SASL_MECHANISM"],
            kafka_sasl_username=env["KAFKA_SASL_USERNAME"],
            kafka_sasl_password=env["KAFKA_SASL_PASSWORD"],
        )
        doer = f"Sasl{uuid.uuid4().hex[:8]}"
        bundle = Orchestrator(seed=17, doers=(doer,), run_prefix=f"sasl-{doer}").bundle(
            doer, occurred_at=datetime.now(UTC)
        )
        producer = settings.kafka_producer()
        await producer.start()
        try:
            await producer.send_and_wait(
                "learning.run-completed", key=doer.encode(), value=bundle.to_json()
            )
        finally:
            await producer.stop()

        async def scored() -> int:
            query = "SELECT count(*) FROM crl_results WHERE run_id = $1"
            return int(await db.fetchval(query, bundle.run_id))

        assert await eventually(scored, lambda n: n == 1, timeout=90) == 1
    finally:
        await asyncio.to_thread(process.stop)
    assert "SaslAuthenticationFailed" not in process.tail(400)
