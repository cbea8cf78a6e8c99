"""learning.policy-changes: a doer's live policy, the one event the orchestrator's Router reads.

Its own module so that the Router (learnops.client) imports this contract and
nothing of the other events (``CanarySettings``, the deployment's settings, lives
here for that reason); ``models.events`` and ``models.commands`` export them too.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from models.base import (
    INT4_MAX,
    INT8_MAX,
    ContractModel,
    Count,
    Event,
    Identifier,
    Name,
    Sha256Hex,
    UnitFloat,
    UTCDatetime,
    Version,
    left_out_when_empty,
)

__all__ = ["CanarySettings", "DeploymentRouting", "PolicyChange"]


class CanarySettings(ContractModel):
    """How a canary decides (``learning.canary.CanaryConfig``; see docs/canary.md).

    Relative thresholds are fractions of the control's mean CRL. ``None`` for
    ``max_duration_s`` means no time limit. ``report_every`` is how many CRL
    results of the deployment pass between two periodic reports.
    ``max_silence_s`` is how long a deployment may hear nothing (no routed task,
    no CRL result) before it is paused for missing data; ``None`` never pauses.
    ``missing_grace_s`` is how long one arm's results may trail its routings
    (fewer than half arrived) before the deployment is paused for missing data.
    """

    mode: Literal["superiority", "non_inferiority"] = "superiority"
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    min_sample_size: Annotated[int, Field(ge=2, le=INT4_MAX)] = 200
    max_crl_increase: Annotated[float, Field(ge=0)] = 0.05
    min_improvement: Annotated[float, Field(ge=0, lt=1)] = 0.0
    non_inferiority_margin: Annotated[float, Field(ge=0)] = 0.02
    max_duration_s: Annotated[float, Field(gt=0)] | None = 7 * 24 * 3600.0
    report_every: Annotated[int, Field(ge=1, le=INT4_MAX)] = 500
    max_silence_s: Annotated[float, Field(gt=0)] | None = 3600.0
    missing_grace_s: Annotated[float, Field(gt=0)] = 30.0
    guardrails: bool = True  # check learning.canary.DEFAULT_GUARDRAILS
    # Roll back a candidate shown worse than the control at all (non-inferiority: by more
    # than its margin) at this level; None turns the harm rule off.
    harm_alpha: Annotated[float, Field(gt=0, lt=1)] | None = 0.025
    # "dwell": a step ends after min_sample_size runs per arm unless something holds it;
    # "evidence": only with promotion evidence (docs/canary.md).
    step_up: Literal["dwell", "evidence"] = "dwell"
    # Shadow only: once the shadow passes, move it to canary (default steps) without
    # waiting for a start_canary command.
    advance_shadow: bool = False

    @model_validator(mode="after")
    def _margin_within_rollback(self) -> Self:
        if self.non_inferiority_margin > self.max_crl_increase:
            raise ValueError(
                f"non_inferiority_margin {self.non_inferiority_margin} is above "
                f"max_crl_increase {self.max_crl_increase}"
            )
        return self


class DeploymentRouting(ContractModel):
    """What a router needs while a shadow or canary deployment is live."""

    deployment_id: Identifier
    salt: Identifier  # hashed with the task id to pick the arm (learning.routing.assign)
    candidate_policy_id: Name
    candidate_version: Version
    allocation: UnitFloat  # the candidate's share of tasks (in shadow: the mirrored share)
    step: Count = 0
    # What the canary stage needs to judge the deployment (docs/canary.md).
    control_policy_id: Name | None = None
    control_version: Version | None = None
    steps: list[UnitFloat] = Field(default_factory=list)  # canary traffic steps, in order
    require_approval: bool = False
    started_at: UTCDatetime | None = None
    canary: CanarySettings | None = None
    # Held at its step by the canary stage (sample ratio mismatch, missing data) or an
    # operator (``pause_deployment``); routing stays as it is while paused.
    paused: bool = False
    # Operator resumes so far, and when the last one was applied: the canary stage
    # takes a view with more resumes as newer than a paused one of the same step.
    # Left out of the record until the first resume.
    resumes: Annotated[Count, Field(exclude_if=left_out_when_empty)] = 0
    resumed_at: Annotated[UTCDatetime | None, Field(exclude_if=left_out_when_empty)] = None
    # The candidate's own signature ("ed25519:<key id>:<base64>", format 2: its doer,
    # policy id, version and content hash), so a router can check it before serving it.
    candidate_content_hash: Sha256Hex | None = None
    candidate_signature: Annotated[str, Field(max_length=200)] | None = None


class PolicyChange(Event):
    """A doer's live policy after a change; compaction keeps the latest per doer.

    ``policy_id``/``version`` is the policy serving the doer's traffic (the
    control), so reading the topic from the start gives every doer's current
    policy.  ``change`` says what produced this record; ``deployment`` is set
    exactly while a shadow or canary is live (``status`` "shadow"/"canary").
    """

    change: Literal[
        "registered",
        "promoted",
        "rolled_back",
        "shadow_started",
        "canary_started",
        "step_changed",
        "paused",
        "resumed",
        "archived",
    ]
    status: Literal["active", "shadow", "canary"]
    policy_id: Name
    version: Version
    content_hash: Sha256Hex
    signature_key_id: Identifier
    previous_policy_id: Name | None = None
    previous_version: Version | None = None
    deployment: DeploymentRouting | None = None
    actor: Identifier | None = None
    reason: str | None = None
    # The live version's own signature (format 2, "ed25519:<key id>:<base64>"): a router
    # checks it against its pinned keys before serving the version.
    policy_signature: Annotated[str, Field(max_length=200)] | None = None
    # Per doer, rising with every change the policy stage publishes (PostgreSQL holds the
    # counter): a router refuses a record whose sequence is below the last it took.
    sequence: Annotated[int, Field(ge=1, le=INT8_MAX)] | None = None
    # The policy stage's signature over every other field (learning.signing.sign_event,
    # kind "policy-change").
    signature: Annotated[str, Field(max_length=200)] | None = None

    @model_validator(mode="after")
    def _deployment_matches_status(self) -> Self:
        if (self.status == "active") != (self.deployment is None):
            raise ValueError(
                "deployment is required while status is shadow or canary, and absent when active"
            )
        if (self.previous_policy_id is None) != (self.previous_version is None):
            raise ValueError("previous_policy_id and previous_version go together")
        return self
