"""The wheel alone runs learnops: built, installed in a fresh virtualenv outside the checkout.

The wheel is built from a copy of the package sources (no build/ left in the
checkout), installed with ``--no-deps`` into a new virtualenv in a temporary
directory, and its dependencies are made importable by a ``.pth`` file naming
this environment's site-packages, so the test needs no network for them. Every
command runs from an empty temporary directory with no LEARNOPS_*_FILE set:
the topic catalogue and learning.yaml must come from the wheel's package data,
as in the Docker image (tests/integration/test_compose.py checks that the image
runs these same command lines).

The CLI is being rewritten, so the test asserts exit codes and effects (topics
on the broker, rows in schema_migrations), never help text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import site
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.services import (
    INPUT_TOPICS,
    REPO,
    drop_database,
    end_offsets,
    free_port,
    start_group_at,
)

#: The command lines the Docker image and compose run (test_compose.py holds them to these).
HELP_ARGS = ("--help",)
TOPICS_ARGS = ("topics", "create")
MIGRATE_ARGS = ("db", "migrate")
WORKER_ARGS = ("worker", "-l", "info")

#: What the wheel is built from: the packages and the project metadata, nothing else.
SOURCES = ("pyproject.toml", "README.md", "agents", "learning", "learnops", "models", "storage")
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


@dataclass(frozen=True)
class Installed:
    """A virtualenv holding only the learnops wheel; its dependencies come from a .pth file."""

    venv: Path
    wheel: Path
    cwd: Path

    @property
    def learnops(self) -> Path:
        return self.venv / "bin" / "learnops"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(
        self, env: dict[str, str], *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.learnops), *args],
            env=env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _clean_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without anything that would point the installed package back at the checkout."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LEARNOPS_TOPICS_FILE"}
    dropped.add("LEARNOPS_CONFIG_FILE")
    return {k: v for k, v in env.items() if k not in dropped}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel and install it, alone, in a new virtualenv outside the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=JUNK)
        else:
            shutil.copy2(path, source / name)
    started = time.monotonic()
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(root)]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=300)
    print(f"wheel built in {time.monotonic() - started:.1f} s")
    (wheel,) = root.glob("learnops-*.whl")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    subprocess.run(
        [*install, "--quiet", "--no-deps", str(wheel)], check=True, capture_output=True, timeout=120
    )
    # The dependencies: this environment's site-packages, after the venv's own.
    # (.pth files there, such as the checkout's editable install, are not run.)
    (new_site,) = (venv / "lib").glob("python3*/site-packages")
    (new_site / "learnops_test_dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )
    cwd = root / "elsewhere"
    cwd.mkdir()
    return Installed(venv=venv, wheel=wheel, cwd=cwd)


def test_the_wheel_ships_the_topic_catalogue_and_learning_config(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        # The real contents, not symlinks: the top-level files are symlinks to these.
        assert wheel.read("agents/resources/topics.yaml") == (REPO / "topics.yaml").read_bytes()
        assert (
            wheel.read("agents/resources/learning.yaml")
            == (REPO / "config" / "learning.yaml").read_bytes()
        )
    migrations = sorted(p.name for p in (REPO / "storage" / "migrations").glob("*.sql"))
    assert migrations
    assert {f"storage/migrations/{m}" for m in migrations} <= names
    templates = sorted(p.name for p in (REPO / "learnops" / "console" / "templates").glob("*"))
    assert templates
    assert {f"learnops/console/templates/{t}" for t in templates} <= names


def test_the_installed_package_is_imported_not_the_checkout(installed: Installed) -> None:
    probe = (
        "import agents, learnops, storage, agents.settings as s;"
        "print(agents.__file__); print(learnops.__file__); print(storage.__file__);"
        "print(s.Settings().topics_source())"
    )
    found = subprocess.run(
        [str(installed.python), "-c", probe],
        cwd=installed.cwd,
        env=_clean_env(dict(os.environ)),
        capture_output=True,
        text=True,
        check=True,
    )
    paths = [Path(line) for line in found.stdout.splitlines()]
    assert len(paths) == 4
    for path in paths:
        assert path.is_relative_to(installed.venv), path
        assert not path.is_relative_to(REPO), path


def test_learnops_help_answers(installed: Installed) -> None:
    result = installed.run(_clean_env(dict(os.environ)), *HELP_ARGS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_topics_create_makes_every_catalogue_topic(
    installed: Installed, settings_env: dict[str, str]
) -> None:
    from agents.settings import Settings
    from agents.topics import load_catalog, missing

    result = installed.run(_clean_env(settings_env), *TOPICS_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    settings = Settings(kafka_bootstrap_servers=settings_env["KAFKA_BOOTSTRAP_SERVERS"])
    assert asyncio.run(missing(settings, load_catalog())) == []


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


@pytest.fixture
async def empty_database(postgres_server: str) -> AsyncIterator[str]:
    """A new, empty database (no schema): for the wheel's own migrations."""
    name = f"learnops_wheel_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(postgres_server, name)
    await drop_database(postgres_server, name)


async def test_db_migrate_applies_the_packaged_migrations(
    installed: Installed, settings_env: dict[str, str], empty_database: str
) -> None:
    env = {**_clean_env(settings_env), "DATABASE_URL": empty_database}
    result = await asyncio.to_thread(installed.run, env, *MIGRATE_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    conn = await asyncpg.connect(empty_database)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await conn.close()
    assert applied == len(list((REPO / "storage" / "migrations").glob("*.sql")))


@contextlib.contextmanager
def _running(
    installed: Installed, env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`learnops worker` from the wheel; stopped with SIGTERM, then killed if it hangs."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(installed.learnops), *WORKER_ARGS],
            env=env,
            cwd=installed.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def test_the_worker_starts_and_serves_its_health_page(
    installed: Installed,
    settings_env: dict[str, str],
    tmp_path: Path,
) -> None:
    app_id = f"learnops-wheel-{uuid.uuid4().hex[:8]}"
    bootstrap = settings_env["KAFKA_BOOTSTRAP_SERVERS"]
    # Topics exist (test_topics_create…); a new group starts after the shared broker's history.
    result = await asyncio.to_thread(installed.run, _clean_env(settings_env), *TOPICS_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    await start_group_at(bootstrap, app_id, await end_offsets(bootstrap, INPUT_TOPICS))
    port = free_port()
    env = {
        **_clean_env(settings_env),
        "LEARNOPS_APP_ID": app_id,
        "LEARNOPS_WEB_PORT": str(port),
        "LEARNOPS_DATA_DIR": str(tmp_path / "data"),
    }
    log_path = tmp_path / "worker.log"
    with _running(installed, env, log_path) as process:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"worker exited with {process.returncode}:\n{log_path.read_text()}")
            ready = "[^Worker]: Ready" in log_path.read_text(errors="replace")
            if ready and await asyncio.to_thread(_answers, f"http://127.0.0.1:{port}/healthz"):
                break
            await asyncio.sleep(0.5)
        else:
            pytest.fail(f"worker not serving after 90 s:\n{log_path.read_text()[-4000:]}")
