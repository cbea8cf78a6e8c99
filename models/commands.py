"""Commands to the policy agent (topic ``learning.commands``), one model per ``command``.

``PolicyCommand`` is the discriminated union of them all; decode with
``POLICY_COMMANDS.validate_json(data)``, which picks the model by the
``command`` field and names the expected values when it is unknown.
Every command says who asked (``actor``) and why (``reason``), for the audit.

Every command is also a signed envelope (``learning.commands`` is a control
plane): ``issued_at`` and ``expires_at`` bound when it may be applied, and
``operator_signature`` is an operator key's Ed25519 signature over the
command's other fields (``learning.commands.command_payload``). A forced
promotion carries ``approver_signature`` too, a second owner's signature of the
same payload. The policy stage refuses a command whose envelope does not verify
and records the key's operator, not ``actor``, as who asked (docs/security.md).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, JsonValue, TypeAdapter, ValidationError, model_validator

from models.base import (
    Count,
    Event,
    Identifier,
    Int4,
    Name,
    Sha256Hex,
    TextUUID,
    UnitFloat,
    UTCDatetime,
    Version,
    describe_validation_error,
)
from models.policy_change import CanarySettings


class SignedCommand(Event):
    """A command as a signed envelope: who asked, why, when it expires, the operator's signature."""

    actor: Identifier  # self-declared; the policy stage audits the signing key's operator
    reason: Annotated[str, Field(min_length=1)]
    # The envelope (learning.commands.sign_command fills it in).
    issued_at: UTCDatetime | None = None
    expires_at: UTCDatetime | None = None
    operator_signature: Annotated[str, Field(min_length=1)] | None = None  # ed25519:<key>:<b64>
    approver_signature: Annotated[str, Field(min_length=1)] | None = None  # a forced promotion's

    @model_validator(mode="after")
    def _expiry_after_issue(self) -> Self:
        issued, expires = self.issued_at, self.expires_at
        if issued is not None and expires is not None and expires <= issued:
            raise ValueError("expires_at must be after issued_at")
        return self


class RegisterPolicy(SignedCommand):
    """Register a new signed policy version for a doer."""

    command: Literal["register"] = "register"
    policy_id: Name
    version: Version
    artifact: dict[str, JsonValue]  # the policy: prompts, parameters, router rules, tools
    content_hash: Sha256Hex  # of the artifact's canonical JSON (learning.signing)
    signature: Annotated[str, Field(min_length=1)]  # base64 Ed25519 signature
    signature_key_id: Identifier
    # Provenance: the version it was derived from, the data it learned from, the experiment.
    parent_policy_id: Name | None = None
    parent_version: Version | None = None
    dataset_ids: list[Identifier] = Field(default_factory=list)
    experiment_id: Identifier | None = None

    @model_validator(mode="after")
    def _parent_is_whole(self) -> Self:
        if (self.parent_policy_id is None) != (self.parent_version is None):
            raise ValueError("parent_policy_id and parent_version go together")
        return self


class StartShadow(SignedCommand):
    """Mirror a share of the doer's tasks to a candidate policy, without serving its output."""

    command: Literal["start_shadow"] = "start_shadow"
    policy_id: Name
    version: Version
    mirror_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    canary: CanarySettings = Field(default_factory=CanarySettings)  # how shadow runs are compared


class StartCanary(SignedCommand):
    """Start serving a candidate policy to a growing share of the doer's tasks."""

    command: Literal["start_canary"] = "start_canary"
    policy_id: Name
    version: Version
    # Candidate traffic shares, in order; None means the service's configured steps.
    steps: list[UnitFloat] | None = None
    require_approval: bool = False  # wait for approve_step before each step up
    force: bool = False  # start from draft, skipping shadow; the reason is recorded
    canary: CanarySettings = Field(default_factory=CanarySettings)


class PromotePolicy(SignedCommand):
    """Make a policy version the doer's active policy."""

    command: Literal["promote"] = "promote"
    policy_id: Name
    version: Version
    deployment_id: Identifier | None = None  # when set, only promote out of this deployment
    force: bool = False  # promote from draft or shadow, skipping steps; the reason is recorded


class RollbackPolicy(SignedCommand):
    """End a shadow or canary deployment and return all traffic to the active policy.

    Name the deployment, or the candidate version, or neither to roll back the
    doer's live candidate.  An active policy is not rolled back: promote another
    version (registering an old artifact again as a new version if need be).
    """

    command: Literal["rollback"] = "rollback"
    deployment_id: Identifier | None = None
    policy_id: Name | None = None  # the shadow or canary version to roll back
    version: Version | None = None

    @model_validator(mode="after")
    def _candidate_is_whole(self) -> Self:
        if (self.policy_id is None) != (self.version is None):
            raise ValueError("policy_id and version go together")
        return self


