"""No statement learnops sends leaves session state on a pooled connection.

storage.pool.create_pool returns connections to the pool without asyncpg's
reset query (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``).
That holds only while no code takes a session-level advisory lock, LISTENs,
runs a session SET or ``set_config(…, false)``, or declares a cursor (WITH HOLD
outlives its transaction). This reads every string constant of the packages
and of bench/, and the SQL migrations (run on a pooled connection by migrate);
SQL keywords are matched as the code writes them, in upper case.
"""

from __future__ import annotations

import ast
import gc
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("agents", "bench", "learning", "learnops", "models", "storage")
MIGRATIONS = REPO / "storage" / "migrations"

SESSION_STATE = re.compile(
    r"\bpg_(try_)?advisory_lock(_shared)?\s*\("  # the _xact_ forms end with the transaction
    r"|\bset_config\s*\([^;]*?,\s*false\s*\)"  # true: local to the transaction
    # A statement's start: the string's, or after a semicolon and any -- comments.
    r"|(^|;)\s*(--[^\n]*\n\s*)*"
    r"(LISTEN|SET(?!\s+(LOCAL|CONSTRAINTS|TRANSACTION)\b)|PREPARE|DECLARE)\b"
    r"|\bCREATE\s+(GLOBAL\s+|LOCAL\s+)?TEMP(ORARY)?\s+\w+\b(?![^;]*\bON\s+COMMIT\s+DROP\b)",
)
#: The one session lock: migrate() holds it across the migrations' transactions, unlocks it in
#: a finally, and closes the connection when the unlock did not run.
ALLOWED = {("storage/migrate.py", "SELECT pg_advisory_lock($1)")}
SESSION_CALLS = ("add_listener", "add_log_listener")


def _parsed(paths: list[Path]) -> list[tuple[Path, str, ast.Module]]:
    """Each file's source and tree, parsed with the cyclic collector held off.

    On CPython 3.11.7 a finalizer the collector runs inside ast.parse (an
    earlier test's unread future, whose error is logged with a traceback whose
    formatting parses too) breaks the outer parse: "AST constructor recursion
    depth mismatch", gh-106905, fixed in 3.11.8. So the garbage is collected
    first and the collector is off while the files are parsed.
    """
    gc.collect()
    gc.disable()
    try:
        sources = [(path, path.read_text()) for path in paths]
        return [(path, source, ast.parse(source)) for path, source in sources]
    finally:
        gc.enable()


def _strings(tree: ast.AST) -> list[str]:
    """The module's string constants and f-strings (their literal parts joined), not docstrings."""
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skipped.update(id(part) for part in node.values)
        elif isinstance(node, documented) and node.body and isinstance(node.body[0], ast.Expr):
            skipped.add(id(node.body[0].value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in skipped:
                found.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            found.append("".join(v.value for v in node.values if isinstance(v, ast.Constant)))
    return found


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_lock_shared (1, 2)",
        "LISTEN policy_changes",
        "SET search_path = learnops",
        "SELECT 1; SET ROLE learnops_worker",
        "PREPARE q AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "CREATE TEMP TABLE t (n int)",
        "SELECT set_config('search_path', 'x', false)",
        "-- why\nSET ROLE learnops_worker",
        "SELECT 1;\n  -- a comment\n  SET search_path = x",
    ],
)
def test_the_scan_finds_session_state(sql: str) -> None:
    assert SESSION_STATE.search(sql), sql


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        "UPDATE policies SET status = $3 WHERE policy_id = $1",
        "INSERT INTO t VALUES (1) ON CONFLICT (k) DO UPDATE SET n = EXCLUDED.n",
        "SET LOCAL statement_timeout = 1000",
        "PERFORM set_config('learnops.erasing', 'on', true)",
        "BEGIN; CREATE TEMP TABLE erasing ON COMMIT DROP AS SELECT 1; END",
        "CREATE FUNCTION f() RETURNS void SECURITY DEFINER SET search_path = pg_catalog AS $$",
        "Set the lag gauge of every input partition",
    ],
)
def test_the_scan_passes_transaction_scoped_statements(sql: str) -> None:
    assert not SESSION_STATE.search(sql), sql


def test_no_module_leaves_session_state_on_a_pooled_connection() -> None:
    offenders = []
    files = [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 100  # the packages were found
    for path, source, tree in _parsed(files):
        for text in _strings(tree):
            if SESSION_STATE.search(text) and (str(path.relative_to(REPO)), text) not in ALLOWED:
                offenders.append(f"{path.relative_to(REPO)}: {text.strip()[:80]!r}")
        calls = [call for call in SESSION_CALLS if f".{call}(" in source]
        offenders += [f"{path.relative_to(REPO)}: {call}(" for call in calls]
    assert not offenders, "session state on a pooled connection:\n" + "\n".join(offenders)


def test_no_migration_leaves_session_state_on_migrates_connection() -> None:
    migrations = sorted(MIGRATIONS.glob("*.sql"))
    assert len(migrations) > 30  # the migrations were found
    offenders = [
        f"{path.name}: {found.group(0).strip()[:80]!r}"
        for path in migrations
        for found in SESSION_STATE.finditer(path.read_text())
    ]
    assert not offenders, "session state left by a migration:\n" + "\n".join(offenders)
