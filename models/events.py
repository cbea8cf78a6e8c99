"""One event model per topic (see topics.yaml); every event is keyed by ``doer``.

The learning bundle is in ``models/bundle.py`` and policy commands in
``models/commands.py``; both are re-exported here, so ``models.events.<Model>``
names the value of every topic.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated, Literal, Self

from pydantic import Field, JsonValue, field_validator, model_validator

from models.base import (
    ContractModel,
    Count,
    Event,
    Identifier,
    Name,
    NonNegativeFloat,
    Offset,
    Sha256Hex,
    TextDate,
    TextUUID,
    UnitFloat,
    UTCDatetime,
    Version,
    left_out_when_empty,
    name_problem,
    shown_name,
)
from models.bundle import (
    QAV,
    Arm,
    Artifact,
    Costs,
    Gates,
    Latency,
    Origin,
    RunCompleted,
    Security,
    SecurityFinding,
)
from models.commands import (
    POLICY_COMMANDS,
    ApproveStep,
    ArchivePolicy,
    CanarySettings,
    CreateExperiment,
    PolicyCommand,
    PromotePolicy,
    RegisterPolicy,
    RequestExperiment,
    RollbackPolicy,
    StartCanary,
    StartShadow,
)
from models.crl import CRLTerms
from models.datasets import DEFAULT_TENANT
from models.policy_change import DeploymentRouting, PolicyChange

__all__ = [
    "POLICY_COMMANDS",
    "QAV",
    "UNKNOWN_DOER",
    "Alert",
    "ApproveStep",
    "ArchivePolicy",
    "Arm",
    "Artifact",
    "CRLComputed",
    "CanarySettings",
    "Costs",
    "CreateExperiment",
    "CurationLabels",
    "DeadLetter",
    "DecisionMade",
    "DecisionReport",
    "DeploymentRouting",
    "ExperimentChanged",
    "Gates",
    "Guardrail",
    "Latency",
    "Origin",
    "PolicyChange",
    "PolicyCommand",
    "PromotePolicy",
    "RegisterPolicy",
    "ReplayTask",
    "RequestExperiment",
    "RollbackPolicy",
    "RunCompleted",
    "SampleCurated",
    "Security",
    "SecurityFinding",
    "SkillCard",
    "StartCanary",
    "StartShadow",
    "TaskRouted",
]

# The doer of a dead letter whose event could not be parsed and whose key was
# not a usable doer either.
UNKNOWN_DOER = "unknown"

# The largest dead letter, as JSON, that DeadLetter.capture builds by default:
# under Kafka's default max.request.size and message.max.bytes (1 MiB) with room
# for the record's key, headers and batch overhead.
DEAD_LETTER_MAX_BYTES = 900_000
# A dead letter's reason is cut to this many characters; a key past this many
# bytes is kept as a prefix.
DEAD_LETTER_MAX_REASON = 2_000
DEAD_LETTER_MAX_KEY = 4_096


# --- learning.task-routed ---------------------------------------------------


class TaskRouted(Event):
    """Which arm the orchestrator routed one task of a deployment to."""

    occurred_at: UTCDatetime  # when the task was routed; required
    task_id: Identifier
    deployment_id: Identifier
    arm: Arm
    policy_id: Name  # the policy the task ran under (the arm's policy)
    policy_version: Version
    step: Count  # index of the deployment's traffic step at routing time
    allocation: UnitFloat  # the candidate's share of traffic at that step


# --- learning.crl-computed --------------------------------------------------


class CRLComputed(Event):
    """The Composite Run Loss of one run, with everything a canary or skill card needs."""

    source_event_id: TextUUID  # event_id of the RunCompleted it was computed from
    run_occurred_at: UTCDatetime  # the run's own timestamp; daily trends bucket on it
    run_id: Identifier
    phase: Name
    policy_id: Name
    policy_version: Version
    tenant_id: Name
    deployment_id: Identifier | None = None
    arm: Arm | None = None
    shadow: bool = False
    replay_id: Identifier | None = None
    model: str | None = None
    options: dict[Identifier, Identifier] = Field(default_factory=dict)  # RunCompleted.options
    allocation_sequences: dict[Identifier, Count] = Field(default_factory=dict)  # RunCompleted's
    terms: CRLTerms
    loss: NonNegativeFloat
    contributions: dict[str, NonNegativeFloat]
    weights_version: Identifier
    gate_failures: list[Identifier] = Field(default_factory=list)
    security_criticals: Count
    # The run's own latency figures, for skill cards (the terms hold only the normalised p95).
    latency_p95_ms: NonNegativeFloat | None = None
    timeouts: Count = 0

    @model_validator(mode="after")
    def _consistent_with_terms(self) -> Self:
        unknown = sorted(set(self.contributions) - set(CRLTerms.model_fields))
        if unknown:
            names = ", ".join(shown_name(name) for name in unknown)
            raise ValueError(f"contributions name unknown terms: {names}")
        total = sum(self.contributions.values())
        if abs(total - self.loss) > 1e-9 * max(1.0, abs(self.loss)):
            raise ValueError(f"loss {self.loss:g} is not the sum of contributions {total:g}")
        if self.security_criticals != self.terms.security_criticals:
            raise ValueError("security_criticals differs from terms.security_criticals")
        return self


# --- learning.policy-changes ------------------------------------------------


# --- learning.decisions -----------------------------------------------------


class Guardrail(ContractModel):
    """One guardrail check of a canary decision."""

    name: Identifier
    value: float
    threshold: float
    statistic: Identifier  # what value is, e.g. "mean_crl", "p95_crl", "srm_p_value"
    passed: bool
    # The test statistic decided on (e.g. the always-valid lower bound of the excess
    # harm, failing above 0); None while it cannot be computed yet.
    bound: float | None = None
    critical: bool = False  # a failing critical guardrail rolls the canary back
    reason: str | None = None


class DecisionReport(ContractModel):
    """The evidence of a canary decision: both arms' CRL, the difference and its uncertainty."""

    control_mean: NonNegativeFloat
    candidate_mean: NonNegativeFloat
    control_count: Count
    candidate_count: Count
    delta: float  # candidate_mean - control_mean; negative is better
    delta_pct: float | None = None  # delta / control_mean; None when control_mean is 0
    p_value: UnitFloat
    # None while the interval is not yet estimable (too few observations).
    ci_low: float | None = None
    ci_high: float | None = None
    guardrails: list[Guardrail] = Field(default_factory=list)
    # Where the deployment stands (set by the canary stage; docs/canary.md).
    deployment_mode: Literal["shadow", "canary"] | None = None
    decision_mode: Literal["superiority", "non_inferiority"] | None = None
    step: Count | None = None
    allocation: UnitFloat | None = None
    confidence: UnitFloat | None = None  # level of the always-valid interval
    recommendation: str | None = None  # step_up | promote | rollback | pause | continue

    @model_validator(mode="after")
    def _ordered_interval(self) -> Self:
        if self.ci_low is not None and self.ci_high is not None and self.ci_low > self.ci_high:
            raise ValueError(f"ci_low {self.ci_low:g} is above ci_high {self.ci_high:g}")
        return self


