"""The `learnops` command: plain click groups that import what a command needs when it runs.

The root lists its groups from :data:`GROUPS` without importing them, so
`learnops --help` costs click alone; `learnops policy list` imports the policy
commands and what they use, nothing of Faust.  A command is an
``async def f(ctx, **options)`` declared with :func:`command`; ``ctx`` is a
:class:`CommandContext` (settings read on first use, ``ctx.say``).

Errors a user can cause end as one line on stderr naming the cause and the fix:
exit 2 for usage errors, 1 for the rest; ``--debug`` shows the traceback. A
command line with ``--json`` gets the same line as one JSON object on stderr
(``{"error", "exit_code"}``, and ``"command"`` for a usage error) and nothing on
stdout.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import cached_property, update_wrapper
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click

if TYPE_CHECKING:
    from agents.config import LearningConfig
    from agents.settings import Settings
    from agents.topics import TopicCatalog

PROG = "learnops"

#: Exit status of a command whose output pipe closed early (128 + SIGPIPE), as a shell reports.
EXIT_BROKEN_PIPE = 141


# --------------------------------------------------------------------------- errors


class CliError(click.ClickException):
    """A runtime error the user can act on: one line on stderr, exit 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        """Print ``learnops: MESSAGE`` on stderr."""
        click.echo(f"{PROG}: {self.format_message()}", file=file or sys.stderr)


def fail(message: str) -> NoReturn:
    """Stop the command with exit status 1 and a one-line message on stderr."""
    raise CliError(message)


def usage_error(message: str) -> NoReturn:
    """Stop the command with exit status 2: the command line is wrong."""
    raise click.UsageError(message)


def explain(exc: BaseException, settings: Settings | None) -> str | None:
    """The one sentence for an error a user can cause (and fix), or None for a bug."""
    from agents.settings import SettingsError

    if isinstance(exc, SettingsError):
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:]) or str(exc)
        return f"invalid settings: {details} (fix the environment or .env)"
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None:
        if isinstance(exc, asyncpg.UndefinedTableError):
            return (
                f"the database has no learnops schema ({exc}); run `learnops db migrate` "
                "(an older schema: the same command brings it up to date)"
            )
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return f"{exc} on the PostgreSQL server; create it, or fix the name in DATABASE_URL"
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            return (
                f"the database role may not do this ({exc}); `db migrate` and `dataset erase` "
                "connect with LEARNOPS_MIGRATE_DATABASE_URL, `policy keys` and `operator keys` "
                "with LEARNOPS_KEYADMIN_DATABASE_URL when set, everything else with "
                "DATABASE_URL (docs/security.md, Database roles)"
            )
        if isinstance(
            exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        ):
            return (
                f"PostgreSQL refused the login ({exc}); check the user and password in DATABASE_URL"
            )
    topics = sys.modules.get("agents.topics")
    if topics is not None and isinstance(exc, topics.TopicCatalogError):
        return str(exc)
    kafka_errors = sys.modules.get("aiokafka.errors")
    if kafka_errors is not None and isinstance(exc, kafka_errors.UnknownTopicOrPartitionError):
        return (
            f"a topic this command reads is not on the cluster ({exc}); "
            "`learnops topics create` creates the catalogue's topics"
        )
    if kafka_errors is not None and isinstance(exc, kafka_errors.KafkaConnectionError):
        where = settings.kafka_bootstrap_servers if settings else "KAFKA_BOOTSTRAP_SERVERS"
        return (
            f"cannot reach Kafka at {where} ({exc}); is it running, and is "
            "KAFKA_BOOTSTRAP_SERVERS right? (`make up` starts a local one)"
        )
    return None


class ServiceUnreachable(CliError):
    """PostgreSQL or Kafka did not answer a connection."""


