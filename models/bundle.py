"""The learning bundle (topic ``learning.run-completed``) and its parts.

The orchestrator publishes one ``RunCompleted`` when a run completes.  A valid
bundle may still lack what a CRL term needs (``qav``, ``costs``, ``latency``
are optional here); ``learning.crl.terms_from_bundle`` decides what that means.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from models.addresses import holds_email
from models.base import (
    ContractModel,
    Count,
    Event,
    Identifier,
    Name,
    NonNegativeFloat,
    Sha256Hex,
    UnitFloat,
    UTCDatetime,
    Version,
    sha256_hex,
)

Arm = Literal["control", "candidate"]
Origin = Literal["human", "ai-generated", "hybrid"]


class Artifact(ContractModel):
    """One thing a run produced, by content or by content hash (or both, then they must agree)."""

    artifact_id: Identifier
    kind: Identifier
    content: str | None = None
    # sha256 hex of the content encoded as UTF-8.
    content_hash: Sha256Hex | None = None
    origin: Origin
    policy_id: Name | None = None  # the policy that generated it, when one did

    @model_validator(mode="after")
    def _content_or_hash(self) -> Self:
        if self.content is None and self.content_hash is None:
            raise ValueError("needs content or content_hash (or both)")
        if (
            self.content is not None
            and self.content_hash is not None
            and sha256_hex(self.content) != self.content_hash
        ):
            raise ValueError("content_hash is not the sha256 of content (UTF-8)")
        return self


class Gates(ContractModel):
    """Names of the quality gates the run passed and failed; no gate is in both or twice."""

    passed: list[Identifier] = Field(default_factory=list)
    failed: list[Identifier] = Field(default_factory=list)

    @model_validator(mode="after")
    def _disjoint_and_unique(self) -> Self:
        both = sorted(set(self.passed) & set(self.failed))
        if both:
            raise ValueError(f"gate {', '.join(both)} is both passed and failed")
        for name, gates in (("passed", self.passed), ("failed", self.failed)):
            if len(set(gates)) != len(gates):
                repeated = sorted({g for g in gates if gates.count(g) > 1})
                raise ValueError(f"gate {', '.join(repeated)} is listed twice in {name}")
        return self


class QAV(ContractModel):
    """What the quality-assurance verifier measured: grounding, contradictions, RAG coverage."""

    grounding_score: UnitFloat
    contradictions: Count
    claims: Count  # contradiction rate = contradictions / claims
    rag_coverage: UnitFloat | None = None

    @model_validator(mode="after")
    def _contradictions_within_claims(self) -> Self:
        if self.contradictions > self.claims:
            raise ValueError(f"contradictions {self.contradictions} exceed claims {self.claims}")
        return self


class Costs(ContractModel):
    """What the run spent against its budget, in one currency."""

    spent: NonNegativeFloat
    budget: Annotated[float, Field(gt=0)]
    currency: Identifier = "USD"


class Latency(ContractModel):
    """Latency of the run's steps, in milliseconds."""

    p95_ms: NonNegativeFloat
    p50_ms: NonNegativeFloat | None = None
    timeouts: Count = 0

    @model_validator(mode="after")
    def _median_not_above_p95(self) -> Self:
        if self.p50_ms is not None and self.p50_ms > self.p95_ms:
            raise ValueError(f"p50_ms {self.p50_ms:g} is above p95_ms {self.p95_ms:g}")
        return self


class SecurityFinding(ContractModel):
    """One finding of a security scan."""

    finding_id: Identifier
    severity: Literal["critical", "high", "medium", "low", "info"]
    title: str = ""
    location: str | None = None


class Security(ContractModel):
    """Counts of the run's security findings (the counts are the record; findings are detail)."""

    criticals: Count
    highs: Count = 0
    findings: list[SecurityFinding] = Field(default_factory=list)

    @model_validator(mode="after")
    def _findings_within_counts(self) -> Self:
        for severity, count in (("critical", self.criticals), ("high", self.highs)):
            listed = sum(1 for f in self.findings if f.severity == severity)
            if listed > count:
                raise ValueError(f"{listed} {severity} findings listed but the count is {count}")
        return self


