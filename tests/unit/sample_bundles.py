"""A valid learning bundle to start tests from, as a JSON-ready dict or a model."""

from __future__ import annotations

import copy
from typing import Any

from models.events import RunCompleted

_BUNDLE: dict[str, Any] = {
    "occurred_at": "2026-03-01T12:00:00Z",
    "doer": "PRDWriter",
    "run_id": "run-1",
    "phase": "prd",
    "policy_id": "prd-policy",
    "policy_version": 3,
    "tenant_id": "acme",
    "artifacts": [
        {"artifact_id": "a1", "kind": "prd", "content": "# PRD", "origin": "ai-generated"}
    ],
    "gates": {"passed": ["lint", "schema", "tests"], "failed": ["review"]},
    "qav": {"grounding_score": 0.8, "contradictions": 1, "claims": 10, "rag_coverage": 0.9},
    "costs": {"spent": 1.5, "budget": 1.0, "currency": "USD"},
    "latency": {"p95_ms": 90_000.0, "p50_ms": 30_000.0, "timeouts": 0},
    "security": {"criticals": 1, "highs": 2},
    "api_breakages": 2,
    "db_migration": "failed",
    "metrics": {"tokens": 1234.0},
}


def bundle_dict(**overrides: Any) -> dict[str, Any]:
    """Return a fresh valid bundle dict with top-level ``overrides`` applied (None removes)."""
    data = copy.deepcopy(_BUNDLE)
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def make_bundle(**overrides: Any) -> RunCompleted:
    """Return a valid RunCompleted with top-level ``overrides`` applied (None removes)."""
    return RunCompleted.model_validate(bundle_dict(**overrides))
