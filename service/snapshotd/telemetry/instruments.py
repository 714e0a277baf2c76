"""Metric instruments and per-instance recording helpers (names, units: SPEC section 6).

Instruments are created through the OpenTelemetry API at import; they bind to
whatever meter provider start-up installs (none: they record nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, Status, StatusCode

_meter = metrics.get_meter("snapshotd")
_tracer = trace.get_tracer("snapshotd")
_log = structlog.get_logger("snapshotd.snapshot")

DURATION_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)

TAKEN = _meter.create_counter("snapshotd.snapshot.taken", unit="{snapshot}")
SKIPPED = _meter.create_counter("snapshotd.snapshot.skipped", unit="{snapshot}")
DURATION = _meter.create_histogram(
    "snapshotd.snapshot.duration",
    unit="s",
    explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
)
SIZE = _meter.create_histogram("snapshotd.snapshot.size", unit="By")
EVENTS = _meter.create_histogram("snapshotd.snapshot.events", unit="{event}")
PRUNED = _meter.create_counter("snapshotd.snapshot.pruned", unit="{snapshot}")
RECEIVED = _meter.create_counter("snapshotd.requests.received", unit="{request}")
REJECTED = _meter.create_counter("snapshotd.requests.rejected", unit="{request}")
DROPPED = _meter.create_counter("snapshotd.requests.dropped", unit="{request}")
COALESCED = _meter.create_counter("snapshotd.requests.coalesced", unit="{request}")
RESTARTS = _meter.create_counter("snapshotd.actor.restarts", unit="{restart}")
LAG = _meter.create_histogram("snapshotd.run.lag", unit="{event}")

_depth_sources: dict[str, Callable[[], int]] = {}


def _observe_depth(_options: CallbackOptions) -> Iterable[Observation]:
    # Runs on the exporter's thread: read plain ints only, never touch the loop.
    return [Observation(read(), {"instance": name}) for name, read in list(_depth_sources.items())]


_meter.create_observable_gauge(
    "snapshotd.queue.depth", callbacks=[_observe_depth], unit="{request}"
)


def rejected(code: str, instance: str = "-") -> None:
    """Count a rejected request; ``instance`` is ``-`` when the request was unreadable."""
    REJECTED.add(1, {"instance": instance, "code": code})


@dataclass
class SnapshotSpan:
    """The open ``snapshot`` span of one attempt."""

    span: Span
    attributes: dict[str, Any] = field(default_factory=dict)

    def set(self, **attributes: Any) -> None:
        for key, value in attributes.items():
            self.span.set_attribute(f"snapshotd.{key}", value)

    def trace_id(self) -> str | None:
        ctx = self.span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None


@dataclass
class InstanceTelemetry:
    """Recording helpers bound to one instance (every metric carries ``instance``)."""

    instance: str

    def __post_init__(self) -> None:
        self._attrs = {"instance": self.instance}

    def watch_queue_depth(self, read: Callable[[], int]) -> None:
        _depth_sources[self.instance] = read

    def forget(self) -> None:
        _depth_sources.pop(self.instance, None)

    def received(self, op: str) -> None:
        RECEIVED.add(1, {"instance": self.instance, "op": op})

    def rejected(self, code: str) -> None:
        rejected(code, self.instance)

    def dropped(self) -> None:
        DROPPED.add(1, self._attrs)

    def coalesced(self) -> None:
        COALESCED.add(1, self._attrs)

    def restarted(self) -> None:
        RESTARTS.add(1, self._attrs)

    def lag(self, events: int) -> None:
        LAG.record(events, self._attrs)

    def pruned(self, count: int) -> None:
        if count:
            PRUNED.add(count, self._attrs)

    @contextmanager
    def snapshot_span(self, run_id: str) -> Iterator[SnapshotSpan]:
        with _tracer.start_as_current_span(
            "snapshot", attributes={"snapshotd.run_id": run_id, "instance": self.instance}
        ) as span:
            yield SnapshotSpan(span)

    def taken(
        self,
        span: SnapshotSpan,
        *,
        run_id: str,
        kind: str,
        through_seq: int,
        size_bytes: int,
        events_folded: int,
        duration_s: float,
    ) -> None:
        TAKEN.add(1, {"instance": self.instance, "kind": kind})
        DURATION.record(duration_s, {"instance": self.instance, "outcome": "taken"})
        SIZE.record(size_bytes, self._attrs)
        EVENTS.record(events_folded, self._attrs)
        span.set(through_seq=through_seq, outcome="taken")
        _log.info(
            "snapshot_taken",
            run_id=run_id,
            instance=self.instance,
            kind=kind,
            reason=None,
            through_seq=through_seq,
            size_bytes=size_bytes,
            events=events_folded,
            duration_s=round(duration_s, 6),
            trace_id=span.trace_id(),
        )

    def skipped(
        self,
        span: SnapshotSpan,
        *,
        run_id: str,
        reason: str,
        duration_s: float,
        error: BaseException | None = None,
        through_seq: int | None = None,
    ) -> None:
        SKIPPED.add(1, {"instance": self.instance, "reason": reason})
        DURATION.record(duration_s, {"instance": self.instance, "outcome": "skipped"})
        span.set(outcome="skipped", reason=reason)
        if through_seq is not None:
            span.set(through_seq=through_seq)
        if error is not None:
            span.span.record_exception(error)
            span.span.set_status(Status(StatusCode.ERROR, str(error)))
        log = _log.warning if error is not None else _log.info
        log(
            "snapshot_skipped",
            run_id=run_id,
            instance=self.instance,
            reason=reason,
            error=None if error is None else f"{type(error).__name__}: {error}",
            duration_s=round(duration_s, 6),
            trace_id=span.trace_id(),
        )


def instance_telemetry(instance: str) -> InstanceTelemetry:
    return InstanceTelemetry(instance)
