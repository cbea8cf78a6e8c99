"""The `learnops` command as a user meets it: start-up time, one-line errors, exit codes, --json.

Every error a user can cause ends in one sentence on stderr naming the cause
and the fix, exit 2 for a wrong command line and 1 otherwise, and no traceback.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from learning.signing import SigningKey, generate_key, signed_artifact
from models.commands import (
    ArchivePolicy,
    PromotePolicy,
    RegisterPolicy,
    StartCanary,
    StartShadow,
)
from models.ids import caused_event_id
from storage import deployments as deployments_store
from storage import policy_commands as commands_store
from storage import signing_keys as keys_store
from tests.integration.kafka_io import eventually
from tests.integration.test_policy_store import asks_for_approval
from tests.services import (
    REPO,
    WorkerProcess,
    end_offsets,
    free_port,
    learnops_command,
    run_learnops,
)

#: What made `learnops --help` and read-only commands slow to start (issue 14): the
#: worker's stack and the numeric libraries. bench/startup.py measures the start-up
#: itself against its targets; a wall-clock bound here failed on a loaded machine.
HEAVY_IMPORTS = ("faust", "mode", "aiokafka", "numpy", "scipy", "pandas", "matplotlib")


async def learnops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_learnops, env, *args)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The error's message, checked: exit code, no traceback, one line (after a usage line)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    if code == 2:
        assert lines[0].startswith("Usage: learnops"), result.stderr
        lines = lines[1:]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def with_port(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


ARTIFACT = {"prompts": {"system": "You test the CLI."}, "hyper": {"temperature": 0.2}}


async def a_doer_with_a_canary(db: Any, prefix: str = "CliDoer") -> tuple[str, str]:
    """A doer (policy id: its name lower-cased) whose v2 waits in a canary for approval."""
    doer = f"{prefix}{uuid.uuid4().hex[:8]}"
    key: SigningKey = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="tests", note="cli tests")
    pid = doer.lower()
    for version in (1, 2):
        registered = await commands_store.apply_command(
            db,
            RegisterPolicy(
                doer=doer,
                actor="alice",
                reason="cli test",
                policy_id=pid,
                version=version,
                **signed_artifact(
                    {**ARTIFACT, "revision": version},
                    key,
                    doer=doer,
                    policy_id=pid,
                    version=version,
                ),
            ),
        )
        assert registered is not None and registered.applied, registered
    first = await commands_store.apply_command(
        db,
        PromotePolicy(
            doer=doer, actor="alice", reason="first", policy_id=pid, version=1, force=True
        ),
    )
    assert first is not None and first.applied, first
    canary = await commands_store.apply_command(
        db,
        StartCanary(
            doer=doer,
            actor="alice",
            reason="cli test",
            policy_id=pid,
            version=2,
            steps=[0.1, 0.5],
            require_approval=True,
            force=True,
        ),
    )
    assert canary is not None and canary.applied and canary.deployment_id, canary
    return doer, canary.deployment_id


async def record_on_topic(bootstrap: str, since: dict[Any, int], event_id: str) -> dict[str, Any]:
    """The event with ``event_id`` on the partitions of ``since`` after those offsets, as JSON."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    value = json.loads(record.value)
                    if value.get("event_id") == event_id:
                        assert record.key == value["doer"].encode()
                        return dict(value)
    finally:
        await consumer.stop()
    topics = sorted({tp.topic for tp in since})
    raise AssertionError(f"event {event_id} not on {', '.join(topics)} after 30 s")


# --------------------------------------------------------------------------- start-up


def imported_modules(stderr: str) -> set[str]:
    """The top-level packages a process imported, from its -X importtime lines on stderr."""
    found = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            found.add(name.split(".", 1)[0])
    return found


async def test_help_and_a_read_only_command_load_nothing_of_the_worker(
    settings_env: dict[str, str], db: Any
) -> None:
    env = {**settings_env, "PYTHONPROFILEIMPORTTIME": "1"}
    figures = {}
    for args in (("--help",), ("policy", "list", "--limit", "5"), ("skills", "list")):
        started = time.perf_counter()
        result = await learnops(env, *args)
        figures[" ".join(args)] = time.perf_counter() - started
        assert result.returncode == 0, result.stderr[-3000:]
        loaded = imported_modules(result.stderr)
        assert "click" in loaded, "no -X importtime lines to check"
        heavy = sorted(loaded.intersection(HEAVY_IMPORTS))
        assert not heavy, f"learnops {' '.join(args)} imports {heavy}"
    print(
        "learnops start-up (wall, incl. the query; figures: bench/startup.py): "
        + ", ".join(f"{name}: {seconds:.2f} s" for name, seconds in figures.items())
    )


