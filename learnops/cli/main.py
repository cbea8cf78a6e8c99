"""The `learnops` command: Faust's own command line plus the project's command groups.

`learnops worker` and every other Faust command come from Faust.  Our commands
are Faust app commands too (they get the app, its settings and Faust's
logging), registered under click groups so they read `learnops topics create`,
`learnops db migrate`, and so on.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import click
import orjson
from aiokafka.errors import KafkaConnectionError
from faust.cli import base as faust_cli

from agents.app import LearnopsApp, create_app
from agents.settings import SettingsError
from agents.topics import TopicCatalogError, describe, ensure, load_catalog
from storage.migrate import MigrationError, migrate
from storage.pool import create_pool


class GroupedCommand(faust_cli.AppCommand):
    """An app command registered as `learnops <group> <name>` rather than at the top level."""

    abstract: ClassVar[bool] = True
    group: ClassVar[click.Group]
    command_name: ClassVar[str]

    @classmethod
    def as_click_command(cls) -> Callable[..., Any]:
        """Register the command in its group instead of Faust's root group."""

        @click.pass_context
        def _inner(*args: Any, **kwargs: Any) -> None:
            cls(*args, **kwargs)()

        _inner.__doc__ = cls.__doc__
        decorated = _inner
        for option in reversed(cls.options or []):
            decorated = option(decorated)
        return cls.group.command(name=cls.command_name, help=cls.__doc__)(decorated)

    def __call__(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Run the command on a fresh event loop; no Faust worker is needed for one-shot work."""
        settings = self.lapp.settings
        try:
            asyncio.run(self.execute(*self.args, *args, **{**self.kwargs, **kwargs}))
        except KafkaConnectionError as exc:
            fail(
                f"cannot reach Kafka at {settings.kafka_bootstrap_servers} ({exc}); "
                "is it running? (`make up` starts a local one)"
            )
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InvalidPasswordError) as exc:
            fail(f"cannot reach PostgreSQL ({type(exc).__name__}: {exc}); is DATABASE_URL right?")

    @property
    def lapp(self) -> LearnopsApp:
        """The app, typed as ours."""
        assert isinstance(self.app, LearnopsApp)
        return self.app

    def say(self, message: str, file: Any = None, err: Any = None, **kwargs: Any) -> None:
        """Print a line of human output (stdout unless ``file`` is given)."""
        print(message, file=file or self.stdout, flush=True)


def command(
    group: click.Group, name: str, *options: Any
) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    """Declare `learnops <group> <name>` from an async function taking (self, **options)."""

    def register(fun: Callable[..., Awaitable[Any]]) -> Any:
        return type(
            fun.__name__,
            (GroupedCommand,),
            {
                "run": fun,
                "__doc__": fun.__doc__,
                "__module__": fun.__module__,
                "options": list(options),
                "group": group,
                "command_name": name,
            },
        )

    return register


def fail(message: str) -> None:
    """Exit with status 1 and a one-line message on stderr."""
    print(f"learnops: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


@faust_cli.cli.group()
def topics() -> None:
    """Create, check and describe the topics in topics.yaml."""


@faust_cli.cli.group()
def db() -> None:
    """PostgreSQL schema migrations."""


@faust_cli.cli.group()
def schema() -> None:
    """JSON Schemas of every event, for services in other languages."""


@command(
    topics,
    "create",
    click.option(
        "--replication-factor",
        type=int,
        default=None,
        help="Override every topic's replication factor (e.g. 3 on a real cluster).",
    ),
)
async def topics_create(self: GroupedCommand, replication_factor: int | None) -> None:
    """Create missing topics and update partitions and configs to match topics.yaml."""
    settings = self.lapp.settings
    try:
        catalog = load_catalog(settings.learnops_topics_file, replication_factor=replication_factor)
        changes = await ensure(settings, catalog)
    except TopicCatalogError as exc:
        fail(str(exc))
    for change in changes:
        self.say(
            f"{change.action:9} {change.name}" + (f"  ({change.detail})" if change.detail else "")
        )


@command(topics, "describe", click.option("--json", "as_json", is_flag=True, help="Print JSON."))
async def topics_describe(self: GroupedCommand, as_json: bool) -> None:
    """Show each catalogue topic as the cluster has it, and whether it matches the file."""
    catalog = self.lapp.catalog
    states = await describe(self.lapp.settings, sorted(catalog.topics))
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
                "matches_file": matches,
            }
        )
    if as_json:
        self.say(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    for row in rows:
        status = "ok" if row["matches_file"] else ("MISSING" if not row["exists"] else "DIFFERS")
        self.say(f"{status:8} {row['topic']:28} partitions={row['partitions']}")
    if not all(row["matches_file"] for row in rows):
        fail("the cluster does not match topics.yaml; run `learnops topics create`")


#: ``--json`` for commands that can print JSON instead of tables.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@asynccontextmanager
async def database(self: GroupedCommand) -> AsyncIterator[Any]:
    """A small PostgreSQL pool for one command, closed when it is done."""
    pool = await create_pool(self.lapp.settings.database_dsn, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


def split_ref(text: str) -> tuple[str, int | None]:
    """Split ``NAME@VERSION``; ``NAME`` alone, or a non-numeric suffix, gives version None."""
    name, sep, version = text.rpartition("@")
    if sep and version.isdigit() and name:
        return name, int(version)
    return text, None


@command(db, "migrate")
async def db_migrate(self: GroupedCommand) -> None:
    """Apply pending SQL migrations (each once, in a transaction, checksum-guarded)."""
    async with database(self) as pool:
        try:
            report = await migrate(pool)
        except MigrationError as exc:
            fail(str(exc))
    for name in report.applied:
        self.say(f"applied   {name}")
    self.say(f"{len(report.applied)} applied, {len(report.already)} already applied")


@command(
    schema,
    "export",
    click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=Path("schemas"),
        show_default=True,
        help="Directory to write into.",
    ),
)
async def schema_export(self: GroupedCommand, out: Path) -> None:
    """Write the JSON Schema of every event to OUT/<topic>.schema.json."""
    from models.registry import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for topic, document in sorted(json_schemas().items()):
        path = out / f"{topic}.schema.json"
        path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        self.say(f"wrote {path}")


def main() -> None:
    """Entry point of the `learnops` console script."""
    # Importing the command modules registers their commands.
    import learnops.cli.datasets
    import learnops.cli.experiments
    import learnops.cli.policy
    import learnops.cli.skills
    import learnops.demo.canary
    import learnops.demo.commands
    import learnops.demo.curation
    import learnops.demo.experiments  # noqa: F401
    from agents.settings import load_settings

    try:
        app = create_app(load_settings())
    except (SettingsError, TopicCatalogError) as exc:
        sys.exit(f"learnops: {exc}")
    app.main()


@faust_cli.cli.command("serve", help="Start the read-only operator console (dashboard, JSON API).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
def serve(host: str, port: int) -> None:
    from learnops.console.__main__ import serve as run

    run(host, port)
