"""Session fixtures: a real Kafka broker, a real PostgreSQL, topics, schema and a worker."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests import operators
from tests.services import (
    DATABASE_ROLES,
    REPO,
    WorkerProcess,
    create_migrated_database,
    drop_database,
    free_port,
    kafka_service,
    postgres_service,
    role_database_url,
    start_after_inputs,
)


def pytest_configure(config: pytest.Config) -> None:
    """Refuse pytest-xdist workers on one given broker: each session worker would read the others'.

    Without KAFKA_BOOTSTRAP_SERVERS every xdist worker starts its own services
    (tests/services.py); with it, run the tests in one process (``-n 0``).
    """
    processes = getattr(config.option, "numprocesses", None)
    if processes and processes != 1 and os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        raise pytest.UsageError(
            f"-n {processes} with KAFKA_BOOTSTRAP_SERVERS set: the xdist workers' session "
            "workers would all consume that broker's topics; use -n 0, or unset it so each "
            "xdist worker starts its own Kafka and PostgreSQL"
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration as an integration test."""
    for item in items:
        if "tests/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker."""
    with kafka_service() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """DSN of a real PostgreSQL server (its own database, not ours)."""
    with postgres_service() as dsn:
        yield dsn


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
async def database_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh database for this test session, migrated to the latest schema."""
    name = f"learnops_test_{uuid.uuid4().hex[:10]}"
    yield await create_migrated_database(postgres_server, name, operators=True)
    await drop_database(postgres_server, name)


@pytest.fixture(scope="session")
def role_urls(database_url: str) -> dict[str, str]:
    """The session database's URLs as learnops_worker, _reader and _keyadmin, if they log in."""
    database = urlsplit(database_url).path.lstrip("/")
    found = {role: role_database_url(role) for role in DATABASE_ROLES}
    return {role: _with_database(url, database) for role, url in found.items() if url}


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[Any]:
    """An asyncpg pool on the session's database."""
    from storage.pool import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def worker_key_file(db: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test workers' signing key (a PEM file), its public half in the trusted keyring."""
    from learning.signing import generate_key
    from storage.signing_keys import add_signing_key

    key = generate_key()
    path = tmp_path_factory.mktemp("worker-key") / "worker.pem"
    path.write_bytes(key.to_pem())
    await add_signing_key(db, key.public_key, created_by="tests", note="test workers")
    return path


@pytest.fixture(scope="session")
def settings_env(
    kafka_bootstrap: str,
    database_url: str,
    role_urls: dict[str, str],
    worker_key_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """Environment that points a learnops process at the test services.

    The CLI's key commands log in as learnops_keyadmin when it exists, as an
    operator's would; everything else as the owner of the session's database.
    """
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": database_url,
        "LEARNOPS_WEB_PORT": str(free_port()),
        "LEARNOPS_DATA_DIR": str(tmp_path_factory.mktemp("worker-data")),
        # The CLI signs commands with the tests' owner key, the worker with its own.
        **operators.write_keys(tmp_path_factory.mktemp("operator-keys")),
        "LEARNOPS_WORKER_SIGNING_KEY_FILE": str(worker_key_file),
    }
    for variable in ("LEARNOPS_MIGRATE_DATABASE_URL", "LEARNOPS_KEYADMIN_DATABASE_URL"):
        env.pop(variable, None)
    if "keyadmin" in role_urls:
        env["LEARNOPS_KEYADMIN_DATABASE_URL"] = role_urls["keyadmin"]
    return env


@pytest.fixture(scope="session")
def settings(settings_env: dict[str, str]) -> Any:
    """Settings for in-process clients (admin, producers) of the test services."""
    from agents.settings import Settings

    return Settings(
        kafka_bootstrap_servers=settings_env["KAFKA_BOOTSTRAP_SERVERS"],
        database_url=settings_env["DATABASE_URL"],
        learnops_operator_key=settings_env["LEARNOPS_OPERATOR_KEY"],
        learnops_worker_key=settings_env["LEARNOPS_WORKER_KEY"],
        learnops_worker_signing_key_file=settings_env["LEARNOPS_WORKER_SIGNING_KEY_FILE"],
    )


@pytest.fixture(scope="session")
async def topics(settings: Any) -> Any:
    """The catalogue's topics, created on the broker."""
    from agents.topics import ensure, load_catalog

    catalog = load_catalog(REPO / "topics.yaml")
    await ensure(settings, catalog)
    return catalog


@pytest.fixture(scope="session")
async def worker(
    topics: Any,
    settings_env: dict[str, str],
    role_urls: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[WorkerProcess]:
    """One `learnops worker` process for the session, as learnops_worker when that role logs in."""
    from agents.app import STAGES

    env = dict(settings_env)
    if "worker" in role_urls:
        env["DATABASE_URL"] = role_urls["worker"]
    # Every stage but the bandit: tests/integration/test_bandit.py runs its own, allocating
    # every 20 runs, and two bandit stages would publish two sequences for its doers.
    env["LEARNOPS_STAGES"] = ",".join(name for name in STAGES if name != "bandit")
    process = WorkerProcess(env=env, log_path=tmp_path_factory.mktemp("logs") / "worker.log")
    await start_after_inputs(process)
    yield process
    await asyncio.to_thread(process.stop)


@pytest.fixture(scope="session")
async def producer(kafka_bootstrap: str) -> AsyncIterator[Any]:
    """An aiokafka producer on the test broker (acks=all)."""
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    await prod.start()
    yield prod
    await prod.stop()