async def test_the_root_shows_our_name_version_and_groups_and_nothing_of_faust(
    settings_env: dict[str, str],
) -> None:
    version = await learnops(settings_env, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "learnops 0.1.0"
    shown = (await learnops(settings_env, "--help")).stdout
    for name in ("topics", "db", "schema", "policy", "dataset", "replay", "experiment", "skills"):
        assert f"\n  {name} " in shown, name
    assert "demo" in shown and "worker" in shown and "--debug" in shown
    assert "faust" not in shown.lower() and "\n  agents" not in shown
    worker = (await learnops(settings_env, "worker", "--help")).stdout
    assert "127.0.0.1" in worker and "0.0.0.0" not in worker and "-h," not in worker
    assert "LEARNOPS_LOG_LEVEL" in worker


# -------------------------------------------------------------------------- usage errors (exit 2)


async def test_an_unknown_command_is_a_usage_error_naming_the_closest(
    settings_env: dict[str, str],
) -> None:
    one_line_error(await learnops(settings_env, "agents"), 2, "no such command 'agents'")
    one_line_error(
        await learnops(settings_env, "policy", "lsit"),
        2,
        "no such command 'lsit'; did you mean 'list'?",
    )


async def test_a_shadow_fraction_above_one_is_a_usage_error(
    settings_env: dict[str, str],
) -> None:
    one_line_error(
        await learnops(settings_env, "policy", "shadow", "x@1", "--fraction", "7"),
        2,
        "--fraction",
        "(0, 1]",
    )


async def test_canary_steps_above_one_are_a_usage_error(settings_env: dict[str, str]) -> None:
    one_line_error(
        await learnops(settings_env, "policy", "canary", "x@1", "--steps", "2"),
        2,
        "--steps",
        "at most 1",
    )
    one_line_error(
        await learnops(settings_env, "policy", "canary", "x@1", "--steps", "0.5,0.2"),
        2,
        "rise strictly",
    )


async def test_a_negative_limit_is_a_usage_error(settings_env: dict[str, str]) -> None:
    for group in (("policy", "list"), ("experiment", "list"), ("dataset", "samples", "a/b")):
        one_line_error(await learnops(settings_env, *group, "--limit", "-5"), 2, "--limit", "-5")


async def test_promote_without_a_version_is_a_usage_error(settings_env: dict[str, str]) -> None:
    for verb in ("promote", "archive"):
        one_line_error(
            await learnops(settings_env, "policy", verb, "loopdemo"),
            2,
            "names no version",
            f"{verb} one explicitly, as POLICY_ID@VERSION",
        )


# ------------------------------------------------------------------------ runtime errors (exit 1)


async def test_an_unmigrated_database_says_run_db_migrate(
    settings_env: dict[str, str], database_url: str
) -> None:
    name = f"learnops_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        env = {**settings_env, "DATABASE_URL": with_database(database_url, name)}
        for args in (("policy", "list"), ("dataset", "list"), ("skills", "list")):
            one_line_error(
                await learnops(env, *args), 1, "no learnops schema", "run `learnops db migrate`"
            )
        one_line_error(await learnops(env, "worker"), 1, "run `learnops db migrate`")
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            await admin.close()


async def test_a_wrong_database_name_says_so(
    settings_env: dict[str, str], database_url: str
) -> None:
    env = {**settings_env, "DATABASE_URL": with_database(database_url, "no_such_learnops_db")}
    one_line_error(
        await learnops(env, "policy", "list"),
        1,
        'database "no_such_learnops_db" does not exist',
        "DATABASE_URL",
    )


async def test_an_unreachable_postgres_says_so_for_commands_and_the_worker(
    settings_env: dict[str, str], database_url: str
) -> None:
    env = {**settings_env, "DATABASE_URL": with_port(database_url, free_port())}
    one_line_error(
        await learnops(env, "policy", "list"), 1, "cannot reach PostgreSQL", "DATABASE_URL"
    )
    one_line_error(await learnops(env, "db", "migrate"), 1, "cannot reach PostgreSQL")
    one_line_error(await learnops(env, "worker"), 1, "cannot reach PostgreSQL")
    # libpq's several hosts, none answering: named as given (urlsplit's port raised here).
    first, second = free_port(), free_port()
    several = with_port(database_url, first).replace(f":{first}/", f":{first},127.0.0.1:{second}/")
    one_line_error(
        await learnops({**env, "DATABASE_URL": several}, "policy", "list"),
        1,
        f"cannot reach PostgreSQL at 127.0.0.1:{first},127.0.0.1:{second}/",
    )


async def test_under_json_every_error_is_one_json_object_on_stderr_and_stdout_is_empty(
    settings_env: dict[str, str], database_url: str
) -> None:
    """A script that asked for --json parses the failure too: the usage, runtime and
    explained-exception paths each give one object naming the reason and the exit code."""
    unreachable = {**settings_env, "DATABASE_URL": with_port(database_url, free_port())}
    cases = [
        (settings_env, ("policy", "list", "--limit", "0", "--json"), 2, "--limit"),
        (settings_env, ("policy", "show", "NoSuchPolicyAtAll", "--json"), 1, "no such policy"),
        (unreachable, ("policy", "list", "--json"), 1, "cannot reach PostgreSQL"),
    ]
    for env, args, code, fragment in cases:
        result = await learnops(env, *args)
        assert result.returncode == code, (args, result.returncode, result.stderr)
        assert result.stdout == "", (args, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        error = json.loads(lines[0])
        assert error["exit_code"] == code and fragment in error["error"], (args, error)
        # The same failure without --json reads as the usual line of text.
        plain = await learnops(env, *args[:-1])
        assert plain.returncode == code and error["error"] in plain.stderr, plain.stderr
    usage = json.loads((await learnops(settings_env, *cases[0][1])).stderr)
    assert usage["command"] == "learnops policy list", usage


async def test_an_unreachable_kafka_says_so_for_commands_and_the_worker(
    settings_env: dict[str, str],
) -> None:
    env = {**settings_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    one_line_error(
        await learnops(env, "topics", "describe"),
        1,
        "cannot reach Kafka",
        "KAFKA_BOOTSTRAP_SERVERS",
    )
    one_line_error(await learnops(env, "worker"), 1, "cannot reach Kafka")
    # Clients that failed to start are closed too: no "Unclosed AIOKafkaConsumer" after
    # the line (a read of the allocations, then a send).
    one_line_error(await learnops(env, "bandit", "show", "Foo"), 1, "cannot reach Kafka")
    freeze = await learnops(env, "bandit", "freeze", "Foo", "--reason", "x", "--no-wait")
    one_line_error(freeze, 1, "cannot reach Kafka")


async def test_a_worker_or_console_whose_port_is_taken_says_so_in_one_line(
    settings_env: dict[str, str],
) -> None:
    """It ended in Faust's traceback of OSError 98 after the worker had started."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**settings_env, "LEARNOPS_WEB_ENABLED": "true", "LEARNOPS_WEB_PORT": str(port)}
        one_line_error(
            await learnops(env, "worker"), 1, f"127.0.0.1:{port}", "set LEARNOPS_WEB_PORT"
        )
        # The console too: it printed uvicorn's log lines and exited 3.
        one_line_error(
            await learnops(settings_env, "serve", "--port", str(port)),
            1,
            f"cannot serve the console on 127.0.0.1:{port}",
            "LEARNOPS_CONSOLE_PORT",
        )


async def test_workers_of_one_app_id_must_run_the_same_stages(
    settings_env: dict[str, str],
) -> None:
    """A platform engineer's walk ran LEARNOPS_STAGES=crl and =curator under one app id:
    the group split learning.run-completed between them and each committed past what the
    other's stage never saw (40 of 200 runs never scored). A worker whose stages are not
    its app id's recorded ones is refused, unless --restage. (A taken web port ends each
    start after the check, so no worker runs.)"""
    import socket

    app_id = f"stages-{uuid.uuid4().hex[:8]}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **settings_env,
            "LEARNOPS_APP_ID": app_id,
            "LEARNOPS_WEB_ENABLED": "true",
            "LEARNOPS_WEB_PORT": str(port),
        }
        crl = {**env, "LEARNOPS_STAGES": "crl"}
        curator = {**env, "LEARNOPS_STAGES": "curator,crl"}
        one_line_error(await learnops(crl, "worker"), 1, "set LEARNOPS_WEB_PORT")
        one_line_error(await learnops(crl, "worker"), 1, "set LEARNOPS_WEB_PORT")  # the same
        one_line_error(
            await learnops(curator, "worker"),
            1,
            f"app id {app_id} runs stages crl (recorded by a worker on",
            "this worker crl, curator",
            "--restage",
        )
        restaged = await learnops(curator, "worker", "--restage")
        assert restaged.returncode == 1 and "set LEARNOPS_WEB_PORT" in restaged.stderr
        assert f"note: app id {app_id} now runs crl, curator" in restaged.stderr
        one_line_error(
            await learnops(crl, "worker"), 1, f"app id {app_id} runs stages crl, curator"
        )


async def test_a_worker_whose_signing_key_is_not_trusted_says_so_before_it_starts(
    settings_env: dict[str, str], tmp_path: Path, role_urls: dict[str, str]
) -> None:
    """Everything it signed would be refused downstream (and, before its policy stage
    checked its own key first, re-sent forever): refused in production, warned elsewhere."""
    from learning.signing import generate_key

    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(generate_key().to_pem())
    stranger.chmod(0o600)
    env = {**settings_env, "LEARNOPS_WORKER_SIGNING_KEY_FILE": str(stranger)}
    # Production refuses the development credentials: the worker's role, as deployed.
    assert "worker" in role_urls, "the tests need scripts/postgres.sh's learnops_worker login"
    production = {**env, "LEARNOPS_ENV": "production", "DATABASE_URL": role_urls["worker"]}
    one_line_error(
        await learnops(production, "worker"),
        1,
        "is not in the trusted keyring",
        "policy keys generate",
    )


async def test_a_worker_whose_operator_key_cannot_send_commands_says_so_before_it_starts(
    settings_env: dict[str, str], tmp_path: Path, role_urls: dict[str, str]
) -> None:
    """A new operator's walk started a production worker with a viewer's key (and with a
    policy signing key) as LEARNOPS_WORKER_KEY: it started, and each command it sent (an
    experiment's shadow or canary) would be refused when the first one was."""
    from learning.signing import generate_key

    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(generate_key().to_pem())
    stranger.chmod(0o600)
    assert "worker" in role_urls, "the tests need scripts/postgres.sh's learnops_worker login"
    env = {
        **settings_env,
        "LEARNOPS_WORKER_KEY": str(stranger),
        "LEARNOPS_ENV": "production",
        "DATABASE_URL": role_urls["worker"],
    }
    one_line_error(
        await learnops(env, "worker"),
        1,
        "LEARNOPS_WORKER_KEY's key",
        "is not a registered operator key",
        "--role operator",
    )


async def test_the_rocksdb_store_without_its_package_says_which_extra_to_install(
    settings_env: dict[str, str],
) -> None:
    """It exited with Faust's ImproperlyConfigured traceback, after creating the changelog
    topics, naming a package the docs do not. (A taken web port ends a start that passes.)"""
    import socket
    from importlib.util import find_spec

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **settings_env,
            "LEARNOPS_TABLE_STORE": "rocksdb",
            "LEARNOPS_WEB_ENABLED": "true",
            "LEARNOPS_WEB_PORT": str(port),
        }
        result = await learnops(env, "worker")
    if find_spec("rocksdict") is None:
        one_line_error(result, 1, "LEARNOPS_TABLE_STORE=rocksdb", "pip install 'learnops[rocksdb]'")
    else:  # installed here: the start goes on to the next check
        one_line_error(result, 1, "set LEARNOPS_WEB_PORT")


async def test_invalid_settings_name_the_variable(settings_env: dict[str, str]) -> None:
    env = {**settings_env, "KAFKA_BOOTSTRAP_SERVERS": "no-port-here"}
    one_line_error(
        await learnops(env, "policy", "list"),
        1,
        "invalid settings",
        "KAFKA_BOOTSTRAP_SERVERS",
    )


async def test_debug_shows_the_traceback(settings_env: dict[str, str], database_url: str) -> None:
    env = {**settings_env, "DATABASE_URL": with_database(database_url, "no_such_learnops_db")}
    result = await learnops(env, "--debug", "policy", "list")
    assert result.returncode == 1 and "Traceback" in result.stderr


async def test_output_into_a_closed_pipe_ends_quietly(
    settings_env: dict[str, str], db: Any
) -> None:
    await a_doer_with_a_canary(db)

    def closed_early(*args: str) -> tuple[int, str]:
        process = subprocess.Popen(
            [*learnops_command(), *args],
            env=settings_env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # as `| head` does once it has what it wants
        error = process.stderr.read().decode()
        return process.wait(timeout=60), error

    for args in (("policy", "list"), ("policy", "list", "--json")):
        code, error = await asyncio.to_thread(closed_early, *args)
        assert code in (0, 141), (args, code, error)
        assert error == "", error


async def test_an_unknown_doer_or_policy_names_the_closest_and_ids_match_any_case(
    settings_env: dict[str, str], db: Any
) -> None:
    doer, _ = await a_doer_with_a_canary(db)
    shown = await learnops(settings_env, "policy", "show", f"{doer}@2", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["policy"]["policy_id"] == doer.lower()
    one_line_error(
        await learnops(settings_env, "policy", "show", f"{doer}x@1"),
        1,
        f"no such policy '{doer}x'; did you mean '{doer.lower()}'?",
    )
    one_line_error(
        await learnops(settings_env, "policy", "show", f"{doer}@9"),
        1,
        f"no such policy version '{doer}@9'",
        f"{doer.lower()}@1, {doer.lower()}@2",
    )
    one_line_error(
        await learnops(settings_env, "policy", "history", f"{doer}x"),
        1,
        f"no such doer '{doer}x'; did you mean '{doer}'?",
    )
    one_line_error(
        await learnops(settings_env, "policy", "list", "--doer", f"{doer}x"),
        1,
        f"no such doer '{doer}x'; did you mean '{doer}'?",
    )
    listed = await learnops(settings_env, "policy", "list", "--doer", doer.upper(), "--json")
    assert listed.returncode == 0, listed.stderr
    assert {p["doer"] for p in json.loads(listed.stdout)} == {doer}
    one_line_error(
        await learnops(settings_env, "skills", "show", f"{doer}x"),
        1,
        f"no skill card for doer '{doer}x'",
    )
    # A doer with a policy and no allocations: its misspelling was "none under that name".
    one_line_error(
        await learnops(settings_env, "bandit", "show", f"{doer}x"),
        1,
        f"no allocations of '{doer}x'",
        f"did you mean '{doer}'? It has a policy but no allocations either",
    )
    # A doer that has runs but no policy is named as such, with how to register one.
    newcomer = f"Newcomer{uuid.uuid4().hex[:6]}"
    await db.execute(
        "INSERT INTO crl_results (run_id, event_id, source_event_id, doer, phase, policy_id,"
        " policy_version, tenant_id, occurred_at, loss, terms, contributions, weights_version)"
        " VALUES ($1, $2, $3, $4, 'draft', 'someone-elses', 1, 't', now(), 1.0, '{}', '{}', 'v1')",
        f"run-{newcomer}",
        uuid.uuid4(),
        uuid.uuid4(),
        newcomer,
    )
    # The same answer from every command that takes a doer (they said "no such doer",
    # "no such deployment" or "not in the policy store").
    for args in (
        ("policy", "show", newcomer.lower()),
        ("policy", "history", newcomer),
        ("policy", "pause", newcomer),
        ("bandit", "freeze", newcomer, "--reason", "hold"),
    ):
        one_line_error(
            await learnops(settings_env, *args),
            1,
            f"doer '{newcomer}' has runs but no policy yet",
            f"learnops policy register FILE --doer {newcomer}",
        )


# ------------------------------------------------------------------------ key revocation


async def test_revoking_a_key_lists_and_alerts_its_live_versions_and_verify_then_fails(
    settings_env: dict[str, str], kafka_bootstrap: str, db: Any, topics: Any
) -> None:
    doer, _ = await a_doer_with_a_canary(db, "CliRevoke")
    pid = doer.lower()
    key_id = await db.fetchval("SELECT key_id FROM policies WHERE doer = $1 LIMIT 1", doer)
    verified = await learnops(settings_env, "policy", "verify", doer)
    assert verified.returncode == 0, verified.stderr
    assert f"2 of 2 live versions of {doer} verify" in verified.stdout
    shown = await learnops(settings_env, "policy", "show", f"{pid}@1")
    assert f"signed by   key {key_id} (active)" in shown.stdout, shown.stdout

    since = await end_offsets(kafka_bootstrap, ("learning.alerts",))
    revoked = await learnops(
        settings_env, "policy", "keys", "revoke", key_id, "--reason", "laptop lost", "--json"
    )
    assert revoked.returncode == 0, revoked.stderr
    answer = json.loads(revoked.stdout)
    assert answer["live_versions"] == [
        {"doer": doer, "policy": f"{pid}@1", "status": "active"},
        {"doer": doer, "policy": f"{pid}@2", "status": "canary"},
    ]
    assert len(answer["alerts"]) == 1
    alert = await record_on_topic(kafka_bootstrap, since, answer["alerts"][0])
    assert (alert["kind"], alert["severity"], alert["doer"]) == (
        "signing_key_revoked",
        "critical",
        doer,
    )
    assert [(v["policy_id"], v["version"]) for v in alert["evidence"]["live_versions"]] == [
        (pid, 1),
        (pid, 2),
    ]
    assert alert["evidence"]["key_id"] == key_id and alert["evidence"]["reason"] == "laptop lost"
    again = await learnops(
        settings_env, "policy", "keys", "revoke", key_id, "--reason", "laptop lost"
    )
    assert again.returncode == 0, again.stderr
    assert f"live versions signed by {key_id}" in again.stdout
    assert f"{pid}@1" in again.stdout and f"{pid}@2" in again.stdout
    assert "2 live version(s) still serve; alerted on learning.alerts" in again.stdout

    failed = await learnops(settings_env, "policy", "verify", doer)
    one_line_error(failed, 1, "2 live version(s) do not verify")
    assert f"{pid}@1" in failed.stdout and f"{pid}@2" in failed.stdout
    assert f"key {key_id} revoked" in failed.stdout
    assert f"0 of 2 live versions of {doer} verify" in failed.stdout
    as_json = await learnops(settings_env, "policy", "verify", doer, "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert (report["checked"], report["failed"]) == (2, 2)
    assert {v["key_status"] for v in report["versions"]} == {"revoked"}
    shown = await learnops(settings_env, "policy", "show", f"{pid}@1")
    assert f"signed by   key {key_id} (revoked at " in shown.stdout, shown.stdout


async def registered_versions(
    db: Any, key: SigningKey, prefix: str, versions: tuple[int, ...], archived: tuple[int, ...]
) -> str:
    """A doer with ``versions`` registered, the first promoted, ``archived`` archived."""
    doer = f"{prefix}{uuid.uuid4().hex[:8]}"
    pid = doer.lower()
    commands: list[Any] = []
    for version in versions:
        artifact = signed_artifact(
            {**ARTIFACT, "revision": version}, key, doer=doer, policy_id=pid, version=version
        )
        commands.append(
            RegisterPolicy(
                doer=doer, actor="alice", reason="t", policy_id=pid, version=version, **artifact
            )
        )
    commands.append(
        PromotePolicy(
            doer=doer, actor="alice", reason="t", policy_id=pid, version=versions[0], force=True
        )
    )
    commands += [
        ArchivePolicy(doer=doer, actor="alice", reason="typo", policy_id=pid, version=version)
        for version in archived
    ]
    for command in commands:
        outcome = await commands_store.apply_command(db, command)
        assert outcome is not None and outcome.applied, outcome
    return doer


async def test_without_a_version_a_rollout_starts_the_latest_version_that_can_start_it(
    settings_env: dict[str, str], kafka_bootstrap: str, db: Any, tmp_path: Path
) -> None:
    key: SigningKey = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="tests", note="cli tests")
    # v1 active, v2 a draft, v7 registered by a typo and archived: "latest" must not
    # mean v7, whose rollout the policy stage would refuse.
    doer = await registered_versions(db, key, "CliLatest", (1, 2, 7), archived=(7,))
    pid = doer.lower()
    for args in (("shadow", doer), ("canary", doer, "--force", "--reason", "t")):
        since = await end_offsets(kafka_bootstrap, ("learning.commands",))
        sent = await learnops(settings_env, "policy", *args, "--no-wait", "--json")
        assert sent.returncode == 0, sent.stderr
        command = await record_on_topic(kafka_bootstrap, since, json.loads(sent.stdout)["event_id"])
        assert (command["policy_id"], command["version"]) == (pid, 2), (args, command)

    # A canary goes on from the live shadow, not from a newer draft (which needs --force).
    staged = await registered_versions(db, key, "CliStaged", (1, 2, 3), archived=())
    shadow = StartShadow(
        doer=staged, actor="alice", reason="t", policy_id=staged.lower(), version=2
    )
    assert (await commands_store.apply_command(db, shadow)).applied  # type: ignore[union-attr]
    since = await end_offsets(kafka_bootstrap, ("learning.commands",))
    sent = await learnops(settings_env, "policy", "canary", staged, "--no-wait", "--json")
    assert sent.returncode == 0, sent.stderr
    command = await record_on_topic(kafka_bootstrap, since, json.loads(sent.stdout)["event_id"])
    assert command["version"] == 2, command

    # Nothing left that can start one: said, nothing sent.
    spent = await registered_versions(db, key, "CliSpent", (1, 2), archived=(2,))
    one_line_error(
        await learnops(settings_env, "policy", "shadow", spent),
        1,
        f"{spent.lower()} has no version that can start a shadow",
        f"{spent.lower()}@2, is archived",
    )

    # A version typed past the next is noted: the numbers it skips stay unused.
    pem = tmp_path / "signer.pem"
    pem.write_bytes(key.to_pem())
    artifact_file = tmp_path / "v.json"
    artifact_file.write_text(json.dumps(ARTIFACT))
    registered = await learnops(
        settings_env,
        *("policy", "register", str(artifact_file), "--doer", doer, "--key", str(pem)),
        *("--version", "11", "--no-wait"),
    )
    assert registered.returncode == 0, registered.stderr
    assert f"note: {pid}@11 leaves version(s) 8–10 unused (the next is 8)" in registered.stderr


async def test_a_canary_that_ends_a_paused_shadow_says_so(
    settings_env: dict[str, str], db: Any
) -> None:
    key: SigningKey = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="tests", note="cli tests")
    doer = await registered_versions(db, key, "CliPausedShadow", (1, 2), archived=())
    pid = doer.lower()
    shadow = await commands_store.apply_command(
        db, StartShadow(doer=doer, actor="alice", reason="t", policy_id=pid, version=2)
    )
    assert shadow is not None and shadow.applied and shadow.deployment_id
    paused = await deployments_store.operator_pause(
        db,
        doer,
        shadow.deployment_id,
        pause=True,
        event_id=uuid.uuid4(),
        actor="alice",
        reason="checking a spike",
    )
    assert paused.applied
    started = await learnops(settings_env, "policy", "canary", f"{pid}@2", "--no-wait")
    assert started.returncode == 0, started.stderr
    assert (
        f"note: this ends {shadow.deployment_id}, which is paused (paused by alice: checking "
        "a spike); the canary starts unpaused"
    ) in started.stderr


async def test_demo_traffic_drives_a_doers_live_canary_as_its_orchestrator_would(
    worker: WorkerProcess, settings_env: dict[str, str], db: Any
) -> None:
    # An operator trying a rollout of their own doer has no orchestrator: demo traffic
    # routes its tasks by the live state and the canary stage counts them.
    key: SigningKey = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="tests", note="cli tests")
    doer = await registered_versions(db, key, "CliTraffic", (1, 2), archived=())
    canary = await commands_store.apply_command(
        db,
        StartCanary(
            doer=doer,
            actor="alice",
            reason="t",
            policy_id=doer.lower(),
            version=2,
            steps=[0.5],
            force=True,
        ),
    )
    assert canary is not None and canary.applied and canary.deployment_id
    sent = await learnops(
        settings_env,
        *("demo", "traffic", doer.lower(), "--tasks", "120"),
        *("--candidate-quality", "0.95", "--control-quality", "0.5"),
    )
    assert sent.returncode == 0, sent.stderr
    assert f"published 120 tasks of {doer} under {canary.deployment_id} (canary:" in sent.stdout
    assert "note: these are simulated runs" in sent.stderr
    routed = await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM deployment_routings WHERE deployment_id = $1",
            canary.deployment_id,
        ),
        lambda n: n == 120,
    )
    assert routed == 120
    refused = await learnops(settings_env, "demo", "traffic", doer, "--candidate-quality", "2")
    assert refused.returncode == 2 and "not a quality in [0, 1]" in refused.stderr


