"""Which policy move a doer may make now, what it changes, and whether a stored policy is genuine.

The policy store (``storage/policy_commands.py``) locks one doer, reads its
state into a :class:`DoerState`, asks :func:`plan` about a :class:`MoveRequest`,
and applies the returned :class:`Move` in the same transaction; a registration
is judged by :func:`check_registration`, a deployment's step, approval, pause
or resume (``storage/deployments.py``) by :func:`check_step_up`,
:func:`check_approval`, :func:`check_pause`, :func:`check_operator_pause` and
:func:`check_resume`. Everything that decides lives here, with no I/O, so it
is tested without a database.

The rules, on top of :func:`learning.lifecycle.check_transition`:

- one candidate at a time: a doer has at most one version in shadow or canary,
  and no other version is promoted while it is live (its evidence would then
  compare against a control that is no longer serving);
- a shadow or canary needs an active policy to compare against, so a doer's
  first policy reaches ``active`` by a forced promotion with a reason;
- a move that names a deployment (every canary decision does) applies only
  while that deployment is the target's live one, so a stale decision about an
  ended deployment is refused rather than acted on;
- promoting archives the previous active version in the same move.

A version moves to shadow, canary or active only if :func:`verify_artifact`
accepts its stored bytes, doer, policy id and version under the trusted
keyring; the store asks before it applies a move whose
:attr:`Move.needs_signature` is true.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from learning.canary import DEFAULT_STEPS
from learning.lifecycle import DEPLOYED, PolicyStatus, check_transition
from learning.signing import (
    SIGNATURE_MISMATCH,
    CanonicalJSONError,
    Signature,
    TrustedKeys,
    VerifyResult,
    canonical_json,
    policy_payload,
)
from models import ids
from models.policy_change import CanarySettings

Action = Literal["start_shadow", "start_canary", "promote", "rollback", "archive"]
#: Why the store refused an event, as the audit records it.
Refusal = Literal["signature", "lifecycle", "unknown", "conflict", "artifact", "limits"]
#: The ``PolicyChange.change`` of a move that changes what a doer serves.
Change = Literal["shadow_started", "canary_started", "promoted", "rolled_back"]

#: The status each move asks for.
TARGETS: dict[str, PolicyStatus] = {
    "start_shadow": PolicyStatus.SHADOW,
    "start_canary": PolicyStatus.CANARY,
    "promote": PolicyStatus.ACTIVE,
    "rollback": PolicyStatus.ROLLED_BACK,
    "archive": PolicyStatus.ARCHIVED,
}
#: The ``PolicyChange.change`` of each move that changes what a doer serves.
CHANGES: dict[str, Change] = {
    "start_shadow": "shadow_started",
    "start_canary": "canary_started",
    "promote": "promoted",
    "rollback": "rolled_back",
}


@dataclass(frozen=True)
class PolicyVersion:
    """One stored policy version as the planner sees it."""

    policy_id: str
    version: int
    doer: str
    status: str

    def __str__(self) -> str:
        return f"{self.policy_id}@{self.version}"

    def same(self, other: PolicyVersion | None) -> bool:
        """Whether ``other`` is this version (whatever status each copy shows)."""
        return other is not None and (other.policy_id, other.version) == (
            self.policy_id,
            self.version,
        )


@dataclass(frozen=True)
class LiveDeployment:
    """A shadow or canary deployment that has not ended."""

    deployment_id: str
    policy_id: str
    version: int
    mode: str  # "shadow" | "canary"
    paused: bool = False

    def serves(self, policy: PolicyVersion) -> bool:
        """Whether this deployment is of ``policy``."""
        return (self.policy_id, self.version) == (policy.policy_id, policy.version)


@dataclass(frozen=True)
class DoerState:
    """What a doer runs now: its active version, its live candidate and that one's deployment."""

    doer: str
    active: PolicyVersion | None = None
    candidate: PolicyVersion | None = None  # the version in shadow or canary
    deployment: LiveDeployment | None = None


@dataclass(frozen=True)
class MoveRequest:
    """A command or decision asking to move one version to another status."""

    action: str
    target: PolicyVersion
    force: bool = False
    reason: str = ""
    deployment_id: str | None = None  # apply only while this deployment is live
    decided: bool = False  # a canary decision's, not an operator's command


