"""OpenTelemetry SDK set-up from the standard ``OTEL_*`` variables (SPEC section 6).

``setup_telemetry`` is called once by ``snapshotd serve``. It reads the
variables itself (the SDK honours ``OTEL_EXPORTER_OTLP_PROTOCOL`` only in its
auto-configuration, which we do not use), installs the global meter and tracer
providers for the signals that have an endpoint, and returns a shutdown function.
``build_providers`` is the part tests reuse with in-memory readers and exporters.

Exports run on the SDK's own threads with short timeouts and a bounded span
queue, so a dead or slow collector costs dropped telemetry, never a blocked
event loop or unbounded memory.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, ExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from snapshotd.domain.errors import ConfigError
from snapshotd.telemetry.instruments import HISTOGRAM_BUCKETS

Protocol = Literal["http/protobuf", "grpc"]
Signal = Literal["metrics", "traces"]

DEFAULT_SERVICE_NAME = "snapshotd"
DEFAULT_PROTOCOL: Protocol = "http/protobuf"
DEFAULT_METRIC_INTERVAL_MS = 60_000
# The exporters' own default is 10 s per export, retries included; a sidecar should give up sooner.
DEFAULT_EXPORT_TIMEOUT_S = 5.0
SHUTDOWN_TIMEOUT_S = 3.0
BATCH_PROCESSOR_LOGGER = "opentelemetry.sdk._shared_internal"

_install_lock = threading.Lock()
_installed = False


@dataclass(frozen=True)
class OtlpSettings:
    """Where and how to export, as read from the environment.

    An endpoint of ``None`` means that signal is not exported at all.
    ``timeout_s`` is ``None`` when an ``OTEL_EXPORTER_OTLP_*TIMEOUT`` variable
    is set, so the exporter reads it itself.
    """

    metrics_protocol: Protocol
    traces_protocol: Protocol
    metrics_endpoint: str | None
    traces_endpoint: str | None
    metric_interval_ms: int
    timeout_s: float | None


def sdk_disabled(env: Mapping[str, str]) -> bool:
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _protocol(env: Mapping[str, str], signal: Signal) -> Protocol:
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(name, "").strip()
        if not value:
            continue
        if value == "http/protobuf":
            return "http/protobuf"
        if value == "grpc":
            return "grpc"
        raise ConfigError(f"{name}: must be http/protobuf or grpc, got {value!r}")
    return DEFAULT_PROTOCOL


def _exported(env: Mapping[str, str], signal: Signal) -> bool:
    """``OTEL_{TRACES,METRICS}_EXPORTER``: ``otlp`` (the default) or ``none`` (off)."""
    name = f"OTEL_{signal.upper()}_EXPORTER"
    value = env.get(name, "").strip().lower()
    if value in ("", "otlp"):
        return True
    if value == "none":
        return False
    raise ConfigError(f"{name}: must be otlp or none, got {value!r}")


def _endpoint(env: Mapping[str, str], signal: Signal, protocol: Protocol) -> str | None:
    if not _exported(env, signal):
        return None
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if specific:
        return specific
    generic = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not generic:
        return None
    if protocol == "grpc":
        return generic
    return f"{generic.rstrip('/')}/v1/{signal}"


def _interval_ms(env: Mapping[str, str]) -> int:
    raw = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    if not raw:
        return DEFAULT_METRIC_INTERVAL_MS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(
            f"OTEL_METRIC_EXPORT_INTERVAL: must be a positive integer (ms), got {raw!r}"
        )
    return value


def settings_from_env(env: Mapping[str, str]) -> OtlpSettings:
    """Read the exporter settings; raises ConfigError naming a malformed variable.

    A signal whose ``OTEL_<SIGNAL>_EXPORTER`` is ``none`` gets no endpoint.
    """
    metrics_protocol = _protocol(env, "metrics")
    traces_protocol = _protocol(env, "traces")
    timeout_vars = (
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    )
    return OtlpSettings(
        metrics_protocol=metrics_protocol,
        traces_protocol=traces_protocol,
        metrics_endpoint=_endpoint(env, "metrics", metrics_protocol),
        traces_endpoint=_endpoint(env, "traces", traces_protocol),
        metric_interval_ms=_interval_ms(env),
        timeout_s=None if any(env.get(v) for v in timeout_vars) else DEFAULT_EXPORT_TIMEOUT_S,
    )


def build_resource(service_version: str) -> Resource:
    """The resource: ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME`` (default snapshotd).

    ``service.instance.id`` is ``HOSTNAME-PID`` unless ``OTEL_RESOURCE_ATTRIBUTES``
    sets it (rather than a random id some SDK versions add): the Collector's Prometheus
    exporter makes it the ``instance`` label, so two daemons never share a series and
    an operator can tell which host a series comes from.
    """
    detected = Resource.create()
    name = str(detected.attributes.get(SERVICE_NAME, ""))
    if name.startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    if SERVICE_INSTANCE_ID not in OTELResourceDetector().detect().attributes:
        instance_id = f"{socket.gethostname()}-{os.getpid()}"
        detected = detected.merge(Resource({SERVICE_INSTANCE_ID: instance_id}))
    return Resource({SERVICE_VERSION: service_version}).merge(detected)


def histogram_views() -> list[View]:
    """Explicit bucket boundaries per histogram; the SDK's default ones suit milliseconds."""
    return [
        View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(list(bounds)))
        for name, bounds in HISTOGRAM_BUCKETS.items()
    ]