class DecisionMade(Event):
    """A canary decision about one deployment, with its evidence."""

    deployment_id: Identifier
    candidate_policy_id: Name
    candidate_version: Version
    action: Literal["step_up", "promote", "rollback", "pause", "report", "continue"]
    reason: Annotated[str, Field(min_length=1)]
    step: Count
    report: DecisionReport
    # The deployment's operator resumes when it was decided (DeploymentRouting.resumes):
    # a pause decided before a resume is not applied after it. Left out while 0.
    resumes: Annotated[Count, Field(exclude_if=left_out_when_empty)] = 0
    # The canary worker's signature over every other field ("ed25519:<key id>:<base64>",
    # learning.signing.sign_event); the policy stage applies only decisions that verify.
    signature: Annotated[str, Field(max_length=200)] | None = None


# --- learning.samples -------------------------------------------------------


class CurationLabels(ContractModel):
    """What a curated sample is labelled with (rules in docs/curation.md, "Labels").

    ``grounding``, ``contradiction`` and ``correctness`` come from the run's QAV
    results and gates, so every artifact of a run shares them; ``None`` when the
    run had no QAV result (grounding, contradiction) or no gate (correctness).
    """

    grounding: UnitFloat | None = None
    contradiction: UnitFloat | None = None
    specificity: UnitFloat
    correctness: UnitFloat | None = None
    origin: Origin
    synthetic_confidence: UnitFloat