def _database_host(dsn: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    hosts = parts.netloc.rpartition("@")[2] or "localhost"  # one, or libpq's h1:p1,h2:p2
    if "," not in hosts and ":" not in hosts.rpartition("]")[2]:
        hosts += ":5432"
    return f"{hosts}{parts.path}"


def postgres_unreachable(settings: Settings, exc: BaseException) -> ServiceUnreachable:
    """The error for a PostgreSQL that did not answer (the DSN's password is never shown)."""
    return ServiceUnreachable(
        f"cannot reach PostgreSQL at {_database_host(settings.database_dsn)} "
        f"({type(exc).__name__}: {exc}); is it running, and is DATABASE_URL right? "
        "(`make up` starts a local one)"
    )


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a failed connection raises: refused, unknown host, timed out, closed by the server."""
    import socket

    import asyncpg

    return (
        ConnectionRefusedError,
        ConnectionResetError,
        socket.gaierror,
        TimeoutError,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
    )


# --------------------------------------------------------------------------- command context


class CommandContext:
    """What a command gets: the settings (read on first use), the learning config, ``say``."""

    def __init__(self, debug: bool = False) -> None:
        self.debug = debug
        self.stdout = sys.stdout
        self.stderr = sys.stderr

    @cached_property
    def settings(self) -> Settings:
        """The process settings (environment and .env), read once."""
        from agents.settings import load_settings

        return load_settings()

    @cached_property
    def learning(self) -> LearningConfig:
        """The learning configuration (config/learning.yaml or LEARNOPS_CONFIG_FILE)."""
        from agents.config import load_learning_config

        return load_learning_config(self.settings.learnops_config_file)

    @cached_property
    def catalog(self) -> TopicCatalog:
        """The topic catalogue (topics.yaml or LEARNOPS_TOPICS_FILE)."""
        from agents.topics import TopicCatalogError, load_catalog

        try:
            return load_catalog(self.settings.learnops_topics_file)
        except TopicCatalogError as exc:
            fail(str(exc))

    def say(self, message: str = "", file: Any = None, **_: Any) -> None:
        """Print a line of human output (stdout unless ``file`` is given)."""
        print(message, file=file or self.stdout, flush=True)

    @contextmanager
    def quiet(self, on: bool = True) -> Iterator[None]:
        """Hold back the lines steps print (a command printing one JSON document at its end)."""
        if not on:
            yield
            return
        kept, self.stdout = self.stdout, open(os.devnull, "w")  # noqa: SIM115
        try:
            yield
        finally:
            self.stdout.close()
            self.stdout = kept

    def console(self) -> Any:
        """A rich console on stdout: a wide one when stdout is not a terminal, so nothing is cut."""
        from rich.console import Console

        if self.stdout.isatty():
            console = Console(file=self.stdout)
        else:
            console = Console(file=self.stdout, width=400, no_color=True, highlight=False)
        console.on_broken_pipe = _quiet_broken_pipe  # type: ignore[method-assign]
        return console


def quiet_client_logs(debug: bool) -> None:
    """Keep the Kafka client's own connection logs off a command's stderr (``--debug`` shows them).

    A command reports a failure itself, in one sentence; aiokafka would log it
    first, with its own wording, through logging's last-resort handler.
    """
    import logging

    logging.getLogger("aiokafka").setLevel(logging.DEBUG if debug else logging.CRITICAL)


#: The context of the command being run (for the error messages that name a setting).
_running: CommandContext | None = None

#: Kept as a name for the command modules' annotations.
GroupedCommand = CommandContext


def command(
    group: click.Group, name: str, *options: Any
) -> Callable[[Callable[..., Coroutine[Any, Any, Any]]], click.Command]:
    """Declare `learnops <group> <name>` from ``async def f(ctx, **options)``."""

    def register(fun: Callable[..., Coroutine[Any, Any, Any]]) -> click.Command:
        def run(**kwargs: Any) -> None:
            global _running
            root = click.get_current_context().find_root()
            ctx = CommandContext(debug=bool((root.obj or {}).get("debug")))
            _running = ctx
            quiet_client_logs(ctx.debug)
            try:
                asyncio.run(fun(ctx, **kwargs))
            except BrokenPipeError:  # before click, which would exit 1
                _quiet_broken_pipe()

        update_wrapper(run, fun)
        decorated: Any = run
        for option in reversed(options):
            decorated = option(decorated)
        return group.command(name=name, help=fun.__doc__)(decorated)

    return register


@asynccontextmanager
async def database(
    ctx: CommandContext, purpose: Literal["default", "migrate", "keyadmin"] = "default"
) -> AsyncIterator[Any]:
    """A small PostgreSQL pool for one command, closed when it is done.

    ``purpose`` picks the role: LEARNOPS_MIGRATE_DATABASE_URL for migrations,
    LEARNOPS_KEYADMIN_DATABASE_URL for the keyring, each falling back to DATABASE_URL.
    """
    from storage.pool import create_pool

    settings = ctx.settings
    try:
        pool = await create_pool(settings.database_dsn_for(purpose), min_size=1, max_size=2)
    except connection_errors() as exc:
        raise postgres_unreachable(settings, exc) from exc
    try:
        yield pool
    finally:
        await pool.close()


async def require_writes(pool: Any, table: str, privileges: str, why: str) -> None:
    """Stop the command before it changes anything when its login may not write ``table``."""
    async with pool.acquire() as conn:
        may = await conn.fetchval(
            "SELECT has_table_privilege(current_user, $1, $2)", table, privileges
        )
    if not may:
        fail(
            f"this login may not write the table {table}, {why}: run the command with the "
            "DATABASE_URL of the schema owner (LEARNOPS_MIGRATE_DATABASE_URL), not the "
            "worker's or the reader's"
        )


def split_ref(text: str) -> tuple[str, int | None]:
    """Split ``NAME@VERSION``; ``NAME`` alone, or a non-numeric suffix, gives version None."""
    name, sep, version = text.rpartition("@")
    if sep and version.isdigit() and name:
        return name, int(version)
    return text, None


def event_id_start(text: str, what: str) -> str:
    """``text`` as (the start of) a ``what``'s event id, as pasted; a usage error if not one."""
    event_id = text.strip()
    if not all(c in "0123456789abcdefABCDEF-" for c in event_id):
        usage_error(f"{event_id!r} is not (the start of) an event id: hex digits and dashes")
    if len(event_id.replace("-", "")) < 8:
        usage_error(
            f"{event_id!r} is too short: give at least 8 hex digits of the {what}'s event id"
        )
    return event_id


def as_known(name: str, known: Iterable[str]) -> str | None:
    """``name`` if it is known, else the one known name equal to it regardless of case, or None."""
    known = list(known)
    if name in known:
        return name
    folded = {k for k in known if k.lower() == name.lower()}
    return folded.pop() if len(folded) == 1 else None


def closest(name: str, known: Iterator[str] | list[str] | set[str]) -> str:
    """``; did you mean 'X'?`` for the closest known name (case-insensitive), or ''."""
    known = list(known)
    by_lower = {k.lower(): k for k in known}
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[match[0]]!r}?" if match else ""


def nothing_listed(
    noun: str,
    filters: Iterable[tuple[str, str | None, set[str]]],
    filtered: bool,
    everything: str | None = None,
) -> str:
    """Why a list of ``noun`` is empty: each filter naming nothing known, with the closest.

    ``filters`` holds (what, the name given or None, the names that have rows);
    else "no EVERYTHING match" or "… yet" (``everything`` defaults to ``noun``).
    """
    unknown = [
        f"no {noun} of {what} {name!r}{closest(name, known)}"
        for what, name, known in filters
        if name is not None and name.lower() not in {k.lower() for k in known}
    ]
    return "; ".join(unknown) or f"no {everything or noun}" + (" match" if filtered else " yet")


