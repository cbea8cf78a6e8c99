"""The services and workers a fault script runs against, and the faults it can inject.

A script brings up its own Kafka broker and PostgreSQL (scripts/kafka.sh,
scripts/postgres.sh) on free loopback ports and a state directory of its own
under .local/faults/, so it never meets the ports others use; or, when
``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` are set, it uses those (then
the broker and database cannot be restarted by the script). Workers are real
``learnops worker`` processes, killed with SIGKILL for their whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.ledger import CONSUMED_TOPICS
from tests.services import (
    REPO,
    WorkerProcess,
    end_offsets,
    free_port,
    start_group_at,
)

FAULTS_STATE_DIR = REPO / ".local" / "faults"


def _last_assignment(output: str, variable: str) -> str:
    for line in reversed(output.splitlines()):
        line = line.removeprefix("export ").strip()
        if line.startswith(f"{variable}="):
            return line.split("=", 1)[1].strip().strip("'\"")
    raise RuntimeError(f"no {variable}=… line in:\n{output}")


@dataclass
class Services:
    """A broker and a database; ``own`` when this script started them (and may restart them)."""

    bootstrap: str
    database_url: str
    own: bool
    state_dir: Path
    ports: dict[str, str] = field(default_factory=dict)
    # The workers' signing key (a PEM file, trusted by prepare()): their canary
    # decisions are signed with it, or the policy stage refuses them.
    worker_key_file: Path | None = None

    def _script(self, script: str, action: str) -> str:
        if not self.own:
            raise RuntimeError(
                f"cannot {action} {script}: the services were given "
                "(KAFKA_BOOTSTRAP_SERVERS/DATABASE_URL); unset them to let the script own its own"
            )
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / script), action],
            env={**os.environ, **self.ports, "LEARNOPS_STATE_DIR": str(self.state_dir)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"scripts/{script} {action} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        return result.stdout

    def kafka(self, action: str) -> str:
        """Run scripts/kafka.sh ACTION (up, down) on this script's broker."""
        return self._script("kafka.sh", action)

    def postgres(self, action: str) -> str:
        """Run scripts/postgres.sh ACTION (up, down) on this script's database server."""
        return self._script("postgres.sh", action)


@contextlib.contextmanager
def services(name: str, *, keep: bool = False) -> Any:
    """The given services, or a fresh broker and PostgreSQL of this script's own."""
    given_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    given_db = os.environ.get("DATABASE_URL")
    if given_kafka and given_db:
        yield Services(given_kafka, given_db, own=False, state_dir=FAULTS_STATE_DIR / name)
        return
    state_dir = FAULTS_STATE_DIR / name
    ports = {
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "PG_PORT": str(free_port()),
    }
    found = Services("", "", own=True, state_dir=state_dir, ports=ports)
    _wipe(found)
    try:
        found.bootstrap = _last_assignment(found.kafka("up"), "KAFKA_BOOTSTRAP_SERVERS")
        found.database_url = _last_assignment(found.postgres("up"), "DATABASE_URL")
        yield found
    finally:
        if not keep:
            _wipe(found)


def _wipe(found: Services) -> None:
    """Stop whatever ran in the state dir before, and start from empty storage."""
    if found.state_dir.exists():
        for script in ("kafka.sh", "postgres.sh"):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                found._script(script, "down")
        shutil.rmtree(found.state_dir, ignore_errors=True)


def settings_for(found: Services) -> Any:
    """In-process Settings (admin, producer, router) for these services."""
    from agents.settings import Settings

    return Settings(kafka_bootstrap_servers=found.bootstrap, database_url=found.database_url)


async def prepare(found: Services) -> Any:
    """Create every topic of topics.yaml and migrate the database; an asyncpg pool on it."""
    from agents.topics import ensure, load_catalog
    from storage.migrate import migrate
    from storage.pool import create_pool

    await ensure(settings_for(found), load_catalog(REPO / "topics.yaml"))
    pool = await create_pool(found.database_url, min_size=1, max_size=4)
    await migrate(pool)
    await trust_worker_key(found, pool)
    return pool


