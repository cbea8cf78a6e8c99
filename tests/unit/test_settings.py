"""Settings come from the environment and name the variable when they are wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust.stores
import pytest

from agents.app import STAGES, create_app
from agents.faust_internals.stores import DoerStore
from agents.faust_internals.transport import FETCH_MIN_BYTES_BUSY
from agents.settings import Settings, SettingsError, load_settings


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "a:1, b:2")
    monkeypatch.setenv("LEARNOPS_WEB_PORT", "7000")
    settings = load_settings()
    assert settings.kafka_hosts == ["a:1", "b:2"]
    assert settings.learnops_web_port == 7000


def test_a_key_or_file_variable_set_empty_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`LEARNOPS_OPERATOR_KEY=` gave Path('.'): "cannot read the operator key .: Is a
    directory" instead of how to set one."""
    for name in ("LEARNOPS_OPERATOR_KEY", "KAFKA_SSL_CAFILE", "LEARNOPS_CONFIG_FILE"):
        monkeypatch.setenv(name, " ")
    settings = load_settings()
    assert settings.learnops_operator_key is None
    assert settings.kafka_ssl_cafile is settings.learnops_config_file is None
    monkeypatch.setenv("LEARNOPS_OPERATOR_KEY", "/keys/alice.pem")
    assert load_settings().learnops_operator_key == Path("/keys/alice.pem")


def test_a_bad_bootstrap_server_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost")
    with pytest.raises(
        SettingsError, match=r"KAFKA_BOOTSTRAP_SERVERS: .*'localhost' is not host:port"
    ):
        load_settings()


@pytest.mark.parametrize(
    ("servers", "said"),
    [
        ("127.0.0.1:99999", "the port is not between 1 and 65535"),
        ("a:1,b:0", "'b:0': the port is not between 1 and 65535"),
        ("kafka://127.0.0.1:9092", "no scheme: just host:port"),
        (":9092", "':9092' is not host:port"),
    ],
)
def test_a_bootstrap_server_no_client_could_reach_is_refused(
    monkeypatch: pytest.MonkeyPatch, servers: str, said: str
) -> None:
    # These reached the clients before: a port over 65535 raised OverflowError from
    # connect() with a traceback, a kafka:// URL failed later as "cannot reach Kafka".
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
    with pytest.raises(SettingsError, match="KAFKA_BOOTSTRAP_SERVERS") as info:
        load_settings()
    assert said in str(info.value)


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("postgresql://u:hunter2@db:99999/x", "port '99999'"),
        ("postgresql://u:hunter2@db:port/x", "port 'port'"),
        ("postgresql://u:hunter2@db:5432/x", None),
        ("postgresql://u:hunter2@db/x", None),
        ("postgresql://u:hunter2@[::1]:5432/x", None),
        ("postgresql://u:hunter2@h1:5432,h2:5433/x", None),  # libpq's several hosts
    ],
)
def test_a_database_port_out_of_range_is_refused_without_echoing_the_secret(
    monkeypatch: pytest.MonkeyPatch, url: str, refused: str | None
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    if refused is None:
        assert load_settings().database_dsn == url
        return
    with pytest.raises(SettingsError, match="DATABASE_URL") as info:
        load_settings()
    assert refused in str(info.value) and "hunter2" not in str(info.value)


def test_a_bad_database_url_is_named_without_echoing_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://root:hunter2@db/x")
    with pytest.raises(SettingsError, match="DATABASE_URL") as info:
        load_settings()
    assert "hunter2" not in str(info.value)


def test_a_dotenv_file_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    monkeypatch.delenv("LEARNOPS_WEB_PORT", raising=False)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    (tmp_path / ".env").write_text("LEARNOPS_WEB_PORT=6123\n")  # type: ignore[operator]
    assert load_settings().learnops_web_port == 6123


def test_sasl_settings_become_client_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")
    options = load_settings().kafka_client_options()
    assert options == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
    }


def test_learnops_stages_registers_only_the_named_stages() -> None:
    app = create_app(Settings(learnops_stages="crl, policy", learnops_app_id="stages-two"))
    assert sorted(app.agents) == ["crl", "policy"]
    assert sorted(app.stages) == ["crl", "policy"]
    # Only the crl stage's tables exist: the others were never declared.
    assert {t.split("-")[0] for t in app.tables} == {"crl"}


@pytest.mark.parametrize("session_s", [6.0, 10.0, 90.0, 300.0])
def test_every_accepted_session_timeout_is_one_faust_starts_with(session_s: float) -> None:
    # Faust's consumer refuses a session timeout above the request timeout (90 s by default).
    app = create_app(
        Settings(
            learnops_stages="crl",
            learnops_app_id=f"session-{session_s:g}",
            learnops_session_timeout_s=session_s,
        )
    )
    assert app.conf.broker_session_timeout == session_s
    assert app.conf.broker_request_timeout >= session_s + 30.0
    assert app.conf.broker_heartbeat_interval == session_s / 5