class SampleCurated(Event):
    """A curated, redacted training sample from one artifact of a run, or a reject with reason."""

    sample_id: Identifier
    run_id: Identifier
    phase: Name
    policy_id: Name
    policy_version: Version
    artifact_id: Identifier
    kind: Identifier
    origin: Origin
    accepted: bool
    reject_reason: str | None = None
    content: str | None = None  # redacted text; never raw PII
    content_hash: Sha256Hex | None = None  # of the redacted content (learning.curation)
    redactions: dict[str, Count] = Field(default_factory=dict)  # placeholder kind → count
    labels: CurationLabels | None = None
    loss: NonNegativeFloat | None = None  # the run's CRL, when known
    near_duplicate_of: list[Identifier] = Field(default_factory=list)
    self_loop_of: Identifier | None = None  # the artifact of ours it copies
    diversity: UnitFloat | None = None  # 1 − max Jaccard with the dataset's recent samples
    dataset: Identifier | None = None
    # The bundle's tenant; None only on samples curated before tenants were kept apart
    # (stored as "default", migration 023).
    tenant_id: Name | None = None
    golden: bool = False
    source_event_id: TextUUID | None = None  # event_id of the RunCompleted it came from
    run_occurred_at: UTCDatetime | None = None
    model: str | None = None
    curator: Identifier | None = None  # the app id (consumer group) that curated it

    @model_validator(mode="after")
    def _reject_has_reason(self) -> Self:
        if self.accepted == (self.reject_reason is not None):
            raise ValueError("reject_reason is required for a reject and absent for an accept")
        return self


# --- learning.dlq -----------------------------------------------------------


