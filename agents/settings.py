"""The one configuration object of a learnops process, read once at start-up.

Every value comes from the environment or a ``.env`` file in the working
directory; the environment wins.  Names are the variable names people set
(``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``, …), so an error names exactly
what to fix.

Import-light on purpose: the CLI and the orchestrator-side tools import this
module before they know whether they need Kafka, so it imports no aiokafka,
Faust, numpy or scipy (``tests/unit/test_settings.py`` checks).  The learning
configuration (config/learning.yaml) is read by :mod:`agents.config`.
"""

from __future__ import annotations

import os
import ssl
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.base import validation_messages

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from learning.signing import SigningKey

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The package that ships the default topics.yaml and learning.yaml (agents/resources/).
RESOURCES = "agents.resources"


def packaged(name: str) -> Traversable:
    """A data file shipped in the package (``topics.yaml``, ``learning.yaml``)."""
    return files(RESOURCES) / name


def _default_data_dir() -> Path:
    """Where a worker keeps its local state when LEARNOPS_DATA_DIR is unset.

    In a checkout, ``worker`` in the local services' state directory
    (``LEARNOPS_STATE_DIR``, else ``.local`` beside the code, which ``make clean``
    removes); in an installed package, the user's state directory, never
    site-packages.
    """
    if (REPO_ROOT / "pyproject.toml").is_file():
        local = os.environ.get("LEARNOPS_STATE_DIR")
        return (Path(local) if local else REPO_ROOT / ".local") / "worker"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "learnops" / "worker"


#: The local scripts' schema owner (scripts/postgres.sh); never used in production.
DEVELOPMENT_DATABASE_URL = "postgresql://learnops:learnops@127.0.0.1:15432/learnops"


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


_PRODUCTION_DATABASE_URL = (
    "DATABASE_URL must be set explicitly when LEARNOPS_ENV=production "
    "(the development default's credentials, learnops:learnops, are refused on any host)"
)
_PRODUCTION_DEVELOPMENT_LOGIN = (
    "DATABASE_URL logs in as learnops:learnops, the local scripts' development owner, which "
    "LEARNOPS_ENV=production refuses on any host: give the worker the URL of its own role "
    "(learnops_worker, docs/security.md#database-roles)"
)


def _development_credentials(url: str) -> bool:
    """Whether a database URL logs in with the local scripts' user and password."""
    try:
        parts = urlsplit(url)
        return (parts.username, parts.password) == ("learnops", "learnops")
    except ValueError:
        return False