async def test_a_move_the_store_would_refuse_is_said_at_once_with_nothing_sent(
    settings_env: dict[str, str], kafka_bootstrap: str, db: Any
) -> None:
    # Each of these went to the worker and came back as an audited refusal and a
    # policy_refused alert, most of them typos.
    key: SigningKey = generate_key()
    await keys_store.add_signing_key(db, key.public_key, created_by="tests", note="cli tests")
    doer = await registered_versions(db, key, "CliTypo", (1, 2, 3), archived=(3,))
    pid = doer.lower()
    since = await end_offsets(kafka_bootstrap, ("learning.commands",))
    for args, why in (
        (("shadow", f"{pid}@1"), "refused (lifecycle)"),  # the active version
        (("archive", f"{pid}@3", "--reason", "again"), "refused (lifecycle)"),
        (("promote", f"{pid}@2"), "draft → active skips shadow, canary"),
        (("canary", f"{pid}@2", "--steps", "0.9"), "refused (limits)"),
    ):
        one_line_error(await learnops(settings_env, "policy", *args), 1, why, "nothing sent")
    assert await end_offsets(kafka_bootstrap, ("learning.commands",)) == since
    audited = await db.fetchval("SELECT count(*) FROM policy_promotions WHERE doer = $1", doer)
    assert audited == 5  # three registrations, the promotion, the archive: no refusal
    # A version and a --doer that name different doers: which was meant is asked.
    one_line_error(
        await learnops(
            settings_env, "policy", "rollback", f"{pid}@2", "--doer", "SomeoneElse", "--reason", "r"
        ),
        2,
        f"is a version of {doer}, not of --doer SomeoneElse",
    )
    # The store as it is now may be behind commands still queued: --no-check sends it.
    sent = await learnops(
        settings_env,
        "policy",
        "archive",
        f"{pid}@3",
        "--reason",
        "again",
        "--no-check",
        "--no-wait",
        "--json",
    )
    assert sent.returncode == 0, sent.stderr
    command = await record_on_topic(kafka_bootstrap, since, json.loads(sent.stdout)["event_id"])
    assert (command["command"], command["version"]) == ("archive", 3)


