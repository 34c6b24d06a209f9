"""Prometheus rules (promtool check + unit tests) and the Grafana dashboard: valid PromQL, and
only metric names the service exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import Metrics
from tests.observability.conftest import promtool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/gpt2-serve-rules.yml"
RULES_TEST = ROOT / "deploy/prometheus/tests/rules_test.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/gpt2-serve.json"
# A metric name not preceded by ":" or a word character (so not inside a recording rule's name).
METRIC = re.compile(r"(?<![:\w])gpt2_[a-z0-9_]+")


def _exported() -> set[str]:
    text = generate_latest(Metrics([0.1, 1.0], max_queued_requests=8).registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def _names(exprs: list[str]) -> set[str]:
    return {m for expr in exprs for m in METRIC.findall(expr)}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_promtool_checks_every_rules_file() -> None:
    tool = promtool()
    files = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
    result = subprocess.run(
        [tool, "check", "rules", *map(str, files)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    tool = promtool()
    result = subprocess.run(
        [tool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_the_service_needs_exist() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert {
        "GPT2HighTimeToFirstToken",
        "GPT2QueueNearlyFull",
        "GPT2RejectingRequests",
        "GPT2KVCacheNearlyFull",
        "GPT2WorkerRestarted",
        "GPT2WorkerDown",
        "GPT2FailureRateHigh",
        "GPT2NoReadyReplica",
        "GPT2TargetDown",
    } <= alerts
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert alerts <= tested, f"alerts without a unit test: {alerts - tested}"


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = _exported()
    used = _names([rule["expr"] for rule in _rules()]) | _names(_dashboard_exprs())
    unknown = {name for name in used if name not in exported}
    assert not unknown, f"not exported by app/metrics.py: {sorted(unknown)}"


def test_dashboard_shows_what_operators_need() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "gpt2-serve" and dash["title"] and dash["panels"]
    used = _names(_dashboard_exprs())
    for name in (
        "gpt2_generation_tokens_total",  # tokens/s
        "gpt2_request_success_total",  # requests/s
        "gpt2_time_to_first_token_seconds_bucket",
        "gpt2_inter_token_latency_seconds_bucket",
        "gpt2_num_requests_waiting",
        "gpt2_batch_size",
        "gpt2_kv_cache_usage_perc",
        "gpt2_request_failure_total",
        "gpt2_worker_restarts_total",
    ):
        assert name in used, name
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "prometheus"  # the provisioned data source


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (Grafana's variables filled in) as a recording rule."""
    tool = promtool()
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$instance", ".*"),
        }
        for i, expr in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", [RULES, RULES_TEST])
def test_yaml_files_parse(path: Path) -> None:
    assert yaml.safe_load(path.read_text())
