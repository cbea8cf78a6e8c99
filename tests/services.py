"""Real Kafka and PostgreSQL for the integration tests, and a worker run as a real process.

Where each service comes from, in order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` when set (an existing cluster);
2. testcontainers, when ``docker info`` answers;
3. the project's own scripts (scripts/kafka.sh, scripts/postgres.sh), on test-only
   ports and state directories so they never clash with `make demo`'s; under
   pytest-xdist (`make test` runs ``-n 3``) each worker process starts its own pair,
   so two session workers never read each other's topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload
from urllib.parse import urlsplit, urlunsplit

from tests.forkserver import ForkedProcess, ForkServer

REPO = Path(__file__).resolve().parent.parent
TEST_STATE_DIR = REPO / ".local" / "test"
TEST_PORTS = {"KAFKA_PORT": "19192", "KAFKA_CONTROLLER_PORT": "19193", "PG_PORT": "15532"}
# pytest-xdist worker gwN runs its own broker and server, TEST_PORTS shifted by N * this.
XDIST_PORT_STEP = 10


def service_ports() -> dict[str, str]:
    """This test process's service ports: TEST_PORTS, shifted for xdist worker gwN.

    ``LEARNOPS_TEST_PORT_OFFSET`` shifts them all (two checkouts on one machine).
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    offset = int(os.environ.get("LEARNOPS_TEST_PORT_OFFSET", "0") or 0)
    offset += XDIST_PORT_STEP * int(worker or 0)
    return {name: str(int(port) + offset) for name, port in TEST_PORTS.items()}


def service_state_dir() -> Path:
    """The state directory of this test process's own services (one per set of ports)."""
    port = service_ports()["KAFKA_PORT"]
    return (
        TEST_STATE_DIR
        if port == TEST_PORTS["KAFKA_PORT"]
        else TEST_STATE_DIR.with_name(f"test-{port}")
    )


def docker_works() -> bool:
    """True when a Docker engine answers (not just the client being installed)."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


# The test brokers live for one session and carry little traffic: the C1 compiler
# alone and one GC thread cut their CPU by about 40 % (start-up 4.0 → 2.4 s; 20.6 → 12.5 s over
# test_canary.py and test_transport.py), CPU the workers and tests share on two cores.
TEST_BROKER_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:ParallelGCThreads=1 -XX:ConcGCThreads=1"


def _script_env() -> dict[str, str]:
    return {
        "KAFKA_JVM_OPTS": TEST_BROKER_JVM_OPTS,
        **os.environ,
        **service_ports(),
        "LEARNOPS_STATE_DIR": str(service_state_dir()),
    }


def _run_script(script: str, action: str, *args: str) -> str:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / script), action, *args],
        env=_script_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"scripts/{script} {action} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def _last_assignment(output: str, variable: str) -> str:
    for line in reversed(output.splitlines()):
        line = line.removeprefix("export ").strip()
        if line.startswith(f"{variable}="):
            return line.split("=", 1)[1].strip().strip("'\"")
    raise RuntimeError(f"no {variable}=… line in:\n{output}")


@contextlib.contextmanager
def kafka_service() -> Iterator[str]:
    """Bootstrap servers of a real broker for the session."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if docker_works():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    output = _run_script("kafka.sh", "up")
    try:
        yield _last_assignment(output, "KAFKA_BOOTSTRAP_SERVERS")
    finally:
        if not os.environ.get("LEARNOPS_KEEP_SERVICES"):
            _run_script("kafka.sh", "down")