# ------------------------------------------------------------------------ approve, pause, resume


async def test_approve_reaches_the_policy_stage_and_moves_the_canary(
    worker: WorkerProcess,
    settings_env: dict[str, str],
    kafka_bootstrap: str,
    db: Any,
) -> None:
    doer, deployment = await a_doer_with_a_canary(db, "CliApprove")

    async def state() -> str:
        listed = await learnops(settings_env, "policy", "deployments", "--doer", doer, "--json")
        (mine,) = [d for d in json.loads(listed.stdout) if d["deployment_id"] == deployment]
        return str(mine["state"])

    assert await state() == "live, steps on approval"
    one_line_error(
        await learnops(settings_env, "policy", "approve", deployment, "--step", "2"),
        2,
        "at step 0",
        "the next step is 1",
    )
    # Before the canary asks (step 0 has no evidence yet), nothing is sent.
    since = await end_offsets(kafka_bootstrap, ("learning.commands",))
    one_line_error(
        await learnops(settings_env, "policy", "approve", deployment, "--step", "1"),
        1,
        "has not asked for step 1 yet",
        "nothing sent",
    )
    assert await end_offsets(kafka_bootstrap, ("learning.commands",)) == since
    await asks_for_approval(db, doer, deployment, 1)
    assert await state() == "live, awaiting approval of step 1"
    # The evidence behind the ask, from a terminal.
    made = await learnops(settings_env, "policy", "decisions", deployment, "--json")
    assert made.returncode == 0, made.stderr
    (ask,) = json.loads(made.stdout)
    assert (ask["action"], ask["step"], ask["report"]["recommendation"]) == ("report", 1, "step_up")
    shown = await learnops(settings_env, "policy", "decisions", doer)
    assert "awaiting approval of step 1" in shown.stdout and "900/880" in shown.stdout
    # By the start of its id, as other ids are taken: its kind and 8 more characters.
    listed = await learnops(settings_env, "policy", "steps", deployment[:15])
    assert listed.returncode == 0, listed.stderr
    one_line_error(
        await learnops(settings_env, "policy", "steps", deployment[:14]), 1, "no such deployment"
    )
    approved = await learnops(
        settings_env, "policy", "approve", deployment, "--step", "1", "--json"
    )
    assert approved.returncode == 0, approved.stderr + worker.tail()
    answer = json.loads(approved.stdout)
    assert answer["deployment"]["step"] == 1 and answer["deployment"]["allocation"] == 0.5
    sent = await record_on_topic(kafka_bootstrap, since, answer["event_id"])
    assert sent["command"] == "approve_step"
    assert (sent["doer"], sent["deployment_id"], sent["step"]) == (doer, deployment, 1)
    step = await db.fetchval(
        "SELECT step FROM shadow_deployments WHERE deployment_id = $1", deployment
    )
    assert step == 1
    # Approved again: done already, not a wrong command line.
    one_line_error(
        await learnops(settings_env, "policy", "approve", deployment, "--step", "1"),
        1,
        "at step 1 already",
    )
    # At its last step nothing is left to approve: the state says so, and a further
    # approval is refused as a state of things (exit 1), naming what to do instead.
    assert await state() == "live"
    one_line_error(
        await learnops(settings_env, "policy", "approve", deployment, "--step", "2"),
        1,
        "at its last step",
        "learnops policy promote",
    )