@dataclass(frozen=True)
class Move:
    """The verdict on a :class:`MoveRequest` and, when allowed, everything it changes.

    ``verdict`` is what the audit records: the refusal reason, or the
    transition (with the skipped steps when forced). ``archive`` is the active
    version a promotion retires; ``end_deployment`` ends with ``end_outcome``
    (``promoted``, ``rolled_back`` or ``advanced`` for shadow → canary);
    ``start_mode`` starts a new deployment in that mode; ``change`` is the
    ``PolicyChange.change`` to publish, or None when what the doer serves is
    unchanged (archiving a draft).
    """

    ok: bool
    verdict: str
    action: str
    from_status: str
    to_status: str
    forced: bool = False
    archive: PolicyVersion | None = None
    end_deployment: str | None = None
    end_outcome: str | None = None
    start_mode: str | None = None
    change: Change | None = None

    def __bool__(self) -> bool:
        return self.ok

    @property
    def needs_signature(self) -> bool:
        """Whether the target must verify before the move: it is about to see traffic."""
        return self.ok and self.to_status in {s.value for s in DEPLOYED}


def plan(state: DoerState, request: MoveRequest) -> Move:
    """Return whether the move may happen now and what it changes, or why it may not."""
    target = request.target
    wanted = TARGETS.get(request.action)
    if wanted is None:
        known = ", ".join(TARGETS)
        return _refuse(request, f"unknown action {request.action!r}; known: {known}", "")

    def refuse(reason: str) -> Move:
        return _refuse(request, reason, wanted.value)

    if target.doer != state.doer:
        return refuse(f"{target} belongs to doer {target.doer!r}, not {state.doer!r}")
    if request.action == "archive" and target.status == PolicyStatus.ACTIVE:
        # check_transition allows active → archived: it is how a promotion retires
        # the previous version. Alone, it would leave the doer serving nothing.
        return refuse(
            f"{target} is {state.doer}'s active policy; it is archived only when another "
            "version is promoted"
        )
    if request.action in ("start_shadow", "start_canary") and state.active is None:
        # Said first: a hint about forcing the skip of shadow would lead nowhere.
        return refuse(
            f"{state.doer} has no active policy to compare {target} against; promote "
            "its first policy with force, a reason and a second owner's approval "
            "(`learnops policy promote ID@1 --force --reason R --approver-key SECOND.pem`)"
        )
    check = check_transition(target.status, wanted, force=request.force, reason=request.reason)
    if not check:
        return refuse(f"{target}: {check.reason}")

    other = state.candidate if not target.same(state.candidate) else None
    own = state.deployment if state.deployment and state.deployment.serves(target) else None
    if request.deployment_id is not None and (
        own is None or own.deployment_id != request.deployment_id
    ):
        live = f"its live deployment is {own.deployment_id}" if own else "it has no live deployment"
        return refuse(f"deployment {request.deployment_id} is not live for {target}; {live}")
    if request.decided and own is not None and own.paused and request.action != "rollback":
        # Decided before the canary stage saw the pause: an operator holds it there.
        return refuse(
            f"{own.deployment_id} is paused; a canary decision moves it on only after a "
            "resume (`learnops policy resume`)"
        )

    verdict = f"{target}: {check.reason}"
    move = Move(
        ok=True,
        verdict=verdict,
        action=request.action,
        from_status=target.status,
        to_status=wanted.value,
        forced=check.forced,
        change=CHANGES.get(request.action),
    )
    if request.action in ("start_shadow", "start_canary"):
        if other is not None:
            return refuse(
                f"{other} is already in {other.status} for {state.doer}; roll it back or "
                "promote it first (one candidate at a time)"
            )
        return replace(
            move,
            start_mode=wanted.value,
            end_deployment=own.deployment_id if own else None,
            end_outcome="advanced" if own else None,
        )
    if request.action == "promote":
        if other is not None:
            return refuse(
                f"{other} is in {other.status} for {state.doer}; roll it back or promote it "
                f"before promoting {target}"
            )
        if target.status == PolicyStatus.CANARY and not request.decided:
            # canary → active is one step, but a person's promote of a canary overrides the
            # canary's evidence: unforced, one owner could take any draft live through
            # shadow and canary in three commands, with no run counted and no second owner.
            if not (request.force and (request.reason or "").strip()):
                return refuse(
                    f"{target} is in canary: the canary promotes it when its evidence "
                    "says so; promoting it before that overrides the canary and needs "
                    "force, a reason and a second owner's approval (`learnops policy "
                    f"promote {target} --force --reason R --approver-key SECOND.pem`)"
                )
            move = replace(
                move, forced=True, verdict=f"{verdict} (forced ahead of the canary's decision)"
            )
        previous = state.active if state.active and not target.same(state.active) else None
        return replace(
            move,
            archive=previous,
            end_deployment=own.deployment_id if own else None,
            end_outcome="promoted" if own else None,
        )
    if request.action == "rollback":
        return replace(
            move,
            end_deployment=own.deployment_id if own else None,
            end_outcome="rolled_back" if own else None,
        )
    return move  # archive: a draft withdrawn, nothing served changes