def listed_note(shown: int, limit: int, hint: str) -> str:
    """The line under a list: whether ``--limit`` cut it, then ``hint``."""
    return (f"the latest {limit} (--limit shows more); " if shown == limit else "") + hint


#: ``--json`` for commands that can print JSON instead of tables.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def actor_option(help: str) -> Any:
    """``--actor``: who runs the command, as declared (the current user unless given)."""
    import getpass

    return click.option(
        "--actor", default=lambda: getpass.getuser(), show_default="the current user", help=help
    )


def limit_option(default: int) -> Callable[[Any], Any]:
    """``--limit N``, a positive number of rows."""
    return click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        help="At most this many rows.",
    )


def table(*columns: str, title: str | None = None, ids: int = 1) -> Any:
    """A rich table with headers; its first ``ids`` columns hold identifiers, never cut."""
    from rich import box
    from rich.table import Table

    shown = Table(
        title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, show_edge=False
    )
    for i, name in enumerate(columns):
        if i < ids:
            shown.add_column(name, no_wrap=True, overflow="fold")
        else:
            shown.add_column(name, overflow="fold")
    return shown


# --------------------------------------------------------------------------- the root


class LearnopsGroup(click.Group):
    """A group whose subgroups are imported only when a command of theirs runs."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            # "module[,module…]:attribute": the first module defines the group, the
            # others register commands on it.
            modules, _, attribute = self.lazy[cmd_name][0].partition(":")
            first, *others = modules.split(",")
            found = getattr(importlib.import_module(first), attribute)
            for extra in others:
                importlib.import_module(extra)
            self.add_command(found, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        for name in self.list_commands(ctx):
            if name in self.commands:
                cmd = self.commands[name]
                if cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(limit)))
            else:
                rows.append((name, self.lazy[name][1]))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            hint = closest(name, self.list_commands(ctx))
            ctx.fail(
                f"no such command {name!r}{hint} (`{ctx.command_path} --help` lists the commands)"
            )
        return super().resolve_command(ctx, args)


class SubGroup(LearnopsGroup):
    """A command group whose unknown commands get the same "did you mean" answer."""


def group(help: str) -> Callable[[Callable[..., Any]], click.Group]:
    """A command group (``@group("…") def policy(): …``) that suggests the closest command."""

    def make(fun: Callable[..., Any]) -> click.Group:
        return click.group(cls=SubGroup, help=help)(fun)

    return make


GROUPS: dict[str, tuple[str, str]] = {
    "policy": (
        "learnops.cli.policy:policy",
        "Signed policy versions: register, shadow, canary, approve, promote, roll back, inspect.",
    ),
    "dataset": (
        "learnops.cli.datasets:dataset",
        "Curated datasets (TENANT/DOER/PHASE) and golden datasets: list, show, samples, "
        "freeze, verify, erase.",
    ),
    "operator": (
        "learnops.cli.operator:operator",
        "Operator keys that sign commands, and their roles per doer.",
    ),
    "replay": (
        "learnops.cli.experiments:replay",
        "Deterministic offline replays of a policy on a golden dataset.",
    ),
    "experiment": (
        "learnops.cli.experiments:experiment",
        "The experiment registry: create, show and list experiments and requests.",
    ),
    "skills": (
        "learnops.cli.skills:skills",
        "Skill cards: what each doer is good and bad at, with the figures.",
    ),
    "dlq": (
        "learnops.cli.dlq:dlq",
        "Dead letters: what the stages refused and why; the refused input itself.",
    ),
    "alerts": (
        "learnops.cli.alerts:alerts",
        "Alerts the stages raised (regressions, rollbacks, contamination, refusals): list, show.",
    ),
    "bandit": (
        "learnops.cli.bandit:bandit",
        "The bandit optimizer: a doer's option shares; show, freeze, unfreeze, propose.",
    ),
    "demo": (
        "learnops.demo.commands,learnops.demo.canary,learnops.demo.curation,"
        "learnops.demo.experiments,learnops.demo.bandit:demo",
        "A simulated orchestrator and walk-throughs of what the worker does.",
    ),
}


def _debug_option(ctx: click.Context, _: Any, value: bool) -> bool:
    ctx.ensure_object(dict)["debug"] = value
    return value


@click.group(
    cls=LearnopsGroup,
    lazy=GROUPS,
    context_settings={"max_content_width": 100},
)
@click.version_option(package_name="learnops", prog_name=PROG, message="%(prog)s %(version)s")
@click.option(
    "--debug",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_debug_option,
    help="Show the traceback of an error instead of one line.",
)
def cli() -> None:
    """learnops: run loss, curated samples, signed policies and safe rollouts for AI agents."""


@group("Create, check and describe the topics in topics.yaml.")
def topics() -> None:
    pass


@group("PostgreSQL schema migrations.")
def db() -> None:
    pass


@group("JSON Schemas of every event, for services in other languages.")
def schema() -> None:
    pass


cli.add_command(topics)
cli.add_command(db)
cli.add_command(schema)


# --------------------------------------------------------------------------- topics, db, schema


@command(
    topics,
    "create",
    click.option(
        "--replication-factor",
        type=click.IntRange(min=1),
        default=None,
        help="Override every topic's replication factor (e.g. 3 on a real cluster).",
    ),
    click.option(
        "--with-state",
        is_flag=True,
        help="Grow partitions even though table changelogs of their count exist (docs/"
        "operations.md, 'Changing the partition count': the tables' state must be moved).",
    ),
    json_option,
)
async def topics_create(
    ctx: CommandContext, replication_factor: int | None, with_state: bool, as_json: bool
) -> None:
    """Create missing topics and update partitions and configs to match topics.yaml."""
    from aiokafka.errors import InvalidReplicationFactorError

    from agents.app import state_tables
    from agents.topics import TopicCatalogError, ensure, load_catalog

    settings = ctx.settings
    try:
        catalog = load_catalog(settings.learnops_topics_file, replication_factor=replication_factor)
        tables = [] if with_state else list(state_tables(settings))
        changes = await ensure(settings, catalog, with_state=with_state, tables=tables)
    except TopicCatalogError as exc:
        fail(str(exc))
    except InvalidReplicationFactorError as exc:
        fail(
            f"the cluster refused the replication factor ({exc}); it needs at least as many "
            "brokers: --replication-factor N with N at most the brokers it has"
        )
    if as_json:
        ctx.say(dumps([{"action": c.action, "topic": c.name, "detail": c.detail} for c in changes]))
        return
    for change in changes:
        ctx.say(
            f"{change.action:9} {change.name}" + (f"  ({change.detail})" if change.detail else "")
        )


@command(
    topics,
    "repartition",
    click.option(
        "--to-app-id",
        "to_app",
        default=None,
        help="The app id the workers will run under: its changelogs get the moved state.",
    ),
    click.option(
        "--from-app-id",
        "from_app",
        default=None,
        help="The app id whose state moves to --to-app-id (default: LEARNOPS_APP_ID).",
    ),
    click.option(
        "--move",
        "more",
        multiple=True,
        metavar="OLD=NEW",
        help="Another app id to move in the same run (stages split over app ids); repeatable.",
    ),
    click.option(
        "--partitioner",
        type=click.Choice(["murmur2", "crc32"]),
        default="murmur2",
        show_default=True,
        help="How the producers place doers: Kafka's default, or librdkafka's 'consistent' "
        "(only for a deployment run with LEARNOPS_PLACEMENT_CHECK=false: the worker refuses "
        "records that murmur2 does not place).",
    ),
    click.option("--dry-run", is_flag=True, help="Check and show the plan; change nothing."),
    json_option,
)
async def topics_repartition(
    ctx: CommandContext,
    to_app: str | None,
    from_app: str | None,
    more: tuple[str, ...],
    partitioner: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Grow the topics to topics.yaml's count and move the tables' state to new app ids.

    Stop every worker of the old app ids first. Then start the workers with
    LEARNOPS_APP_ID set to the new one (docs/operations.md, "Changing the
    partition count").
    """
    from agents.app import consumed_topics, state_tables
    from agents.repartition import Move, RepartitionError, plan_repartition, repartition
    from agents.topics import TopicCatalogError
    from storage.repartitions import record_finished, record_started, repartition_of
    from storage.stage_sets import claim_stage_set, stage_set_of

    settings = ctx.settings
    moves = _moves(settings.learnops_app_id, from_app, to_app, more)
    finished: set[str] = set()  # old app ids whose move the journal says finished
    async with database(ctx) as pool:
        recorded = {}
        for app, new in moves.items():
            async with pool.acquire() as conn:
                found = await stage_set_of(conn, app)
                earlier = await repartition_of(conn, new)
            recorded[app] = None if found is None else found.stages
            if earlier is not None and earlier.from_app_id != app:
                fail(
                    f"app id {new!r} is the target of a move from {earlier.from_app_id!r} "
                    f"(started {earlier.started_at:%Y-%m-%d %H:%M} UTC): choose another new "
                    "app id"
                )
            if earlier is not None and earlier.finished_at is not None:
                finished.add(app)
        if not dry_run:
            await require_writes(
                pool,
                "repartitions",
                "INSERT, UPDATE",
                "where the move is recorded so that no worker starts on a half-moved app id",
            )
    consumed = {app: consumed_topics(settings, stages) for app, stages in recorded.items()}

    async def started_move(move: Move) -> None:
        async with database(ctx) as pool, pool.acquire() as conn:
            await record_started(conn, move.to_app, move.from_app, plan.old_count, plan.new_count)

    async def finished_move(move: Move) -> None:
        async with database(ctx) as pool, pool.acquire() as conn:
            await record_finished(conn, move.to_app)

    async def record_stages(move: Move) -> None:
        import socket

        import asyncpg

        assert move.stages is not None
        try:
            async with database(ctx) as pool, pool.acquire() as conn:
                await claim_stage_set(
                    conn, move.to_app, move.stages, socket.gethostname(), restage=True
                )
        except asyncpg.InsufficientPrivilegeError:
            # A read-only login: the new app id's first worker records its own set.
            click.echo(
                f"learnops: note: the stages of {move.to_app} ({', '.join(move.stages)}) "
                "were not recorded (this login may not write worker_stage_sets): start its "
                "workers with those stages",
                err=True,
            )

    catalog = ctx.catalog
    try:
        plan = await plan_repartition(
            settings,
            catalog,
            state_tables(settings),
            moves,
            consumed,
            stages=recorded,
            partitioner=partitioner,
        )
    except (RepartitionError, TopicCatalogError) as exc:
        fail(str(exc))
    for m in plan.moves:
        if m.from_app in finished and not m.finished:
            # Its new group's offsets are gone or moved on (expired, deleted): copying the
            # old state again would overwrite what the new app id has done since.
            fail(
                f"the move of {m.from_app} to {m.to_app} finished earlier, but {m.to_app}'s "
                "offsets are not what it was given: it has run since. Choose another new "
                "app id to move the old state again"
            )
    copied = None
    if not dry_run:
        try:
            copied = await repartition(
                settings,
                catalog,
                plan,
                record_stages=record_stages,
                record_started=started_move,
                record_finished=finished_move,
            )
        except (RepartitionError, TopicCatalogError) as exc:
            said = str(exc)
            fail(
                said
                if "run this again" in said
                else f"{said} (the move did not finish; run this command again to finish it)"
            )
    summary = {
        "partitions": {"from": plan.old_count, "to": plan.new_count},
        "partitioner": plan.partitioner,
        "grow": list(plan.grow),
        "moves": [
            {
                "from_app_id": m.from_app,
                "to_app_id": m.to_app,
                "changelogs": [{"from": old, "to": new} for old, new, _ in m.changelogs],
                "records": m.records,
                "offsets": len(m.offsets),
                "consumed": list(m.consumed),
                "resumed": list(m.resumed),
                "waiting_records_kept_in_place": m.waiting_kept,
                "finished_before": m.finished,
            }
            for m in plan.moves
        ],
        "done": copied is not None,
        "copied": [
            {"changelog": c.to, "records": c.records, "moved": c.moved} for c in (copied or [])
        ],
    }
    if as_json:
        ctx.say(dumps(summary))
        return
    for m in plan.moves:
        if m.finished:
            ctx.say(f"{m.from_app} → {m.to_app}: finished by an earlier run")
            continue
        ctx.say(
            f"{m.from_app} → {m.to_app}: {plan.old_count} → {plan.new_count} partitions, "
            f"{len(m.changelogs)} changelogs ({m.records} records), {len(m.offsets)} "
            "committed offsets"
            + (f"; resuming ({len(m.resumed)} changelogs exist)" if m.resumed else "")
            + (
                f"; {m.waiting_kept} unprocessed records of doers that keep their partition "
                "stay for the new app id"
                if m.waiting_kept
                else ""
            )
        )
    if copied is None:
        ctx.say(f"would grow: {', '.join(plan.grow) or 'none (already grown)'}")
        ctx.say("dry run: nothing changed")
        return
    for c in copied:
        ctx.say(f"copied    {c.to}  ({c.records} records, {c.moved} moved partition)")
    apps = ", ".join(m.to_app for m in plan.moves)
    ctx.say(
        f"done: start the workers with LEARNOPS_APP_ID={apps}, and make sure every producer "
        "of the learning topics knows the new count (restart it, or wait its "
        "metadata.max.age.ms, 5 min by default) before it publishes again"
    )