async def test_an_approval_the_stage_refuses_is_reported_at_once_with_its_reason(
    worker: WorkerProcess, settings_env: dict[str, str], db: Any
) -> None:
    # The candidate's key is revoked: the policy stage refuses the step (signature).
    doer, deployment = await a_doer_with_a_canary(db, "CliRefused")
    key_id = await db.fetchval(
        "SELECT key_id FROM policies WHERE policy_id = $1 AND version = 2", doer.lower()
    )
    revoked = await learnops(settings_env, "policy", "keys", "revoke", key_id, "--reason", "lost")
    assert revoked.returncode == 0, revoked.stderr
    await asks_for_approval(db, doer, deployment, 1)
    started = time.monotonic()
    refused = await learnops(
        settings_env, "policy", "approve", deployment, "--step", "1", "--timeout", "60"
    )
    one_line_error(refused, 1, "refused (signature)", "no longer verifies")
    # Answered by the refusal, not by the 60 s wait running out.
    assert time.monotonic() - started < 45, refused.stderr + worker.tail()


async def test_pause_and_resume_reach_the_policy_stage_which_holds_and_releases_the_canary(
    worker: WorkerProcess, settings_env: dict[str, str], kafka_bootstrap: str, db: Any
) -> None:
    doer, deployment = await a_doer_with_a_canary(db, "CliPause")
    since = await end_offsets(kafka_bootstrap, ("learning.commands", "learning.policy-changes"))
    # By the doer's name: its live deployment.
    paused = await learnops(
        settings_env, "policy", "pause", doer.lower(), "--reason", "look", "--json"
    )
    assert paused.returncode == 0, paused.stderr + worker.tail()
    answer = json.loads(paused.stdout)
    assert answer["deployment"]["paused"] and answer["deployment"]["step"] == 0
    sent = await record_on_topic(kafka_bootstrap, since, answer["event_id"])
    assert (sent["command"], sent["doer"], sent["deployment_id"], sent["reason"]) == (
        "pause_deployment",
        doer,
        deployment,
        "look",
    )
    change = await record_on_topic(
        kafka_bootstrap, since, str(caused_event_id("policy-change", uuid.UUID(answer["event_id"])))
    )
    assert change["change"] == "paused" and change["deployment"]["paused"]
    assert change["signature"]  # signed by the worker, like every policy change

    one_line_error(
        await learnops(settings_env, "policy", "pause", deployment), 1, "is paused already"
    )
    one_line_error(
        await learnops(settings_env, "policy", "approve", deployment, "--step", "1"),
        1,
        "is paused and cannot step up",
        f"learnops policy resume {deployment}",
    )
    listed = await learnops(settings_env, "policy", "deployments", "--doer", doer)
    assert "paused" in listed.stdout, listed.stdout

    resumed = await learnops(settings_env, "policy", "resume", deployment)
    assert resumed.returncode == 0, resumed.stderr + worker.tail()
    assert f"applied: {deployment} resumed at step 0" in resumed.stdout
    row = await db.fetchrow(
        "SELECT paused_at, resumes FROM shadow_deployments WHERE deployment_id = $1", deployment
    )
    assert row["paused_at"] is None and row["resumes"] == 1
    audit = await db.fetch(
        "SELECT action, outcome, actor FROM deployment_steps WHERE deployment_id = $1 ORDER BY id",
        deployment,
    )
    assert [(a["action"], a["outcome"]) for a in audit] == [
        ("pause", "applied"),
        ("resume", "applied"),
    ]
    one_line_error(
        await learnops(settings_env, "policy", "resume", deployment),
        1,
        "is not paused",
        f"learnops policy pause {deployment} holds it",
    )
    one_line_error(
        await learnops(settings_env, "policy", "pause", "NoSuchDeploymentAnywhere"),
        1,
        "no such deployment 'NoSuchDeploymentAnywhere'",
    )
    steps = await learnops(settings_env, "policy", "steps", doer, "--json")
    assert steps.returncode == 0, steps.stderr
    assert [(s["action"], s["outcome"], s["reason"]) for s in json.loads(steps.stdout)] == [
        ("pause", "applied", "look"),
        ("resume", "applied", "resumed by an operator"),
    ]
    shown = await learnops(settings_env, "policy", "steps", deployment)
    assert "pause" in shown.stdout and "resumed at step 0" in shown.stdout, shown.stdout
    # Rolled back by its deployment alone; the doer then has none live.
    rolled = await learnops(
        settings_env, "policy", "rollback", "--deployment", deployment, "--reason", "done"
    )
    assert rolled.returncode == 0, rolled.stderr + worker.tail()
    one_line_error(
        await learnops(settings_env, "policy", "pause", doer),
        1,
        f"{doer} has no live deployment (its latest, {deployment}, rolled_back)",
    )


