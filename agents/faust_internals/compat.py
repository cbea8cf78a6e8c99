"""Every private name of Faust and aiokafka that learnops relies on, and a check that it holds.

The overrides in this subpackage (transport.py, offsets.py, introspection.py, stores.py,
recovery.py) and the stage helpers (agents/streams.py, agents/tables.py) subclass private
classes, override private methods and read private state of the exact
versions in :data:`PINNED` (pyproject.toml pins the same). A new release can
rename any of it without notice; an override of a method that no longer
exists is silently never called. :func:`check` runs at worker start and in
``tests/unit/test_faust_internals.py`` and fails with one message naming every
name that moved, so an upgrade fails loudly instead of losing records.

Upgrading: read each override against the new code, update :data:`NAMES` and
:data:`PINNED`, then run the unit and integration tests (tests/faults too).
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

#: The versions the overrides were written for; pyproject.toml pins exactly these.
PINNED: dict[str, str] = {
    "faust-streaming": "0.15.3",
    "aiokafka": "0.14.0",
    "mode-streaming": "0.7.1",
}


@dataclass(frozen=True)
class Method:
    """A method we override or call: ``owner`` (``module:Class``) has it with these parameters."""

    dist: str
    owner: str
    name: str
    params: tuple[str, ...]
    used_by: str

    @property
    def target(self) -> str:
        module, _, cls = self.owner.partition(":")
        return f"{module}.{cls}.{self.name}"


@dataclass(frozen=True)
class State:
    """Instance state we read or write: assigned as ``self.<name>`` in ``owner.method``."""

    dist: str
    owner: str
    name: str
    method: str
    used_by: str

    @property
    def target(self) -> str:
        module, _, cls = self.owner.partition(":")
        return f"{module}.{cls}.{self.name}"


@dataclass(frozen=True)
class Attribute:
    """A module- or class-level attribute we use: ``owner`` (``module`` or ``module:Class``).

    With ``kind`` (``module:Class``), the class's own attribute must be an instance of it.
    """

    dist: str
    owner: str
    name: str
    used_by: str
    kind: str | None = None

    @property
    def target(self) -> str:
        return f"{self.owner.replace(':', '.')}.{self.name}"


@dataclass(frozen=True)
class Reads(State):
    """State a method reads each time it runs: ``self.<name>`` appears in ``owner.method``.

    For state we set between calls (the fetch limits): a release that read it once,
    at start-up, would turn the setting into a silent no-op.
    """


FAUST = "faust-streaming"
AIOKAFKA = "aiokafka"
_DRIVER = "faust.transport.drivers.aiokafka"
_CONSUMER = "faust.transport.consumer:Consumer"
_TRANSPORT = "agents/faust_internals/transport.py"
_INTROSPECTION = "agents/faust_internals/introspection.py"
_STORES = "agents/faust_internals/stores.py"
_SUBSCRIPTIONS = "aiokafka.consumer.subscription_state"
_COORDINATOR = "aiokafka.consumer.group_coordinator:GroupCoordinator"
_MEMBERSHIP = "agents/faust_internals/membership.py"
_RECOVERY = "agents/faust_internals/recovery.py"
_RECOVERY_CLS = "faust.tables.recovery:Recovery"

#: Every private (or internal) name the overrides and helpers use, with what they expect.
NAMES: tuple[Method | State | Attribute, ...] = (
    # transport.py: the transport registry and the classes it subclasses.
    Attribute(FAUST, "faust.transport.drivers", "TRANSPORTS", _TRANSPORT),
    Attribute(FAUST, f"{_DRIVER}:Transport", "Consumer", _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:AIOKafkaConsumerThread", "on_start", ("self",), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:AIOKafkaConsumerThread", "_ensure_consumer", ("self",), _TRANSPORT),
    Method(
        FAUST,
        f"{_DRIVER}:AIOKafkaConsumerThread",
        "_fetch_records",
        ("self", "consumer", "active_partitions", "timeout", "max_records"),
        _TRANSPORT,
    ),
    Method(FAUST, f"{_DRIVER}:Consumer", "_new_consumer_thread", ("self",), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "seek_to_committed", ("self",), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "seek", ("self", "partition", "offset"), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "on_partitions_revoked", ("self", "revoked"), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "getmany", ("self", "timeout"), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "_new_offset", ("self", "tp"), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "wait_empty", ("self",), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "_wait_next_records", ("self", "timeout"), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "commit_and_end_transactions", ("self",), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "_clean_unacked_messages", ("self",), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "_get_active_partitions", ("self",), _TRANSPORT),
    Method(
        FAUST,
        f"{_DRIVER}:Consumer",
        "commit",
        ("self", "topics", "start_new_transaction"),
        _TRANSPORT,
    ),
    # transport.py: the delivery loop's call its ``wait_first`` runs inline (see there).
    Method(FAUST, _CONSUMER, "_drain_messages", ("self", "fetcher"), _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "wait_first", ("self", "coros", "timeout"), _TRANSPORT),
    State(FAUST, _CONSUMER, "suspend_flow", "__init__", _TRANSPORT),
    Method(FAUST, f"{_DRIVER}:Consumer", "highwater", ("self", "tp"), "agents/health.py"),
    Method(FAUST, _CONSUMER, "highwaters", ("self", "partitions"), "agents/canary.py"),
    Method(FAUST, _CONSUMER, "position", ("self", "tp"), "agents/canary.py"),
    # introspection.py skips_next: the events Faust's stream iteration skips unseen.
    Attribute(FAUST, "faust.app.base:App", "consumer_generation_id", _INTROSPECTION),
    State(FAUST, "faust.types.tuples:Message", "generation_id", "__init__", _INTROSPECTION),
    # transport.py: the consumer's bookkeeping it reads and corrects.
    State(FAUST, _CONSUMER, "_acked", "__init__", _TRANSPORT),
    State(FAUST, _CONSUMER, "_gap", "__init__", _TRANSPORT),
    State(FAUST, _CONSUMER, "_committed_offset", "__init__", _TRANSPORT),
    State(FAUST, _CONSUMER, "_unacked_messages", "__init__", _TRANSPORT),
    State(FAUST, _CONSUMER, "_waiting_for_ack", "__init__", _TRANSPORT),
    State(FAUST, _CONSUMER, "_buffered_partitions", "__init__", _TRANSPORT),
    State(FAUST, _CONSUMER, "_paused_partitions", "_reset_state", _TRANSPORT),
    State(FAUST, _CONSUMER, "flow_active", "_reset_state", _TRANSPORT),
    # transport.py: aiokafka's fetcher, whose wait and minimum bytes it sets per poll.
    State(AIOKAFKA, "aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetcher", "start", _TRANSPORT),
    State(
        AIOKAFKA, "aiokafka.consumer.fetcher:Fetcher", "_fetch_max_wait_ms", "__init__", _TRANSPORT
    ),
    State(
        AIOKAFKA, "aiokafka.consumer.fetcher:Fetcher", "_fetch_min_bytes", "__init__", _TRANSPORT
    ),
    # ... and reads again for every fetch request it builds.
    Reads(
        AIOKAFKA,
        "aiokafka.consumer.fetcher:Fetcher",
        "_fetch_max_wait_ms",
        "_get_actions_per_node",
        _TRANSPORT,
    ),
    Reads(
        AIOKAFKA,
        "aiokafka.consumer.fetcher:Fetcher",
        "_fetch_min_bytes",
        "_get_actions_per_node",
        _TRANSPORT,
    ),
    State(AIOKAFKA, "aiokafka.consumer.fetcher:Fetcher", "_records", "__init__", _TRANSPORT),
    # transport.py: the positions it reads for the offset guard (fetch_positions).
    State(
        AIOKAFKA,
        "aiokafka.consumer.consumer:AIOKafkaConsumer",
        "_subscription",
        "__init__",
        _TRANSPORT,
    ),
    Attribute(AIOKAFKA, f"{_SUBSCRIPTIONS}:SubscriptionState", "subscription", _TRANSPORT),
    Attribute(AIOKAFKA, f"{_SUBSCRIPTIONS}:Subscription", "assignment", _TRANSPORT),
    Attribute(AIOKAFKA, f"{_SUBSCRIPTIONS}:Assignment", "tps", _TRANSPORT),
    Method(AIOKAFKA, f"{_SUBSCRIPTIONS}:Assignment", "state_value", ("self", "tp"), _TRANSPORT),
    Attribute(AIOKAFKA, f"{_SUBSCRIPTIONS}:TopicPartitionState", "has_valid_position", _TRANSPORT),
    Attribute(AIOKAFKA, f"{_SUBSCRIPTIONS}:TopicPartitionState", "position", _TRANSPORT),
    State(
        FAUST, "faust.transport.consumer:ThreadDelegateConsumer", "_thread", "__init__", _TRANSPORT
    ),
    # membership.py: the group coordinator whose answers and task it watches.
    State(
        AIOKAFKA,
        "aiokafka.consumer.consumer:AIOKafkaConsumer",
        "_coordinator",
        "start",
        _MEMBERSHIP,
    ),
    Method(AIOKAFKA, _COORDINATOR, "_send_req", ("self", "request"), _MEMBERSHIP),
    State(AIOKAFKA, _COORDINATOR, "_coordination_task", "__init__", _MEMBERSHIP),
    State(AIOKAFKA, _COORDINATOR, "_closing", "__init__", _MEMBERSHIP),
    State(AIOKAFKA, _COORDINATOR, "group_id", "__init__", _MEMBERSHIP),
    State(AIOKAFKA, _COORDINATOR, "member_id", "__init__", _MEMBERSHIP),
    State(
        AIOKAFKA, "aiokafka.protocol.group:HeartbeatRequest", "_member_id", "__init__", _MEMBERSHIP
    ),
    State(
        AIOKAFKA,
        "aiokafka.protocol.group:HeartbeatRequest",
        "_generation_id",
        "__init__",
        _MEMBERSHIP,
    ),
    State(
        AIOKAFKA, "aiokafka.protocol.group:SyncGroupRequest", "_member_id", "__init__", _MEMBERSHIP
    ),
    State(
        AIOKAFKA,
        "aiokafka.protocol.group:SyncGroupRequest",
        "_generation_id",
        "__init__",
        _MEMBERSHIP,
    ),
    State(
        AIOKAFKA,
        "aiokafka.protocol.commit:OffsetCommitRequest",
        "_consumer_id",
        "__init__",
        _MEMBERSHIP,
    ),
    State(
        AIOKAFKA,
        "aiokafka.protocol.commit:OffsetCommitRequest",
        "_consumer_group_generation_id",
        "__init__",
        _MEMBERSHIP,
    ),
    # transport.py: the producer buffer whose flush waits for acknowledgements.
    Method(FAUST, "faust.transport.producer:ProducerBuffer", "put", ("self", "fut"), _TRANSPORT),
    Method(FAUST, "faust.transport.producer:ProducerBuffer", "flush", ("self",), _TRANSPORT),
    Attribute(FAUST, "faust.transport.producer:ProducerBuffer", "_handle_pending", _TRANSPORT),
    Method(
        FAUST,
        "faust.transport.producer:ProducerBuffer",
        "_send_pending",
        ("self", "fut"),
        _TRANSPORT,
    ),
    State(FAUST, "faust.transport.producer:ProducerBuffer", "pending", "__post_init__", _TRANSPORT),
    State(
        FAUST,
        "faust.transport.producer:ProducerBuffer",
        "message_sent",
        "__post_init__",
        _TRANSPORT,
    ),
    Method(
        FAUST, "faust.transport.producer:ProducerBuffer", "__post_init__", ("self",), _TRANSPORT
    ),
    State(FAUST, "faust.transport.producer:Producer", "buffer", "__init__", _TRANSPORT),
    # introspection.py: the producer under Faust's, for /readyz.
    State(
        FAUST,
        f"{_DRIVER}:Producer",
        "_producer",
        "on_start",
        "agents/faust_internals/introspection.py",
    ),
    State(
        AIOKAFKA,
        "aiokafka.producer.producer:AIOKafkaProducer",
        "client",
        "__init__",
        "agents/health.py",
    ),
    # agents/streams.py: stages ack events themselves.
    State(FAUST, "faust.streams:Stream", "enable_acks", "__init__", "agents/streams.py"),
    State(FAUST, "faust.streams:Stream", "channel", "__init__", "agents/streams.py"),
    Method(FAUST, "faust.streams:Stream", "events", ("self",), "agents/streams.py"),
    Method(FAUST, "faust.streams:Stream", "ack", ("self", "event"), "agents/streams.py"),
    Method(FAUST, "faust.channels:Channel", "empty", ("self",), "agents/streams.py"),
    # agents/tables.py: a table whose changelog partition follows the doer.
    Method(
        FAUST, "faust.tables.table:Table", "partition_for_key", ("self", "key"), "agents/tables.py"
    ),
    Method(
        FAUST,
        "faust.tables.table:Table",
        "tumbling",
        ("self", "size", "expires", "key_index"),
        "agents/tables.py",
    ),
    # stores.py: the RocksDB store, writing each key to its doer's partition database.
    Attribute(FAUST, "faust.stores", "STORES", _STORES),
    Method(FAUST, "faust.stores.rocksdb:Store", "_set", ("self", "key", "value"), _STORES),
    Method(
        FAUST, "faust.stores.rocksdb:Store", "_db_for_partition", ("self", "partition"), _STORES
    ),
    Method(FAUST, "faust.stores.rocksdb:Store", "_get", ("self", "key"), _STORES),
    Method(FAUST, "faust.stores.rocksdb:Store", "_contains", ("self", "key"), _STORES),
    Method(FAUST, "faust.stores.rocksdb:Store", "_get_bucket_for_key", ("self", "key"), _STORES),
    State(FAUST, "faust.stores.rocksdb:Store", "_key_index", "__init__", _STORES),
    State(FAUST, "faust.stores.base:Store", "table", "__init__", _STORES),
    # stores.py: kept windows handed to Faust's expiry when a partition becomes active.
    Method(
        FAUST,
        "faust.stores.base:Store",
        "on_recovery_completed",
        ("self", "active_tps", "standby_tps"),
        _STORES,
    ),
    Method(FAUST, "faust.stores.base:Store", "_decode_key", ("self", "key"), _STORES),
    Method(FAUST, "faust.stores.rocksdb:Store", "_visible_keys", ("self", "db"), _STORES),
    State(FAUST, "faust.stores.rocksdb:Store", "_dbs", "__init__", _STORES),
    Method(
        FAUST,
        "faust.tables.base:Collection",
        "_maybe_set_key_ttl",
        ("self", "key", "partition"),
        _STORES,
    ),
    Method(FAUST, "faust.tables.base:Collection", "_should_expire_keys", ("self",), _STORES),
    Method(FAUST, "faust.tables.base:Collection", "_to_key", ("self", "k"), _STORES),
    # recovery.py: the changelog reading loop, replaced; what it reads and sets as Faust's does.
    Attribute(FAUST, "faust.tables.manager:TableManager", "recovery", _RECOVERY),
    Attribute(FAUST, "faust.tables.manager:TableManager", "_recovery", _RECOVERY),
    Attribute(FAUST, "faust.tables.manager:TableManager", "changelog_queue", _RECOVERY),
    State(FAUST, "faust.tables.manager:TableManager", "standbys_ready", "__init__", _RECOVERY),
    Method(FAUST, "faust.tables.manager:TableManager", "on_standbys_ready", ("self",), _RECOVERY),
    # Replaced as the one background task that reads the changelog queue: were Faust's loop
    # no longer that task, both would read it.
    Attribute(
        FAUST, _RECOVERY_CLS, "_slurp_changelogs", _RECOVERY, kind="mode.services:ServiceTask"
    ),
    Method(FAUST, _RECOVERY_CLS, "__init__", ("self", "app", "tables", "kwargs"), _RECOVERY),
    Method(FAUST, _RECOVERY_CLS, "need_recovery", ("self",), _RECOVERY),
    Attribute(FAUST, "faust.app.base:App", "in_transaction", _RECOVERY),
    State(FAUST, "faust.tables.base:Collection", "recovery_buffer_size", "__init__", _RECOVERY),
    State(FAUST, "faust.tables.base:Collection", "standby_buffer_size", "__init__", _RECOVERY),
    # No table of ours sets a changelog callback: were one to suspend, a batch's records
    # could be applied across a rebalance's clearing of the queue (recovery.py).
    State(FAUST, "faust.tables.base:Collection", "_on_changelog_event", "__init__", _RECOVERY),
    Method(FAUST, _RECOVERY_CLS, "flush_buffers", ("self",), _RECOVERY),
    Method(FAUST, _RECOVERY_CLS, "_set_recovery_ended", ("self",), _RECOVERY),
    *(
        Attribute(FAUST, _RECOVERY_CLS, name, _RECOVERY)
        for name in (
            "num_samples_required_for_estimate",
            "signal_recovery_end",
            "_actives_span",
            "_standbys_span",
            "_last_flush_at",
        )
    ),
    *(
        State(FAUST, _RECOVERY_CLS, name, "__init__", _RECOVERY)
        for name in (
            "tables",
            "active_tps",
            "standby_tps",
            "tp_to_table",
            "active_offsets",
            "standby_offsets",
            "active_highwaters",
            "standby_highwaters",
            "buffers",
            "buffer_sizes",
            "_active_events_received_at",
            "_standby_events_received_at",
            "_processing_times",
        )
    ),
    State(FAUST, _RECOVERY_CLS, "in_recovery", "_set_recovery_ended", _RECOVERY),
    State(
        FAUST, _RECOVERY_CLS, "_last_active_event_processed_at", "_set_recovery_ended", _RECOVERY
    ),
    Method(
        FAUST, "faust.tables.base:Collection", "on_changelog_event", ("self", "event"), _RECOVERY
    ),
    Method(
        FAUST,
        "faust.tables.base:Collection",
        "apply_changelog_batch",
        ("self", "batch"),
        _RECOVERY,
    ),
)


class IncompatibleInternals(RuntimeError):
    """An installed Faust or aiokafka lacks, or changed, a private name the overrides use."""


def installed_versions() -> dict[str, str | None]:
    """The installed version of every pinned distribution (None when it is not installed)."""
    found: dict[str, str | None] = {}
    for dist in PINNED:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = None
    return found


def _resolve(owner: str) -> object:
    module, _, qualname = owner.partition(":")
    found: object = importlib.import_module(module)
    for part in filter(None, qualname.split(".")):
        found = getattr(found, part)
    return found


def _problem(name: Method | State | Attribute) -> str | None:
    """What is wrong with one name, or None when it is as expected."""
    try:
        owner = _resolve(name.owner)
    except (ImportError, AttributeError):
        return f"{name.owner.replace(':', '.')} is missing"
    if isinstance(name, Attribute):
        if not hasattr(owner, name.name):
            return "is missing"
        if name.kind is None:
            return None
        found = inspect.getattr_static(owner, name.name)
        kind = _resolve(name.kind)
        if isinstance(kind, type) and isinstance(found, kind):
            return None
        return f"is no longer a {name.kind.replace(':', '.')}: {type(found).__name__}"
    if isinstance(name, Method):
        function = getattr(owner, name.name, None)
        if not callable(function):
            return "is missing"
        try:
            params = tuple(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            return "has no signature to check"
        if params != name.params:
            expected, now = ", ".join(name.params), ", ".join(params)
            return f"changed signature: expected ({expected}), found ({now})"
        return None
    if isinstance(name, Reads):
        verb, pattern = "read", rf"self\.{re.escape(name.name)}\b"
    else:
        verb, pattern = "assigned", rf"self\.{re.escape(name.name)}\s*(:[^=\n]*)?=[^=]"
    method = inspect.getattr_static(owner, name.method, None)
    if method is None:
        return f"is no longer {verb}: {name.owner.replace(':', '.')}.{name.method} is missing"
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return f"cannot be checked: no source for {name.method}"
    if not re.search(pattern, source):
        return f"is no longer {verb} in {name.method}"
    return None


def problems() -> list[str]:
    """One line per private name that is missing or changed; empty when all are as expected."""
    versions = installed_versions()
    found = []
    for name in NAMES:
        problem = _problem(name)
        if problem is not None:
            found.append(
                f"{name.dist} {versions.get(name.dist) or '(not installed)'}: "
                f"{name.target} {problem} (used by {name.used_by})"
            )
    return found


def check() -> None:
    """Raise :class:`IncompatibleInternals` naming every private name that moved, and the versions.

    Call it once at worker start, before the app is built.
    """
    found = problems()
    if not found:
        return
    versions = installed_versions()
    pins = ", ".join(
        f"{dist}=={pinned} (installed: {versions[dist] or 'none'})"
        for dist, pinned in PINNED.items()
    )
    raise IncompatibleInternals(
        "learnops's Faust overrides (agents/faust_internals/) do not fit the installed "
        "versions:\n  "
        + "\n  ".join(found)
        + f"\nThey were written for {pins} — pin them (pip install -e . does), "
        "or update agents/faust_internals/ and compat.NAMES for the new versions."
    )
