"""Static group membership (LEARNOPS_GROUP_INSTANCE_ID) on a real broker: one id, one live worker.

Two live workers under one id never keep sharing its partitions: the one
replaced leaves at once (exit 75) saying why, and so does a newcomer handed an
assignment made for another worker's URL, together with the worker it
displaced. The CRL stage alone, on the broker's shortest session (6 s: a
heartbeat every 1.2 s). That a static worker killed with -9 takes its
partitions back at once is the fault subset's (its kills restart static
members) and `make faults`' measure (docs/operations.md, "Static membership").
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.faust_internals.membership import EXIT_STATUS
from learnops.simulation.orchestrator import Orchestrator
from tests.integration.kafka_io import consumed, publish
from tests.services import INPUT_TOPICS, WorkerProcess, end_offsets, free_port, start_group_at

TOPIC = "learning.run-completed"
SESSION_S = 6.0


def _worker(
    settings_env: dict[str, str], folder: Path, app_id: str, name: str, port: int
) -> WorkerProcess:
    env = {
        **settings_env,
        "LEARNOPS_STAGES": "crl",
        "LEARNOPS_GROUP_INSTANCE_ID": f"{app_id}-0",
        "LEARNOPS_SESSION_TIMEOUT_S": f"{SESSION_S:g}",
        # The URL Faust's assignment names is the web host and port, served or not.
        "LEARNOPS_WEB_ENABLED": "false",
        "LEARNOPS_WEB_PORT": str(port),
    }
    return WorkerProcess(env=env, log_path=folder / f"{name}.log", app_id=app_id)


def _exit_status(process: WorkerProcess, timeout: float) -> int | None:
    assert process.process is not None
    try:
        return process.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # still running: the caller says what it expected
        return None


async def test_two_live_workers_never_share_one_group_instance_id(
    topics: Any,
    producer: Any,
    settings: Any,
    settings_env: dict[str, str],
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    app_id = f"learnops-test-static-{tag}"
    orchestrator = Orchestrator(seed=42, doers=(f"Static{tag}",), run_prefix=f"static-{tag}")
    port = free_port()
    bootstrap = settings_env["KAFKA_BOOTSTRAP_SERVERS"]
    await start_group_at(bootstrap, app_id, await end_offsets(bootstrap, INPUT_TOPICS))
    started: list[WorkerProcess] = []

    async def start(name: str, on_port: int = port) -> WorkerProcess:
        process = _worker(settings_env, tmp_path, app_id, name, on_port)
        started.append(process)
        await asyncio.to_thread(process.start)
        return process

    async def scored() -> None:
        # Done by this group (the session's worker scores the same runs in its own).
        bundle = orchestrator.bundle(orchestrator.doers[0], occurred_at=datetime.now(UTC))
        sent = await publish(producer, TOPIC, [(bundle.doer.encode(), bundle.to_json())])
        await consumed(settings, app_id, sent, timeout=45)

    try:
        first = await start("first")

        # A second live worker under the same id takes the place of the first, which
        # leaves instead of rejoining and taking the partitions back, again and again.
        second = await start("second")
        assert await asyncio.to_thread(_exit_status, first, 30.0) == EXIT_STATUS, first.tail()
        assert "another worker started with the same LEARNOPS_GROUP_INSTANCE_ID" in " ".join(
            first.tail(200).split()
        )
        await scored()
        assert second.process is not None and second.process.poll() is None, second.tail()
        # These workers log in as the schema's owner (the session worker as learnops_worker,
        # tests/integration/test_health.py): said once at start.
        assert "database_role_is_owner" in second.log_path.read_text(errors="replace")

        # A newcomer on another URL is handed the assignment made for the live worker's:
        # it leaves saying so, and the worker it displaced leaves too.
        third = _worker(settings_env, tmp_path, app_id, "third", free_port())
        started.append(third)
        with contextlib.suppress(RuntimeError):  # it may leave before it is ready
            await asyncio.to_thread(third.start)
        assert await asyncio.to_thread(_exit_status, third, 30.0) == EXIT_STATUS, third.tail()
        assert "made for another worker's URL" in " ".join(third.tail(200).split())
        assert await asyncio.to_thread(_exit_status, second, 30.0) == EXIT_STATUS, second.tail()
    finally:
        for process in started:
            await asyncio.to_thread(process.stop)
