"""The Composite Run Loss (CRL) of a run: its terms from a bundle, its weights, its value.

The formula (design.md, "Stable interfaces"; the derivation of each term and
the default weights are tabled in docs/crl.md)::

    L = wq(1 − gate_pass_rate) + wg·contradiction_rate + wr(1 − grounding_score)
      + wc·cost_over_budget_pct + wt·latency_p95_norm + ws·security_criticals
      + wa·api_breakages + wd·db_migration_fail + wrag(1 − rag_coverage)

Every term is oriented so that a worse run has a larger term, and every weight
is non-negative, so the loss never decreases when a run gets worse in one term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from models import ids
from models.base import describe_validation_error
from models.crl import DEFAULT_CRL_WEIGHTS, CRLResult, CRLTerms, CRLWeights
from models.events import CRLComputed, RunCompleted


class BundleError(ValueError):
    """A valid bundle lacks what a CRL term needs; ``reason`` says what, for the DLQ record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CRLConfigError(ValueError):
    """The weights or latency objectives configuration is malformed; the message says where."""


def compute_crl(terms: CRLTerms, weights: CRLWeights | None = None) -> CRLResult:
    """Return the loss of ``terms`` under ``weights`` (default: DEFAULT_CRL_WEIGHTS)."""
    w = weights or DEFAULT_CRL_WEIGHTS
    contributions = {
        "gate_pass_rate": w.wq * (1.0 - terms.gate_pass_rate),
        "contradiction_rate": w.wg * terms.contradiction_rate,
        "grounding_score": w.wr * (1.0 - terms.grounding_score),
        "cost_over_budget_pct": w.wc * terms.cost_over_budget_pct,
        "latency_p95_norm": w.wt * terms.latency_p95_norm,
        "security_criticals": w.ws * terms.security_criticals,
        "api_breakages": w.wa * terms.api_breakages,
        "db_migration_fail": w.wd * terms.db_migration_fail,
        "rag_coverage": w.wrag * (1.0 - terms.rag_coverage),
    }
    # fsum is correctly rounded (Python docs, math.fsum), so the loss does not
    # depend on the order of the terms.
    return CRLResult(
        loss=math.fsum(contributions.values()),
        contributions=contributions,
        weights_version=w.version,
    )


@dataclass(frozen=True)
class LatencyObjectives:
    """Target p95 latency of a run in milliseconds, globally and per doer."""

    # One minute: a placeholder for doers nobody has set an objective for;
    # configure real ones per doer.
    default_ms: float = 60_000.0
    per_doer: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for where, ms in [("default_ms", self.default_ms), *self.per_doer.items()]:
            if not (isinstance(ms, int | float) and math.isfinite(ms) and ms > 0):
                raise CRLConfigError(f"latency objective {where}: {ms!r} is not a positive number")

    def for_doer(self, doer: str) -> float:
        """Return the doer's objective, or the default when it has none."""
        return self.per_doer.get(doer, self.default_ms)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyObjectives:
        """Return objectives from ``{"default_ms": 60000, "per_doer": {"PRDWriter": 90000}}``."""
        unknown = set(data) - {"default_ms", "per_doer"}
        if unknown:
            raise CRLConfigError(f"latency objectives: unknown keys {sorted(unknown)}")
        return cls(
            default_ms=data.get("default_ms", cls.default_ms),
            per_doer=dict(data.get("per_doer") or {}),
        )


