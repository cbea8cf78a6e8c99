"""Signed command envelopes: what an operator key signs, and whether a command may be applied.

A command on ``learning.commands`` (``models.commands``) is signed over
:func:`command_payload`: ``{"format": "learnops.command-signature/1",
"command": <every field of the command but the two signatures>}`` in its
RFC 8785 canonical form (``learning.signing``). The action, doer, policy id
and version, actor, ``event_id``, ``issued_at`` and ``expires_at`` — and every
parameter (steps, force, deployment) — are therefore bound: changing any of
them breaks the signature.

Operator keys hold roles per doer pattern (``fnmatch``, case-sensitive):
``viewer`` < ``operator`` (shadow, canary, approve steps, pause/resume,
rollback, create experiments, run replays, freeze and unfreeze the bandit) <
``owner`` (also register, promote, archive and force) (:data:`COMMAND_ROLES`). A forced
promotion needs, besides the owner's signature, ``approver_signature`` by a
*second* key of a *different* operator that is owner of the doer too.

:func:`authorise` is the verdict, with no I/O: the caller loads the keys and
grants and records the outcome (docs/security.md#commands).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, Literal, TypeVar

from learning.signing import Signature, SigningKey, sign, verify
from models.base import Event

C = TypeVar("C", bound=Event)  # a models.commands command

COMMAND_SIGNATURE_FORMAT = "learnops.command-signature/1"
#: How long a signed command stays valid unless the signer says otherwise.
DEFAULT_COMMAND_TTL = timedelta(minutes=10)
#: The longest validity a command may carry (LEARNOPS_COMMAND_TTL_S is at most a day):
#: a signature valid for years would be a standing order anyone who copied it could replay
#: where the replay guard does not reach (a bandit control is ordered, not remembered).
MAX_COMMAND_TTL = timedelta(days=1)

Role = Literal["viewer", "operator", "owner"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "owner")
_RANK = {role: rank for rank, role in enumerate(ROLES)}

#: The role each command the policy stage applies needs on its doer.
REQUIRED_ROLE: dict[str, Role] = {
    "register": "owner",
    "promote": "owner",
    "archive": "owner",
    "start_shadow": "operator",
    "start_canary": "operator",
    "approve_step": "operator",
    "pause_deployment": "operator",
    "resume_deployment": "operator",
    "rollback": "operator",
}

#: The role every command needs on its doer, whichever stage applies it. A
#: request raised by the worker's triggers is signed by the worker's key, which
#: holds the operator role; an action not listed here is refused.
COMMAND_ROLES: dict[str, Role] = {
    **REQUIRED_ROLE,
    "create_experiment": "operator",
    "run_replay": "operator",
    "request_experiment": "operator",
    "freeze_bandit": "operator",
    "unfreeze_bandit": "operator",
}

_SIGNATURE_FIELDS = frozenset({"operator_signature", "approver_signature"})


@dataclass(frozen=True)
class OperatorKey:
    """A registered operator public key, its operator's name and whether it is revoked."""

    key_id: str
    operator: str
    public_key: Any  # learning.signing.PublicKey
    revoked: bool = False


@dataclass(frozen=True)
class Grant:
    """A role for one key on every doer whose name matches ``doer_pattern``."""

    key_id: str
    doer_pattern: str
    role: Role


@dataclass(frozen=True)
class Verdict:
    """Whether a command may be applied; ``operator`` is the verified signer when it may."""

    allowed: bool
    reason: str
    refusal: str | None = None  # unsigned, unknown_key, revoked_key, signature, expired, role, ...
    key_id: str | None = None
    operator: str | None = None
    approver: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


