"""The learnops Faust app, built by :func:`create_app` from settings with the stages it runs.

Nothing happens at import: ``create_app(settings)`` reads the topic catalogue
and the learning configuration, builds the app, and lets each selected stage
(``LEARNOPS_STAGES``) declare its tables, agents and timers on it.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust

from agents.config import LearningConfig, load_learning_config
from agents.dlq import DeadLetters
from agents.event_topics import EventTopics
from agents.faust_internals import compat
from agents.faust_internals.membership import exit_now
from agents.faust_internals.recovery import TableManager
from agents.faust_internals.stores import mark_clean_stop, store_url, tables_at_start
from agents.faust_internals.transport import (
    PRODUCER_LINGER_S,
    PRODUCER_MAX_BATCH_BYTES,
    broker_urls,
)
from agents.health import register_pages, watch_gc_pauses
from agents.logs import hide_exception_values, quiet_fast_timers, quiet_repeats, use_json_logs
from agents.settings import Settings, SettingsError
from agents.streams import Bodies
from agents.topics import (
    REPARTITION_DOC,
    TopicCatalog,
    load_catalog,
    missing,
    state_partition_problem,
)
from storage.pool import create_pool, schema_owner_role

log = logging.getLogger("learnops")

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
    watch_gc_pauses()


#: Every stage: its name (the agent's, and what LEARNOPS_STAGES lists) → its class.
STAGES: dict[str, str] = {
    "crl": "agents.crl:CRLStage",
    "canary": "agents.canary:CanaryStage",
    "curator": "agents.curator:CuratorStage",
    "datasets": "agents.datasets:DatasetsStage",
    "dead_letters": "agents.dead_letters:DeadLettersStage",
    "experiments": "agents.experiments:ExperimentsStage",
    "policy": "agents.policy:PolicyStage",
    "skills": "agents.skills:SkillsStage",
    "bandit": "agents.bandit:BanditStage",
    "triggers": "agents.triggers:TriggersStage",
    "notify": "agents.notify:NotifyStage",
    "alerts": "agents.alerts:AlertsStage",
}


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
        #: The topics whose records must sit on their key's partition (agents.stage.misplaced):
        #: not the compacted ones, whose last record of a moved doer stays on its old partition,
        #: nor learning.dlq, whose stage records letters in PostgreSQL and keeps no doer state.
        self.placed_topics = (
            frozenset(
                name
                for name, spec in catalog.topics.items()
                if "compact" not in spec.configs.get("cleanup.policy", "delete")
                and name != "learning.dlq"
            )
            if settings.learnops_placement_check
            else frozenset()
        )
        self.learning = learning
        self._pool: Any = None
        #: Where sends go instead of the broker, when set (in-process tests).
        self.outbox: list[tuple[str, Any]] | None = None
        self.stages: dict[str, Any] = {}
        #: Bytes a fetch asks for while records flow; the transport's consumer thread reads
        #: it once, when Faust creates the thread (changing it later changes nothing).
        self.fetch_min_bytes = settings.learnops_fetch_min_bytes
        #: Stage bodies holding events they will still ack (the consumer's wait_empty reads it).
        self.bodies = Bodies()
        #: The input topics' partition count when the worker started (on_first_start).
        self._partitions: int | None = None
        super().__init__(settings.learnops_app_id, **options)
        self.event_topics = EventTopics(self)
        self.dead_letters = DeadLetters(self)
        self.on_partitions_assigned.connect(self._partitions_unchanged)

    def _partitions_unchanged(self, *args: Any, **kwargs: Any) -> None:
        """Stop the worker when it is assigned a partition its table changelogs lack.

        A partition count raised while the worker runs reaches it at the next
        metadata refresh; a table write there would go to a changelog partition
        that does not exist (Faust crashed on it, and again after every restart).
        """
        count = self._partitions
        if count is None:  # not started by on_first_start (in-process tests)
            return
        assigned = args[1] if len(args) > 1 else kwargs.get("assigned", ())  # (sender, assigned)
        beyond = sorted(
            {
                tp.partition
                for tp in assigned
                if tp.topic in self.catalog.topics and tp.partition >= count
            }
        )
        if beyond:
            exit_now(
                f"partition_count_changed assigned={beyond} started_with={count} hint='the "
                f"learning topics now have more partitions than this worker's table state; "
                f"see {REPARTITION_DOC}'"
            )

    @property
    def partition_count(self) -> int | None:
        """The learning topics' partition count, checked when the worker started (else None)."""
        return self._partitions

    @property
    def pool(self) -> Any:
        """The asyncpg pool; exists once the worker has started (or :meth:`use_pool` gave one)."""
        if self._pool is None:
            raise RuntimeError("the PostgreSQL pool is opened when the worker starts")
        return self._pool

    @property
    def pool_open(self) -> bool:
        """True while the app has a usable pool (timers check this before they touch it)."""
        return self._pool is not None and not self._pool.is_closing()

    def use_pool(self, pool: Any) -> None:
        """Use a pool opened elsewhere (in-process tests); the app will not close it."""
        self._pool = pool

    async def on_first_start(self) -> None:
        """Refuse to run on Faust internals we do not fit or a cluster that lacks our topics."""
        try:
            compat.check()
        except compat.IncompatibleInternals as exc:
            log.error("incompatible_faust_internals")
            sys.exit(f"learnops: {exc}")
        absent = await missing(self.settings, self.catalog)
        if absent:
            # Faust would otherwise ignore a consumed-only topic, or a producer would
            # auto-create it with the wrong partition count (see docs/operations.md).
            log.error("missing topics=%s hint='run: learnops topics create'", ",".join(absent))
            sys.exit(
                f"learnops: topics missing on the cluster: {', '.join(absent)}. "
                "Run `learnops topics create` first."
            )
        problem, partitions = await state_partition_problem(
            self.settings,
            self.catalog,
            [table.changelog_topic.get_topic_name() for table in self.tables.values()],
        )
        if problem is not None:
            log.error("partition_counts_differ hint=%r", problem)
            sys.exit(f"learnops: {problem}")
        self._partitions = partitions
        self._pool = await create_pool(
            self.settings.database_dsn,
            min_size=self.settings.database_pool_min,
            max_size=self.settings.database_pool_max,
        )
        tune_gc()
        hide_exception_values()
        quiet_repeats()
        quiet_fast_timers()
        if self.settings.learnops_log_format == "json":
            use_json_logs()
        canary = self.stages.get("canary")
        if canary is not None and canary.key is None:
            # Said here, not when the stage is built: before the worker's logging is set
            # up a warning had no timestamp.
            log.warning(
                "canary_unsigned LEARNOPS_WORKER_SIGNING_KEY_FILE is unset: decisions go out "
                "unsigned and the policy stage refuses them"
            )
        async with self._pool.acquire() as conn:
            owner = await schema_owner_role(conn)
        if owner is not None:
            log.warning(
                "database_role_is_owner role=%s hint='the worker needs only the grants of "
                "learnops_worker: give it the DATABASE_URL of that role "
                "(docs/security.md#database-roles)'",
                owner,
            )
        # Faust makes only the last directory of its datadir; a fresh checkout or
        # state directory has no parents yet (LEARNOPS_DATA_DIR=/new/path/worker).
        self.settings.learnops_data_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.learnops_table_store == "rocksdb":
            kept = tables_at_start(Path(self.conf.datadir), Path(self.conf.tabledir))
            if kept == "deleted":
                log.warning(
                    "rocksdb_tables_deleted hint='the last stop was not clean (killed, or "
                    "changelog records unacknowledged): the tables are read from the "
                    "changelogs'"
                )
            elif kept == "kept":
                log.info("rocksdb_tables_kept (a clean stop)")
        await super().on_first_start()

    async def on_stop(self) -> None:
        """Close the stages' processes and the pool after Faust has stopped its agents."""
        await super().on_stop()
        for stage in self.stages.values():
            stage.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def on_shutdown(self) -> None:
        """After every service stopped: say whether RocksDB's tables may be kept (stores.py)."""
        await super().on_shutdown()
        if self.settings.learnops_table_store == "rocksdb" and self._partitions is not None:
            if mark_clean_stop(Path(self.conf.datadir), self.producer):
                log.info("rocksdb_clean_stop tables kept for the next start")
            else:
                log.warning("rocksdb_unclean_stop the next start reads the changelogs")