def test_a_group_instance_id_makes_the_worker_a_static_member() -> None:
    app = create_app(Settings(learnops_stages="crl", learnops_app_id="static-a"))
    assert app.conf.consumer_group_instance_id is None
    app = create_app(
        Settings(
            learnops_stages="crl",
            learnops_app_id="static-b",
            learnops_group_instance_id="learnops-worker-0",
        )
    )
    assert app.conf.consumer_group_instance_id == "learnops-worker-0"


def test_a_group_instance_id_kafka_would_refuse_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEARNOPS_GROUP_INSTANCE_ID", "worker 0/a")
    with pytest.raises(SettingsError, match="LEARNOPS_GROUP_INSTANCE_ID"):
        load_settings()


def test_all_stages_is_the_default() -> None:
    assert Settings().stages is None
    app = create_app(Settings(learnops_app_id="stages-all"))
    assert sorted(app.agents) == sorted(STAGES)


def test_an_unknown_stage_is_named_with_the_known_ones() -> None:
    with pytest.raises(
        SettingsError,
        match=r"LEARNOPS_STAGES: unknown stage\(s\) thrid; known: alerts, bandit, canary, crl",
    ):
        create_app(Settings(learnops_stages="crl, thrid", learnops_app_id="stages-bad"))


def test_building_an_app_touches_no_broker_and_registers_nothing_at_import() -> None:
    import agents.crl

    assert not hasattr(agents.crl, "app")
    first = create_app(Settings(learnops_stages="crl", learnops_app_id="stages-a"))
    second = create_app(Settings(learnops_stages="crl", learnops_app_id="stages-b"))
    assert first.stages["crl"].by_doer is not second.stages["crl"].by_doer


def test_the_example_env_file_is_valid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    example = Path(__file__).resolve().parents[2] / ".env.example"
    for variable in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    (tmp_path / ".env").write_text(example.read_text())  # type: ignore[operator]
    settings = load_settings()
    assert settings.kafka_hosts == ["127.0.0.1:19092"]
    assert settings.database_dsn.endswith("@127.0.0.1:15432/learnops")


def test_a_bad_setting_names_the_variable_and_rule_without_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEARNOPS_WEB_PORT", "Hunter2Secret!")
    with pytest.raises(SettingsError, match="LEARNOPS_WEB_PORT: ") as info:
        load_settings()
    assert "Hunter2Secret!" not in str(info.value)


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """LEARNOPS_ENV=production with no DATABASE_URL and no .env; set more on it."""
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("LEARNOPS_ENV", "production")
    return monkeypatch


def test_production_without_database_url_refuses_to_start(
    production: pytest.MonkeyPatch,
) -> None:
    monkeypatch = production
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "DATABASE_URL must be set explicitly when LEARNOPS_ENV=production" in str(info.value)
    monkeypatch.setenv("DATABASE_URL", "postgresql://learnops:learnops@127.0.0.1:15432/learnops")
    # Set, but with the local owner's login: the message says that, not "set it".
    with pytest.raises(SettingsError, match=r"logs in as learnops:learnops") as info:
        load_settings()
    assert "must be set explicitly" not in str(info.value)
    # On another host or port too (the compose file's postgres:5432, a moved port).
    for url in (
        "postgresql://learnops:learnops@postgres:5432/learnops",
        "postgresql://learnops:learnops@127.0.0.1:38632/learnops",
    ):
        monkeypatch.setenv("DATABASE_URL", url)
        with pytest.raises(SettingsError, match=r"production refuses on any host"):
            load_settings()
    monkeypatch.setenv("DATABASE_URL", "postgresql://worker:s3cret@db.internal/learnops")
    assert load_settings().database_dsn.startswith("postgresql://worker:")