def command_payload(command: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON value a command signature covers: the command without its signatures."""
    body = {k: v for k, v in command.items() if k not in _SIGNATURE_FIELDS}
    return {"format": COMMAND_SIGNATURE_FORMAT, "command": body}


def action_of(command: Mapping[str, Any]) -> str:
    """The command's action (``promote``, ``start_canary``, …)."""
    return str(command["command"])


def is_forced_promotion(command: Mapping[str, Any]) -> bool:
    """A promotion that skips the canary: it needs a second owner's approval."""
    return action_of(command) == "promote" and bool(command.get("force"))


def sign_payload(command: Mapping[str, Any], key: SigningKey) -> str:
    """The text form of ``key``'s signature over :func:`command_payload` of the command."""
    return str(sign(command_payload(command), key))


def sign_command(
    command: C,
    key: SigningKey,
    *,
    now: datetime,
    ttl: timedelta = DEFAULT_COMMAND_TTL,
    approver: SigningKey | None = None,
) -> C:
    """The command issued now, valid for ``ttl``, signed by ``key`` (and ``approver``, if given)."""
    timed = command.model_copy(
        update={
            "issued_at": now,
            "expires_at": now + ttl,
            "operator_signature": None,
            "approver_signature": None,
        }
    )
    body = timed.model_dump(mode="json")
    update = {"operator_signature": sign_payload(body, key)}
    if approver is not None:
        update["approver_signature"] = sign_payload(body, approver)
    return timed.model_copy(update=update)


def approve_command(command: C, approver: SigningKey) -> C:
    """The command with a second owner's ``approver_signature`` over the same payload."""
    body = command.model_dump(mode="json")
    return command.model_copy(update={"approver_signature": sign_payload(body, approver)})


def role_on(grants: Sequence[Grant], key_id: str, doer: str) -> Role | None:
    """The highest role a key holds on a doer, through any pattern that matches it."""
    held = [g.role for g in grants if g.key_id == key_id and fnmatchcase(doer, g.doer_pattern)]
    return max(held, key=_RANK.__getitem__, default=None)


def authorise(
    command: Mapping[str, Any],
    keys: Mapping[str, OperatorKey],
    grants: Sequence[Grant],
    *,
    now: datetime,
    clock_skew: timedelta,
) -> Verdict:
    """Say whether a command (as ``model_dump(mode="json")``) may be applied, and by whom.

    Checked in order: the signature is present and parses, its key is
    registered and not revoked, it verifies over the payload, the command has
    an issue and expiry time and ``now`` is inside them (give or take
    ``clock_skew``), the key's operator holds the role the action needs on the
    doer, and a forced promotion carries a second owner's signature.
    """
    action = action_of(command)
    doer = str(command["doer"])
    first = _signer(command, "operator_signature", keys)
    if isinstance(first, Verdict):
        return first
    key = first
    timing = _timing(command, now=now, clock_skew=clock_skew)
    if timing is not None:
        return Verdict(False, timing, "expired", key.key_id)
    needed = COMMAND_ROLES.get(action)
    if needed is None:
        return Verdict(False, f"{action} is not a command any role may send", "role", key.key_id)
    held = role_on(grants, key.key_id, doer)
    if held is None or _RANK[held] < _RANK[needed]:
        return Verdict(
            False,
            f"{action} needs the {needed} role on doer {doer}; key {key.key_id} of "
            f"{key.operator} holds {held or 'no role'} there",
            "role",
            key.key_id,
        )
    approver: str | None = None
    if is_forced_promotion(command):
        second = _signer(command, "approver_signature", keys)
        if isinstance(second, Verdict):
            if second.refusal == "unsigned":
                return Verdict(
                    False,
                    "a forced promotion needs approver_signature: a second owner's "
                    "signature of the same command",
                    "second_approver",
                    key.key_id,
                )
            return Verdict(False, f"second approver: {second.reason}", second.refusal, key.key_id)
        if second.operator == key.operator:
            return Verdict(
                False,
                f"the second approver of a forced promotion must be another operator, "
                f"not {key.operator} again",
                "second_approver",
                key.key_id,
            )
        if role_on(grants, second.key_id, doer) != "owner":
            return Verdict(
                False,
                f"the second approver {second.operator} (key {second.key_id}) is not "
                f"owner of doer {doer}",
                "second_approver",
                key.key_id,
            )
        approver = second.operator
    return Verdict(
        True,
        f"signed by {key.operator} (key {key.key_id})",
        None,
        key.key_id,
        key.operator,
        approver,
    )


def _signer(
    command: Mapping[str, Any], field: str, keys: Mapping[str, OperatorKey]
) -> OperatorKey | Verdict:
    text = command.get(field)
    if not text:
        return Verdict(False, f"the command carries no {field}", "unsigned")
    try:
        signature = Signature.parse(text)
    except (TypeError, ValueError) as exc:
        return Verdict(False, f"{field} is malformed: {exc}", "signature")
    key = keys.get(signature.key_id)
    if key is None:
        return Verdict(
            False, f"key {signature.key_id} is not a registered operator key", "unknown_key"
        )
    if key.revoked:
        return Verdict(
            False, f"key {key.key_id} of {key.operator} is revoked", "revoked_key", key.key_id
        )
    if not verify(command_payload(command), signature, key.public_key):
        return Verdict(
            False,
            f"{field} by key {key.key_id} does not match the command (forged or altered)",
            "signature",
            key.key_id,
        )
    return key


def _timing(command: Mapping[str, Any], *, now: datetime, clock_skew: timedelta) -> str | None:
    issued, expires = command.get("issued_at"), command.get("expires_at")
    if not issued or not expires:
        return "the command has no issued_at and expires_at; sign it with an expiry"
    issued_at = datetime.fromisoformat(str(issued))
    expires_at = datetime.fromisoformat(str(expires))
    if expires_at < now - clock_skew:
        return f"the command expired at {expires_at.isoformat()} (now {now.isoformat()})"
    if issued_at > now + clock_skew:
        return f"the command is issued in the future, at {issued_at.isoformat()}"
    if expires_at - issued_at > MAX_COMMAND_TTL:
        return (
            f"the command is valid from {issued_at.isoformat()} to {expires_at.isoformat()}, "
            f"longer than {MAX_COMMAND_TTL}; sign it with a shorter expiry"
        )
    return None
