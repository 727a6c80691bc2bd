"""What operators install beside the daemon (config/deploy/monitoring/) agrees with Prometheus,
Grafana and the daemon's own metrics.

- `promtool check rules` accepts the rules file and the PrometheusRule's groups, which are the
  same; `promtool test rules` (tests/daemon/alerts_test.yaml) fires every alert from synthetic
  series and has cases where none fires.
- The dashboard is Grafana's JSON model: a schemaVersion, panels each with a type, a position
  and PromQL targets with unique refIds, over the `datasource` variable.
- Every `containerdisks_*` name the dashboard and the rules query exists in `/metrics` of a real
  `serve` that finished a pass (publishing to a real registry from a loopback upstream).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.conftest import Fedora, StartDaemon
from tests.support.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "config" / "deploy" / "monitoring"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yaml")
PROMTOOL = shutil.which("promtool")
NAME = re.compile(r"\bcontainerdisks_[a-z0-9_]+\b")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="Debian's prometheus is not installed")


def rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    return data


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MONITORING / "dashboard.json").read_text())
    return data


def exprs() -> list[str]:
    out = [r["expr"] for g in rules()["groups"] for r in g["rules"]]
    out += [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    return out


def promtool(*args: str | Path) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_checks_the_rules_and_the_prometheusrule_holds_the_same(tmp_path: Path) -> None:
    assert "SUCCESS: 4 rules found" in promtool("check", "rules", MONITORING / "rules.yaml")
    crd = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert ("monitoring.coreos.com/v1", "PrometheusRule") == (crd["apiVersion"], crd["kind"])
    assert rules() == crd["spec"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(crd["spec"]))
    assert "SUCCESS" in promtool("check", "rules", spec)


@needs_promtool
def test_promtool_unit_tests_fire_every_alert_and_silence_where_due() -> None:
    assert "SUCCESS" in promtool("test", "rules", ALERTS_TEST)
    cases = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    evals = [e for case in cases for e in case["alert_rule_test"]]
    alerts = {r["alert"] for g in rules()["groups"] for r in g["rules"]}
    assert alerts == {e["alertname"] for e in evals if e["exp_alerts"]}  # each one fires
    assert alerts == {e["alertname"] for e in evals if not e["exp_alerts"]}  # and stays silent


def test_the_dashboard_is_grafana_json_with_promql_targets() -> None:
    dash = dashboard()
    assert isinstance(dash["schemaVersion"], int)
    assert dash["schemaVersion"] >= 36
    assert dash["title"]
    assert dash["uid"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert ("datasource", "prometheus") == (
        variables["datasource"]["type"], variables["datasource"]["query"]
    )  # fmt: skip
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("pass duration", "outcome", "bytes", "requests", "errors", "retries", "queue"):
        assert topic in titles
    for panel in dash["panels"]:
        assert panel["type"] in ("timeseries", "stat", "table", "bargauge")
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert NAME.search(target["expr"]), target["expr"]


def test_every_metric_the_dashboard_and_rules_name_is_served(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    srv, _, _ = fedora_upstream
    daemon = start_daemon(srv, f"{registry.host}/cd", "--focus", "fedora:40", interval=3600)
    daemon.ready()
    code, body = daemon.get("/metrics")
    assert 200 == code
    served: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "info": ("_info",),
        }.get(family.type, ("",))
        served |= {family.name + s for s in suffixes} | {s.name for s in family.samples}
    named = {name for expr in exprs() for name in NAME.findall(expr)}
    assert len(named) >= 15  # the parse found the queries' names
    assert set() == named - served
    # The run filled what the alerts read: a pass, its interval, readiness.
    samples = daemon.metrics()
    assert 3600.0 == samples[("containerdisks_pass_interval_seconds", ())]
    assert 1.0 == samples[("containerdisks_ready", ())]
    assert samples[("containerdisks_last_pass_timestamp_seconds", ())] > 0