# --------------------------------------------------------------------------- --json


async def test_every_printing_command_prints_json_that_parses(
    settings_env: dict[str, str], db: Any, topics: Any, tmp_path: Path
) -> None:
    doer, deployment = await a_doer_with_a_canary(db, "CliJson")
    pid = doer.lower()
    policy_file = tmp_path / "artifact.json"
    policy_file.write_text(json.dumps(ARTIFACT))
    commands = [
        ("topics", "describe"),
        ("db", "migrate"),
        ("schema", "export", "--out", str(tmp_path / "schemas")),
        ("policy", "list"),
        ("policy", "list", "--doer", doer),
        ("policy", "show", f"{pid}@2"),
        ("policy", "verify", doer),
        ("policy", "history", doer),
        ("policy", "lineage", f"{pid}@2"),
        ("policy", "diff", f"{pid}@1", f"{pid}@2"),
        ("policy", "diff", f"{pid}@1", str(policy_file)),
        ("policy", "deployments", "--doer", doer),
        ("policy", "steps", deployment),
        ("policy", "decisions", deployment),
        ("policy", "keys", "list"),
        ("policy", "keys", "generate", "--out", str(tmp_path / "k.pem")),
        ("dataset", "list"),
        ("experiment", "list"),
        ("experiment", "requests", "--all"),
        ("skills", "list"),
        ("alerts", "list"),
    ]
    for args in commands:
        result = await learnops(settings_env, *args, "--json")
        assert result.returncode == 0, (args, result.stderr)
        json.loads(result.stdout)
    deployments = json.loads(
        (await learnops(settings_env, "policy", "deployments", "--doer", doer, "--json")).stdout
    )
    assert [d["deployment_id"] for d in deployments] == [deployment]