class RunCompleted(Event):
    """The learning bundle the orchestrator publishes when a run completes."""

    occurred_at: UTCDatetime  # when the run completed; required, trends bucket on it
    run_id: Identifier
    phase: Name
    policy_id: Name
    policy_version: Version
    tenant_id: Name  # whose run: every sample, dataset and golden dataset is kept per tenant
    deployment_id: Identifier | None = None
    arm: Arm | None = None
    # A mirrored run, scored and never served: a shadow or canary deployment's candidate
    # (arm "candidate"), or, without a deployment, a bandit probe: the active policy run
    # with an option on probation that the allocation asks to probe, under a run id of
    # its own; its options name exactly that parameter and option.
    shadow: bool = False
    replay_id: Identifier | None = None  # replay bundles never count toward live statistics
    model: str | None = None  # the model the doer used
    # The option the run used of each tunable parameter of its policy (models.tunables).
    options: dict[Identifier, Identifier] = Field(default_factory=dict)
    # For each parameter whose option a bandit allocation chose: that allocation's
    # sequence (ParameterAllocation.sequence, learnops.client.Allocations.choice), so
    # the bandit tests the run's guardrail events at the shares it was routed under.
    allocation_sequences: dict[Identifier, Count] = Field(default_factory=dict)
    artifacts: list[Artifact] = Field(default_factory=list)
    gates: Gates
    qav: QAV | None = None
    costs: Costs | None = None
    latency: Latency | None = None
    security: Security
    api_breakages: Count
    db_migration: Literal["ok", "failed", "not_applicable"]
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _routing_is_consistent(self) -> Self:
        if (self.arm is None) != (self.deployment_id is None):
            raise ValueError("arm and deployment_id go together: give both or neither")
        if self.shadow and self.deployment_id is None and len(self.options) != 1:
            raise ValueError(
                "a shadow run without a deployment is a bandit probe: options must name "
                f"exactly the one option it ran, not {len(self.options)}"
            )
        unnamed = sorted(set(self.allocation_sequences) - set(self.options))
        if unnamed:
            raise ValueError(
                f"allocation_sequences name {', '.join(unnamed)}, which options do not: "
                "a sequence goes with the option it chose"
            )
        if self.shadow and self.deployment_id is not None and self.arm != "candidate":
            raise ValueError(
                "a shadow run of a deployment is a candidate run: arm must be 'candidate'"
            )
        return self

    @model_validator(mode="after")
    def _no_address_in_names(self) -> Self:
        # Ids and names are stored and shown in clear (crl_results, fold claims, skill
        # cards, the console, learning.crl-computed), unlike text, which the curator
        # redacts: a new operator's run id, model, gate and option holding addresses
        # reached all of them. The reason names the field, never the value.
        for field, value in self._names():
            if holds_email(value):
                raise ValueError(
                    f"{field} holds an email address: ids and names of a run are stored and "
                    "shown in clear, so they must not carry personal data (use an opaque id)"
                )
        return self

    def _names(self) -> Iterator[tuple[str, str]]:
        """Every id and name of the bundle that is stored or shown as it is."""
        yield "run_id", self.run_id
        if self.deployment_id is not None:
            yield "deployment_id", self.deployment_id
        if self.replay_id is not None:
            yield "replay_id", self.replay_id
        if self.model is not None:
            yield "model", self.model
        for parameter, option in self.options.items():
            yield "options", parameter
            yield f"options.{parameter}", option
        for which, names in (("passed", self.gates.passed), ("failed", self.gates.failed)):
            for name in names:
                yield f"gates.{which}", name
        for i, artifact in enumerate(self.artifacts):
            yield f"artifacts.{i}.artifact_id", artifact.artifact_id
            yield f"artifacts.{i}.kind", artifact.kind
        for i, finding in enumerate(self.security.findings):
            yield f"security.findings.{i}.finding_id", finding.finding_id
        for name in self.metrics:
            yield "metrics", name