def _moves(
    default: str, from_app: str | None, to_app: str | None, more: tuple[str, ...]
) -> dict[str, str]:
    """Old app id → new app id, from the options (a usage error when none or malformed)."""
    moves: dict[str, str] = {}
    if to_app is not None:
        moves[from_app or default] = to_app
    elif from_app is not None:
        raise click.UsageError("--from-app-id needs --to-app-id")
    for pair in more:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise click.UsageError(f"--move {pair!r}: give OLD=NEW")
        if old in moves:
            raise click.UsageError(f"app id {old!r} is moved twice")
        moves[old] = new
    if not moves:
        raise click.UsageError("give --to-app-id NEW (and --move OLD=NEW for more app ids)")
    return moves


@command(topics, "describe", json_option)
async def topics_describe(ctx: CommandContext, as_json: bool) -> None:
    """Show each catalogue topic as the cluster has it, and whether it matches the file."""
    from agents.topics import describe

    catalog = ctx.catalog
    states = await describe(ctx.settings, sorted(catalog.topics))
    rows = []
    for name, spec in sorted(catalog.topics.items()):
        state = states.get(name)
        matches = bool(
            state and state.partitions == spec.partitions and state.configs == spec.configs
        )
        rows.append(
            {
                "topic": name,
                "exists": state is not None,
                "partitions": state.partitions if state else None,
                "configs": state.configs if state else None,
                "replication_factor": state.replication_factor if state else None,
                "matches_file": matches,
            }
        )
    if as_json:
        ctx.say(dumps(rows))
    else:
        shown = table("topic", "status", "partitions", "in file", "replicas")
        for row in rows:
            spec = catalog.topics[str(row["topic"])]
            status = (
                "ok" if row["matches_file"] else ("MISSING" if not row["exists"] else "DIFFERS")
            )
            partitions = "-" if row["partitions"] is None else str(row["partitions"])
            replicas = "-" if row["replication_factor"] is None else str(row["replication_factor"])
            shown.add_row(row["topic"], status, partitions, str(spec.partitions), replicas)
        ctx.console().print(shown)
    if not all(row["matches_file"] for row in rows):
        fail(
            f"the cluster does not match {settings_topics_file(ctx)}; run `learnops topics create`"
        )