def _refuse(request: MoveRequest, reason: str, to_status: str) -> Move:
    return Move(
        ok=False,
        verdict=reason,
        action=request.action,
        from_status=request.target.status,
        to_status=to_status,
    )


# --------------------------------------------------------------------------- what an event asks


@dataclass(frozen=True)
class Refused:
    """Why the store refuses an event: the verdict the audit records, and its kind."""

    verdict: str
    refusal: Refusal


def requested_status(action: str) -> str:
    """Return the status an event asks for: ``draft`` for a registration, else its move's."""
    return "draft" if action == "register" else TARGETS[action].value


def decision_action(action: str, deployment_mode: str | None) -> str | None:
    """Return the move a canary decision asks of the policy store, or None if it asks none.

    ``promote`` and ``rollback`` move the candidate. A shadow's ``step_up`` means
    it passed: it moves to canary (``start_canary``). A canary's ``step_up`` and
    a ``pause`` change its deployment (:func:`check_step_up`, :func:`check_pause`),
    not its status; a report changes nothing.
    """
    if action in ("promote", "rollback"):
        return action
    if action == "step_up" and deployment_mode == "shadow":
        return "start_canary"
    return None


def default_target(state: DoerState) -> PolicyVersion | str:
    """Return the version an event that names none is about (the live candidate), or why none."""
    if state.candidate is None:
        return f"{state.doer} has no shadow or canary policy to roll back"
    return state.candidate


@dataclass(frozen=True)
class StoredLine:
    """What is stored under a policy id, as a registration of one of its versions sees it."""

    doer: str  # the doer the policy id belongs to
    taken: bool  # the version asked for is registered already
    same_content: bool  # ... with the content hash asked for


def check_registration(
    policy_id: str,
    version: int,
    doer: str,
    *,
    line: StoredLine | None,
    parent: str | None = None,
    parent_registered: bool = False,
) -> Refused | None:
    """Return why a version may not be registered, or None; its signature is checked after.

    A policy id belongs to one doer; a version is registered once (a new
    artifact is a new version); a named parent (``policy_id@version``) must be
    registered already.
    """
    ref = f"{policy_id}@{version}"
    if line is not None and line.doer != doer:
        return Refused(
            f"policy {policy_id} belongs to doer {line.doer!r}, not {doer!r}", "conflict"
        )
    if line is not None and line.taken:
        what = "the same content" if line.same_content else "different content"
        return Refused(
            f"{ref} is already registered, with {what}; register a new version", "conflict"
        )
    if parent is not None and not parent_registered:
        return Refused(f"parent {parent} is not registered", "unknown")
    return None


def unsigned(ref: object, reason: str, to_status: str | None = None) -> Refused:
    """Return the refusal of a version whose signature does not verify (``to_status``: its move)."""
    verdict = f"{ref}: signature check failed: {reason}"
    if to_status is not None:
        verdict = f"{verdict}; not moved to {to_status}"
    return Refused(verdict, "signature")


