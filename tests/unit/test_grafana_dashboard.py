"""deploy/grafana: the provisioned dashboard charts only metrics a worker serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

# Each registers its metrics on import.
import agents.dlq
import agents.health
import agents.notify
import agents.stage  # noqa: F401
import storage.pool  # noqa: F401

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _served() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_learnops_metric_in_the_dashboard_is_served() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "learnops.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\blearnops_[a-z_]+", expr)}
    assert used, "the dashboard charts no learnops metric"
    # Labelled metrics appear once a sample exists; their families are registered already.
    served = _served() | {f"{name}_total" for name in _served()}
    missing = {name for name in used if name not in served and not name.endswith("_bucket")}
    missing |= {
        name
        for name in used
        if name.endswith("_bucket") and name.removesuffix("_bucket") not in served
    }
    assert not missing, f"charted but not served: {sorted(missing)}"


def test_prometheus_scrapes_the_workers_metrics_path() -> None:
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in text
    assert '"worker:6066"' in text