def test_development_falls_back_to_the_local_owner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for variable in ("DATABASE_URL", "LEARNOPS_ENV", "LEARNOPS_KEYADMIN_DATABASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    settings = load_settings()
    assert settings.database_dsn_for("keyadmin") == settings.database_dsn
    monkeypatch.setenv("LEARNOPS_KEYADMIN_DATABASE_URL", "postgresql://keys:pw@db/learnops")
    monkeypatch.setenv("LEARNOPS_MIGRATE_DATABASE_URL", "postgresql://owner:pw@db/learnops")
    settings = load_settings()
    assert settings.database_dsn_for("keyadmin") == "postgresql://keys:pw@db/learnops"
    assert settings.database_dsn_for("migrate") == "postgresql://owner:pw@db/learnops"
    assert settings.database_dsn_for("default") == settings.database_dsn


def test_the_table_store_is_memory_unless_rocksdb_is_asked_for() -> None:
    default = create_app(Settings(learnops_stages="crl", learnops_app_id="store-default"))
    rocksdb = create_app(
        Settings(
            learnops_stages="crl", learnops_app_id="store-rocks", learnops_table_store="rocksdb"
        )
    )
    assert default.conf.store.scheme == "memory"
    # Faust's RocksDB store, writable from batch bodies (agents/faust_internals/stores.py).
    assert faust.stores.by_url(rocksdb.conf.store) is DoerStore


def test_an_unknown_table_store_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNOPS_TABLE_STORE", "redis")
    with pytest.raises(SettingsError, match="LEARNOPS_TABLE_STORE: "):
        load_settings()


def test_the_busy_fetch_size_is_the_transports_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEARNOPS_FETCH_MIN_BYTES", raising=False)
    default = create_app(load_settings().model_copy(update={"learnops_app_id": "fetch-default"}))
    monkeypatch.setenv("LEARNOPS_FETCH_MIN_BYTES", "1")
    eager = create_app(load_settings().model_copy(update={"learnops_app_id": "fetch-eager"}))
    monkeypatch.setenv("LEARNOPS_FETCH_MIN_BYTES", str(1024 * 1024))
    largest = create_app(load_settings().model_copy(update={"learnops_app_id": "fetch-largest"}))
    # Every consumer (and its thread) made before any is checked: a value kept on the
    # class instead of the thread would show in the others.
    threads = [app.consumer._thread for app in (default, eager, largest)]
    assert default.fetch_min_bytes == FETCH_MIN_BYTES_BUSY
    assert [thread.busy_min_bytes for thread in threads] == [FETCH_MIN_BYTES_BUSY, 1, 1024 * 1024]


@pytest.mark.parametrize("value", ["0", "-5", str(2 * 1024 * 1024), "64KB"])
def test_a_bad_fetch_size_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LEARNOPS_FETCH_MIN_BYTES", value)
    with pytest.raises(SettingsError, match="LEARNOPS_FETCH_MIN_BYTES: "):
        load_settings()


def test_a_production_worker_names_the_keys_its_stages_would_sign_with() -> None:
    from learnops.cli.main import production_keys_missing

    url = "postgresql://worker:s3cret@db.internal/learnops"

    def missing(**settings: Any) -> list[str]:
        return production_keys_missing(
            Settings(database_url=url, learnops_env="production", **settings)
        )

    everything = missing()
    assert len(everything) == 2
    assert "canary, policy and bandit stages need LEARNOPS_WORKER_SIGNING_KEY_FILE" in everything[0]
    assert (
        "experiments, triggers, skills and bandit stages need LEARNOPS_WORKER_KEY" in everything[1]
    )
    keys = {
        "learnops_worker_signing_key_file": Path("/secrets/signing.pem"),
        "learnops_worker_key": Path("/secrets/operator.pem"),
    }
    assert missing(**keys) == []
    # A worker that runs neither kind of stage needs neither key.
    assert missing(learnops_stages="crl,curator,datasets") == []
    # Each stage that signs is named on its own.
    for stage, signs, commands in (
        ("canary", True, False),
        ("policy", True, False),
        ("bandit", True, True),
        ("experiments", False, True),
        ("triggers", False, True),
        ("skills", False, True),
    ):
        named = missing(learnops_stages=stage)
        assert len(named) == signs + commands, (stage, named)
        assert all(f"the {stage} stage needs" in line for line in named), named


def test_production_migrations_may_name_only_the_migrating_url(
    production: pytest.MonkeyPatch,
) -> None:
    # docs/operations.md: LEARNOPS_ENV=production on every process, the migrating one too.
    production.setenv("LEARNOPS_MIGRATE_DATABASE_URL", "postgresql://owner:s3cret@db/learnops")
    settings = load_settings()
    assert settings.database_dsn_for("migrate") == "postgresql://owner:s3cret@db/learnops"
    # Anything else it would do needs DATABASE_URL, still refused with the reason.
    for ask in (lambda: settings.database_dsn, lambda: settings.database_dsn_for("default")):
        with pytest.raises(SettingsError, match="DATABASE_URL must be set explicitly"):
            ask()


def test_a_checkouts_worker_data_follows_the_local_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The local services keep their state in LEARNOPS_STATE_DIR; the worker's table
    store went to .local/worker regardless, beside another instance's."""
    monkeypatch.delenv("LEARNOPS_DATA_DIR", raising=False)
    monkeypatch.setenv("LEARNOPS_STATE_DIR", str(tmp_path))
    assert Settings().learnops_data_dir == tmp_path / "worker"
    monkeypatch.setenv("LEARNOPS_DATA_DIR", str(tmp_path / "elsewhere"))
    assert Settings().learnops_data_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize("refused", [".", "..", "a b", "a/b", "x" * 250])
def test_group_instance_ids_kafka_refuses_are_refused(refused: str) -> None:
    with pytest.raises(ValueError, match="learnops_group_instance_id"):
        Settings(learnops_group_instance_id=refused)


def test_only_a_production_worker_is_refused_for_logging_in_as_the_schema_owner() -> None:
    from learnops.cli.main import owner_refusal

    refused = owner_refusal("production", "learnops")
    assert refused is not None
    assert "logs in as learnops" in refused and "docs/security.md#database-roles" in refused
    assert owner_refusal("development", "learnops") is None  # logged as a warning instead
    assert owner_refusal("production", None) is None