async def test_tables_have_headers_and_never_cut_an_identifier(
    settings_env: dict[str, str], db: Any
) -> None:
    doer, _ = await a_doer_with_a_canary(db, "CliTableWithAVeryLongDoerNameThatMustStayWhole")
    listed = await learnops(settings_env, "policy", "list", "--doer", doer)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["policy", "doer", "status"]
    assert f"{doer.lower()}@2" in listed.stdout and doer in listed.stdout
    deployments = await learnops(settings_env, "policy", "deployments", "--doer", doer)
    assert deployments.stdout.splitlines()[0].split()[:2] == ["deployment", "doer"]


async def test_a_command_signed_by_a_key_the_worker_would_refuse_is_not_sent(
    settings_env: dict[str, str], db: Any, tmp_path: Path
) -> None:
    """With no worker running it said "no stage applied it; is a worker running?"."""
    doer, deployment = await a_doer_with_a_canary(db, "CliUnregistered")
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(generate_key().to_pem())
    env = {**settings_env, "LEARNOPS_OPERATOR_KEY": str(stranger)}
    for args in (
        ("bandit", "freeze", doer, "--reason", "hold"),
        ("policy", "pause", deployment, "--reason", "hold"),
    ):
        started = time.monotonic()
        result = await learnops(env, *args, "--timeout", "60")
        line = one_line_error(result, 1, "refused", "checked before sending: nothing sent")
        assert "is not a registered operator key" in line, line
        assert time.monotonic() - started < 30, line  # said at once, not after the wait
