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
(``-N`` for signal N, as ``subprocess`` reports it). The tests' workers and
replay executors start the same way (`ForkServer.start`: a child in a session
of its own, as ``Popen(start_new_session=True)`` makes it), so their ~0.9 s of
imports is paid once too.

What a fork cannot give, an exec still does (`tests.services.run_learnops`
chooses): an environment that differs from the server's in what acts as an
interpreter starts or the preloaded modules import (``PYTHON*``, the
locale's, ``TZ``, e.g. ``PYTHONPROFILEIMPORTTIME`` in the CLI's import
check), and the console script's own tests (a closed pipe, the wheel). A
fork also cannot show a command's missing import that the preload happens to
satisfy: ``LEARNOPS_TEST_CLI_FORK=0`` makes every command an exec, to check.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import json
import locale
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
_READ_AT_IMPORT = frozenset(
    {"LANG", "TZ", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "PROMETHEUS_MULTIPROC_DIR"}
)
_LENGTH = 8  # bytes of the request's length prefix
_MAX_REQUEST = 1 << 22


def _preload() -> None:
    for name in PRELOAD_MODULES:
        importlib.import_module(name)
    for package in PRELOAD_PACKAGES:
        path = importlib.import_module(package).__path__
        for found in pkgutil.walk_packages(path, f"{package}."):
            importlib.import_module(found.name)
    gc.freeze()  # the children's collections then skip what every child shares
    # A Python thread's locks would reach a forked child in whatever state they were.
    # (numpy's OpenBLAS starts native threads, which it re-creates after a fork.)
    if threading.active_count() != 1:
        raise RuntimeError(f"the fork server's imports started threads: {threading.enumerate()}")


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """A request's JSON and its three descriptors (closed again if the request is refused)."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    try:
        if len(fds) != 3 or len(data) < _LENGTH:
            raise ValueError(f"a request needs three descriptors and a length, got {len(fds)}")
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
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        raise


def _become(request: dict[str, Any], fds: list[int], settled: int) -> None:
    """Turn this forked child into the command's process and run it; never returns.

    It ends as the interpreter ends the console script's process: the exit
    code of ``SystemExit`` (or 1 and the traceback for an uncaught exception),
    then the threads joined, the atexit functions, a collection (the command's
    garbage finalised, with what that prints) and the streams flushed (120 if
    that fails). It skips the interpreter's teardown of every module, which
    here would cost each command ~0.23 s of CPU freeing the server's preloaded
    objects.
    """
    code = 1
    try:
        if request.get("new_session"):
            os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # what a fresh interpreter's generator would be
        sys.argv = [request["argv0"], *request["args"]]
        os.write(settled, b".")
        os.close(settled)
        code = _run_main()
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        gc.collect()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - the interpreter's rule: any failure to flush
            code = 120
    except BaseException:  # noqa: BLE001 - never back into the server's loop
        traceback.print_exc()
    finally:
        os._exit(code)


def _run_main() -> int:
    """Run the console script's ``main``; the exit code its process would have."""
    try:
        from learnops.cli.main import main

        sys.exit(main())
    except SystemExit as done:
        if done.code is None:
            return 0
        if isinstance(done.code, int):
            return done.code
        print(done.code, file=sys.stderr)  # sys.exit("message"), as the interpreter does
        return 1
    except BaseException:  # noqa: BLE001 - what an uncaught exception does to a process
        traceback.print_exc()
        return 1


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
                # The child says when it has its session and streams: only then is its
                # pid sent, so a caller's killpg(pid) right away reaches its group.
                settled_read, settled_write = os.pipe()
                try:
                    pid = os.fork()
                except OSError as error:
                    print(f"forkserver: cannot fork: {error}", file=sys.stderr)
                    pid = -1
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    selector.close()
                    listener.close()
                    for fd in (wake_read, wake_write, settled_read):
                        os.close(fd)
                    for other in (conn, *waiting.values()):
                        other.close()
                    _become(request, fds, settled_write)
                os.close(settled_write)
                if pid > 0:
                    os.read(settled_read, 1)  # b"" if the child died first: still reported
                os.close(settled_read)
                for fd in fds:
                    os.close(fd)
                if pid < 0:
                    conn.close()  # the caller reads no pid and says so
                    continue
                waiting[pid] = conn
                with contextlib.suppress(OSError):  # a caller gone: its child is still reaped
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

    def _ensure_started(self) -> None:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()

    def _start(self) -> None:
        self.stop()  # a server that died: its socket's directory goes with it
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
        atexit.unregister(self.stop)  # once, however often it was started
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
        self._ensure_started()
        return _at_start(self._environment) == _at_start(env)

    def start(
        self,
        args: tuple[str, ...],
        env: dict[str, str],
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        new_session: bool = False,
    ) -> ForkedProcess:
        """Start ``learnops ARGS…`` in a forked child with these descriptors as its streams.

        ``new_session``: the child calls setsid(), as Popen's ``start_new_session``.
        """
        request = {
            "argv0": self.argv0,
            "args": list(args),
            "env": env,
            "cwd": str(self.cwd),
            "new_session": new_session,
        }
        body = json.dumps(request).encode()
        command = [self.argv0, *args]
        self._ensure_started()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            socket.send_fds(conn, [len(body).to_bytes(_LENGTH, "big")], [stdin, stdout, stderr])
            conn.sendall(body)
            conn.settimeout(30)  # the server answers with the pid as it forks
            answer = _line(conn)
            if not answer:
                raise RuntimeError(f"the CLI fork server refused or dropped {command}")
        except BaseException:
            conn.close()
            raise
        return ForkedProcess(command, int(answer), conn)

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
        with (
            tempfile.TemporaryFile() as stdin,
            tempfile.TemporaryFile() as stdout,
            tempfile.TemporaryFile() as stderr,
        ):
            if input:
                stdin.write(input)
                stdin.seek(0)
            process = self.start(
                args, env, stdin=stdin.fileno(), stdout=stdout.fileno(), stderr=stderr.fileno()
            )
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
                raise subprocess.TimeoutExpired(
                    process.args, timeout, output=_read(stdout, text), stderr=_read(stderr, text)
                ) from None
            return subprocess.CompletedProcess(
                process.args, code, stdout=_read(stdout, text), stderr=_read(stderr, text)
            )


