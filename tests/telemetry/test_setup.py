"""Reading OTEL_* settings, the resource, and the bounded shutdown (no global state touched)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

import pytest
from opentelemetry import metrics, trace

from snapshotd.domain.errors import ConfigError
from snapshotd.telemetry import setup
from snapshotd.telemetry.setup import OtlpSettings, build_resource, settings_from_env


def test_no_endpoint_means_no_exporter() -> None:
    settings = settings_from_env({})
    assert settings.metrics_endpoint is None
    assert settings.traces_endpoint is None
    assert settings.metrics_protocol == settings.traces_protocol == "http/protobuf"
    assert settings.metric_interval_ms == 60_000
    assert settings.timeout_s == setup.DEFAULT_EXPORT_TIMEOUT_S


@pytest.mark.parametrize(
    ("env", "metrics_endpoint", "traces_endpoint"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
            "http://collector:4318/v1/metrics",
            "http://collector:4318/v1/traces",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/base/"},
            "http://collector:4318/base/v1/metrics",
            "http://collector:4318/base/v1/traces",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://metrics:9000/custom",
            },
            "http://metrics:9000/custom",
            "http://collector:4318/v1/traces",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/v1/traces"},
            None,
            "http://traces:4318/v1/traces",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            },
            "http://collector:4317",
            "http://collector:4317",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            },
            "http://collector:4317/v1/metrics",
            "http://collector:4317",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_TRACES_EXPORTER": "none",
            },
            "http://collector:4318/v1/metrics",
            None,
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://metrics:9000/custom",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_METRICS_EXPORTER": " None ",
                "OTEL_TRACES_EXPORTER": "otlp",
            },
            None,
            "http://collector:4318/v1/traces",
        ),
    ],
)
def test_endpoints(
    env: dict[str, str], metrics_endpoint: str | None, traces_endpoint: str | None
) -> None:
    settings = settings_from_env(env)
    assert (settings.metrics_endpoint, settings.traces_endpoint) == (
        metrics_endpoint,
        traces_endpoint,
    )


def test_interval_and_timeout_from_env() -> None:
    settings = settings_from_env(
        {"OTEL_METRIC_EXPORT_INTERVAL": "500", "OTEL_EXPORTER_OTLP_TIMEOUT": "2"}
    )
    # The exporter reads a timeout variable itself when one is set.
    assert settings == OtlpSettings("http/protobuf", "http/protobuf", None, None, 500, None)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "OTEL_METRIC_EXPORT_INTERVAL"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, "OTEL_METRIC_EXPORT_INTERVAL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, "OTEL_METRICS_EXPORTER"),
    ],
)
def test_malformed_variables_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        settings_from_env(env)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
        },
    ],
)
def test_setup_installs_nothing_without_endpoint_or_when_disabled(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    meter_provider, tracer_provider = metrics.get_meter_provider(), trace.get_tracer_provider()
    shutdown = setup.setup_telemetry("1.2.3")
    shutdown()
    assert metrics.get_meter_provider() is meter_provider
    assert trace.get_tracer_provider() is tracer_provider


def test_resource_defaults_to_snapshotd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    attributes = build_resource("1.2.3").attributes
    assert attributes["service.name"] == "snapshotd"
    assert attributes["service.version"] == "1.2.3"
    assert attributes["service.instance.id"] == f"{socket.gethostname()}-{os.getpid()}"


def test_resource_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "snapshotd-eu")
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment=prod,team=core,service.instance.id=pod-7",
    )
    attributes = build_resource("1.2.3").attributes
    assert attributes["service.name"] == "snapshotd-eu"
    assert attributes["service.instance.id"] == "pod-7"
    assert attributes["deployment.environment"] == "prod"
    assert attributes["team"] == "core"
    assert attributes["service.version"] == "1.2.3"


def test_bounded_shutdown_neither_blocks_nor_raises() -> None:
    release = threading.Event()
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("exporter exploded")

    def slow() -> None:
        release.wait()
        ran.append("slow")

    shutdown = setup._bounded([broken, slow, lambda: ran.append("quick")], timeout_s=0.2)
    started = time.monotonic()
    shutdown()
    assert time.monotonic() - started < 1.0
    assert ran == ["quick"]
    release.set()


@pytest.mark.parametrize(
    ("module", "build"),
    [
        ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", setup._metric_exporter),
        ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", setup._span_exporter),
    ],
)
def test_grpc_without_the_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, build: Any
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if snapshotd[grpc] were not installed
    settings = settings_from_env(
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    )
    with pytest.raises(ConfigError, match=r"snapshotd\[grpc\]"):
        build(settings, "http://c:4317")