def state_tables(settings: Settings) -> dict[str, bool]:
    """Every stage's table, by name (changelog ``<app id>-<name>-changelog``), sorted.

    Each name maps to whether the table's values name a source partition
    (``DoerTable.holds_partition``), which moving the state rewrites.
    """
    # The names are the code's: any topics file (a scratch one too) gives the same.
    app = create_app(
        settings.model_copy(update={"learnops_topics_file": None}), stages=list(STAGES)
    )
    return {
        table.name: table.holds_partition
        for table in sorted(app.tables.values(), key=lambda t: t.name)
    }


def consumed_topics(settings: Settings, stages: Iterable[str] | None) -> set[str]:
    """The topics the agents of ``stages`` (None: every stage) read."""
    app = create_app(
        settings.model_copy(update={"learnops_topics_file": None}),
        stages=list(STAGES) if stages is None else [s for s in stages if s in STAGES],
    )
    return {name for agent in app.agents.values() for name in agent.channel.topics}


def selected_stages(names: Iterable[str] | None) -> list[str]:
    """The stages to run, in a fixed order; ``None`` means all; an unknown name is an error.

    A stage's consumer group stays the app id's: workers running different stages
    must use different ``LEARNOPS_APP_ID``s, or the group would hand a stage's
    partitions to a worker that does not run it.
    """
    if names is None:
        return list(STAGES)
    wanted = set(names)
    unknown = sorted(wanted - set(STAGES))
    if unknown:
        raise SettingsError(
            f"LEARNOPS_STAGES: unknown stage(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(STAGES))}"
        )
    return [name for name in STAGES if name in wanted]