@contextlib.contextmanager
def postgres_service() -> Iterator[str]:
    """A DSN of a real PostgreSQL server for the session."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    if docker_works():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    output = _run_script("postgres.sh", "up")
    try:
        yield _last_assignment(output, "DATABASE_URL")
    finally:
        if not os.environ.get("LEARNOPS_KEEP_SERVICES"):
            _run_script("postgres.sh", "down")


@contextlib.contextmanager
def sasl_kafka_service(state_dir: Path) -> Iterator[dict[str, str]]:
    """A second broker of scripts/kafka.sh with SASL/SCRAM, on free ports; its client settings.

    Yields KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM,
    KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD as the script printed them.
    """
    env = {
        "KAFKA_JVM_OPTS": TEST_BROKER_JVM_OPTS,
        **os.environ,
        "KAFKA_SASL": "scram",
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_HEAP_OPTS": "-Xmx256m -Xms128m",
        "LEARNOPS_STATE_DIR": str(state_dir),
    }
    script = ["bash", str(REPO / "scripts" / "kafka.sh")]
    result = subprocess.run(
        [*script, "up"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    try:
        if result.returncode != 0:
            raise RuntimeError(f"kafka.sh up (KAFKA_SASL=scram) failed:\n{result.stderr[-3000:]}")
        yield dict(
            line.split("=", 1) for line in result.stdout.splitlines() if line.startswith("KAFKA_")
        )
    finally:
        subprocess.run([*script, "down"], env=env, capture_output=True, timeout=120, check=False)


#: The least-privilege database roles besides the owner (migration 021).
DATABASE_ROLES = ("worker", "reader", "keyadmin")


def role_database_url(role: str) -> str | None:
    """A URL that logs in as ``learnops_<role>``, or None when this server has no such login.

    ``LEARNOPS_<ROLE>_DATABASE_URL`` when set (beside an external DATABASE_URL);
    otherwise, on the cluster scripts/postgres.sh runs for the tests, its URL.
    """
    given = os.environ.get(f"LEARNOPS_{role.upper()}_DATABASE_URL")
    if given:
        return given
    if os.environ.get("DATABASE_URL") or docker_works():
        return None
    return _run_script("postgres.sh", "url", role).strip()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def learnops_command() -> list[str]:
    """How to run the `learnops` console script of this environment."""
    script = Path(sys.executable).parent / "learnops"
    if script.exists():
        return [str(script)]
    found = shutil.which("learnops")
    if found:
        return [found]
    return [sys.executable, "-c", "from learnops.cli.main import main; main()"]


@dataclass
class WorkerProcess:
    """A `learnops worker` subprocess with its own consumer group and log file."""

    env: dict[str, str]
    log_path: Path
    app_id: str = field(default_factory=lambda: f"learnops-test-{uuid.uuid4().hex[:8]}")
    process: subprocess.Popen[bytes] | ForkedProcess | None = None

    def start(self, ready_timeout: float = 90.0) -> None:
        """Start the worker and wait until Faust reports it ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "LEARNOPS_APP_ID": self.app_id}
        self.process = start_learnops(env, ("worker", "-l", "info"), self.log_path)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.tail()}")
            if "[^Worker]: Ready" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"worker not ready after {ready_timeout}s:\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if Faust hangs in shutdown; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=10)

    def tail(self, lines: int = 60) -> str:
        """The last lines of the worker's log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def start_executor(env: dict[str, str], log_path: Path, doers: str) -> WorkerProcess:
    """`learnops replay executor` for the doers matching ``doers`` (a regex), as its own process.

    Its consumer group starts at the end of learning.replay-tasks: tasks an
    earlier session left on a shared broker are not its to run.
    """
    group = f"learnops-test-executor-{uuid.uuid4().hex[:8]}"
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    await start_group_at(bootstrap, group, await end_offsets(bootstrap, ("learning.replay-tasks",)))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = WorkerProcess(env=env, log_path=log_path)
    args = ("replay", "executor", "--group", group, "--doers", doers)
    process.process = start_learnops(env, args, log_path)
    return process


# Topics a fresh test worker need not read from the beginning: inputs whose
# history belongs to earlier sessions on a shared broker. Compacted state
# topics (learning.policy-changes, learning.skill-cards) are read from the start.
INPUT_TOPICS = (
    "learning.run-completed",
    "learning.task-routed",
    "learning.crl-computed",
    "learning.commands",
    "learning.decisions",
    "learning.samples",
    "learning.experiments",
    "learning.replay-tasks",
    "learning.alerts",
)


async def end_offsets(bootstrap: str, topics: tuple[str, ...]) -> dict[Any, int]:
    """The current end offset of every partition of these topics."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        known = await consumer.topics()
        partitions = []
        for topic in topics:
            if topic not in known:
                continue
            for _ in range(100):
                found = consumer.partitions_for_topic(topic)
                if found:
                    break
                await consumer._client.force_metadata_update()
            partitions += [TopicPartition(topic, p) for p in sorted(found or ())]
        return dict(await consumer.end_offsets(partitions)) if partitions else {}
    finally:
        await consumer.stop()


