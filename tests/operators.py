"""The test sessions' operator keys: an owner, a second owner and the worker's key.

Every command a test publishes on learning.commands goes through :func:`signed`,
as the CLI's would: the policy stage applies nothing unsigned. The keys are made
once per process; :func:`register` enrols them in a session's database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from learning.command_signing import is_forced_promotion, sign_command
from learning.signing import generate_key
from models.base import Event
from storage.operator_keys import add_operator_key, grant_role

E = TypeVar("E", bound=Event)

OWNER = generate_key()  # "tests": owner of every doer
APPROVER = generate_key()  # "tests-approver": the second owner of forced promotions
WORKER = generate_key()  # "worker": the experiments stage's key, operator of every doer


def signed(event: E) -> E:
    """The command signed now by the tests' owner (and the approver when it forces a promotion)."""
    forced = is_forced_promotion(event.model_dump(mode="json"))
    return sign_command(event, OWNER, now=datetime.now(UTC), approver=APPROVER if forced else None)


async def register(pool: Any) -> None:
    """Enrol the three keys with their roles on every doer (``*``)."""
    for key, operator, role in (
        (OWNER, "tests", "owner"),
        (APPROVER, "tests-approver", "owner"),
        (WORKER, "worker", "operator"),
    ):
        await add_operator_key(pool, key.public_key, operator=operator, actor="tests")
        await grant_role(pool, key.key_id, "*", role, actor="tests")


def write_keys(directory: Path) -> dict[str, str]:
    """Write the three private keys; the environment that points at them.

    ``LEARNOPS_TEST_APPROVER_KEY`` is no setting: CLI tests pass it to ``--approver-key``.
    """
    paths = {
        "LEARNOPS_OPERATOR_KEY": (OWNER, "operator.pem"),
        "LEARNOPS_WORKER_KEY": (WORKER, "worker.pem"),
        "LEARNOPS_TEST_APPROVER_KEY": (APPROVER, "approver.pem"),
    }
    env = {}
    for variable, (key, name) in paths.items():
        path = directory / name
        path.write_bytes(key.to_pem())
        path.chmod(0o600)
        env[variable] = str(path)
    return env