class ForkedProcess:
    """A child of the fork server, as much of ``subprocess.Popen`` as the tests use."""

    def __init__(self, args: list[str], pid: int, conn: socket.socket) -> None:
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self._conn = conn
        self._reply = bytearray()

    def _status(self, timeout: float | None) -> int | None:
        """The exit status once the server reports it; None if it has not after ``timeout``."""
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._reply.endswith(b"\n"):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._conn.settimeout(left)
            try:
                chunk = self._conn.recv(64)
            except (TimeoutError, BlockingIOError):
                return None
            if not chunk:
                self._conn.close()
                raise RuntimeError(f"the CLI fork server went away while running {self.args}")
            self._reply += chunk
        self.returncode = int(self._reply)
        self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        """The exit status, or None while the child runs."""
        return self._status(0.0001)

    def wait(self, timeout: float | None = None) -> int:
        """The exit status, waited for; ``subprocess.TimeoutExpired`` after ``timeout``."""
        code = self._status(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def kill(self) -> None:
        """SIGKILL the child (a no-op once it has been reported gone)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _at_start(env: dict[str, str]) -> dict[str, str]:
    """The variables read as an interpreter starts or the server's modules import.

    ``PYTHON*`` and the locale's (the interpreter), ``TZ`` (the time module),
    the numeric libraries' thread counts and prometheus_client's multiprocess
    directory (read as they import).
    """
    return {
        name: value
        for name, value in env.items()
        if name.startswith(("PYTHON", "LC_")) or name in _READ_AT_IMPORT
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
    # As subprocess.run(text=True) reads: the locale's preferred encoding (UTF-8 in
    # Python's UTF-8 mode, which LC_ALL=C turns on), universal newlines.
    encoding = locale.getpreferredencoding(False)
    return io.TextIOWrapper(io.BytesIO(data), encoding=encoding, newline=None).read()


if __name__ == "__main__":
    serve(sys.argv[1])
