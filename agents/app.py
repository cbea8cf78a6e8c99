"""The learnops Faust app: its settings, topics, PostgreSQL pool and dead-letter path."""

from __future__ import annotations

import gc
import logging
import sys
from typing import Any

import faust
from prometheus_client import Counter

from agents.faust_internals.transport import (
    PRODUCER_LINGER_S,
    PRODUCER_MAX_BATCH_BYTES,
    broker_urls,
)
from agents.settings import (
    LearningConfig,
    Settings,
    SettingsError,
    load_learning_config,
    load_settings,
)
from agents.topics import TopicCatalog, TopicCatalogError, load_catalog, missing
from storage.pool import create_pool

log = logging.getLogger("learnops")

DEAD_LETTERS = Counter(
    "learnops_dead_letters_total",
    "Events sent to learning.dlq, by the stage that rejected them and the kind of error.",
    ["stage", "error_type"],
)


#: Allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect garbage less often in a worker: it allocates a few objects per event.

    With CPython's default (a young collection every 700 allocations, and
    every tenth of those scanning the older generation) the CRL worker spent
    a fifth of its CPU collecting: in bench/crl_pipeline.py its CPU for 20,000
    bundles went from ~10.0 s to ~8.0 s with the thresholds below (events/s
    ~2,750 → ~3,000, within the run-to-run noise). ``gc.freeze`` first
    moves everything loaded at start-up (modules, settings, tables) out of
    the collector's way for good. Reference cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


class LearnopsApp(faust.App):
    """A Faust app that owns a PostgreSQL pool and checks its topics before it starts."""

    def __init__(
        self,
        settings: Settings,
        catalog: TopicCatalog,
        learning: LearningConfig,
        **options: Any,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.learning = learning
        self._pool: Any = None
        super().__init__(settings.learnops_app_id, **options)

    @property
    def pool(self) -> Any:
        """The asyncpg pool; exists once the worker has started."""
        if self._pool is None:
            raise RuntimeError("the PostgreSQL pool is opened when the worker starts")
        return self._pool

    async def on_first_start(self) -> None:
        """Refuse to run on a cluster that lacks our topics, then open the pool."""
        absent = await missing(self.settings, self.catalog)
        if absent:
            # Faust would otherwise ignore a consumed-only topic, or a producer would
            # auto-create it with the wrong partition count (see docs/operations.md).
            log.error("missing topics=%s hint='run: learnops topics create'", ",".join(absent))
            sys.exit(
                f"learnops: topics missing on the cluster: {', '.join(absent)}. "
                "Run `learnops topics create` first."
            )
        self._pool = await create_pool(
            self.settings.database_dsn,
            min_size=self.settings.database_pool_min,
            max_size=self.settings.database_pool_max,
        )
        tune_gc()
        await super().on_first_start()

    async def on_stop(self) -> None:
        """Close the pool after Faust has stopped its agents."""
        await super().on_stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def select_stages(app: LearnopsApp) -> None:
    """Keep only the agents named in ``LEARNOPS_STAGES``; an unknown name is an error.

    Every stage module registers its agent on import, so the command line can
    use any stage's topics; a worker then starts only the selected agents. A
    stage's consumer group stays the app id's: workers running different stages
    must use different ``LEARNOPS_APP_ID``s, or the group would hand a stage's
    partitions to a worker that does not run it.
    """
    wanted = app.settings.stages
    if wanted is None:
        return
    unknown = sorted(wanted - set(app.agents))
    if unknown:
        raise SettingsError(
            f"LEARNOPS_STAGES: unknown stage(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(app.agents))}"
        )
    for name in [name for name in app.agents if name not in wanted]:
        del app.agents[name]
    log.info("stages selected=%s", ",".join(sorted(wanted)))


def _broker_credentials(settings: Settings) -> Any:
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    ssl_context = settings.ssl_context()
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=(
                settings.kafka_sasl_password.get_secret_value()
                if settings.kafka_sasl_password
                else None
            ),
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(context=ssl_context)


def build_app(settings: Settings) -> LearnopsApp:
    """Create the app from settings; agents register themselves on import."""
    catalog = load_catalog(settings.learnops_topics_file)
    return LearnopsApp(
        settings,
        catalog,
        load_learning_config(settings.learnops_config_file),
        # Faust's aiokafka transport without its one-second waits
        # (agents/faust_internals/transport.py).
        broker=broker_urls(settings.kafka_hosts),
        broker_credentials=_broker_credentials(settings),
        store="memory://",
        datadir=str(settings.learnops_data_dir),
        # Every topic is keyed by doer and co-partitioned with the tables.
        topic_partitions=catalog.partitions,
        topic_replication_factor=catalog[next(iter(catalog.topics))].replication_factor,
        topic_disable_leader=True,
        # Events are validated by the agents themselves, so a bad one becomes a
        # dead letter instead of Faust's silent skip.
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # aiokafka sends one batch per partition per round trip: let batches fill.
        producer_linger=PRODUCER_LINGER_S,
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        web_enabled=settings.learnops_web_enabled,
        web_bind=settings.learnops_web_host,
        web_host=settings.learnops_web_host,
        web_port=settings.learnops_web_port,
        autodiscover=False,
    )


def create_app(settings: Settings) -> LearnopsApp:
    """The Faust app with the stages ``settings.stages`` names registered on it.

    Transitional: today the stages still register on the module-level app at
    import; this factory is the interface the CLI and the tests use, and is
    becoming the only place an app is built.
    """
    import agents.canary
    import agents.crl
    import agents.curator
    import agents.datasets
    import agents.experiments
    import agents.policy
    import agents.skills
    import agents.triggers
    import agents.web  # noqa: F401

    select_stages(app)
    return app


def _load() -> LearnopsApp:
    try:
        settings = load_settings()
        return build_app(settings)
    except (SettingsError, TopicCatalogError) as exc:
        sys.exit(f"learnops: {exc}")


app = _load()
