"""`learnops bandit freeze|unfreeze|show DOER`: hold a doer's bandit allocations, or read them.

``freeze`` and ``unfreeze`` publish a :class:`models.bandit.BanditControl`, signed
with the operator's key (``LEARNOPS_OPERATOR_KEY``) like every command, on the
compacted learning.bandit-controls topic (keyed by doer); the bandit stage
(agents/bandit.py) verifies it, applies it at its next batch and republishes
the allocations with ``frozen`` set. ``show`` reads the
doer's latest record of learning.bandit-allocations.
"""

from __future__ import annotations

import getpass
from typing import Any

import click
import orjson

from learnops.cli.main import GroupedCommand, command, fail, group, json_option, table

CONTROLS = "learning.bandit-controls"
ALLOCATIONS = "learning.bandit-allocations"

_actor = click.option(
    "--actor",
    default=lambda: getpass.getuser(),
    show_default="the current user",
    help="Who is asking, as declared (the record names the key's operator).",
)
_reason = click.option("--reason", required=True, help="Why, for the record.")
_doer = click.argument("doer")


@group("The bandit optimizer: a doer's option shares; freeze and unfreeze them.")
def bandit() -> None:
    pass


async def _control(ctx: GroupedCommand, doer: str, frozen: bool, actor: str, reason: str) -> None:
    from learnops.cli.operator import signed
    from models.bandit import BanditControl

    control = signed(
        ctx,
        BanditControl(
            doer=doer,
            command="freeze_bandit" if frozen else "unfreeze_bandit",
            actor=actor,
            reason=reason,
        ),
    )
    producer = ctx.settings.kafka_producer()
    await producer.start()
    try:
        await producer.send_and_wait(CONTROLS, key=doer.encode(), value=control.to_json())
    finally:
        await producer.stop()
    verb = "frozen" if frozen else "unfrozen"
    ctx.say(
        f"{doer}: {verb} sent as {control.event_id}, signed with your operator key (the bandit "
        "stage applies it at its next batch if your key holds the operator role on the doer)"
    )


@command(bandit, "freeze", _doer, _actor, _reason)
async def freeze(ctx: GroupedCommand, doer: str, actor: str, reason: str) -> None:
    """Hold DOER's allocations where they are; the bandit keeps learning meanwhile."""
    await _control(ctx, doer, True, actor, reason)


@command(bandit, "unfreeze", _doer, _actor, _reason)
async def unfreeze(ctx: GroupedCommand, doer: str, actor: str, reason: str) -> None:
    """Let DOER's allocations move again (what was learned while frozen counts at once)."""
    await _control(ctx, doer, False, actor, reason)


@command(bandit, "show", _doer, json_option)
async def show(ctx: GroupedCommand, doer: str, as_json: bool) -> None:
    """DOER's latest allocations: per phase and parameter, each option's share."""
    from agents.topics import read_from_start
    from models.bandit import BanditAllocations

    latest: Any = None
    for record in await read_from_start(ctx.settings, ALLOCATIONS):
        if record.key == doer.encode():
            found = BanditAllocations.from_json(record.value)
            if latest is None or found.sequence >= latest.sequence:
                latest = found
    if latest is None:
        fail(
            f"no allocations of {doer!r} on {ALLOCATIONS}; the bandit stage publishes them once "
            "the doer's runs name options its policy declares (docs/bandits.md)"
        )
    if as_json:
        ctx.say(orjson.dumps(latest.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        return
    state = "frozen" if latest.frozen else "moving"
    shown = table(
        "phase/parameter",
        "option",
        "share",
        "policy",
        "allocation",
        "runs",
        title=f"{doer}: bandit allocations ({state}, sequence {latest.sequence})",
    )
    for allocation in latest.allocations:
        for option, share in sorted(allocation.shares.items(), key=lambda s: -s[1]):
            shown.add_row(
                f"{allocation.phase}/{allocation.parameter}",
                option,
                f"{share:.1%}",
                f"{allocation.policy_id}@{allocation.policy_version}",
                str(allocation.sequence),
                str(allocation.runs),
            )
    ctx.console().print(shown)
