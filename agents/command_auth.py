"""Whether a stage may act on a signed command: the one check every stage that acts on one makes.

The policy stage (policy commands), the experiments stage (experiments and
replays) and the bandit stage (freezes) call :func:`authorised` before they act:
the envelope's signature, its key (registered, not revoked), its expiry and
the role the action needs on the doer (``learning.command_signing.authorise``),
and, unless the stage guards replays itself, that its event id was never
applied. A refusal is logged and alerted (``command_refused``) with its reason,
and the stage does nothing else with the command.

The stage records the command as applied (:func:`record_applied`) only after
its effect, so a redelivery after a crash before that point is applied again,
idempotently, and publishes what the crash may have lost. A redelivery after
that point (the worker stopped, or lost the partition, before it committed the
offset) is the same record read again at the place recorded with it: it is
skipped with an INFO line, not refused as a replay. The same command anywhere
else is a replay.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from learning.command_signing import Verdict, authorise
from models.commands import SignedCommand
from models.events import Alert
from models.ids import caused_event_id
from storage.operator_keys import Source, applied_at, operator_keyring, record_applied_command
from storage.pool import durably

if TYPE_CHECKING:
    from agents.stage import Stage

log = logging.getLogger("learnops.commands")


def source_of(event: Any) -> Source:
    """Where a stage read ``event``: its message's topic, partition and offset."""
    message = event.message
    return message.topic, message.partition, message.offset


async def authorised(
    stage: Stage, command: SignedCommand, *, replays: bool = True, source: Source | None = None
) -> Verdict | None:
    """The verdict on a command's envelope; None when the stage must do nothing with it.

    With ``replays``, a command already applied (its event id is in
    ``applied_commands``) is refused as a replay (None, logged and alerted),
    unless it was applied from ``source``, the place it is read from now: then
    it is this record's redelivery, already in effect (None, an INFO line). A
    stage whose effect lives in a Faust table orders its commands itself instead
    (agents/bandit.py).
    """
    pool = stage.app.pool
    applied = None
    if replays:
        applied = await durably(
            partial(applied_at, pool, command.event_id), what="applied_commands"
        )
    if applied is not None and source is not None and applied[1] == source:
        log.info(
            "command_redelivered stage=%s action=%s doer=%s event=%s at=%s:%d@%d: applied "
            "at %s, before the offset was committed; nothing to do",
            stage.name,
            getattr(command, "command", "?"),
            command.doer,
            command.event_id,
            *source,
            applied[0].isoformat(),
        )
        return None
    if applied is not None:
        when = applied[0]
        verdict = Verdict(
            False,
            f"replayed: the command {command.event_id} was already applied at {when.isoformat()}",
            "replayed",
        )
    else:
        verdict = await envelope_verdict(stage, command)
    if verdict:
        return verdict
    await refuse(stage, command, verdict)
    return None


async def envelope_verdict(stage: Stage, command: SignedCommand) -> Verdict:
    """The verdict on a command's envelope by the keys and grants in this database, now.

    No replay guard, and nothing logged or alerted: what a stage asks before it
    acts, and what the experiments stage asks of its own deployment command when
    the policy stage has not answered it.
    """
    keys, grants = await durably(partial(operator_keyring, stage.app.pool), what="operator_keys")
    return authorise(
        command.model_dump(mode="json"),
        keys,
        grants,
        now=datetime.now(UTC),
        clock_skew=timedelta(seconds=stage.app.settings.learnops_command_clock_skew_s),
    )


async def refuse(stage: Stage, command: SignedCommand, verdict: Verdict) -> None:
    """Log and alert a refused command with its reason."""
    log.warning(
        "command_refused stage=%s action=%s doer=%s event=%s refusal=%s key=%s reason=%r",
        stage.name,
        getattr(command, "command", "?"),
        command.doer,
        command.event_id,
        verdict.refusal,
        verdict.key_id,
        verdict.reason,
    )
    await stage.topics.alerts.send(command_refusal_alert(command, verdict))


async def record_applied(
    stage: Stage, command: SignedCommand, verdict: Verdict, source: Source | None = None
) -> None:
    """Record a verified command as applied, with its signer and where it was read.

    The audit and the replay guard: ``source`` tells this record's redelivery
    from a replay (:func:`authorised`).
    """
    await durably(
        partial(record_applied_command, stage.app.pool, command, verdict, source),
        what="applied_commands",
    )


def command_refusal_alert(command: SignedCommand, verdict: Verdict) -> Alert:
    """The alert for a command whose envelope was refused: forged, expired, replayed, …"""
    action = getattr(command, "command", "?")
    return Alert(
        event_id=caused_event_id("alert", command.event_id),
        doer=command.doer,
        kind="command_refused",
        severity="warning" if verdict.refusal == "replayed" else "critical",
        message=f"{action} refused: {verdict.reason}",
        policy_id=getattr(command, "policy_id", None),
        policy_version=getattr(command, "version", None),
        deployment_id=getattr(command, "deployment_id", None),
        evidence={
            "event_id": str(command.event_id),
            "action": action,
            "refusal": verdict.refusal,
            "key_id": verdict.key_id,
            "declared_actor": command.actor,
        },
    )
