"""Metric instruments and per-instance recording helpers (names, units: SPEC section 6).

Instruments are created through the OpenTelemetry API at import; they bind to
whatever meter provider start-up installs (none: they record nothing).
"""

from __future__ import annotations

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

# Plain-value sources read at export time, per instance. Their callbacks run on
# the exporter's thread: a source must only read plain values (a length, an int),
# never await or touch the event loop.
_depth_sources: dict[str, Callable[[], int]] = {}
_dropped_sources: dict[str, Callable[[], int]] = {}
_coalesced_sources: dict[str, Callable[[], int]] = {}


def _observe(
    sources: dict[str, Callable[[], int]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for name, read in list(sources.items()):
            try:
                value = int(read())
            except Exception:  # noqa: BLE001 - one broken source must not hide the others
                continue
            observations.append(Observation(value, {"instance": name}))
        return observations

    return observe


_meter.create_observable_gauge(
    "snapshotd.queue.depth",
    callbacks=[_observe(_depth_sources)],
    unit="{request}",
    description="Snapshot requests waiting in the instance's queue.",
)

# Dropped and coalesced are counted once per fire-and-forget request, the hottest
# path (a flood is mostly drops): the instance keeps them as plain ints, read at
# export time by observable counters (exported exactly like counters: monotonic sums).
DROPPED = _meter.create_observable_counter(
    "snapshotd.requests.dropped",
    callbacks=[_observe(_dropped_sources)],
    unit="{request}",
    description="Snapshot requests dropped because the queue was full.",
)
COALESCED = _meter.create_observable_counter(
    "snapshotd.requests.coalesced",
    callbacks=[_observe(_coalesced_sources)],
    unit="{request}",
    description="Snapshot requests merged into one already pending for the run.",
)


def _zero() -> int:
    return 0


def rejected(code: str, instance: str = "-") -> None:
    """Count a rejected request; ``instance`` is ``-`` when the request was unreadable."""
    REJECTED.add(1, {"instance": instance, "code": code})


@dataclass
class SnapshotSpan:
    """The open ``snapshot`` span of one attempt."""

    span: Span

    def set(self, **attributes: Any) -> None:
        """Set span attributes under the ``snapshotd.`` namespace (one call: one span lock)."""
        self.span.set_attributes({f"snapshotd.{key}": value for key, value in attributes.items()})

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
        # Attribute sets built once: each attempt records with them.
        self._taken_attrs: dict[str, dict[str, str]] = {
            k: {"instance": self.instance, "kind": k} for k in SNAPSHOT_KINDS
        }
        self._skipped_attrs: dict[str, dict[str, str]] = {
            r: {"instance": self.instance, "reason": r} for r in SKIP_REASONS
        }
        self._outcome_attrs = {
            o: {"instance": self.instance, "outcome": o} for o in ("taken", "skipped")
        }
        # Zero series from the start: alerts on rate/increase need a series before the first event.
        self.watch_requests(dropped=_zero, coalesced=_zero)
        for counter in (RESTARTS, PRUNED):
            counter.add(0, self._attrs)
        for attrs in self._taken_attrs.values():
            TAKEN.add(0, attrs)
        for attrs in self._skipped_attrs.values():
            SKIPPED.add(0, attrs)

    def watch_queue_depth(self, read: Callable[[], int]) -> None:
        """Report ``read()`` as queue depth. Runs on the exporter thread: plain reads only."""
        _depth_sources[self.instance] = read

    def watch_requests(self, *, dropped: Callable[[], int], coalesced: Callable[[], int]) -> None:
        """Report the running totals of dropped and coalesced ``snapshot`` requests.

        The caller counts them in plain ints (no per-request telemetry call); the
        readers run on the exporter thread at collection: plain reads only.
        """
        _dropped_sources[self.instance] = dropped
        _coalesced_sources[self.instance] = coalesced

    def forget(self) -> None:
        for sources in (_depth_sources, _dropped_sources, _coalesced_sources):
            sources.pop(self.instance, None)

    def received(self, op: str) -> None:
        RECEIVED.add(1, {"instance": self.instance, "op": op})

    def rejected(self, code: str) -> None:
        rejected(code, self.instance)

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
        TAKEN.add(1, self._taken_attrs[kind])
        DURATION.record(duration_s, self._outcome_attrs["taken"])
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
        SKIPPED.add(1, self._skipped_attrs[reason])
        DURATION.record(duration_s, self._outcome_attrs["skipped"])
        if through_seq is None:
            span.set(outcome="skipped", reason=reason)
        else:
            span.set(outcome="skipped", reason=reason, through_seq=through_seq)
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
