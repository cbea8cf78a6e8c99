"""deploy/grafana: the provisioned dashboard charts only metrics a worker serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
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


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\blearnops_[a-z_]+", expr))


def test_every_alert_rule_parses_and_uses_only_served_metrics() -> None:
    import promql_parser
    import yaml

    rules = [
        rule
        for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    assert len(rules) >= 8
    served = _served() | {f"{name}_total" for name in _served()}
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises ValueError on bad PromQL
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        names = {n.removesuffix("_bucket") for n in _metric_names(rule["expr"])}
        assert names <= served, (rule["alert"], sorted(names - served))
    used = {name for rule in rules for name in _metric_names(rule["expr"])}
    # The alerts that matter most to on-call are there.
    for metric in ("learnops_stage_halted", "learnops_consumer_lag", "learnops_dead_letters_total"):
        assert metric in used, metric
    assert any('up{job="learnops-worker"}' in rule["expr"] for rule in rules)


def test_prometheus_loads_the_alert_rules_in_compose() -> None:
    import yaml

    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes


def test_promql_with_a_mistake_is_refused() -> None:
    # The parse above would not catch anything if the parser accepted everything.
    import promql_parser

    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum by (stage rate(learnops_events_in_total[5m])")