async def trust_worker_key(found: Services, pool: Any) -> None:
    """Give the workers a signing key and trust its public half."""
    from learning.signing import generate_key
    from storage.signing_keys import add_signing_key

    key = generate_key()
    found.state_dir.mkdir(parents=True, exist_ok=True)
    found.worker_key_file = found.state_dir / f"worker-{key.key_id}.pem"
    found.worker_key_file.write_bytes(key.to_pem())
    await add_signing_key(pool, key.public_key, created_by="faults", note="fault-suite workers")


async def operator_keys(found: Services, pool: Any) -> tuple[Any, dict[str, str]]:
    """An owner's key for the traffic's commands and the workers' own operator key, enrolled.

    Fresh keys each run (a shared database may hold others); the owner may do
    anything on every doer, the workers' key holds the ``operator`` role (it signs
    the experiments stage's deployment commands). Also the workers' environment.
    """
    from learning.signing import generate_key
    from storage.operator_keys import add_operator_key, grant_role

    owner, worker = generate_key(), generate_key()
    for key, role in ((owner, "owner"), (worker, "operator")):
        await add_operator_key(pool, key.public_key, operator=f"faults-{role}", actor="faults")
        await grant_role(pool, key.key_id, "*", role, actor="faults")
    found.state_dir.mkdir(parents=True, exist_ok=True)
    path = found.state_dir / f"operator-{worker.key_id}.pem"
    path.write_bytes(worker.to_pem())
    path.chmod(0o600)
    return owner, {"LEARNOPS_WORKER_KEY": str(path)}


def slot_port() -> int:
    """A free loopback port below Linux's ephemeral range (32768-60999).

    Outgoing connections draw their ports from that range: a port a worker slot
    keeps across restarts, picked there, could be taken while the slot is down.
    """
    for _ in range(500):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free loopback port in 20000-32000")


