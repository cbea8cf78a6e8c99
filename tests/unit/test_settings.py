"""Settings come from the environment and name the variable when they are wrong."""

from __future__ import annotations

import pytest

from agents.settings import SettingsError, load_settings


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "a:1, b:2")
    monkeypatch.setenv("LEARNOPS_WEB_PORT", "7000")
    settings = load_settings()
    assert settings.kafka_hosts == ["a:1", "b:2"]
    assert settings.learnops_web_port == 7000


def test_a_bad_bootstrap_server_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost")
    with pytest.raises(
        SettingsError, match=r"KAFKA_BOOTSTRAP_SERVERS: .*'localhost' is not host:port"
    ):
        load_settings()


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