class DeadLetter(Event):
    """Input a stage could not process: the original bytes, where they came from, and why.

    A value too large to carry whole (see ``capture``) is kept as a prefix:
    ``truncated`` is then true, and ``payload_size`` and ``payload_sha256``
    describe the whole original value (set on every captured letter; None on
    letters written before they existed).

    ``doer`` is the record's key when it was a usable doer, else ``"unknown"``:
    a bad event often cannot be parsed far enough to know its doer.  Building a
    dead letter must not fail on the very input it reports, so an unusable
    ``doer`` (not a name: models.base.NAME_RULE) becomes ``"unknown"``
    rather than an error; the original key bytes stay in ``key_b64``.
    """

    doer: Name = UNKNOWN_DOER
    value_b64: str  # the original value, base64 (standard alphabet, padded)
    key_b64: str | None = None
    topic: Identifier
    partition: Count
    offset: Offset
    reason: Annotated[str, Field(min_length=1)]
    stage: Identifier  # the agent that rejected it
    error_type: Identifier  # e.g. "ValidationError", "BundleError"
    consumer: Identifier | None = None  # the consumer group (app id) whose stage rejected it
    truncated: bool = False  # value_b64 (or, past DEAD_LETTER_MAX_KEY, key_b64) is a prefix
    payload_size: Offset | None = None  # bytes in the original value
    payload_sha256: Sha256Hex | None = None  # of the original value
    key_size: Offset | None = None  # bytes in the original key

    @field_validator("doer", mode="before")
    @classmethod
    def _usable_doer_or_unknown(cls, value: object) -> object:
        if isinstance(value, str) and not _usable_doer(value):
            return UNKNOWN_DOER
        return value

    @field_validator("value_b64", "key_b64")
    @classmethod
    def _is_base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except binascii.Error:
                raise ValueError("is not valid base64") from None
        return value

    @classmethod
    def capture(
        cls,
        *,
        value: bytes,
        key: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        reason: str,
        stage: str,
        error_type: str,
        doer: str | None = None,
        consumer: str | None = None,
        max_bytes: int = DEAD_LETTER_MAX_BYTES,
    ) -> DeadLetter:
        """Return a dead letter of ``value`` and ``key`` whose JSON fits in ``max_bytes``.

        The value is kept whole when the letter's JSON stays within ``max_bytes``
        and as its longest prefix that fits otherwise (``truncated``); its size
        and sha256 are recorded either way.  The reason is cut to
        DEAD_LETTER_MAX_REASON characters and a key to DEAD_LETTER_MAX_KEY bytes,
        so a letter is always sendable: a poison message never stops a partition
        because its dead letter is refused by the producer.
        """
        key_prefix = (
            key if key is None or len(key) <= DEAD_LETTER_MAX_KEY else key[:DEAD_LETTER_MAX_KEY]
        )
        metadata = cls(
            doer=doer or _doer_from_key(key),
            value_b64="",
            key_b64=None if key_prefix is None else base64.b64encode(key_prefix).decode("ascii"),
            topic=topic,
            partition=partition,
            offset=offset,
            reason=_bounded_reason(reason),
            stage=stage,
            error_type=error_type,
            consumer=consumer,
            truncated=key_prefix is not key,
            payload_size=len(value),
            payload_sha256=hashlib.sha256(value).hexdigest(),
            key_size=None if key is None else len(key),
        )
        whole = base64.b64encode(value).decode("ascii")
        # Base64 needs no JSON escaping, so the letter's size is its metadata plus this
        # field's length; "true" for truncated is no longer than "false".
        room = max(0, max_bytes - len(metadata.to_json()))
        if len(whole) <= room:
            return metadata.model_copy(update={"value_b64": whole})
        prefix = value[: room // 4 * 3]
        return metadata.model_copy(
            update={"value_b64": base64.b64encode(prefix).decode("ascii"), "truncated": True}
        )

    @property
    def value(self) -> bytes:
        """The original value bytes (their prefix when ``truncated``)."""
        return base64.b64decode(self.value_b64)

    @property
    def key(self) -> bytes | None:
        """The original key bytes, if there was a key (a prefix when ``key_size`` is larger)."""
        return None if self.key_b64 is None else base64.b64decode(self.key_b64)


def _bounded_reason(reason: str) -> str:
    """The reason, storable (no NUL, valid UTF-8) and at most DEAD_LETTER_MAX_REASON characters."""
    text = reason.replace("\x00", "\\u0000").encode("utf-8", "replace").decode("utf-8")
    if len(text) > DEAD_LETTER_MAX_REASON:
        text = text[: DEAD_LETTER_MAX_REASON - 1] + "…"
    return text or "no reason given"


def _doer_from_key(key: bytes | None) -> str:
    if not key:
        return UNKNOWN_DOER
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return UNKNOWN_DOER
    return text if _usable_doer(text) else UNKNOWN_DOER


def _usable_doer(text: str) -> bool:
    return name_problem(text) is None


# --- learning.alerts --------------------------------------------------------


class Alert(Event):
    """Something a person should look at, with the measured value, its baseline and threshold.

    Known kinds: ``crl_regression``, ``contamination``, ``sample_ratio_mismatch``,
    ``signature_refused``, ``guardrail``; stages may add their own.
    """

    kind: Identifier
    severity: Literal["info", "warning", "critical"]
    message: Annotated[str, Field(min_length=1)]
    value: float | None = None  # the measured value
    baseline: float | None = None
    threshold: float | None = None
    phase: Name | None = None
    policy_id: Name | None = None
    policy_version: Version | None = None
    deployment_id: Identifier | None = None
    evidence: dict[str, JsonValue] = Field(default_factory=dict)


# --- learning.experiments ---------------------------------------------------


class ExperimentChanged(Event):
    """An experiment's new state."""

    experiment_id: Identifier
    status: Literal[
        "requested",
        "created",
        "running",
        "concluded",
        "cancelled",
        # The experiment registry's lifecycle (docs/experiments.md).
        "replaying",
        "shadow",
        "canary",
        "promoted",
        "rolled_back",
        "failed",
        "incomplete",
    ]
    hypothesis: str = ""
    experiment_type: Identifier | None = None
    phase: Name | None = None
    previous_status: Identifier | None = None
    replay_id: Identifier | None = None
    policy_id: Name | None = None  # the candidate under test
    policy_version: Version | None = None
    deployment_id: Identifier | None = None
    actor: Identifier | None = None
    reason: str | None = None
    outcome: dict[str, JsonValue] = Field(default_factory=dict)
    request_id: TextUUID | None = None  # the experiment request it answers, if any


# --- learning.replay-tasks --------------------------------------------------


class ReplayTask(Event):
    """One offline replay of a sample under a policy with a seed, for the orchestrator's sandbox."""

    replay_id: Identifier
    task_id: Identifier
    sample_id: Identifier
    seed: Count
    phase: Name
    policy_id: Name
    policy_version: Version
    input: str | None = None  # the (redacted) input to replay; None when the sandbox looks it up
    input_hash: Sha256Hex | None = None
    # The run id the result bundle must carry (it names the attempt), and the content
    # hashes the replay id (from which the task id) derives: the policy artifact's (a
    # blob) and the manifest's.
    run_id: Identifier | None = None
    policy_hash: Sha256Hex | None = None
    manifest_hash: Sha256Hex | None = None
    # The tenant whose golden dataset the sample comes from; its result bundle carries it.
    tenant_id: Name | None = None


# --- learning.skill-cards ---------------------------------------------------


class SkillCard(Event):
    """A doer's current skill card for one tenant: how well it does, lately, and where it fails.

    Keyed ``tenant/doer`` on the compacted learning.skill-cards: one card per
    tenant and doer stays (:meth:`record_key`).
    """

    # Whose runs the card summarises; a card stored before tenants were kept apart
    # (migration 024) summarised every tenant's runs and reads as the default tenant's.
    tenant_id: Name = DEFAULT_TENANT
    as_of: TextDate  # the UTC day the card summarises up to
    policy_id: Name | None = None  # the doer's active policy
    policy_version: Version | None = None
    runs_7d: Count = 0
    runs_30d: Count = 0
    crl_mean_7d: NonNegativeFloat | None = None
    crl_mean_30d: NonNegativeFloat | None = None
    crl_p95_7d: NonNegativeFloat | None = None
    crl_trend_7d: float | None = None  # today's mean minus the 7-day baseline
    gate_failures_30d: dict[str, Count] = Field(default_factory=dict)
    security_criticals_30d: Count = 0
    strengths: list[str] = Field(default_factory=list)
    weaknesses: list[str] = Field(default_factory=list)
    details: dict[str, JsonValue] = Field(default_factory=dict)
    # The card of learning.skills.skill_card (docs/skill-cards.md): today's figures and
    # every finding with its measured figure and threshold.
    runs: Count = 0  # live runs on as_of
    gate_pass_rate: UnitFloat | None = None
    mean_crl: NonNegativeFloat | None = None
    delta_7d: float | None = None
    delta_30d: float | None = None
    findings: dict[str, list[dict[str, JsonValue]]] = Field(default_factory=dict)
    best_models: list[dict[str, JsonValue]] = Field(default_factory=list)
    experiments: list[dict[str, JsonValue]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    content_hash: Sha256Hex | None = None  # of the card's content, without timestamps

    def record_key(self) -> str:
        """``tenant/doer``: the compacted topic keeps each tenant's card of the doer."""
        return f"{self.tenant_id}/{self.doer}"
