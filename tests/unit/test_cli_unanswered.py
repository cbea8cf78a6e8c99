"""What the CLI says of a command no worker answered in time: sent, waiting, until when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from learning.command_signing import sign_command
from learnops.cli.policy import COMMANDS_TOPIC, _unanswered
from models.commands import PauseDeployment
from tests.operators import OWNER


def test_an_unanswered_command_is_said_to_wait_on_its_topic_until_it_expires() -> None:
    issued = datetime(2026, 12, 7, 23, 0, 0, tzinfo=UTC)
    command = sign_command(
        PauseDeployment(doer="D", actor="ops", reason="look", deployment_id="canary-1"),
        OWNER,
        now=issued,
        ttl=timedelta(minutes=10),
    )
    said = _unanswered(command, 30.0, "`learnops policy steps canary-1`")
    assert said.startswith(f"sent {command.event_id}, but no worker answered within 30s")
    # Not "failed": where it waits, until when it is applied, and what after that.
    assert f"waits on {COMMANDS_TOPIC}" in said
    assert "before it expires at 23:10:00 UTC decides it, applied or refused" in said
    assert "refuses it as expired" in said and "policy steps canary-1" in said