async def start_group_at(bootstrap: str, group: str, offsets: dict[Any, int]) -> None:
    """Commit ``offsets`` for ``group``, so a worker in that group reads only what follows."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import OffsetAndMetadata

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


async def start_after_inputs(process: WorkerProcess) -> None:
    """Start a worker whose consumer group begins after the input events already on the broker.

    On a shared broker the input topics hold earlier sessions' events; tests use
    their own doers, and a new group reading all of that history would only be slow.
    """
    bootstrap = process.env["KAFKA_BOOTSTRAP_SERVERS"]
    await start_group_at(bootstrap, process.app_id, await end_offsets(bootstrap, INPUT_TOPICS))
    await asyncio.to_thread(process.start)


_FORK_SERVER: ForkServer | None = None
_FORK_SERVER_LOCK = threading.Lock()  # commands run from asyncio.to_thread


def _fork_server_for(env: dict[str, str]) -> ForkServer | None:
    """This pytest process's CLI fork server, if a child forked by it would behave as an
    exec'd process with ``env`` would, and unless LEARNOPS_TEST_CLI_FORK=0."""
    global _FORK_SERVER
    if os.environ.get("LEARNOPS_TEST_CLI_FORK", "1") == "0":
        return None
    with _FORK_SERVER_LOCK:
        if _FORK_SERVER is None:
            _FORK_SERVER = ForkServer(learnops_command()[0], REPO)
    return _FORK_SERVER if _FORK_SERVER.can_fork(env) else None


def start_learnops(
    env: dict[str, str], args: tuple[str, ...], log_path: Path
) -> subprocess.Popen[bytes] | ForkedProcess:
    """Start `learnops ARGS…` in a session of its own, its output appended to ``log_path``.

    Forked from this session's CLI fork server where that behaves as an exec'd
    process would (tests/forkserver.py), else exec'd; either way a process the
    tests signal, kill and reap by its pid.
    """
    server = _fork_server_for(env)
    with log_path.open("ab") as log:
        if server is not None:
            with open(os.devnull, "rb") as devnull:
                return server.start(
                    args,
                    env,
                    stdin=devnull.fileno(),
                    stdout=log.fileno(),
                    stderr=log.fileno(),
                    new_session=True,
                )
        return subprocess.Popen(
            [*learnops_command(), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )


@overload
def run_learnops(
    env: dict[str, str], *args: str, timeout: float = ..., text: Literal[True] = ...
) -> subprocess.CompletedProcess[str]: ...
@overload
def run_learnops(
    env: dict[str, str], *args: str, timeout: float = ..., text: Literal[False]
) -> subprocess.CompletedProcess[bytes]: ...
def run_learnops(
    env: dict[str, str], *args: str, timeout: float = 120, text: bool = True
) -> subprocess.CompletedProcess[Any]:
    """Run `learnops ARGS…` in the repository with ``env``, never raising on its exit code.

    A process of its own, forked from this session's CLI fork server
    (tests/forkserver.py) where that behaves as an exec'd one would, else exec'd.
    """
    server = _fork_server_for(env)
    if server is not None:
        return server.run(args, env, text=text, timeout=timeout)
    return subprocess.run(
        [*learnops_command(), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=text,
        timeout=timeout,
        check=False,
    )


async def drop_database(server_dsn: str, name: str, *, attempts: int = 30) -> None:
    """Drop database ``name``, ending its sessions; wait for backends FORCE may not end.

    ``WITH (FORCE)`` ends the sessions of the roles the caller may signal. An
    autovacuum worker (the superuser's) after heavy writes, or a worker role's
    backend still exiting after its process was killed, can outlive it for a
    moment: each refusal waits a second, up to ``attempts`` times.
    """
    import asyncpg

    admin = await asyncpg.connect(server_dsn)
    try:
        for attempt in range(attempts):
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(1)
    finally:
        await admin.close()


async def create_migrated_database(server_dsn: str, name: str, *, operators: bool = False) -> str:
    """Create database ``name`` on the server and migrate it to the latest schema; its DSN.

    With ``operators``, the test operators (tests/operators.py) are registered in it.
    """
    import asyncpg

    from storage.migrate import migrate
    from storage.pool import create_pool

    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = urlunsplit(urlsplit(server_dsn)._replace(path=f"/{name}"))
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        if operators:
            from tests import operators as test_operators

            await test_operators.register(pool)
    finally:
        await pool.close()
    return dsn


class ReadBack(NamedTuple):
    """What `learnops dlq replay` uses of a refused record read back from its topic."""

    key: bytes
    value: bytes


def partition_letter(origin: tuple[str, int, int], doer: str = "Replayed") -> Any:
    """A dead letter of error type ``partition`` for the record at ``origin``, as stored."""
    from datetime import UTC, datetime

    from storage.dead_letters import DeadLetterRecord

    topic, partition, offset = origin
    return DeadLetterRecord(
        event_id=uuid.uuid4(),
        doer=doer,
        stage="crl",
        error_type="partition",
        reason="belongs on another partition",
        topic=topic,
        partition=partition,
        offset=offset,
        consumer=None,
        payload_size=None,
        occurred_at=datetime.now(UTC),
    )