@command(db, "migrate", json_option)
async def db_migrate(ctx: CommandContext, as_json: bool) -> None:
    """Apply pending SQL migrations (each once, in a transaction, checksum-guarded)."""
    from storage.migrate import MigrationError, migrate

    async with database(ctx, "migrate") as pool:
        try:
            report = await migrate(pool)
        except MigrationError as exc:
            fail(str(exc))
    if as_json:
        ctx.say(dumps({"applied": list(report.applied), "already": list(report.already)}))
        return
    for name in report.applied:
        ctx.say(f"applied   {name}")
    ctx.say(f"{len(report.applied)} applied, {len(report.already)} already applied")


@command(
    schema,
    "export",
    click.option(
        "--out",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("schemas"),
        show_default=True,
        help="Directory to write into.",
    ),
    json_option,
)
async def schema_export(ctx: CommandContext, out: Path, as_json: bool) -> None:
    """Write the JSON Schema of every event to OUT/<topic>.schema.json, and OUT/asyncapi.json."""
    import orjson

    from agents.asyncapi import asyncapi_document, event_schemas, schema_file

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create {out}: {exc.strerror}; choose another --out")
    documents: dict[str, Any] = {
        schema_file(topic): document for topic, document in sorted(event_schemas().items())
    }
    documents["asyncapi.json"] = asyncapi_document(ctx.catalog)
    written = []
    for name, document in documents.items():
        path = out / name
        path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        written.append(str(path))
    if as_json:
        ctx.say(dumps(written))
        return
    for path_text in written:
        ctx.say(f"wrote {path_text}")