class Settings(BaseSettings):
    """Connection, identity and tuning settings for the worker and the CLI."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:19092",
        description="Comma-separated host:port list of the Kafka brokers.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None

    # "production" refuses to start on the development DATABASE_URL below.
    learnops_env: Literal["development", "production"] = "development"
    database_url: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_DATABASE_URL),
        description="PostgreSQL DSN, postgresql://user:password@host:port/db.",
    )
    # Optional connections of their own for the commands that need another
    # database role (docs/security.md, "Database roles"); unset, DATABASE_URL.
    learnops_migrate_database_url: SecretStr | None = None
    learnops_keyadmin_database_url: SecretStr | None = None
    database_pool_min: int = Field(default=1, ge=0)
    database_pool_max: int = Field(default=10, ge=1)

    # The consumer group, the prefix of the tables' changelog topics and a directory
    # under learnops_data_dir: Kafka's topic characters, and never "." or "..".
    learnops_app_id: str = Field(
        default="learnops", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$"
    )
    # Which stages (agents) this worker runs, comma-separated: "all", or e.g.
    # "crl,policy" to give a heavy stage its own workers (docs/operations.md).
    learnops_stages: str = Field(default="all", min_length=1)
    learnops_data_dir: Path = Field(default_factory=_default_data_dir)
    # Unset: the copies shipped in the package (agents/resources/, read with
    # importlib.resources); set: a file of the operator's own.
    learnops_topics_file: Path | None = None
    learnops_config_file: Path | None = None
    learnops_web_host: str = "127.0.0.1"
    learnops_web_port: int = Field(default=6066, ge=1, le=65535)
    learnops_web_enabled: bool = True
    learnops_log_level: str = "info"
    # "text" (Faust's) or "json": one JSON object per line, fields from key=value pairs.
    learnops_log_format: Literal["text", "json"] = "text"
    # Where a worker keeps its tables: "memory" reads every changelog back at each start;
    # "rocksdb" (needs the rocksdict package, extra "rocksdb") keeps them on disk under
    # learnops_data_dir and reads only what it lacks (docs/operations.md, "Memory and recovery").
    learnops_table_store: Literal["memory", "rocksdb"] = "memory"
    # A worker that stops heart-beating loses its partitions after this long (Kafka's
    # session timeout); the broker accepts 6-300 s by default. Faust's default is 60 s.
    learnops_session_timeout_s: float = Field(default=10.0, ge=6.0, le=300.0)
    # Kafka's static membership (group.instance.id): a worker restarted under the same id
    # takes its partitions back at once, without waiting out the session timeout of the
    # process it replaces and without a rebalance. One id per worker process, stable
    # across its restarts (a StatefulSet pod's name); never two live workers with one id.
    # Kafka's rule for the id, as for topic names: these characters, not "." or "..".
    learnops_group_instance_id: str | None = Field(
        default=None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$"
    )
    # A stage whose events fail this many times in a row for an internal error (a
    # bug, not bad input) stops instead of emptying its input into the DLQ.
    learnops_max_internal_errors: int = Field(default=20, ge=1)
    # The CRL stage writes its daily aggregates (and checks them for regressions) at
    # most this often, holding the runs' offsets uncommitted until then; 0 writes
    # after every batch. Each write is a changelog record per key, whatever the batch
    # size (docs/operations.md, "Coalesced aggregate writes").
    learnops_crl_fold_interval_s: float = Field(default=0.25, ge=0.0, le=10.0)
    # While records flow, a fetch asks the broker for this many bytes (or 25 ms) before
    # it answers: fewer, larger fetches and stage batches. 1 answers at the first record:
    # up to 25 ms less per hop for a fetch per few records (more CPU), for a process whose
    # stages want latency, e.g. the canary alone (docs/operations.md, "Fetches that wait
    # for a batch"). Capped at 1 MB, a policy: more would hold a fetch its whole 25 ms.
    learnops_fetch_min_bytes: int = Field(default=64 * 1024, ge=1, le=1024 * 1024)
    # Processes that redact, hash and sign the curator's bundles beside the event loop
    # (agents/curation_pool.py), started at the first batch of 4 or more live bundles;
    # 0 does that work in the loop.
    learnops_curation_processes: int = Field(default=1, ge=0, le=64)
    # Refuse a record read from another partition than its key's (agents/placement.py).
    # Off only to keep running a deployment whose orchestrator places keys by crc32
    # until it is moved to murmur2 (docs/operations.md, "Upgrading"): its doers' state
    # then splits over two partitions at any change of the partition count.
    learnops_placement_check: bool = True
    # Where alerts go besides learning.alerts: FORMAT=URL entries, comma-separated,
    # FORMAT one of json, alertmanager, slack (agents/notify.py).
    learnops_alert_webhooks: str = ""
    # The dashboard's base URL, for the evidence links alerts carry.
    learnops_dashboard_url: str | None = None
    # Signed commands (docs/security.md#commands): how far the signer's clock may be
    # off when checking issued_at/expires_at, how long a command the CLI signs lasts,
    # the operator's private key (PEM) the CLI signs with, and the worker's own key
    # (PEM) the experiments stage signs the deployments it starts with.
    learnops_command_clock_skew_s: float = Field(default=30.0, ge=0.0, le=600.0)
    learnops_command_ttl_s: float = Field(default=600.0, gt=0.0, le=86400.0)
    learnops_operator_key: Path | None = None
    learnops_worker_key: Path | None = None
    # The worker's Ed25519 private key, a PEM file (`learnops policy keys generate --out`
    # writes one and trusts its public half): the canary stage signs its decisions with
    # it, and the policy stage applies only decisions whose key is trusted
    # (docs/security.md, "Signed decisions"). Unset: decisions go out unsigned, refused.
    learnops_worker_signing_key_file: Path | None = None

    @field_validator(
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "learnops_topics_file",
        "learnops_config_file",
        "learnops_operator_key",
        "learnops_worker_key",
        "learnops_worker_signing_key_file",
        mode="before",
    )
    @classmethod
    def _empty_file_is_unset(cls, value: object) -> object:
        # `VAR=` (set, empty) is a shell's way of unsetting: Path("") would be "." and read
        # as a directory ("cannot read the operator key .: Is a directory").
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("learnops_alert_webhooks")
    @classmethod
    def _webhooks_parse(cls, value: str) -> str:
        if value.strip():
            from learning.alerting import parse_webhooks

            parse_webhooks(value)  # WebhookConfigError is a ValueError: named by pydantic
        return value

    @field_validator("learnops_group_instance_id")
    @classmethod
    def _not_dots(cls, value: str | None) -> str | None:
        if value in {".", ".."}:
            raise ValueError(f"{value!r} is not a group instance id Kafka accepts")
        return value

    @field_validator("learnops_app_id")
    @classmethod
    def _app_id_not_dots(cls, value: str) -> str:
        if value in {".", ".."}:
            raise ValueError(f"{value!r} cannot name topics or a data directory")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts:
            raise ValueError("needs at least one host:port")
        for host in hosts:
            name, sep, port = host.rpartition(":")
            if not sep or not port.isdigit() or not name:
                raise ValueError(f"{host!r} is not host:port")
            if "/" in name:  # kafka://host:port, a URL where a bare host:port belongs
                raise ValueError(f"{host!r} is not host:port (no scheme: just host:port)")
            if not 0 < int(port) < 65536:
                raise ValueError(f"{host!r}: the port is not between 1 and 65535")
        return ",".join(hosts)

    @field_validator(
        "database_url", "learnops_migrate_database_url", "learnops_keyadmin_database_url"
    )
    @classmethod
    def _database_url_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        url = value.get_secret_value()
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (or postgres://)")
        hosts = urlsplit(url).netloc.rpartition("@")[2]
        for host in hosts.split(","):  # libpq's several hosts: host1:5432,host2:5432
            port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host else ""
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                # Not the URL itself: it may hold a password.
                raise ValueError(f"port {port!r} is not a number between 1 and 65535")
        return value

    @model_validator(mode="after")
    def _production_names_its_database(self) -> Settings:
        if self.learnops_env != "production":
            return self
        if "database_url" in self.model_fields_set:
            if _development_credentials(self.database_url.get_secret_value()):
                raise ValueError(_PRODUCTION_DEVELOPMENT_LOGIN)
        elif self.learnops_migrate_database_url is None and (
            self.learnops_keyadmin_database_url is None
        ):
            # A migrate- or key-admin-only process may name only its own URL; anything
            # else it does asks database_dsn, which refuses then (below).
            raise ValueError(_PRODUCTION_DATABASE_URL)
        return self

    def worker_key(self) -> SigningKey | None:
        """The worker's signing key (``LEARNOPS_WORKER_SIGNING_KEY_FILE``), or None when unset.

        Raises SettingsError naming the variable when the file is unreadable or
        holds no Ed25519 private key.
        """
        path = self.learnops_worker_signing_key_file
        if path is None:
            return None
        from learning.signing import SigningKey

        try:
            return SigningKey.from_pem(path.read_bytes())
        except OSError as exc:
            raise SettingsError(
                f"LEARNOPS_WORKER_SIGNING_KEY_FILE {path}: {exc.strerror}"
            ) from None
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"LEARNOPS_WORKER_SIGNING_KEY_FILE {path}: {exc}") from None

    @property
    def kafka_hosts(self) -> list[str]:
        """Bootstrap servers as a list of host:port strings."""
        return self.kafka_bootstrap_servers.split(",")

    @property
    def database_dsn(self) -> str:
        """The PostgreSQL DSN in clear, for the driver only (never log it)."""
        if self.learnops_env == "production" and "database_url" not in self.model_fields_set:
            raise SettingsError(f"invalid settings:\n  {_PRODUCTION_DATABASE_URL}")
        return self.database_url.get_secret_value()

    def database_dsn_for(self, purpose: Literal["default", "migrate", "keyadmin"]) -> str:
        """The DSN for one kind of work: migrations, key administration, or everything else."""
        chosen = {
            "migrate": self.learnops_migrate_database_url,
            "keyadmin": self.learnops_keyadmin_database_url,
        }.get(purpose)
        return chosen.get_secret_value() if chosen is not None else self.database_dsn

    @property
    def stages(self) -> frozenset[str] | None:
        """The stages named in ``LEARNOPS_STAGES``; ``None`` means all of them."""
        names = frozenset(n.strip() for n in self.learnops_stages.split(",") if n.strip())
        return None if not names or "all" in names else names

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL, from the configured CA, certificate and key."""
        if self.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(
            cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
        )
        if self.kafka_ssl_certfile:
            context.load_cert_chain(
                str(self.kafka_ssl_certfile),
                str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            )
        return context

    def kafka_client_options(self) -> dict[str, object]:
        """Security keyword arguments shared by every aiokafka client we build."""
        options: dict[str, object] = {"security_protocol": self.kafka_security_protocol}
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.kafka_security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.kafka_sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return options

    def kafka_connection(self) -> dict[str, Any]:
        """Bootstrap servers and security options, as aiokafka clients and ``Router`` take them."""
        return {"bootstrap_servers": self.kafka_bootstrap_servers, **self.kafka_client_options()}

    def topics_source(self) -> Traversable:
        """The topic catalogue to read: LEARNOPS_TOPICS_FILE, or the packaged topics.yaml."""
        return self.learnops_topics_file or packaged("topics.yaml")

    def config_source(self) -> Traversable:
        """The learning configuration to read: LEARNOPS_CONFIG_FILE, or the packaged one."""
        return self.learnops_config_file or packaged("learning.yaml")

    def kafka_producer(self, **options: object) -> AIOKafkaProducer:
        """A producer for this cluster (not started): acks=all, our security, then ``options``."""
        from aiokafka import AIOKafkaProducer

        return AIOKafkaProducer(
            bootstrap_servers=self.kafka_bootstrap_servers,
            acks="all",
            **self.kafka_client_options(),
            **options,
        )


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning validation errors into one message per variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # The variable and the rule, never the value: a URL or a password may be in it.
        lines = [
            f"{'_'.join(str(part) for part in loc).upper()}: {message}" if loc else message
            for loc, message in validation_messages(exc)
        ]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