class ArchivePolicy(SignedCommand):
    """Retire a policy version that is not active."""

    command: Literal["archive"] = "archive"
    policy_id: Name
    version: Version


class ApproveStep(SignedCommand):
    """Let a deployment that waits for approval move to its next traffic step."""

    command: Literal["approve_step"] = "approve_step"
    deployment_id: Identifier
    step: Count


class PauseDeployment(SignedCommand):
    """Hold a live shadow or canary deployment at its current step (routing stays as it is)."""

    command: Literal["pause_deployment"] = "pause_deployment"
    deployment_id: Identifier


class ResumeDeployment(SignedCommand):
    """Let a paused deployment carry on from the step it was held at."""

    command: Literal["resume_deployment"] = "resume_deployment"
    deployment_id: Identifier


ExperimentType = Literal["prompt_synthesis", "adapter_training", "tool_tuning", "rag_optimization"]


class CreateExperiment(SignedCommand):
    """Create an experiment testing a candidate policy against the doer's active one.

    The candidate is replayed with the control on a golden dataset (``dataset``,
    its latest version unless ``name@version``; when None, the latest golden
    dataset frozen from a ``{tenant}/{doer}/{phase}`` dataset, one tenant's samples)
    under ``seeds`` (None: the configured seeds), then deployed in ``deploy`` mode if
    the replay passes (docs/experiments.md).
    """

    command: Literal["create_experiment"] = "create_experiment"
    experiment_id: Identifier
    hypothesis: Annotated[str, Field(min_length=1)]
    policy_id: Name
    version: Version
    plan: dict[str, JsonValue] = Field(default_factory=dict)
    experiment_type: ExperimentType = "prompt_synthesis"
    phase: Name | None = None
    dataset: Identifier | None = None
    seeds: Annotated[list[Int4], Field(min_length=1)] | None = None
    deploy: Literal["shadow", "canary"] = "shadow"
    # The experiment request this answers (a RequestExperiment's event id, from a
    # learning trigger): the experiments stage links the two and closes the request.
    request_id: TextUUID | None = None

    @model_validator(mode="after")
    def _plan_canary_is_canary_settings(self) -> Self:
        # The plan's canary settings become the deployment command's once the replay
        # passes: refused now, with the reason, rather than then (docs/experiments.md).
        canary = self.plan.get("canary")
        if canary is not None:
            try:
                CanarySettings.model_validate(canary)
            except ValidationError as exc:
                problems = describe_validation_error(exc)
                raise ValueError(f"plan.canary is not canary settings: {problems}") from None
        return self


#: The longest a replay may wait for its tasks (RunReplay.timeout_s).
MAX_REPLAY_TIMEOUT_S = 7 * 24 * 3600.0


class RunReplay(SignedCommand):
    """Replay a policy and the doer's active policy offline on a golden dataset under seeds.

    The replay id is a function of the policy's content hash, the dataset's
    manifest hash and the seed set; a replay already recorded is answered from
    its record unless ``force`` (docs/experiments.md).
    """

    command: Literal["run_replay"] = "run_replay"
    policy_id: Name
    version: Version
    dataset: Identifier  # golden dataset name, or name@version
    seeds: Annotated[list[Int4], Field(min_length=1)]
    force: bool = False
    # None: the configured timeout; at most a week (a replay's tasks wait no longer).
    timeout_s: Annotated[float, Field(gt=0, le=MAX_REPLAY_TIMEOUT_S)] | None = None


class RequestExperiment(SignedCommand):
    """Ask for an experiment (from a person or a skill card) before a candidate exists."""

    command: Literal["request_experiment"] = "request_experiment"
    hypothesis: Annotated[str, Field(min_length=1)]
    evidence: dict[str, JsonValue] = Field(default_factory=dict)


PolicyCommand = Annotated[
    RegisterPolicy
    | StartShadow
    | StartCanary
    | PromotePolicy
    | RollbackPolicy
    | ArchivePolicy
    | ApproveStep
    | PauseDeployment
    | ResumeDeployment
    | CreateExperiment
    | RequestExperiment
    | RunReplay,
    Field(discriminator="command"),
]

POLICY_COMMANDS: TypeAdapter[PolicyCommand] = TypeAdapter(
    PolicyCommand, config=ConfigDict(defer_build=True)
)