def dumps(value: Any) -> str:
    """Indented JSON with sorted keys; bytes as hex, UUIDs and dataclasses as orjson can."""
    import uuid

    import orjson

    def default(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return obj.hex()
        if isinstance(obj, uuid.UUID):  # asyncpg's own UUID subclass, which orjson skips
            return str(obj)
        if hasattr(obj, "model_dump"):
            return obj.model_dump(mode="json")
        raise TypeError

    options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    return orjson.dumps(value, default=default, option=options).decode()


# --------------------------------------------------------------------------- worker, serve


@cli.command()
@click.option(
    "-l",
    "--loglevel",
    type=click.Choice(["critical", "error", "warning", "info", "debug"], case_sensitive=False),
    default=None,
    show_default="LEARNOPS_LOG_LEVEL, else info",
    help="Logging level.",
)
@click.option(
    "--web-port",
    type=click.IntRange(1, 65535),
    default=None,
    show_default="LEARNOPS_WEB_PORT, else 6066",
    help="Port of the worker's web server (health, metrics, pages).",
)
@click.option(
    "--web-host",
    default=None,
    show_default="LEARNOPS_WEB_HOST, else 127.0.0.1",
    help="Address the web server binds and announces.",
)
@click.option(
    "--without-web",
    is_flag=True,
    help="Run no web server (same as LEARNOPS_WEB_ENABLED=false).",
)
@click.option(
    "--logfile",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the log to this file instead of stderr.",
)
@click.option(
    "--restage",
    is_flag=True,
    help="Run other stages than this app id ran before (stop its other workers first).",
)
@click.option(
    "--blocking-timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Log a warning when the event loop is blocked this many seconds (debugging).",
)
def worker(
    loglevel: str | None,
    web_port: int | None,
    web_host: str | None,
    without_web: bool,
    logfile: Path | None,
    restage: bool,
    blocking_timeout: float | None,
) -> None:
    """Run the stream stages until stopped (LEARNOPS_STAGES picks them; default all)."""
    global _running
    _running = CommandContext()
    settings = _running.settings
    overrides: dict[str, Any] = {}
    if web_port is not None:
        overrides["learnops_web_port"] = web_port
    if web_host is not None:
        overrides["learnops_web_host"] = web_host
    if without_web:
        overrides["learnops_web_enabled"] = False
    if overrides:
        settings = settings.model_copy(update=overrides)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    debug = bool((click.get_current_context().find_root().obj or {}).get("debug"))
    quiet_client_logs(debug)
    loop.run_until_complete(_preflight(settings, restage=restage))
    import logging

    logging.getLogger("aiokafka").setLevel(logging.NOTSET)  # the worker logs at --loglevel
    run_worker(
        settings,
        loop=loop,
        loglevel=(loglevel or settings.learnops_log_level).lower(),
        logfile=str(logfile) if logfile else None,
        blocking_timeout=blocking_timeout,
    )


async def _preflight(settings: Settings, *, restage: bool = False) -> None:
    """Fail in one sentence when PostgreSQL or Kafka does not answer, before Faust starts."""
    import asyncpg

    if settings.learnops_table_store == "rocksdb" and find_spec("rocksdict") is None:
        fail(
            "LEARNOPS_TABLE_STORE=rocksdb needs the rocksdict package: "
            "pip install 'learnops[rocksdb]' (the Docker image: build it with "
            "--build-arg EXTRAS=rocksdb)"
        )

    from agents.topics import load_catalog, missing
    from storage.pool import schema_owner_role

    try:
        conn = await asyncpg.connect(settings.database_dsn, timeout=10)
    except connection_errors() as exc:
        raise postgres_unreachable(settings, exc) from exc
    try:
        await conn.fetchval("SELECT 1 FROM schema_migrations LIMIT 1")
        # Before anything is written (the stage set's claim below). Outside production the
        # worker logs it once it runs (agents/app.py).
        refused = owner_refusal(settings.learnops_env, await schema_owner_role(conn))
        if refused is not None:
            fail(refused)
        untrusted = await _signing_key_untrusted(settings, conn)
        unusable = await _operator_key_unusable(settings, conn)
        # Before the stage set is claimed: a refused worker must leave nothing recorded.
        await _no_unfinished_move(settings, conn)
        await _same_stages_as_the_group(settings, conn, restage)
    finally:
        await conn.close()
    for problem in (untrusted, unusable):
        if problem is None:
            continue
        if settings.learnops_env == "production":
            fail(problem)
        click.echo(f"learnops: warning: {problem}", err=True)
    absent = await missing(settings, load_catalog(settings.learnops_topics_file))
    if absent:
        fail(f"topics missing on the cluster: {', '.join(absent)}; run `learnops topics create`")
    if settings.learnops_web_enabled:
        _web_port_free(settings.learnops_web_host, settings.learnops_web_port)
    if settings.learnops_env == "production":
        unkeyed = production_keys_missing(settings)
        if unkeyed:
            fail(
                f"LEARNOPS_ENV=production: {'; '.join(unkeyed)} "
                "(docs/operations.md, 'Before the first worker')"
            )


async def _no_unfinished_move(settings: Settings, conn: Any) -> None:
    """Fail under an app id that `topics repartition` is moving state to and has not finished."""
    from datetime import UTC

    from storage.repartitions import repartition_of

    move = await repartition_of(conn, settings.learnops_app_id)
    if move is None or move.finished_at is not None:
        return
    fail(
        f"app id {move.to_app_id} is the target of a move of {move.from_app_id}'s table state "
        f"({move.old_partitions} → {move.new_partitions} partitions, started "
        f"{move.started_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC) that has not finished: a "
        "worker now would read every topic from its start with part of the state. Run "
        f"`learnops topics repartition --from-app-id {move.from_app_id} --to-app-id "
        f"{move.to_app_id}` again to finish it (docs/operations.md, 'Changing the partition "
        "count')"
    )


async def _same_stages_as_the_group(settings: Settings, conn: Any, restage: bool) -> None:
    """Fail when the app id's workers run other stages (migration 034 says why it matters)."""
    import socket
    from datetime import UTC

    from agents.app import selected_stages
    from storage.stage_sets import claim_stage_set

    stages = selected_stages(settings.stages)
    app_id = settings.learnops_app_id
    held = await claim_stage_set(conn, app_id, stages, socket.gethostname(), restage=restage)
    if held is None:
        if restage:
            click.echo(f"learnops: note: app id {app_id} now runs {', '.join(stages)}", err=True)
        return
    fail(
        f"app id {app_id} runs stages {', '.join(held.stages)} (recorded by a worker on "
        f"{held.host} at {held.recorded_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC), this worker "
        f"{', '.join(sorted(stages))}: one consumer group commits one offset per partition "
        "whatever stage read it, so workers of one app id running other stages skip each "
        "other's input, and an added stage starts where the others left off. Give this "
        "worker its own LEARNOPS_APP_ID (docs/operations.md, 'Stages and scaling'), or, "
        "with every worker of the app id stopped and the change meant, start it with "
        "--restage"
    )


async def _operator_key_unusable(settings: Settings, conn: Any) -> str | None:
    """Why the commands this worker sends as an operator would be refused, or None.

    ``LEARNOPS_WORKER_KEY`` signs the pipeline's own commands (an experiment
    starting its shadow or canary, a trigger's request): a key that is not a
    registered operator key, is revoked, or holds no role that may send them
    makes every one of them a refusal, found only when the first is refused.
    """
    path = settings.learnops_worker_key
    if path is None:
        return None
    from learning.command_signing import ROLES
    from learning.signing import SigningKey
    from storage.operator_keys import operator_keyring

    try:
        key = SigningKey.from_pem(path.read_bytes())
    except (OSError, ValueError) as exc:
        return f"LEARNOPS_WORKER_KEY {path} is not a readable Ed25519 key ({type(exc).__name__})"
    keys, grants = await operator_keyring(conn)
    registered = keys.get(key.key_id)
    if registered is None:
        state = "is not a registered operator key"
    elif registered.revoked:
        state = f"({registered.operator}'s) is revoked"
    else:
        roles = {g.role for g in grants if g.key_id == key.key_id}
        if roles & set(ROLES[ROLES.index("operator") :]):
            return None
        held = ", ".join(sorted(roles)) or "no role"
        state = f"({registered.operator}'s) holds no operator role ({held})"
    return (
        f"LEARNOPS_WORKER_KEY's key {key.key_id} {state}: the commands this worker sends "
        "(an experiment's shadow or canary, its replays) would be refused; register a key "
        "for it with the operator role (`learnops operator keys add --operator worker "
        "--role operator …`, docs/operations.md 'Before the first worker')"
    )


def owner_refusal(env: str, owner: str | None) -> str | None:
    """Why a worker logging in as ``owner`` must not start, or None.

    ``owner`` is what :func:`storage.pool.schema_owner_role` found. Refused with
    ``LEARNOPS_ENV=production``; elsewhere the worker logs a warning.
    """
    if owner is None or env != "production":
        return None
    return (
        f"LEARNOPS_ENV=production: DATABASE_URL logs in as {owner}, which can act as the "
        "schema's owner (the owner, a member of it, or a superuser); the worker needs only "
        "learnops_worker's grants: give it that role's URL (docs/security.md#database-roles)"
    )


async def _signing_key_untrusted(settings: Settings, conn: Any) -> str | None:
    """Why what this worker signs would be refused everywhere, or None.

    Its signing key must be in the trusted keyring, neither retired nor revoked:
    otherwise the policy stage refuses its canary decisions, Routers and the
    allocations client refuse its policy changes and allocations, and the other
    stages dead-letter its changes (a failure at start in production, a warning
    elsewhere).
    """
    if settings.learnops_worker_signing_key_file is None:
        return None
    key = settings.worker_key()
    if key is None:
        return None
    row = await conn.fetchrow(
        "SELECT retired_at, revoked_at FROM signing_keys WHERE key_id = $1", key.key_id
    )
    if row is not None and row["retired_at"] is None and row["revoked_at"] is None:
        return None
    if row is not None and row["revoked_at"] is None:
        refused = "its canary decisions would be refused (a retired key signs nothing new)"
        state = "is retired"
    else:
        refused = "what this worker signs (canary decisions, policy changes, allocations) "
        refused += "would be refused"
        state = "is not in the trusted keyring" if row is None else "is revoked"
    return (
        f"LEARNOPS_WORKER_SIGNING_KEY_FILE's key {key.key_id} {state}: {refused}; trust a "
        "current key (`learnops policy keys generate --out FILE` makes and trusts one)"
    )


def _web_port_free(host: str, port: int) -> None:
    """Fail in one sentence when the worker's web port (metrics, health) is taken."""
    _port_free(
        host,
        port,
        "the worker's metrics and health",
        "set LEARNOPS_WEB_PORT to a free port (or LEARNOPS_WEB_ENABLED=false)",
    )


def _port_free(host: str, port: int, what: str, fix: str) -> None:
    """Fail in one sentence, naming ``what`` and the ``fix``, when HOST:PORT cannot be bound."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web servers bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            fail(f"cannot serve {what} on {host}:{port} ({exc.strerror}); {fix}")


def settings_topics_file(ctx: CommandContext) -> str:
    """The topic catalogue a command reads: LEARNOPS_TOPICS_FILE's, or the packaged one."""
    named = ctx.settings.learnops_topics_file
    return str(named) if named is not None else "topics.yaml"


def production_keys_missing(settings: Settings) -> list[str]:
    """What a production worker's stages would send unsigned, to be refused downstream."""
    stages = settings.stages

    def runs(name: str) -> bool:
        return stages is None or name in stages

    def named(stages: list[str]) -> str:
        several = len(stages) > 1
        listed = ", ".join(stages[:-1]) + " and " + stages[-1] if several else stages[0]
        return f"the {listed} stage{'s need' if several else ' needs'}"

    missing = []
    # Signed with the worker's signing key: canary decisions, policy changes, allocations.
    signing = [name for name in ("canary", "policy", "bandit") if runs(name)]
    if signing and settings.learnops_worker_signing_key_file is None:
        missing.append(
            f"{named(signing)} LEARNOPS_WORKER_SIGNING_KEY_FILE (what they publish unsigned "
            "is refused by the policy stage and by Routers that pin keys)"
        )
    # Signed with the worker's operator key: the commands they send on learning.commands.
    commanding = [n for n in ("experiments", "triggers", "skills", "bandit") if runs(n)]
    if commanding and settings.learnops_worker_key is None:
        missing.append(
            f"{named(commanding)} LEARNOPS_WORKER_KEY (commands sent unsigned are refused)"
        )
    return missing


def run_worker(settings: Settings, *, loop: asyncio.AbstractEventLoop, **options: Any) -> NoReturn:
    """Build the app from ``settings`` and run Faust's worker on it in this process."""
    import faust

    from agents.app import create_app

    app = create_app(settings)
    # What Faust's own `worker` command does before it starts the worker
    # (faust/cli/base.py prepare_app, faust/cli/worker.py _init_worker_options).
    app.finalize()
    app.conf._origin = "agents.app"
    app.worker_init()
    app.worker_init_post_autodiscover()
    app.conf.web_enabled = settings.learnops_web_enabled
    app.conf.web_port = settings.learnops_web_port
    app.conf.web_bind = settings.learnops_web_host
    app.conf.web_host = settings.learnops_web_host
    app.conf.canonical_url = f"http://{settings.learnops_web_host}:{settings.learnops_web_port}"  # type: ignore[assignment]
    worker = faust.Worker(
        app,
        loglevel=options["loglevel"],
        logfile=options.get("logfile"),
        blocking_timeout=options.get("blocking_timeout"),
        redirect_stdouts=True,
        daemon=True,
        loop=loop,
    )
    worker.execute_from_commandline()


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8080,
    show_default=True,
    envvar="LEARNOPS_CONSOLE_PORT",
    show_envvar=True,
)
def serve(host: str, port: int) -> None:
    """Start the read-only operator console (dashboard, JSON API)."""
    from learnops.console.__main__ import serve as run

    _port_free(host, port, "the console", "pass --port N or set LEARNOPS_CONSOLE_PORT")
    run(host, port)


