"""The Prometheus alert rules and the Grafana dashboard of deploy/, checked offline.

``promtool`` checks the rules and runs their unit tests (alerts.test.yaml); every
metric of SPEC section 6 is on the dashboard under the name the OpenTelemetry
Collector's Prometheus exporter gives it; compose provisions both.
"""

from __future__ import annotations

import json
import re
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

from tests.deploy_support import COMPOSE_DIR, DEPLOY, ROOT, run, tool, yaml_docs
from tests.telemetry.test_instruments import ALL_SPEC_METRICS

PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "snapshotd.json"
OPERATIONS = ROOT / "docs" / "operations.md"


def _promtool() -> str:
    return tool("promtool", "Debian package prometheus; .ci/run installs it", required_in_ci=True)


def prometheus_name(name: str, kind: type[Any], unit: str) -> str:
    """The name the Collector's Prometheus exporter gives a metric (histograms: the family)."""
    base = name.replace(".", "_") + {"s": "_seconds", "By": "_bytes"}.get(unit, "")
    if kind is Gauge and unit == "1":
        return base + "_ratio"
    return base + "_total" if kind is Sum else base


def _alert_rules() -> list[dict[str, Any]]:
    (doc,) = yaml_docs(PROMETHEUS_DIR / "alerts.yaml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> dict[str, list[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        panel["title"]: [target["expr"] for target in panel["targets"]]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    }


def test_prometheus_names_follow_the_collector() -> None:
    assert prometheus_name("snapshotd.snapshot.taken", Sum, "{snapshot}") == (
        "snapshotd_snapshot_taken_total"
    )
    assert prometheus_name("snapshotd.snapshot.duration", Histogram, "s") == (
        "snapshotd_snapshot_duration_seconds"
    )
    assert prometheus_name("snapshotd.journal.up", Gauge, "1") == "snapshotd_journal_up_ratio"


def test_alert_rules_pass_promtool_check() -> None:
    result = run([_promtool(), "check", "rules", str(PROMETHEUS_DIR / "alerts.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = run([_promtool(), "test", "rules", "alerts.test.yaml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        case["alertname"]
        for test in yaml_docs(PROMETHEUS_DIR / "alerts.test.yaml")[0]["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == {rule["alert"] for rule in _alert_rules()}, "an alert is never seen firing"


def test_prometheus_config_passes_promtool_check() -> None:
    result = run([_promtool(), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_and_a_runbook_in_the_docs() -> None:
    headings = {
        line.removeprefix("#### ").strip().lower()
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#### ")
    }
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["runbook"], rule["alert"]
        anchor = annotations["runbook_url"].rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in headings, f"docs/operations.md has no runbook for {rule['alert']}"


def test_every_spec_metric_is_on_the_dashboard_and_in_a_rule_or_panel() -> None:
    exprs = _dashboard_exprs()
    dashboard_text = "\n".join(e for panel in exprs.values() for e in panel)
    alert_text = "\n".join(rule["expr"] for rule in _alert_rules())
    assert len(ALL_SPEC_METRICS) == 20
    for name, (kind, unit, _extra) in ALL_SPEC_METRICS.items():
        prom = prometheus_name(name, kind, unit)
        assert re.search(
            rf"\b{prom}\b" if kind is not Histogram else rf"\b{prom}_bucket\b", dashboard_text
        ), f"{name} ({prom}) is on no panel"
    for family in ("journal_up", "corruption_found", "requests_dropped", "snapshot_skipped"):
        assert f"snapshotd_{family}" in alert_text, family


def test_dashboard_panels_query_known_metrics_with_the_instance_label() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = [
        (x, y)
        for panel in dashboard["panels"]
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells)), "panels overlap"
    assert all(x < 24 for x, _ in cells)
    known = {prometheus_name(n, k, u) for n, (k, u, _) in ALL_SPEC_METRICS.items()}
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance", "snapshotd_instance"} <= variables
    for title, panel_exprs in _dashboard_exprs().items():
        assert panel_exprs, title
        for expr in panel_exprs:
            names = set(re.findall(r"\bsnapshotd_[a-z_]+", expr)) - {"snapshotd_instance"}
            for metric in names:
                family = re.sub(r"_(bucket|count|sum)$", "", metric)
                assert family in known or family.startswith("snapshotd_savepoints_"), (
                    f"{title}: unknown metric {metric}"
                )
            if names and "snapshotd_connections" not in expr:
                assert 'snapshotd_instance=~"$snapshotd_instance"' in expr, title


def test_compose_provisions_prometheus_and_grafana() -> None:
    (compose,) = yaml_docs(COMPOSE_DIR / "docker-compose.yml")
    services = compose["services"]
    (collector,) = yaml_docs(COMPOSE_DIR / "otel-collector.yaml")
    exporter_port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    (prometheus,) = yaml_docs(PROMETHEUS_DIR / "prometheus.yml")
    (scrape,) = prometheus["scrape_configs"]
    assert scrape["static_configs"][0]["targets"] == [f"otel-collector:{exporter_port}"]
    assert scrape["honor_labels"] is True
    mounts = {
        volume.split(":")[1]: (COMPOSE_DIR / volume.split(":")[0]).resolve()
        for name in ("prometheus", "grafana")
        for volume in services[name]["volumes"]
    }
    assert mounts["/etc/prometheus/alerts.yaml"] == PROMETHEUS_DIR / "alerts.yaml"
    (datasources,) = yaml_docs(mounts["/etc/grafana/provisioning"] / "datasources/prometheus.yaml")
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    (providers,) = yaml_docs(mounts["/etc/grafana/provisioning"] / "dashboards/snapshotd.yaml")
    path = providers["providers"][0]["options"]["path"]
    assert (mounts[path] / DASHBOARD.name).exists()
