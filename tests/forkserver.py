"""`learnops` commands for the tests, each a process forked from one that has imported the CLI.

A test that runs a short command (``learnops policy list``, ``dlq replay``, …)
wants what an operator gets: a process of its own, with its own environment,
working directory, standard streams and exit code, against the real broker and
database. Starting Python and importing the CLI's modules cost that process
0.35–0.55 s of CPU before it did anything (a command's own work: 0.03–0.08 s),
and the suite runs about 300 of them: a fifth of its CPU on two cores.

So each pytest process starts one server (``python -m tests.forkserver
SOCKET``) that imports the CLI and the modules its commands load, then forks a
child per command: the child takes the caller's standard streams (passed over
a Unix socket), working directory, environment and arguments, runs
``learnops.cli.main.main`` as the console script does, and exits with its
code; the server sends the caller the child's pid, then its exit status
(``-N`` for signal N, as ``subprocess`` reports it).

What a fork cannot give, an exec still does (``run``'s ``exec`` argument,
`tests.services.run_learnops`): an environment whose ``PYTHON*`` variables
differ from the server's (they act when an interpreter starts, e.g.
``PYTHONPROFILEIMPORTTIME``), and tests of the console script itself.
``LEARNOPS_TEST_CLI_FORK=0`` makes every command an exec.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import json
import locale
import logging
import os
import pkgutil
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# What the commands import, loaded once in the server (nothing here reads the
# environment or starts a thread at import: the server checks the latter).
PRELOAD_PACKAGES = ("models", "learning", "storage", "learnops.cli")
PRELOAD_MODULES = ("agents.settings", "agents.config", "agents.topics", "agents.app")
_LENGTH = 8  # bytes of the request's length prefix
_MAX_REQUEST = 1 << 22


def _preload() -> None:
    for name in PRELOAD_MODULES:
        importlib.import_module(name)
    for package in PRELOAD_PACKAGES:
        path = importlib.import_module(package).__path__
        for found in pkgutil.walk_packages(path, f"{package}."):
            importlib.import_module(found.name)
    if threading.active_count() != 1:
        raise RuntimeError(
            f"the fork server's imports started threads ({threading.enumerate()}): "
            "a forked child would inherit their locks in whatever state they were"
        )


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < _LENGTH:
        raise ValueError("short request")
    length = int.from_bytes(data[:_LENGTH], "big")
    if length > _MAX_REQUEST:
        raise ValueError(f"request of {length} bytes")
    body = bytearray(data[_LENGTH:])
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return json.loads(body), list(fds)


def _child(request: dict[str, Any], fds: list[int]) -> None:
    """Become the command's process: its streams, directory, environment and argv; never returns."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # the server's generator state is every child's otherwise
        sys.argv = [request["argv0"], *request["args"]]
        from learnops.cli.main import main

        try:
            sys.exit(main())  # as the console script ends
        except SystemExit as done:
            if done.code is None:
                code = 0
            elif isinstance(done.code, int):
                code = done.code
            else:  # as the interpreter does with sys.exit("message")
                print(done.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - what an uncaught exception does to a process
            traceback.print_exc()
            code = 1
        # What the interpreter does at exit, in its order: join the threads, atexit, flush.
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed pipe: the output is not wanted
                stream.flush()
    finally:
        os._exit(code)


def serve(path: str) -> None:
    """Preload, listen on ``path``, and fork a child per request until the parent goes."""
    _preload()
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    waiting: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    print("ready", flush=True)
    while os.getppid() == parent:
        for key, _events in selector.select(timeout=1.0):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = _receive(conn)
                except (OSError, ValueError) as error:
                    print(f"forkserver: refused a request: {error}", file=sys.stderr)
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    selector.close()
                    listener.close()
                    for fd in (wake_read, wake_write):
                        os.close(fd)
                    for other in (conn, *waiting.values()):
                        other.close()
                    _child(request, fds)
                for fd in fds:
                    os.close(fd)
                waiting[pid] = conn
                conn.sendall(f"{pid}\n".encode())
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 4096)
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid)
            with contextlib.suppress(OSError), conn:  # the caller may have gone
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())


class ForkServer:
    """The client: starts the server on first use and runs commands through it."""

    def __init__(self, argv0: str, cwd: Path) -> None:
        self.argv0 = argv0
        self.cwd = cwd
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._environment: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        assert self._dir is not None
        return str(Path(self._dir.name) / "forkserver.sock")

    def _start(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="learnops-forkserver-")
        self._environment = dict(os.environ)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", self.path],
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if line.strip() != b"ready":
            self._process.kill()
            raise RuntimeError(f"the CLI fork server did not start (exit {self._process.wait()})")
        atexit.register(self.stop)

    def stop(self) -> None:
        """Stop the server (children still running finish on their own)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def can_fork(self, env: dict[str, str]) -> bool:
        """Whether a forked child would behave as an exec'd one with ``env``."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
        return _at_start(self._environment) == _at_start(env)

    def run(
        self,
        args: tuple[str, ...],
        env: dict[str, str],
        *,
        text: bool,
        timeout: float,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``learnops ARGS…`` in a forked child; what ``subprocess.run`` would return."""
        request = json.dumps(
            {"argv0": self.argv0, "args": list(args), "env": env, "cwd": str(self.cwd)}
        ).encode()
        command = [self.argv0, *args]
        deadline = time.monotonic() + timeout
        with (
            tempfile.TemporaryFile() as stdin,
            tempfile.TemporaryFile() as stdout,
            tempfile.TemporaryFile() as stderr,
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn,
        ):
            if input:
                stdin.write(input)
                stdin.seek(0)
            conn.connect(self.path)
            header = len(request).to_bytes(_LENGTH, "big")
            socket.send_fds(conn, [header], [stdin.fileno(), stdout.fileno(), stderr.fileno()])
            conn.sendall(request)
            conn.settimeout(timeout)
            pid = int(_line(conn))
            try:
                conn.settimeout(max(0.001, deadline - time.monotonic()))
                line = _line(conn)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                conn.settimeout(30)
                _line(conn)
                raise subprocess.TimeoutExpired(
                    command, timeout, output=_read(stdout, text), stderr=_read(stderr, text)
                ) from None
            if not line:
                raise RuntimeError(f"the CLI fork server went away while running {command}")
            return subprocess.CompletedProcess(
                command, int(line), stdout=_read(stdout, text), stderr=_read(stderr, text)
            )


def _at_start(env: dict[str, str]) -> dict[str, str]:
    """The variables an interpreter reads as it starts: ``PYTHON*`` and the locale's."""
    return {
        name: value
        for name, value in env.items()
        if name.startswith(("PYTHON", "LC_")) or name == "LANG"
    }


def _line(conn: socket.socket) -> bytes:
    """One reply line from the server (empty if it closed the connection)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            break
        line += byte
    return bytes(line)


def _read(file: Any, text: bool) -> Any:
    file.seek(0)
    data = file.read()
    if not text:
        return data
    # As subprocess.run(text=True) reads: the locale's encoding, universal newlines.
    return io.TextIOWrapper(io.BytesIO(data), encoding=locale.getencoding(), newline=None).read()


if __name__ == "__main__":
    serve(sys.argv[1])
