"""The tests' CLI fork server gives what an exec'd `learnops` gives: output, exit code, env, cwd."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.forkserver import ForkServer
from tests.services import REPO, learnops_command


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    started = ForkServer(learnops_command()[0], REPO)
    yield started
    started.stop()


def exec_learnops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*learnops_command(), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--version",),
        ("--help",),
        ("policy", "--help"),
        ("no-such-command",),  # a usage error: exit 2 and a message on stderr
        ("dlq", "show", "abc"),  # refused before it connects: exit 2
    ],
)
def test_a_forked_command_prints_and_exits_as_an_execd_one(
    server: ForkServer, args: tuple[str, ...]
) -> None:
    env = dict(os.environ)
    assert server.can_fork(env)
    forked = server.run(args, env, text=True, timeout=60)
    execd = exec_learnops(env, *args)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        execd.returncode,
        execd.stdout,
        execd.stderr,
    )
    assert forked.stdout or forked.stderr


def test_the_child_runs_with_the_callers_environment(server: ForkServer) -> None:
    # Port 1 refuses: the one-line error names the database the environment gave.
    env = {**os.environ, "DATABASE_URL": "postgresql://someone:secret@127.0.0.1:1/elsewhere"}
    forked = server.run(("policy", "list"), env, text=True, timeout=60)
    execd = exec_learnops(env, "policy", "list")
    assert forked.returncode == execd.returncode == 1
    assert forked.stderr == execd.stderr
    assert "127.0.0.1:1" in forked.stderr and "secret" not in forked.stderr


def test_a_command_past_its_timeout_is_killed(server: ForkServer) -> None:
    # A listener that never answers: the command waits for PostgreSQL's greeting.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        env = {**os.environ, "DATABASE_URL": f"postgresql://someone@127.0.0.1:{port}/db"}
        with pytest.raises(subprocess.TimeoutExpired):
            server.run(("policy", "list"), env, text=True, timeout=2)
        # The server reaped the killed child and still serves.
        again = server.run(("--version",), dict(os.environ), text=True, timeout=60)
        assert again.returncode == 0 and again.stdout.startswith("learnops ")


def test_an_interpreter_setting_that_differs_is_run_by_exec(server: ForkServer) -> None:
    assert not server.can_fork({**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    other_locale = "POSIX" if os.environ.get("LC_ALL") == "C" else "C"
    assert not server.can_fork({**os.environ, "LC_ALL": other_locale})
