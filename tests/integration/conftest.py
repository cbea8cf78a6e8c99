"""Fixtures shared by integration tests: an empty database, a signing key, the executor."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from learning.signing import SigningKey, generate_key
from storage import signing_keys as keys_store
from storage.pool import create_pool
from tests.services import (
    WorkerProcess,
    drop_database,
    start_executor,
)


@pytest.fixture
async def empty_db(postgres_server: str) -> AsyncIterator[Any]:
    """A pool on a new, empty database of its own (no migrations), dropped afterwards."""
    name = f"learnops_mig_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    parts = urlsplit(postgres_server)
    pool = await create_pool(urlunsplit(parts._replace(path=f"/{name}")), min_size=1, max_size=2)
    yield pool
    await pool.close()
    await drop_database(postgres_server, name)


@pytest.fixture(scope="session")
async def signing_key(db: Any) -> SigningKey:
    key = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="tests")
    return key


@pytest.fixture(scope="session")
async def executor(
    topics: Any, settings_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """The local executor as its own process; doers named Unserved* are left to nobody."""
    log_path = tmp_path_factory.mktemp("executor") / "executor.log"
    process = await start_executor(settings_env, log_path, "(?!Unserved).*")
    yield process
    await asyncio.to_thread(process.stop)
