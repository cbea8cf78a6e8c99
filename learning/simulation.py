"""A simulated orchestrator: realistic learning bundles and realistic bad input, seeded.

The demo, the integration tests and the benchmarks draw from the same source,
so what the demo shows is what the tests check and the benchmarks measure.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson

from models.events import RunCompleted

DOERS = ("PRDWriter", "CodeReviewer", "TestWriter", "SchemaMigrator", "RAGAnswerer")
PHASES = ("plan", "draft", "review", "finalize")
GATES = ("spec_complete", "lint_clean", "tests_pass", "no_secrets", "schema_valid", "cites_sources")
MODELS = ("model-a-large", "model-b-medium", "model-c-small")
_WORDS = tuple(
    "the service shall expose an endpoint that returns the order history for a customer "
    "with pagination and a stable sort by creation time retries are idempotent and the "
    "schema migration adds an index on customer id before the backfill completes".split(" ")
)


@dataclass
class Orchestrator:
    """Generates bundles for a few doers; ``quality`` per policy id shifts their loss."""

    seed: int = 7
    doers: tuple[str, ...] = DOERS
    tenant_id: str = "acme"
    start: datetime = field(default_factory=lambda: datetime(2026, 11, 1, tzinfo=UTC))
    quality: dict[str, float] = field(default_factory=dict)
    # Run ids are "<run_prefix>-<n>"; give each scenario its own prefix when
    # several share a topic, since run ids are unique across the system.
    run_prefix: str = ""

    def __post_init__(self) -> None:
        self.run_prefix = self.run_prefix or f"run-{self.seed}"
        self._rng = np.random.default_rng(self.seed)
        self._run = 0

    def policy_of(self, doer: str) -> tuple[str, int]:
        """The (policy_id, version) a doer runs under unless told otherwise."""
        return f"{doer.lower()}-policy", 1

    def bundle(
        self,
        doer: str | None = None,
        *,
        occurred_at: datetime | None = None,
        policy: tuple[str, int] | None = None,
        deployment_id: str | None = None,
        arm: str | None = None,
        shadow: bool = False,
        quality: float | None = None,
    ) -> RunCompleted:
        """One plausible bundle (about 1 KB as JSON)."""
        rng = self._rng
        self._run += 1
        doer = doer or self.doers[int(rng.integers(len(self.doers)))]
        policy_id, version = policy or self.policy_of(doer)
        q = quality if quality is not None else self.quality.get(policy_id, 0.8)
        # Better policies (higher q) pass more gates, ground better, cost less.
        failed = [g for g in GATES[:4] if rng.random() > 0.55 + 0.45 * q]
        passed = [g for g in GATES[:4] if g not in failed]
        claims = int(rng.integers(5, 40))
        words = rng.choice(_WORDS, size=int(rng.integers(40, 70)))
        content = " ".join(words)
        when = occurred_at or self.start + timedelta(seconds=self._run * 17)
        run_id = f"{self.run_prefix}-{self._run:08d}"
        return RunCompleted.model_validate(
            {
                # Unique per run across scenarios (the seed alone would repeat ids).
                "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"learnops:{run_id}")),
                "occurred_at": when.isoformat(),
                "run_id": run_id,
                "doer": doer,
                "phase": PHASES[int(rng.integers(len(PHASES)))],
                "policy_id": policy_id,
                "policy_version": version,
                "tenant_id": self.tenant_id,
                "deployment_id": deployment_id,
                "arm": arm,
                "shadow": shadow,
                "model": MODELS[int(rng.integers(len(MODELS)))],
                "artifacts": [
                    {
                        "artifact_id": f"a-{self._run}-1",
                        "kind": "document",
                        "content": content,
                        "origin": "ai-generated",
                        "policy_id": policy_id,
                    },
                    {
                        "artifact_id": f"a-{self._run}-2",
                        "kind": "diff",
                        "content_hash": hashlib.sha256(rng.bytes(32)).hexdigest(),
                        "origin": "hybrid",
                    },
                ],
                "gates": {"passed": passed, "failed": failed},
                "qav": {
                    "grounding_score": float(np.clip(rng.normal(0.6 + 0.35 * q, 0.08), 0, 1)),
                    "contradictions": int(rng.binomial(claims, 0.25 * (1 - q))),
                    "claims": claims,
                    "rag_coverage": float(np.clip(rng.normal(0.5 + 0.45 * q, 0.1), 0, 1)),
                },
                "costs": {
                    "spent": float(max(0.0, rng.normal(1.0 - 0.3 * q, 0.25))),
                    "budget": 1.0,
                },
                "latency": {
                    "p95_ms": float(max(50.0, rng.normal(9000 - 4000 * q, 1500))),
                    "p50_ms": 40.0,
                    "timeouts": int(rng.random() < 0.05 * (1 - q)),
                },
                "security": {"criticals": int(rng.random() < 0.03 * (1 - q)), "highs": 0},
                "api_breakages": int(rng.random() < 0.05 * (1 - q)),
                "db_migration": "not_applicable"
                if doer != "SchemaMigrator"
                else ("failed" if rng.random() > 0.9 + 0.1 * q else "ok"),
                "metrics": {"tokens_in": float(rng.integers(500, 5000))},
            }
        )

    def bundles(self, n: int, **kwargs: object) -> Iterator[RunCompleted]:
        """``n`` bundles in time order."""
        for _ in range(n):
            yield self.bundle(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BadInput:
    """A malformed message, with the kind of fault it carries."""

    key: bytes
    value: bytes
    fault: str  # "json" | "schema" | "nan" | "key"


def bad_inputs(orchestrator: Orchestrator, n: int) -> list[BadInput]:
    """``n`` malformed messages cycling through the faults a real producer makes."""
    out: list[BadInput] = []
    for i in range(n):
        good = orchestrator.bundle()
        record = good.model_dump(mode="json")
        kind = i % 4
        if kind == 0:
            value = good.to_json()[: 40 + i % 50]  # truncated JSON
            out.append(BadInput(good.doer.encode(), value, "json"))
        elif kind == 1:
            record["qav"]["grounding_score"] = 1.4  # out of range
            out.append(BadInput(good.doer.encode(), orjson.dumps(record), "schema"))
        elif kind == 2:
            raw = orjson.dumps(record).replace(b'"budget":1.0', b'"budget":NaN')
            out.append(BadInput(good.doer.encode(), raw, "nan"))
        else:
            out.append(BadInput(b"SomeoneElse", good.to_json(), "key"))
    return out