# --------------------------------------------------------------------------- deployments


@dataclass(frozen=True)
class DeploymentStart:
    """The deployment a move to shadow or canary starts."""

    deployment_id: str
    mode: str  # "shadow" | "canary"
    salt: str
    steps: tuple[float, ...]  # the canary's traffic steps; empty for a shadow
    allocation: float  # the canary's first step, or the shadow's mirrored share


def start_deployment(
    move: Move,
    target: PolicyVersion,
    event_id: UUID,
    *,
    steps: Sequence[float] | None = None,
    mirror_fraction: float | None = None,
) -> DeploymentStart | Refused | None:
    """Return the deployment an allowed move starts, why its steps are unusable, or None.

    A canary takes ``steps`` (None: ``DEFAULT_STEPS``) and serves the first; a
    shadow mirrors ``mirror_fraction`` of the traffic (None or 0: all of it).
    Id and salt derive from the event, so a replayed command starts the same one.
    """
    if move.start_mode is None:
        return None
    chosen: tuple[float, ...] = ()
    if move.start_mode == "canary":
        chosen = tuple(DEFAULT_STEPS if steps is None else steps)
        problem = check_steps(chosen)
        if problem:
            return Refused(f"{target}: {problem}", "lifecycle")
    return DeploymentStart(
        deployment_id=ids.deployment_id(event_id, move.start_mode),
        mode=move.start_mode,
        salt=routing_salt(event_id),
        steps=chosen,
        allocation=chosen[0] if chosen else mirror_fraction or 1.0,
    )


@dataclass(frozen=True)
class CanaryLimits:
    """The loosest shadow or canary a command may ask for: the worker's configuration.

    A start_shadow or start_canary carries the statistics its canary judges by
    (``CanarySettings``) and its traffic steps, and the canary promotes by them
    with the worker's key, without another owner. Settings looser than these
    (config ``canary.limits``) are refused whoever signed the command, so no
    role can turn a canary into a promotion in disguise (docs/security.md).
    """

    max_alpha: float = 0.10  # the promotion test's level
    max_harm_alpha: float = 0.10  # the harm rule's level; it cannot be turned off
    guardrails: bool = True  # the security and API guardrails stay on
    max_margin: float = 0.25  # non_inferiority_margin and max_crl_increase (of the control's mean)
    min_sample_size: int = 30  # runs per arm before any step or promotion
    max_first_step: float = 0.5  # the candidate's share before any evidence

    def __post_init__(self) -> None:
        for name in ("max_alpha", "max_harm_alpha", "max_first_step"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 1):
                raise ValueError(f"canary.limits.{name} {value!r} must be in (0, 1]")
        if not (isinstance(self.max_margin, int | float) and self.max_margin >= 0):
            raise ValueError(f"canary.limits.max_margin {self.max_margin!r} must be ≥ 0")
        if not (isinstance(self.min_sample_size, int) and self.min_sample_size >= 2):
            raise ValueError(
                f"canary.limits.min_sample_size {self.min_sample_size!r} must be an integer ≥ 2"
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CanaryLimits:
        """From config/learning.yaml's ``canary.limits``; unknown keys are errors."""
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"canary.limits: unknown settings {', '.join(unknown)}")
        return cls(**raw)

    def problems(self, canary: CanarySettings, steps: Sequence[float] | None) -> list[str]:
        """What in ``canary`` and ``steps`` (None: the default steps) is looser than these."""
        found = []
        if canary.alpha > self.max_alpha:
            found.append(f"alpha {canary.alpha} is above {self.max_alpha}")
        if canary.harm_alpha is None:
            found.append("harm_alpha is off (None)")
        elif canary.harm_alpha > self.max_harm_alpha:
            found.append(f"harm_alpha {canary.harm_alpha} is above {self.max_harm_alpha}")
        if self.guardrails and not canary.guardrails:
            found.append("guardrails are off")
        for name in ("non_inferiority_margin", "max_crl_increase"):
            if getattr(canary, name) > self.max_margin:
                found.append(f"{name} {getattr(canary, name)} is above {self.max_margin}")
        if canary.min_sample_size < self.min_sample_size:
            found.append(
                f"min_sample_size {canary.min_sample_size} is below {self.min_sample_size}"
            )
        if steps and steps[0] > self.max_first_step:
            found.append(f"the first step {steps[0]} is above {self.max_first_step}")
        return found

    def refusal(self, canary: CanarySettings, steps: Sequence[float] | None) -> str | None:
        """The verdict on a command that asks for a looser canary than these, or None."""
        found = self.problems(canary, steps)
        if not found:
            return None
        return (
            f"the canary it asks for is looser than this service allows ({'; '.join(found)}); "
            "the limits are the worker's configuration (canary.limits, docs/canary.md)"
        )