# --------------------------------------------------------------------------- entry point


def _quiet_broken_pipe() -> NoReturn:
    """Output went to a reader that left (`| head`): stop quietly, as other Unix tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os._exit(EXIT_BROKEN_PIPE)


def _usage(exc: click.UsageError, as_json: bool) -> int:
    command_path = exc.ctx.command_path if exc.ctx is not None else PROG
    if as_json:
        _json_error(exc.format_message(), exc.exit_code, command=command_path)
        return exc.exit_code
    if exc.ctx is not None:
        click.echo(exc.ctx.get_usage(), file=sys.stderr)
    click.echo(f"{command_path}: {exc.format_message()}", file=sys.stderr)
    return exc.exit_code


def _json_error(message: str, code: int, command: str | None = None) -> None:
    """An error of a command asked for ``--json``: one JSON object on stderr, stdout left empty.

    A script reads the exit status first (2: the command line, 1: anything
    else) and the object for the reason; the text is the one a terminal shows.
    """
    import json  # only on this path: the CLI's start-up imports as little as it can

    record: dict[str, Any] = {"error": message, "exit_code": code}
    if command is not None:  # a usage error names the command whose line was wrong
        record["command"] = command
    sys.stderr.write(json.dumps(record, ensure_ascii=False) + "\n")


def _wants_json(args: list[str]) -> bool:
    """Whether the command line asks for JSON (``--json`` before any ``--``)."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `learnops` console script."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    as_json = _wants_json(args)
    try:
        code = cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except click.UsageError as exc:
        code = _usage(exc, as_json)
    except click.ClickException as exc:
        if as_json:
            _json_error(exc.format_message(), exc.exit_code)
        else:
            exc.show()
        code = exc.exit_code
    except click.Abort:
        if as_json:
            _json_error("aborted", 1)
        else:
            click.echo(f"{PROG}: aborted", file=sys.stderr)
        code = 1
    except BrokenPipeError:
        _quiet_broken_pipe()
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        settings = _running.__dict__.get("settings") if _running is not None else None
        message = explain(exc, settings)
        if message is None or debug:
            raise
        if as_json:
            _json_error(message, 1)
        else:
            click.echo(f"{PROG}: {message}", file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
    sys.exit(code if isinstance(code, int) else 0)
