"""The terms, weights and result of the Composite Run Loss (CRL) of one run.

The formula and the derivation of each term from a learning bundle live in
``learning/crl.py`` and ``docs/crl.md``.  Lower is better; a run that meets
every objective has a loss of 0.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from models.base import ContractModel, Count, Identifier, NonNegativeFloat, UnitFloat

Weight = Annotated[float, Field(ge=0)]


class CRLTerms(ContractModel):
    """The measured terms of one run, each oriented so that the formula is monotone."""

    gate_pass_rate: UnitFloat
    contradiction_rate: UnitFloat
    grounding_score: UnitFloat
    # A fraction, not a percentage and not capped: 0.25 is 25 % over budget,
    # 2.0 is three times the budget.  It is not a rate, so it is not bounded by 1.
    cost_over_budget_pct: NonNegativeFloat
    # p95 latency in excess of the doer's objective, as a fraction of it:
    # max(0, p95 / objective - 1).  0 at or under the objective, unbounded above.
    latency_p95_norm: NonNegativeFloat
    security_criticals: Count
    api_breakages: Count
    db_migration_fail: Annotated[int, Field(ge=0, le=1)]
    rag_coverage: UnitFloat


class CRLWeights(ContractModel):
    """Non-negative weight of each CRL term, and the version that names this set of weights."""

    version: Identifier
    wq: Weight  # 1 - gate_pass_rate
    wg: Weight  # contradiction_rate
    wr: Weight  # 1 - grounding_score
    wc: Weight  # cost_over_budget_pct
    wt: Weight  # latency_p95_norm
    ws: Weight  # security_criticals (per finding)
    wa: Weight  # api_breakages (per breakage)
    wd: Weight  # db_migration_fail
    wrag: Weight  # 1 - rag_coverage


# Why these numbers (see docs/crl.md for the table):
# - Quality and grounding are what a run is for: a run whose gates all fail, or
#   whose claims are all ungrounded, costs 3 each — three times a run that
#   doubles its budget or its latency objective (wc = wt = 1).
# - Contradictions (wg = 2) are a strong quality signal but rarer to measure
#   well, so a little under gates and grounding.
# - Security and breakage are counted per finding and dominate on purpose: one
#   critical finding (ws = 5) outweighs a run that fails every gate, one API
#   breakage (wa = 3) equals it, and a failed database migration (wd = 4) sits
#   between, because it usually blocks a deploy outright.
# - RAG coverage (wrag = 1) matters only for doers that retrieve; it stays light
#   so doers without retrieval are not dominated by it.
DEFAULT_CRL_WEIGHTS = CRLWeights(
    version="default-v1",
    wq=3.0,
    wg=2.0,
    wr=3.0,
    wc=1.0,
    wt=1.0,
    ws=5.0,
    wa=3.0,
    wd=4.0,
    wrag=1.0,
)


class CRLResult(ContractModel):
    """The loss of one run, each term's weighted share of it, and the weights' version."""

    loss: NonNegativeFloat
    contributions: dict[str, NonNegativeFloat]
    weights_version: Identifier