def audited_deployment(move: Move, start: DeploymentStart | None, named: str | None) -> str | None:
    """Return the deployment an applied move's audit row names: started, else ended, else named."""
    if start is not None:
        return start.deployment_id
    return move.end_deployment or named


@dataclass(frozen=True)
class DeploymentSteps:
    """A deployment's traffic as the step, approval and pause rules see it."""

    deployment_id: str
    doer: str
    mode: str  # "shadow" | "canary"
    step: int  # index in ``steps`` of the share served now
    steps: tuple[float, ...]
    ended: bool
    paused: bool
    require_approval: bool = False
    resumes: int = 0  # operator resumes so far


def check_decided_pause(deployment: DeploymentSteps, doer: str, resumes: int) -> str | None:
    """Return why a canary's pause decision may not pause the deployment now, or None.

    As :func:`check_pause`, for the decision's own doer, and never once an
    operator resumed the deployment after the decision was made (``resumes``,
    the count the canary stage saw): a pause delivered late or again after a
    restart must not undo the resume.
    """
    if deployment.doer != doer:
        return _not_the_doers(deployment, doer)
    if resumes < deployment.resumes:
        return f"{deployment.deployment_id} was resumed by an operator after this pause was decided"
    return check_pause(deployment)


def asked_for_what_is(
    action: str, deployment: DeploymentSteps, doer: str, to_step: int, resumes: int | None
) -> bool:
    """Whether a refused step-up, approval, pause or resume asked for what already is.

    Such a refusal is ``stale``, not worth an alert: a pause of a deployment
    held already, ended, or resumed since the canary decided it (``resumes``,
    the count a canary's pause was decided on; None for an operator's); a
    resume of a running one; a step reached already, or a canary's step-up
    overtaken by an operator's pause. Never for another doer's deployment.
    """
    if deployment.doer != doer:
        return False
    if action == "pause":
        decided_before = resumes is not None and resumes < deployment.resumes
        return deployment.paused or deployment.ended or decided_before
    if deployment.ended:
        return False
    if action == "resume":
        return not deployment.paused
    return to_step <= deployment.step or (action == "step_up" and deployment.paused)


def check_step_up(deployment: DeploymentSteps, doer: str, step: int) -> str | None:
    """Return why a canary decision of ``doer`` may not move the deployment to ``step``, or None.

    It applies to the doer's own live, unpaused canary, for its next step only,
    and never to a deployment that waits for an operator's approval, so a
    replayed, stale, forged or skipping step-up changes nothing.
    """
    if deployment.doer != doer:
        return _not_the_doers(deployment, doer)
    problem = _not_serving(deployment) or _no_step(deployment, step)
    if problem:
        return problem
    if step <= deployment.step:
        return already_at(deployment)
    if step != deployment.step + 1:
        return (
            f"{deployment.deployment_id} is at step {deployment.step}; a step-up moves to step "
            f"{deployment.step + 1} only, not {step}"
        )
    if deployment.require_approval:
        return (
            f"{deployment.deployment_id} requires an operator's approval for each step; "
            "a canary decision cannot step it up"
        )
    return None


def already_at(deployment: DeploymentSteps) -> str:
    """The refusal of a step the deployment has reached already (a stale or replayed one)."""
    return f"{deployment.deployment_id} is at step {deployment.step} already"


def _not_the_doers(deployment: DeploymentSteps, doer: str) -> str:
    return f"{deployment.deployment_id} belongs to doer {deployment.doer!r}, not {doer!r}"


