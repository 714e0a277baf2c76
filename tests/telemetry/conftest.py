"""In-memory OpenTelemetry providers installed globally, once per test process, and
helpers recording whole snapshot attempts.

The instruments bind to the global providers, which can be set only once, so
the session installs providers built by ``setup.build_providers`` (the same
function ``setup_telemetry`` uses) with an in-memory reader and exporter.
Delta temporality plus a collect before each test gives every test only its
own measurements.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import structlog
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, Histogram, ObservableCounter, ObservableGauge
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    Metric,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from snapshotd.telemetry.instruments import InstanceTelemetry
from snapshotd.telemetry.setup import build_providers


@dataclass
class Captured:
    """What the instruments recorded during one test."""

    reader: InMemoryMetricReader
    spans: InMemorySpanExporter

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        found: dict[str, Metric] = {}
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found

    def finished_spans(self) -> tuple[ReadableSpan, ...]:
        return self.spans.get_finished_spans()


@pytest.fixture(scope="session")
def _providers() -> Iterator[Captured]:
    delta = AggregationTemporality.DELTA
    reader = InMemoryMetricReader(
        preferred_temporality={
            Counter: delta,
            Histogram: delta,
            ObservableCounter: delta,
            ObservableGauge: delta,
        }
    )
    exporter = InMemorySpanExporter()
    meter_provider, tracer_provider = build_providers(
        Resource({"service.name": "snapshotd-test"}),
        metric_readers=[reader],
        span_processors=[SimpleSpanProcessor(exporter)],
    )
    metrics.set_meter_provider(meter_provider)
    trace.set_tracer_provider(tracer_provider)
    if metrics.get_meter_provider() is not meter_provider:
        pytest.fail("another meter provider was installed earlier in this test process")
    if trace.get_tracer_provider() is not tracer_provider:
        pytest.fail("another tracer provider was installed earlier in this test process")
    yield Captured(reader, exporter)
    # Later tests in this process then record into shut-down providers: nothing accumulates.
    meter_provider.shutdown()
    tracer_provider.shutdown()


@pytest.fixture
def otel(_providers: Captured) -> Captured:
    _providers.reader.get_metrics_data()
    _providers.spans.clear()
    return _providers


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def record_taken(
    tel: InstanceTelemetry, run_id: str, *, kind: str = "auto", through_seq: int = 10
) -> str | None:
    """A taken attempt in its own span, as the runtime records one; returns the trace id."""
    with tel.snapshot_span(run_id) as span:
        tel.taken(
            span,
            run_id=run_id,
            kind=kind,
            through_seq=through_seq,
            size_bytes=300,
            events_folded=through_seq,
            duration_s=0.003,
        )
        return span.trace_id()


def record_skipped(
    tel: InstanceTelemetry,
    run_id: str,
    reason: str,
    *,
    error: BaseException | None = None,
    through_seq: int | None = None,
) -> None:
    """A skipped attempt in its own span, as the runtime records one."""
    with tel.snapshot_span(run_id) as span:
        tel.skipped(
            span,
            run_id=run_id,
            reason=reason,
            duration_s=0.001,
            error=error,
            through_seq=through_seq,
        )