@dataclass
class Workers:
    """``learnops worker`` processes of one consumer group (one app id), started and killed."""

    found: Services
    name: str
    log_dir: Path
    app_id: str = field(default_factory=lambda: f"learnops-faults-{uuid.uuid4().hex[:8]}")
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Each slot's worker joins as a static member (LEARNOPS_GROUP_INSTANCE_ID, one per slot):
    #: a restarted one takes its partitions back without waiting out the killed one's session.
    static: bool = False
    started: int = 0
    running: dict[str, WorkerProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def env(self, slot: str) -> dict[str, str]:
        """The environment of one worker slot (its own web port and data dir).

        A slot keeps its web port across restarts, as a static member must (Faust's
        assignment names the worker's URL).
        """
        data_dir = self.log_dir / f"data-{slot}"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = self.ports.setdefault(slot, slot_port())
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.found.bootstrap,
            "DATABASE_URL": self.found.database_url,
            "LEARNOPS_WEB_PORT": str(port),
            **({"LEARNOPS_GROUP_INSTANCE_ID": f"{self.app_id}-{slot}"} if self.static else {}),
            "LEARNOPS_WEB_HOST": "127.0.0.1",
            "LEARNOPS_DATA_DIR": str(data_dir),
            **(
                {"LEARNOPS_WORKER_SIGNING_KEY_FILE": str(self.found.worker_key_file)}
                if self.found.worker_key_file
                else {}
            ),
            **self.extra_env,
        }

    async def begin_after_inputs(self) -> None:
        """Commit the group at the end of every topic it reads: a shared broker's history is unread.

        The compacted topics too: a fault run counts its dead letters and waits for
        its group's commits, and a record another test left there (a policy change
        under a forged key, a replayed bandit freeze) was a dead letter, or a
        backlog, that this run's traffic never sent (a clean-clone make test).
        """
        bootstrap = self.found.bootstrap
        offsets = await end_offsets(bootstrap, CONSUMED_TOPICS)
        await start_group_at(bootstrap, self.app_id, offsets)

    async def start(self, slot: str = "a", ready_timeout: float = 120.0) -> WorkerProcess:
        """Start a worker in ``slot`` (a fresh log per start) and wait until it is ready."""
        self.started += 1
        log_path = self.log_dir / f"worker-{slot}-{self.started:03d}.log"
        process = WorkerProcess(env=self.env(slot), log_path=log_path, app_id=self.app_id)
        await asyncio.to_thread(process.start, ready_timeout)
        self.running[slot] = process
        return process

    async def kill_while_starting(self, after_s: float, slot: str = "a") -> bool:
        """Start a worker and SIGKILL it ``after_s`` later, ready or not; whether it was ready."""
        self.started += 1
        log_path = self.log_dir / f"worker-{slot}-{self.started:03d}.log"
        process = WorkerProcess(env=self.env(slot), log_path=log_path, app_id=self.app_id)
        starting = asyncio.create_task(asyncio.to_thread(process.start, 120.0))
        await asyncio.sleep(after_s)
        while process.process is None:
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.process.pid, signal.SIGKILL)
        try:
            await starting
        except RuntimeError:  # it died before it was ready, as meant
            return False
        process.process.wait(timeout=10)
        return True

    def kill9(self, slot: str = "a") -> None:
        """SIGKILL the worker in ``slot`` and its whole process group, and reap it."""
        process = self.running.pop(slot)
        assert process.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.process.pid, signal.SIGKILL)
        process.process.wait(timeout=10)

    async def stop_all(self) -> dict[str, int | None]:
        """Stop every running worker cleanly (SIGTERM, then SIGKILL after 30 s); exit codes."""
        codes = {}
        for slot, process in list(self.running.items()):
            codes[slot] = await asyncio.to_thread(process.stop, 30.0)
            del self.running[slot]
        return codes

    def kill_all(self) -> None:
        """SIGKILL every running worker (the clean-up of a failed run)."""
        for slot in list(self.running):
            self.kill9(slot)

    def logs(self) -> list[Path]:
        """Every worker log of this run, oldest first."""
        return sorted(self.log_dir.glob("worker-*.log"))

    def log_text(self) -> str:
        """All worker logs, concatenated."""
        return "\n".join(p.read_text(errors="replace") for p in self.logs())


@contextlib.asynccontextmanager
async def workers(found: Services, name: str, **options: Any) -> AsyncIterator[Workers]:
    """A consumer group of workers for one script; every worker is gone afterwards."""
    log_dir = FAULTS_STATE_DIR / f"{name}-logs" / time.strftime("%Y%m%dT%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    group = Workers(found, name, log_dir, **options)
    await group.begin_after_inputs()
    try:
        yield group
    finally:
        group.kill_all()


async def wait_for(
    probe: Any, done: Any, *, timeout: float, interval: float = 0.5, what: str = "condition"
) -> Any:
    """Poll ``await probe()`` until ``done(value)``; the value, or TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not done(value):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout:.0f}s (last: {value!r})")
        await asyncio.sleep(interval)
        value = await probe()
    return value


def run_script(name: str, scenario: Any) -> None:
    """Run ``await scenario(services, pool)`` (a Report) on this script's services; print it, exit.

    Exits 0 when the report shows nothing lost and nothing counted twice, 1 otherwise.
    """
    import logging
    import sys

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # aiokafka logs every retry of a new topic or a restarted broker; the report says what matters.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)  # its reconnects in an outage

    async def body(found: Services) -> Any:
        pool = await prepare(found)
        try:
            return await scenario(found, pool)
        finally:
            await pool.close()

    with services(name) as found:
        report = asyncio.run(body(found))
    print(report.render(), flush=True)
    sys.exit(0 if report.ok else 1)