def check_approval(
    deployment: DeploymentSteps, doer: str, step: int, asked: bool = False
) -> str | None:
    """Return why an operator's approval may not move the deployment to ``step``, or None.

    An approval is for the doer's own live, unpaused canary and for its next
    step only. A canary that requires approvals moves only once it has asked
    for that step (``asked``: a decision "awaiting approval of step N", made
    once step N − 1 has its evidence): there the approval is a person's answer
    to the canary's recommendation, not a way around its evidence (a rollback
    is, and a forced promote with a second owner). A canary that steps itself
    up may be moved a step early by an operator: a step gathers more evidence,
    it decides nothing. So approving twice, out of turn or
    before the evidence of an approval-gated canary changes nothing.
    """
    if deployment.doer != doer:
        return _not_the_doers(deployment, doer)
    problem = _not_serving(deployment) or _no_step(deployment, step)
    if problem:
        return problem
    if step != deployment.step + 1:
        return (
            f"{deployment.deployment_id} is at step {deployment.step}; only step "
            f"{deployment.step + 1} can be approved"
        )
    if deployment.require_approval and not asked:
        return (
            f"{deployment.deployment_id} has not asked for step {step}: the canary asks (an "
            f"approval_needed alert, 'awaiting approval of step {step}' in its decisions) once "
            f"step {deployment.step} has its evidence"
        )
    return None


def check_pause(deployment: DeploymentSteps) -> str | None:
    """Return why the deployment may not be paused now, or None (live and not paused yet)."""
    if deployment.ended:
        return f"{deployment.deployment_id} has ended"
    if deployment.paused:
        return f"{deployment.deployment_id} is paused already"
    return None


def check_operator_pause(deployment: DeploymentSteps, doer: str) -> str | None:
    """Return why an operator may not pause the deployment now, or None.

    Any live deployment of the doer that is not paused already: a shadow or a
    canary, at any step. Pausing never moves traffic; it holds the deployment
    where it is until a resume.
    """
    if deployment.doer != doer:
        return _not_the_doers(deployment, doer)
    return check_pause(deployment)


def check_resume(deployment: DeploymentSteps, doer: str) -> str | None:
    """Return why an operator may not resume the deployment now, or None (live and paused)."""
    if deployment.doer != doer:
        return _not_the_doers(deployment, doer)
    if deployment.ended:
        return f"{deployment.deployment_id} has ended"
    if not deployment.paused:
        return f"{deployment.deployment_id} is not paused"
    return None


def _not_serving(deployment: DeploymentSteps) -> str | None:
    if deployment.ended:
        return f"{deployment.deployment_id} has ended"
    if deployment.paused:
        return f"{deployment.deployment_id} is paused"
    if deployment.mode != "canary":
        return f"{deployment.deployment_id} is a {deployment.mode}, which has no traffic steps"
    return None


def _no_step(deployment: DeploymentSteps, step: int) -> str | None:
    if 0 <= step < len(deployment.steps):
        return None
    last = len(deployment.steps) - 1
    return f"{deployment.deployment_id} has no step {step} (its steps are 0 to {last})"


def check_steps(steps: Sequence[float]) -> str | None:
    """Return why canary traffic steps are unusable, or None: non-empty, rising, in (0, 1]."""
    if not steps:
        return "a canary needs at least one traffic step"
    if not all(0.0 < step <= 1.0 for step in steps):
        return f"traffic steps {list(steps)} must each be above 0 and at most 1"
    if any(b <= a for a, b in itertools.pairwise(steps)):
        return f"traffic steps {list(steps)} must rise strictly"
    return None