def exemplar_filter(env: Mapping[str, str]) -> ExemplarFilter | None:
    """Exemplars off unless ``OTEL_METRICS_EXEMPLAR_FILTER`` asks (None: the SDK reads it).

    The SDK's default (``trace_based``) offers every measurement taken inside a
    span to a reservoir; each snapshot attempt records three inside its span, and
    that doubled their cost.
    """
    if env.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip():
        return None
    return AlwaysOffExemplarFilter()


def build_providers(
    resource: Resource,
    *,
    metric_readers: Sequence[MetricReader] = (),
    span_processors: Sequence[SpanProcessor] = (),
) -> tuple[MeterProvider, TracerProvider]:
    """Build (not install) the providers; shutdown is left to the caller, not to atexit."""
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=list(metric_readers),
        views=histogram_views(),
        exemplar_filter=exemplar_filter(os.environ),
        shutdown_on_exit=False,
    )
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    return meter_provider, tracer_provider


GRPC_MISSING = (
    "OTEL_EXPORTER_OTLP_PROTOCOL: grpc needs the gRPC exporter, which is not installed: "
    "pip install 'snapshotd[grpc]' (or use http/protobuf)"
)


def _metric_exporter(settings: OtlpSettings, endpoint: str) -> MetricExporter:
    # Exporters are imported on demand: the gRPC stack is slow to import, rarely used,
    # and an optional extra.
    if settings.metrics_protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
        except ImportError:
            raise ConfigError(GRPC_MISSING) from None
        return OTLPMetricExporter(endpoint=endpoint, timeout=settings.timeout_s)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(endpoint=endpoint, timeout=settings.timeout_s)


def _span_exporter(settings: OtlpSettings, endpoint: str) -> SpanExporter:
    if settings.traces_protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(GRPC_MISSING) from None
        return OTLPSpanExporter(endpoint=endpoint, timeout=settings.timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(endpoint=endpoint, timeout=settings.timeout_s)


def _noop() -> None:
    return None


def _bounded(steps: Sequence[Callable[[], object]], timeout_s: float) -> Callable[[], None]:
    """A shutdown function: each step on its own daemon thread, all within ``timeout_s``.

    Metrics and traces flush in parallel, so a collector that is slow on one
    signal does not starve the other; a step still running at the deadline is
    abandoned (its thread is a daemon), and one that raises is ignored.
    """

    def run(step: Callable[[], object]) -> None:
        try:
            step()
        except Exception:  # noqa: BLE001 - shutdown must never raise; telemetry is best effort
            return

    def shutdown() -> None:
        deadline = time.monotonic() + timeout_s
        workers = [
            threading.Thread(target=run, args=(step,), name="snapshotd-otel-shutdown", daemon=True)
            for step in steps
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    return shutdown


def setup_telemetry(service_version: str) -> Callable[[], None]:
    """Install the global SDK providers for the signals with an OTLP endpoint.

    Reads only ``OTEL_*`` variables. With ``OTEL_SDK_DISABLED=true``, or no
    endpoint at all, nothing is installed and the instruments stay no-ops. A
    second call in the same process installs nothing (the OpenTelemetry globals
    can be set once). Raises ConfigError for a malformed variable. The returned
    function flushes and shuts the exporters down within ``SHUTDOWN_TIMEOUT_S``
    and never raises; it does not block on a dead collector for longer.
    """
    global _installed
    env = os.environ
    if sdk_disabled(env):
        return _noop
    settings = settings_from_env(env)
    if settings.metrics_endpoint is None and settings.traces_endpoint is None:
        return _noop
    with _install_lock:
        if _installed:
            return _noop
        _installed = True

    readers: list[MetricReader] = []
    if settings.metrics_endpoint is not None:
        readers.append(
            PeriodicExportingMetricReader(
                _metric_exporter(settings, settings.metrics_endpoint),
                export_interval_millis=settings.metric_interval_ms,
            )
        )
    processors: list[SpanProcessor] = []
    if settings.traces_endpoint is not None:
        # While its queue is full (collector down or slow) the batch processor warns
        # once per dropped span, i.e. once per snapshot attempt: it filters repeats,
        # but only after building each record. The exporter still logs its failures.
        logging.getLogger(BATCH_PROCESSOR_LOGGER).setLevel(logging.ERROR)
        processors.append(
            # Its queue is bounded (OTEL_BSP_MAX_QUEUE_SIZE, default 2048): beyond it spans drop.
            BatchSpanProcessor(_span_exporter(settings, settings.traces_endpoint))
        )
    meter_provider, tracer_provider = build_providers(
        build_resource(service_version), metric_readers=readers, span_processors=processors
    )
    # Each provider's shutdown ends with a last export (metrics: one more
    # collection; spans: what is still queued).
    timeout_ms = int(SHUTDOWN_TIMEOUT_S * 1000)
    steps: list[Callable[[], object]] = []
    if readers:
        metrics.set_meter_provider(meter_provider)
        steps.append(lambda: meter_provider.shutdown(timeout_millis=timeout_ms))
    if processors:
        trace.set_tracer_provider(tracer_provider)
        steps.append(tracer_provider.shutdown)
    return _bounded(steps, SHUTDOWN_TIMEOUT_S)
