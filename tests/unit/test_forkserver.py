"""The tests' CLI fork server gives what an exec'd `learnops` gives: output, exit code, env, cwd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


def test_output_decodes_as_subprocess_decodes_it_under_the_c_locale() -> None:
    # LC_ALL=C turns on Python's UTF-8 mode, where the locale's own codec is ASCII.
    probe = (
        "import os, subprocess\n"
        "from tests.forkserver import ForkServer\n"
        "from tests.services import REPO, learnops_command\n"
        "server = ForkServer(learnops_command()[0], REPO)\n"
        "env = dict(os.environ)\n"
        "assert server.can_fork(env)\n"
        "forked = server.run(('policy', '--help'), env, text=True, timeout=60)\n"
        "execd = subprocess.run([*learnops_command(), 'policy', '--help'], env=env,\n"
        "    capture_output=True, text=True, timeout=60)\n"
        "server.stop()\n"
        "assert forked.stdout == execd.stdout and forked.returncode == execd.returncode == 0\n"
        "assert any(ord(c) > 127 for c in forked.stdout), 'no non-ASCII text to decode'\n"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("LC_")}
    env.update(LC_ALL="C", LANG="C")
    command = [sys.executable, "-c", probe]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_caller_gone_before_its_answer_leaves_the_server_serving(server: ForkServer) -> None:
    assert server.can_fork(dict(os.environ))  # started
    request = {"argv0": "learnops", "args": ["--version"], "env": dict(os.environ), "cwd": "/"}
    body = json.dumps(request).encode()
    with open(os.devnull, "rb") as stdin, tempfile.TemporaryFile() as out:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(server.path)
        streams = [stdin.fileno(), out.fileno(), out.fileno()]
        socket.send_fds(conn, [len(body).to_bytes(8, "big")], streams)
        conn.sendall(body)
        conn.close()  # before the server's answer
    for _ in range(3):
        again = server.run(("--version",), dict(os.environ), text=True, timeout=60)
        assert again.returncode == 0 and again.stdout.startswith("learnops ")


def test_a_started_child_leads_its_own_session_and_a_killpg_is_reported(
    server: ForkServer, tmp_path: Path
) -> None:
    # As the tests start workers: a session of its own, output to a log, killed by group.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        env = {**os.environ, "DATABASE_URL": f"postgresql://someone@127.0.0.1:{port}/db"}
        log = tmp_path / "child.log"
        with open(os.devnull, "rb") as stdin, log.open("ab") as out:
            child = server.start(
                ("policy", "list"),
                env,
                stdin=stdin.fileno(),
                stdout=out.fileno(),
                stderr=out.fileno(),
                new_session=True,
            )
        assert child.poll() is None  # waiting for PostgreSQL's greeting
        assert os.getsid(child.pid) == child.pid and os.getpgid(child.pid) == child.pid
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
        os.killpg(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        assert child.returncode == -signal.SIGKILL and child.poll() == -signal.SIGKILL
