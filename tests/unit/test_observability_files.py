"""The Grafana dashboard and the alert rules under deploy/observability cannot rot: they parse, the two rule
files say the same, and every metric they name is one the engine exports (`metrics.FAMILIES`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from orchestrator._engine import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
NAME = re.compile(r"\b(orchestrator_[a-z0-9_]+)\b")
OTHER_SERIES = {"up"}  # Prometheus' own: a target that cannot be scraped (exited, fenced, down)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard()["templating"]["list"] if "definition" in v]
    return exprs


def rules(path: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / path).read_text())
    groups = doc["spec"]["groups"] if doc.get("kind") == "PrometheusRule" else doc["groups"]
    return [rule for group in groups for rule in group["rules"]]


def names_in(expr: str) -> set[str]:
    return set(NAME.findall(expr))


def test_every_orchestrator_family_of_the_registry_is_listed() -> None:
    """`FAMILIES` is what the cross-checks trust: a family defined but not listed would escape them."""
    registered = {m.name for m in REGISTRY.collect() if m.name.startswith("orchestrator_")}
    listed = {m.name for family in metrics.FAMILIES for m in family.describe()}
    assert registered == listed


def test_the_dashboard_parses_and_names_only_exported_metrics() -> None:
    board = dashboard()
    assert board["uid"] == "kafka-orchestrator"
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    exported = metrics.exported_names()
    for expr in exprs:
        named = names_in(expr)
        assert named, f"no orchestrator metric in {expr!r}"
        assert named <= exported, f"{expr!r} names {named - exported}, which the engine does not export"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    shown = set().union(*(names_in(e) for e in dashboard_exprs()))
    for needed in (
        "orchestrator_runs_completed_total",
        "orchestrator_runs_failed_total",
        "orchestrator_runs_parked_total",
        "orchestrator_step_duration_seconds_bucket",
        "orchestrator_step_schedule_to_start_seconds_bucket",
        "orchestrator_consumer_lag",
        "orchestrator_transactions_total",
        "orchestrator_timers_due",
        "orchestrator_dead_letters_total",
        "orchestrator_store_bytes",
        "orchestrator_restore_duration_seconds_bucket",
        "orchestrator_worker_steps_in_flight",
        "orchestrator_worker_outbox_records",
    ):
        assert needed in shown, needed


@pytest.mark.parametrize("path", ["alerts.rules.yml", "prometheus-rule.yaml"])
def test_alert_rules_parse_and_name_only_exported_metrics(path: str) -> None:
    exported = metrics.exported_names()
    found = rules(path)
    assert len(found) >= 8
    for rule in found:
        assert rule["alert"].startswith("Orchestrator"), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule
        assert rule["annotations"]["summary"], rule
        named = names_in(rule["expr"])
        others = {n for n in OTHER_SERIES if re.search(rf"\b{n}\{{", rule["expr"])}
        assert named or others, f"{rule['alert']} names no metric"
        assert named <= exported, f"{rule['alert']} names {named - exported}, not exported"


def test_the_prometheus_rule_holds_the_plain_rules() -> None:
    plain = yaml.safe_load((DEPLOY / "alerts.rules.yml").read_text())
    operator = yaml.safe_load((DEPLOY / "prometheus-rule.yaml").read_text())
    assert operator["apiVersion"] == "monitoring.coreos.com/v1"
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"] == plain


def test_the_alerts_cover_what_operators_asked_for() -> None:
    by_metric = set().union(*(names_in(r["expr"]) for r in rules("alerts.rules.yml")))
    for needed in (
        "orchestrator_consumer_lag",  # growing lag
        "orchestrator_runs_parked_total",
        "orchestrator_runs_failed_total",
        "orchestrator_dead_letters_total",
        "orchestrator_last_commit_timestamp_seconds",  # no commit progress
        "orchestrator_timer_next_due_timestamp_seconds",  # old due timers
        "orchestrator_client_replacements_total",  # fenced by timeouts, stuck calls
    ):
        assert needed in by_metric, needed
    assert any("up{" in r["expr"] for r in rules("alerts.rules.yml"))  # exited or fenced instances
