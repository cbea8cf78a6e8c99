"""A seeded corpus of simulated bundles and a digest of everything curating it gives.

Test data, not product code: ``tests/unit/test_curation_equivalence.py`` checks
the digest against the one recorded before the curator's hot path was
optimised, and ``bench/curation_pipeline.py`` times the same bundles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from learning.contamination import ContaminationAlertRule
from learning.samples import CurationConfig, DoerCuration, PreparedBundle
from learnops.simulation.orchestrator import NoteMix, Orchestrator
from models.events import RunCompleted

# As `learnops demo simulate` builds them: one doer's notes mostly duplicates and copies.
_CONTAMINATED = NoteMix(duplicate=0.3, near_duplicate=0.2, self_loop=0.2)
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
#: A low alert bar, so that contamination alerts fire within a few hundred bundles.
ALERTING = CurationConfig(alert=ContaminationAlertRule(max_rate=0.2, min_count=30))


def corpus(runs: int = 500, seed: int = 11) -> Iterator[RunCompleted]:
    """Bundles of five doers over 14 days with human notes, every 40th one a shadow run."""
    orchestrator = Orchestrator(seed=seed, run_prefix="equiv")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    step = timedelta(days=14) / runs
    for i in range(runs):
        doer = orchestrator.doers[i % len(orchestrator.doers)]
        mix, phase = (_CONTAMINATED, "draft") if doer == "TestWriter" else (NoteMix(), None)
        shadow = i % 40 == 39
        yield orchestrator.bundle(
            doer,
            occurred_at=start + step * i,
            notes=mix,
            phase=phase,
            shadow=shadow,
            deployment_id="d-1" if shadow else None,
            arm="candidate" if shadow else None,
        )


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _timeless(alert: dict[str, Any] | None) -> dict[str, Any] | None:
    # An alert is stamped with the wall clock when it is made: the one field left out.
    return alert and {k: v for k, v in alert.items() if k != "occurred_at"}


def curate_corpus(
    bundles: list[RunCompleted],
    config: CurationConfig = ALERTING,
    prepare: Callable[[RunCompleted], PreparedBundle | None] = lambda _: None,
) -> tuple[str, dict[str, int]]:
    """The digest of every output of curating ``bundles`` (each 25th twice), and what was seen.

    What was seen counts the verdicts (by reason) and the samples that came with an alert.
    ``prepare`` gives each bundle's prepared text (None: curate computes it).
    """
    states: dict[str, DoerCuration] = {}
    stored: dict[tuple[str, str], dict[str, Any]] = {}
    digest = hashlib.sha256()
    verdicts: dict[str, int] = {}
    redelivered = [b for i, b in enumerate(bundles) if i % 25 == 24]
    for bundle in bundles + redelivered:
        state = states.setdefault(bundle.doer, DoerCuration(bundle.doer, config, curator="c-1"))

        def previous(sample: str, doer: str = bundle.doer) -> dict[str, Any] | None:
            return stored.get((doer, sample))

        curation = state.curate(bundle, now=NOW, previous=previous, prepared=prepare(bundle))
        digest.update(_json([curation.skipped, curation.own_outputs]))
        for sample in curation.samples:
            digest.update(sample.event.to_json())
            record = sample.record and {**sample.record, "alert": _timeless(sample.record["alert"])}
            digest.update(_json(record))
            digest.update(
                _json(_timeless(sample.alert.model_dump(mode="json") if sample.alert else None))
            )
            if sample.record is not None:
                stored[(bundle.doer, sample.event.sample_id)] = sample.record
            verdict = sample.event.reject_reason or "accepted"
            for seen in [verdict.split(":", 1)[0]] + (["alert"] if sample.alert else []):
                verdicts[seen] = verdicts.get(seen, 0) + 1
    for doer, state in sorted(states.items()):
        digest.update(_json([doer, {k: v.to_dict() for k, v in state.stats().items()}]))
    return digest.hexdigest(), verdicts
