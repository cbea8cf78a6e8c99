"""docker-compose.yml and the Dockerfile wire the services the way the README promises.

The compose file is checked twice: as Docker Compose itself resolves it
(`docker compose config`, which needs the client and its compose plugin but no
engine) and, everywhere, as plain YAML with its anchors expanded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_wheel import MIGRATE_ARGS, TOPICS_ARGS, WORKER_ARGS

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DATABASE_URL = "postgresql://learnops:learnops@postgres:5432/learnops"
APP_SERVICES = ("topics", "migrate", "worker")


def _compose_plugin_missing() -> str | None:
    """Why `docker compose` cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    try:
        result = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker compose version` failed: {exc}"
    if result.returncode != 0:
        return "the docker client has no compose plugin (`docker compose version` failed)"
    return None


def _resolved_by_docker_compose() -> dict[str, Any]:
    reason = _compose_plugin_missing()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _parsed_as_yaml() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return config


@pytest.fixture(params=["docker-compose", "yaml"])
def compose(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The compose file, resolved by Docker Compose or parsed as YAML."""
    if request.param == "docker-compose":
        return _resolved_by_docker_compose()
    return _parsed_as_yaml()


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in (service.get("environment") or {}).items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service["depends_on"].items()}


def test_compose_has_kafka_postgres_and_the_three_learnops_services(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {
        "kafka",
        "postgres",
        "topics",
        "migrate",
        "worker",
        "prometheus",
        "grafana",
    }
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert services["postgres"]["image"] == "postgres:16"
    for name in APP_SERVICES:
        assert services[name]["image"] == "learnops:local", name
        assert "build" in services[name], name


def test_learnops_services_run_the_expected_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["topics"]["command"] == ["topics", "create"]
    assert services["migrate"]["command"] == ["db", "migrate"]
    assert services["worker"]["command"] == ["worker", "-l", "info"]
    assert services["topics"]["restart"] == "no"
    assert services["migrate"]["restart"] == "no"


def test_worker_starts_only_after_topics_and_migrations_completed(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert _depends_on(services["worker"]) == {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "topics": "service_completed_successfully",
        "migrate": "service_completed_successfully",
    }
    assert _depends_on(services["topics"]) == {"kafka": "service_healthy"}
    assert _depends_on(services["migrate"]) == {"postgres": "service_healthy"}


def test_learnops_services_point_at_the_compose_kafka_and_postgres(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in APP_SERVICES:
        env = _env(services[name])
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", name
        assert env["DATABASE_URL"] == DATABASE_URL, name
    assert _env(services["worker"])["LEARNOPS_WEB_HOST"] == "0.0.0.0"
    postgres = _env(services["postgres"])
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]) == (
        "learnops",
        "learnops",
        "learnops",
    )


def _published_and_target(port: str | dict[str, Any]) -> tuple[int, int]:
    if isinstance(port, dict):  # docker compose's long syntax
        return int(port["published"]), int(port["target"])
    published, target = port.rsplit(":", 2)[-2:]  # "[host_ip:]published:target"
    return int(published), int(target)


def test_kafka_advertises_kafka_9092_inside_and_localhost_9092_outside(
    compose: dict[str, Any],
) -> None:
    env = _env(compose["services"]["kafka"])
    advertised = dict(
        entry.split("://", 1) for entry in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    listeners = dict(entry.split("://", 1) for entry in env["KAFKA_LISTENERS"].split(","))
    inside = next(name for name, addr in advertised.items() if addr == "kafka:9092")
    outside = next(name for name, addr in advertised.items() if addr == "localhost:9092")
    assert listeners[inside].endswith(":9092")
    external_port = int(listeners[outside].rsplit(":", 1)[1])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"

    published = {_published_and_target(port) for port in compose["services"]["kafka"]["ports"]}
    assert (9092, external_port) in published


def test_the_worker_is_healthy_when_ready_and_prometheus_and_grafana_watch_it(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert "/readyz" in " ".join(services["worker"]["healthcheck"]["test"])
    volumes = " ".join(str(v) for s in ("prometheus", "grafana") for v in services[s]["volumes"])
    for path in ("prometheus/prometheus.yml", "grafana/provisioning", "grafana/dashboards"):
        assert path in volumes, path
        assert (REPO / "deploy" / path).exists(), path
    datasource = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name in ("kafka", "postgres", "worker"):
        healthcheck = compose["services"][name].get("healthcheck") or {}
        assert healthcheck.get("test"), name


def _dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per build stage."""
    instructions: list[str] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}".strip() if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        instructions.append(" ".join(pending.split()))
        pending = ""
    stages: list[list[str]] = []
    for instruction in instructions:
        if instruction.startswith("FROM "):
            stages.append([])
        stages[-1].append(instruction)
    return stages


def _image_env(stage: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.startswith("ENV "):
            for pair in instruction.removeprefix("ENV ").split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_the_image_builds_the_wheel_then_installs_only_the_wheel() -> None:
    build, runtime = _dockerfile_stages()
    assert build[0] == "FROM python:3.11-slim AS wheel"
    assert any(i.startswith("RUN pip wheel --no-deps") for i in build)
    assert runtime[0] == "FROM python:3.11-slim"
    copies = [i for i in runtime if i.startswith(("COPY", "ADD"))]
    assert copies and all(i.startswith("COPY --from=wheel /wheels ") for i in copies), copies
    installs = [i for i in runtime if i.startswith("RUN") and "pip install" in i]
    assert installs and all("/tmp/wheels/learnops-" in i for i in installs), installs
    # Extras (rocksdb for LEARNOPS_TABLE_STORE=rocksdb) by a build argument, and the
    # worker's state dir a volume of its own, writable by the image's user.
    assert 'ARG EXTRAS=""' in runtime
    assert "[$EXTRAS]" in installs[0]
    state = _image_env(runtime)["LEARNOPS_DATA_DIR"]
    assert f"VOLUME {state}" in runtime
    assert f"install -d -o learnops {state}" in installs[0]


def test_the_image_sets_no_path_the_wheel_provides_and_serves_on_every_interface() -> None:
    env = _image_env(_dockerfile_stages()[-1])
    assert "LEARNOPS_TOPICS_FILE" not in env
    assert "LEARNOPS_CONFIG_FILE" not in env
    # Published ports reach only a server bound to every interface; the package's
    # own default stays loopback (agents/settings.py).
    assert env["LEARNOPS_WEB_HOST"] == "0.0.0.0"
    from agents.settings import Settings

    assert Settings.model_fields["learnops_web_host"].default == "127.0.0.1"


def test_the_image_runs_the_command_lines_the_wheel_test_runs(compose: dict[str, Any]) -> None:
    runtime = _dockerfile_stages()[-1]
    assert 'ENTRYPOINT ["learnops"]' in runtime
    assert f"CMD {json.dumps(list(WORKER_ARGS))}" in runtime
    services = compose["services"]
    assert services["topics"]["command"] == list(TOPICS_ARGS)
    assert services["migrate"]["command"] == list(MIGRATE_ARGS)
    assert services["worker"]["command"] == list(WORKER_ARGS)
    for name in APP_SERVICES:
        env = _env(services[name])
        assert not {"LEARNOPS_TOPICS_FILE", "LEARNOPS_CONFIG_FILE"} & set(env), name
        assert not services[name].get("volumes"), name  # nothing of the checkout mounted