@dataclass(frozen=True)
class WeightBook:
    """The CRL weights to use for each doer: a default set and per-doer overrides."""

    default: CRLWeights = DEFAULT_CRL_WEIGHTS
    per_doer: Mapping[str, CRLWeights] = field(default_factory=dict)

    def for_doer(self, doer: str) -> CRLWeights:
        """Return the doer's weights, or the default set when it has none."""
        return self.per_doer.get(doer, self.default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WeightBook:
        """Return a book from parsed YAML/JSON content.

        ``{"default": {...}, "per_doer": {"PRDWriter": {...}}}``.  Each set
        names its ``version`` (required, so every result says which weights
        made it); weights it leaves out are taken from the default set, and the
        default set's from DEFAULT_CRL_WEIGHTS.
        """
        unknown = set(data) - {"default", "per_doer"}
        if unknown:
            raise CRLConfigError(f"weights: unknown keys {sorted(unknown)}")
        default = DEFAULT_CRL_WEIGHTS
        if data.get("default") is not None:
            default = _weights("default", data["default"], DEFAULT_CRL_WEIGHTS)
        per_doer = {
            str(doer): _weights(f"per_doer.{doer}", entry, default)
            for doer, entry in (data.get("per_doer") or {}).items()
        }
        return cls(default=default, per_doer=per_doer)


def _weights(where: str, entry: Any, base: CRLWeights) -> CRLWeights:
    if not isinstance(entry, Mapping) or "version" not in entry:
        raise CRLConfigError(f"weights {where}: must be a mapping with a version")
    try:
        return CRLWeights.model_validate({**base.model_dump(), **entry})
    except ValidationError as exc:
        raise CRLConfigError(f"weights {where}: {describe_validation_error(exc)}") from None


def terms_from_bundle(bundle: RunCompleted, objectives: LatencyObjectives) -> CRLTerms:
    """Return the CRL terms of a bundle; raises ``BundleError`` when a term cannot be derived.

    - gate_pass_rate = passed / (passed + failed); no gate at all is a BundleError.
    - contradiction_rate = qav.contradictions / qav.claims; 0 when there are no claims.
    - grounding_score = qav.grounding_score; a bundle without qav is a BundleError.
    - cost_over_budget_pct = max(0, spent − budget) / budget; without costs, BundleError.
    - latency_p95_norm = max(0, p95_ms / objective − 1), objective from ``objectives``
      for the doer; without latency, BundleError.
    - security_criticals, api_breakages: the bundle's counts.
    - db_migration_fail = 1 if db_migration is "failed", else 0 ("ok", "not_applicable").
    - rag_coverage = qav.rag_coverage; 1 (no gap) when the bundle does not report it,
      because doers that do not retrieve have nothing to cover.
    """
    passed, failed = len(bundle.gates.passed), len(bundle.gates.failed)
    if passed + failed == 0:
        raise BundleError("gates: no gate passed or failed, so gate_pass_rate is undefined")
    if bundle.qav is None:
        raise BundleError("qav is missing, so grounding_score and contradiction_rate are unknown")
    if bundle.costs is None:
        raise BundleError("costs is missing, so cost_over_budget_pct is unknown")
    if bundle.latency is None:
        raise BundleError("latency is missing, so latency_p95_norm is unknown")
    qav, costs = bundle.qav, bundle.costs
    objective_ms = objectives.for_doer(bundle.doer)
    try:
        return CRLTerms(
            gate_pass_rate=passed / (passed + failed),
            contradiction_rate=qav.contradictions / qav.claims if qav.claims else 0.0,
            grounding_score=qav.grounding_score,
            cost_over_budget_pct=max(0.0, costs.spent - costs.budget) / costs.budget,
            latency_p95_norm=max(0.0, bundle.latency.p95_ms / objective_ms - 1.0),
            security_criticals=bundle.security.criticals,
            api_breakages=bundle.api_breakages,
            db_migration_fail=1 if bundle.db_migration == "failed" else 0,
            rag_coverage=1.0 if qav.rag_coverage is None else qav.rag_coverage,
        )
    except ValidationError as exc:
        # Only extreme inputs get here, e.g. a tiny budget that overflows the ratio.
        raise BundleError(f"terms: {describe_validation_error(exc)}") from None


def score_bundle(
    bundle: RunCompleted, weights: WeightBook, objectives: LatencyObjectives
) -> CRLComputed:
    """Return the CRLComputed event of a bundle; raises ``BundleError`` as terms_from_bundle.

    The event id is derived from the bundle's (uuid5), so scoring a redelivered
    bundle again yields the same id and downstream writes stay idempotent.

    Every field comes from a validated bundle or from compute_crl, so the event
    is constructed without validating it again (a third of the stage's CPU per
    run); tests/unit/test_crl.py validates what this returns.
    """
    terms = terms_from_bundle(bundle, objectives)
    doer_weights = weights.for_doer(bundle.doer)
    result = compute_crl(terms, doer_weights)
    return CRLComputed.model_construct(
        schema_version=1,
        occurred_at=datetime.now(UTC),
        event_id=ids.crl_event_id(bundle.event_id, doer_weights.version),
        doer=bundle.doer,
        source_event_id=bundle.event_id,
        run_occurred_at=bundle.occurred_at,
        run_id=bundle.run_id,
        phase=bundle.phase,
        policy_id=bundle.policy_id,
        policy_version=bundle.policy_version,
        tenant_id=bundle.tenant_id,
        deployment_id=bundle.deployment_id,
        arm=bundle.arm,
        shadow=bundle.shadow,
        replay_id=bundle.replay_id,
        model=bundle.model,
        options=dict(bundle.options),
        allocation_sequences=dict(bundle.allocation_sequences),
        terms=terms,
        loss=result.loss,
        contributions=result.contributions,
        weights_version=result.weights_version,
        gate_failures=list(bundle.gates.failed),
        security_criticals=terms.security_criticals,
        # terms_from_bundle refused a bundle without latency.
        latency_p95_ms=bundle.latency.p95_ms if bundle.latency else None,
        timeouts=bundle.latency.timeouts if bundle.latency else 0,
    )