def routing_salt(event_id: UUID) -> str:
    """Return the routing salt of the deployment a command starts (16 hex digits).

    It only has to differ between deployments so that each splits tasks afresh
    (``learning.routing.assign``); deriving it from the event keeps replays identical.
    """
    return hashlib.sha256(f"learnops.routing-salt:{event_id}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- provenance


def same_artifact(stored: object, canonical: bytes) -> bool:
    """Whether a stored (queryable) copy of an artifact is the JSON the canonical bytes hold.

    Compared through the canonical form, so ``1`` and ``1.0`` match while
    ``true`` and ``1`` (equal in Python) do not.
    """
    try:
        return canonical_json(stored) == canonical
    except CanonicalJSONError:
        return False


#: ``policies.signature_format`` of a signature over :func:`learning.signing.policy_payload`.
SIGNATURE_FORMAT = 2
#: ``policies.signature_format`` of a signature over the artifact alone, as made before
#: format 2; accepted only for versions stored before migration 016.
LEGACY_SIGNATURE_FORMAT = 1
#: The rule a signature made for another identity breaks, as refusals name it.
IDENTITY_RULE = (
    "a policy signature covers its doer, policy id and version with the artifact "
    "(docs/security.md#signatures)"
)


@dataclass(frozen=True)
class SignedIdentity:
    """What a policy signature vouches for besides the artifact: whose policy, which version."""

    doer: str
    policy_id: str
    version: int

    def __str__(self) -> str:
        return f"{self.policy_id}@{self.version} of doer {self.doer}"


def verify_artifact(
    canonical: bytes,
    *,
    identity: SignedIdentity,
    content_hash: str,
    signature: str,
    key_id: str,
    keyring: TrustedKeys,
    signed_at: datetime | None,
    signature_format: int = SIGNATURE_FORMAT,
) -> VerifyResult:
    """Return whether stored canonical bytes are what a trusted key signed for this identity.

    ``canonical`` is the artifact's RFC 8785 form; ``content_hash`` the bare
    SHA-256 hex recorded beside it; ``signature`` the base64 Ed25519 signature
    by ``key_id`` over :func:`~learning.signing.policy_payload` of ``identity``
    and that hash. ``signed_at`` is when the signature was recorded: a key
    retired before then does not vouch for it (``TrustedKeys.verify``).
    Checked in order: the bytes are canonical JSON, the hash is theirs, the
    signature is well formed, and the keyring accepts it over the payload.

    With ``signature_format`` 1 (a version stored before identities were
    signed) the signature is checked over the artifact alone and, when it
    verifies, the reason says that its identity is not signed.
    """
    try:
        artifact = json.loads(canonical)
    except ValueError:
        return VerifyResult(False, "the stored artifact bytes are not JSON", key_id)
    try:
        again = canonical_json(artifact)
    except CanonicalJSONError as exc:
        return VerifyResult(False, f"the stored artifact has no canonical form: {exc}", key_id)
    if again != canonical:
        return VerifyResult(False, "the stored artifact bytes are not in canonical form", key_id)
    digest = hashlib.sha256(canonical).hexdigest()
    if digest != content_hash:
        return VerifyResult(
            False,
            f"content hash {content_hash[:12]}… is not the artifact's ({digest[:12]}…)",
            key_id,
        )
    try:
        parsed = Signature.from_parts(key_id, signature)
    except ValueError as exc:
        return VerifyResult(False, f"malformed signature: {exc}", key_id)
    if signature_format == LEGACY_SIGNATURE_FORMAT:
        result = keyring.verify(artifact, parsed, signed_at=signed_at)
        if not result:
            return result
        return replace(
            result,
            reason=f"{result.reason}; format 1 signature: it covers the artifact alone, "
            f"not {identity} (sign it again as a new version)",
        )
    if signature_format != SIGNATURE_FORMAT:
        return VerifyResult(False, f"unknown signature format {signature_format}", key_id)
    payload = policy_payload(
        doer=identity.doer,
        policy_id=identity.policy_id,
        version=identity.version,
        content_hash=content_hash,
    )
    result = keyring.verify(payload, parsed, signed_at=signed_at)
    if result or result.reason != SIGNATURE_MISMATCH:
        return result
    if keyring.verify(artifact, parsed, signed_at=signed_at):
        why = (
            "it was made over the artifact alone (format 1); sign the artifact again "
            f"for {identity} with `learnops policy register`"
        )
    else:
        why = (
            f"it was not made for {identity} with this artifact: {IDENTITY_RULE}, so a "
            "signature made for another doer, policy id or version does not verify"
        )
    return VerifyResult(False, f"signature does not match: {why}", key_id)