def register_stage(app: LearnopsApp, name: str) -> Any:
    """Build stage ``name`` on the app (it declares its tables, agents and timers)."""
    module, _, cls = STAGES[name].partition(":")
    stage = getattr(importlib.import_module(module), cls)(app)
    app.stages[name] = stage
    return stage


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


def create_app(
    settings: Settings,
    *,
    stages: Iterable[str] | None = None,
    learning: LearningConfig | None = None,
) -> LearnopsApp:
    """The Faust app for ``settings``, with the stages ``stages`` names (default: the settings').

    Raises :class:`SettingsError` or :class:`TopicCatalogError` with a message
    that names what to fix.
    """
    catalog = load_catalog(settings.learnops_topics_file)
    app = LearnopsApp(
        settings,
        catalog,
        learning or load_learning_config(settings.learnops_config_file),
        # Faust's aiokafka transport without its one-second waits
        # (agents/faust_internals/transport.py).
        broker=broker_urls(settings.kafka_hosts),
        broker_credentials=_broker_credentials(settings),
        # RocksDB through agents/faust_internals/stores.py (batch bodies write there too).
        store=store_url(settings.learnops_table_store),
        # Changelog recovery a batch at a time (agents/faust_internals/recovery.py).
        TableManager=TableManager,
        # One directory per app id: RocksDB tables keep the offsets of their own
        # changelogs, which another app id's (a repartition's new one) do not share.
        datadir=str(settings.learnops_data_dir / settings.learnops_app_id),
        # Every topic is keyed by doer and co-partitioned with the tables.
        topic_partitions=catalog.partitions,
        topic_replication_factor=catalog[next(iter(catalog.topics))].replication_factor,
        topic_disable_leader=True,
        # Events are validated by the agents themselves, so a bad one becomes a
        # dead letter instead of Faust's silent skip.
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        # A killed worker's partitions move in seconds, not Faust's default minute.
        broker_session_timeout=settings.learnops_session_timeout_s,
        broker_heartbeat_interval=settings.learnops_session_timeout_s / 5,
        # Faust refuses a session timeout above its request timeout (90 s by default).
        broker_request_timeout=max(90.0, settings.learnops_session_timeout_s + 30.0),
        consumer_group_instance_id=settings.learnops_group_instance_id,
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
    for name in selected_stages(settings.stages if stages is None else stages):
        register_stage(app, name)
    if settings.learnops_web_enabled:
        register_pages(app)
    return app
