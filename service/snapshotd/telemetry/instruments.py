"""Metric instruments and per-instance recording helpers (names, units: SPEC section 6).

Instruments are created through the OpenTelemetry API at import; they bind to
whatever meter provider start-up installs (none: they record nothing).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, Status, StatusCode

from snapshotd.domain.model import SNAPSHOT_KINDS
from snapshotd.domain.policies import SKIP_REASONS

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
SIZE_BUCKETS_BY = tuple(float(4**n) for n in range(4, 12))  # 256 B ... 4 MiB
COUNT_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000, 100_000)

TAKEN = _meter.create_counter(
    "snapshotd.snapshot.taken", unit="{snapshot}", description="Snapshots written."
)
SKIPPED = _meter.create_counter(
    "snapshotd.snapshot.skipped",
    unit="{snapshot}",
    description="Snapshot attempts that wrote nothing, by reason.",
)
DURATION = _meter.create_histogram(
    "snapshotd.snapshot.duration",
    unit="s",
    description="Duration of one snapshot attempt.",
    explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
)
SIZE = _meter.create_histogram(
    "snapshotd.snapshot.size",
    unit="By",
    description="Encoded size of a written snapshot.",
    explicit_bucket_boundaries_advisory=list(SIZE_BUCKETS_BY),
)
EVENTS = _meter.create_histogram(
    "snapshotd.snapshot.events",
    unit="{event}",
    description="Events folded to write one snapshot.",
    explicit_bucket_boundaries_advisory=list(COUNT_BUCKETS),
)
PRUNED = _meter.create_counter(
    "snapshotd.snapshot.pruned", unit="{snapshot}", description="Old snapshots deleted."
)
RECEIVED = _meter.create_counter(
    "snapshotd.requests.received", unit="{request}", description="Socket requests, by op."
)
REJECTED = _meter.create_counter(
    "snapshotd.requests.rejected",
    unit="{request}",
    description="Requests answered (or, fire-and-forget, dropped) with an error, by code.",
)
RESTARTS = _meter.create_counter(
    "snapshotd.actor.restarts", unit="{restart}", description="Snapshotter actor restarts."
)
LAG = _meter.create_histogram(
    "snapshotd.run.lag",
    unit="{event}",
    description="Events after the latest snapshot when a request for the run is handled.",
    explicit_bucket_boundaries_advisory=list(COUNT_BUCKETS),
)
SAVEPOINTS_COMPLETED = _meter.create_counter(
    "snapshotd.savepoints.completed",
    unit="{savepoint}",
    description="Savepoints that became complete (every entity reached their time).",
)
SAVEPOINTS_PRUNED = _meter.create_counter(
    "snapshotd.savepoints.pruned",
    unit="{savepoint}",
    description="Complete savepoints dropped by retention (keep_snapshots).",
)

HISTOGRAM_BUCKETS: dict[str, tuple[float, ...]] = {
    "snapshotd.snapshot.duration": DURATION_BUCKETS_S,
    "snapshotd.snapshot.size": SIZE_BUCKETS_BY,
    "snapshotd.snapshot.events": COUNT_BUCKETS,
    "snapshotd.run.lag": COUNT_BUCKETS,
}

_depth_sources: dict[str, Callable[[], int]] = {}


def _observe_depth(_options: CallbackOptions) -> Iterable[Observation]:
    # Runs on the exporter's thread: the readers must only read plain values
    # (a length, an int), never await or touch the event loop.
    observations = []
    for name, read in list(_depth_sources.items()):
        try:
            depth = int(read())
        except Exception:  # noqa: BLE001 - one broken source must not hide the others
            continue
        observations.append(Observation(depth, {"instance": name}))
    return observations


_meter.create_observable_gauge(
    "snapshotd.queue.depth",
    callbacks=[_observe_depth],
    unit="{request}",
    description="Snapshot requests waiting in the instance's queue.",
)

# Dropped and coalesced are counted once per fire-and-forget request, the hottest
# path (a flood is mostly drops): a plain int increment here, read at export time
# by an observable counter (exported exactly like a counter: a monotonic sum).
_dropped: collections.Counter[str] = collections.Counter()
_coalesced: collections.Counter[str] = collections.Counter()


def _observe_totals(
    totals: collections.Counter[str],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"instance": name}) for name, n in list(totals.items())]

    return observe


DROPPED = _meter.create_observable_counter(
    "snapshotd.requests.dropped",
    callbacks=[_observe_totals(_dropped)],
    unit="{request}",
    description="Snapshot requests dropped because the queue was full.",
)
COALESCED = _meter.create_observable_counter(
    "snapshotd.requests.coalesced",
    callbacks=[_observe_totals(_coalesced)],
    unit="{request}",
    description="Snapshot requests merged into one already pending for the run.",
)


def rejected(code: str, instance: str = "-") -> None:
    """Count a rejected request; ``instance`` is ``-`` when the request was unreadable."""
    REJECTED.add(1, {"instance": instance, "code": code})


@dataclass
class SnapshotSpan:
    """The open ``snapshot`` span of one attempt."""

    span: Span

    def set(self, **attributes: Any) -> None:
        """Set span attributes under the ``snapshotd.`` namespace."""
        for key, value in attributes.items():
            self.span.set_attribute(f"snapshotd.{key}", value)

    def trace_id(self) -> str | None:
        """The trace id as 32 hex digits, or None when tracing is not set up."""
        ctx = self.span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None


@dataclass
class InstanceTelemetry:
    """Recording helpers bound to one instance (every metric carries ``instance``)."""

    instance: str

    def __post_init__(self) -> None:
        self._attrs = {"instance": self.instance}
        # Zero series from the start: alerts on rate/increase need a series before the first event.
        _dropped[self.instance] += 0
        _coalesced[self.instance] += 0
        for counter in (RESTARTS, PRUNED):
            counter.add(0, self._attrs)
        for kind in SNAPSHOT_KINDS:
            TAKEN.add(0, {"instance": self.instance, "kind": kind})
        for reason in SKIP_REASONS:
            SKIPPED.add(0, {"instance": self.instance, "reason": reason})

    def watch_queue_depth(self, read: Callable[[], int]) -> None:
        """Report ``read()`` as queue depth. Runs on the exporter thread: plain reads only."""
        _depth_sources[self.instance] = read

    def forget(self) -> None:
        _depth_sources.pop(self.instance, None)

    def received(self, op: str) -> None:
        RECEIVED.add(1, {"instance": self.instance, "op": op})

    def rejected(self, code: str) -> None:
        rejected(code, self.instance)

    def dropped(self) -> None:
        _dropped[self.instance] += 1

    def coalesced(self) -> None:
        _coalesced[self.instance] += 1

    def restarted(self) -> None:
        RESTARTS.add(1, self._attrs)

    def attempt_lost(self) -> None:
        """Count a requested attempt whose task crashed before ending as taken or skipped.

        It is ``skipped`` with reason ``internal`` in ``status``; counting it here too
        keeps the exported counters equal to the ``status`` ones.
        """
        SKIPPED.add(1, {"instance": self.instance, "reason": "internal"})

    def lag(self, events: int) -> None:
        LAG.record(events, self._attrs)

    def pruned(self, count: int) -> None:
        if count:
            PRUNED.add(count, self._attrs)

    def savepoints_completed(self, count: int) -> None:
        if count:
            SAVEPOINTS_COMPLETED.add(count, self._attrs)

    def savepoints_pruned(self, count: int) -> None:
        if count:
            SAVEPOINTS_PRUNED.add(count, self._attrs)

    @contextmanager
    def snapshot_span(self, run_id: str) -> Iterator[SnapshotSpan]:
        """Open the ``snapshot`` span of one attempt; end it with ``taken`` or ``skipped``."""
        with _tracer.start_as_current_span(
            "snapshot", attributes={"snapshotd.run_id": run_id, "snapshotd.instance": self.instance}
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
            through_seq=through_seq,
            error=None if error is None else f"{type(error).__name__}: {error}",
            duration_s=round(duration_s, 6),
            trace_id=span.trace_id(),
        )


def instance_telemetry(instance: str) -> InstanceTelemetry:
    return InstanceTelemetry(instance)
