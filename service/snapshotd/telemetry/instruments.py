"""Metric instruments and per-instance recording helpers (names, units: SPEC section 6).

Instruments are created through the OpenTelemetry API at import; they bind to
whatever meter provider start-up installs (none: they record nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import structlog
from opentelemetry import context, metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, Status, StatusCode

from snapshotd.domain.model import SNAPSHOT_KINDS
from snapshotd.domain.policies import SKIP_REASONS

INSTANCE = "snapshotd.instance"
"""The metric attribute naming the instance; not ``instance``, Prometheus' own target label."""

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
REQUEST_BUCKETS_S = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
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
COUNT_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000, 100_000)

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

REQUEST_DURATION = _meter.create_histogram(
    "snapshotd.request.duration",
    unit="s",
    description=(
        "From a complete request line read to its response written (fire-and-forget: to its"
        " hand-off); one observation per op per chunk read."
    ),
    explicit_bucket_boundaries_advisory=list(REQUEST_BUCKETS_S),
)
CONNECTIONS_REFUSED = _meter.create_counter(
    "snapshotd.connections.refused",
    unit="{connection}",
    description="Connections refused or closed by a limit, by reason.",
)
REFUSED_REASONS = ("max_connections", "uid_not_allowed", "idle_timeout", "buffer_limit")

HISTOGRAM_BUCKETS: dict[str, tuple[float, ...]] = {
    "snapshotd.request.duration": REQUEST_BUCKETS_S,
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
            observations.append(Observation(value, {INSTANCE: name}))
        return observations

    return observe


_meter.create_observable_gauge(
    "snapshotd.queue.depth",
    callbacks=[_observe(_depth_sources)],
    unit="{request}",
    description="Snapshot requests waiting in the instance's queue.",
)

# Attempt outcomes are counted once per attempt (thousands a second), so like dropped
# and coalesced below they are plain ints, per instance name (shared by every
# InstanceTelemetry of that name, so a total never goes back), read at export time.
_taken_totals: dict[str, dict[str, int]] = {}
_skipped_totals: dict[str, dict[str, int]] = {}


def _observe_totals(
    totals: dict[str, dict[str, int]], key: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {INSTANCE: instance, key: value})
            for instance, counts in list(totals.items())
            for value, count in list(counts.items())
        ]

    return observe


TAKEN = _meter.create_observable_counter(
    "snapshotd.snapshot.taken",
    callbacks=[_observe_totals(_taken_totals, "kind")],
    unit="{snapshot}",
    description="Snapshots written.",
)
SKIPPED = _meter.create_observable_counter(
    "snapshotd.snapshot.skipped",
    callbacks=[_observe_totals(_skipped_totals, "reason")],
    unit="{snapshot}",
    description="Snapshot attempts that wrote nothing, by reason.",
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


_connection_sources: dict[str, Callable[[], int]] = {}
_meter.create_observable_gauge(
    "snapshotd.connections",
    callbacks=[_observe(_connection_sources)],
    unit="{connection}",
    description="Socket connections open now.",
)


def watch_connections(read: Callable[[], int]) -> None:
    """Report ``read()`` as the open connections; zero every refusal reason's series.

    ``read`` runs on the exporter thread: plain reads only. The connections belong
    to no instance: their attribute ``snapshotd.instance`` is ``-``.
    """
    _connection_sources["-"] = read
    for reason in REFUSED_REASONS:
        CONNECTIONS_REFUSED.add(0, {INSTANCE: "-", "reason": reason})


def connection_refused(reason: str) -> None:
    CONNECTIONS_REFUSED.add(1, {INSTANCE: "-", "reason": reason})


def _zero() -> int:
    return 0


def rejected(code: str, instance: str = "-") -> None:
    """Count a rejected request; ``instance`` is ``-`` when the request was unreadable."""
    REJECTED.add(1, {INSTANCE: instance, "code": code})


class SnapshotSpan:
    """The ``snapshot`` span of one attempt: ``with`` makes it current and ends it.

    Written out rather than ``start_as_current_span`` (two nested generator context
    managers): this runs once per attempt, thousands of times a second. Like
    ``use_span``, an Exception escaping the block is recorded and sets status ERROR.
    """

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._token: Token[Context] | None = None

    def __enter__(self) -> SnapshotSpan:
        self._token = context.attach(trace.set_span_in_context(self.span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            context.detach(self._token)
            self._token = None
        span = self.span
        if isinstance(exc, Exception) and span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()

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
        self._attrs = {INSTANCE: self.instance}
        # Every kind and reason from the start: alerts on rate/increase need a series
        # before the first event.
        self._taken = _taken_totals.setdefault(self.instance, dict.fromkeys(SNAPSHOT_KINDS, 0))
        self._skipped = _skipped_totals.setdefault(self.instance, dict.fromkeys(SKIP_REASONS, 0))
        # Attribute sets built once: each attempt records with them.
        self._outcome_attrs = {
            o: {INSTANCE: self.instance, "outcome": o} for o in ("taken", "skipped")
        }
        self._skipped_span_attrs: dict[str, dict[str, str]] = {
            r: {"snapshotd.outcome": "skipped", "snapshotd.reason": r} for r in SKIP_REASONS
        }
        # Zero series from the start: alerts on rate/increase need a series before the first event.
        self.watch_requests(dropped=_zero, coalesced=_zero)
        for counter in (RESTARTS, PRUNED):
            counter.add(0, self._attrs)

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
        RECEIVED.add(1, {INSTANCE: self.instance, "op": op})

    def rejected(self, code: str) -> None:
        rejected(code, self.instance)

    def restarted(self) -> None:
        RESTARTS.add(1, self._attrs)

    def attempt_lost(self) -> None:
        """Count a requested attempt whose task crashed before ending as taken or skipped.

        It is ``skipped`` with reason ``internal`` in ``status``; counting it here too
        keeps the exported counters equal to the ``status`` ones.
        """
        self._skipped["internal"] += 1

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

    def snapshot_span(self, run_id: str) -> SnapshotSpan:
        """The ``snapshot`` span of one attempt, started; use it with ``with``, and record
        the attempt's end in it with ``taken`` or ``skipped``."""
        return SnapshotSpan(
            _tracer.start_span(
                "snapshot",
                attributes={"snapshotd.run_id": run_id, "snapshotd.instance": self.instance},
            )
        )

    def skipped_silently(self, span: SnapshotSpan, reason: str) -> None:
        """An internal check that ended as a routine skip: only the span says so."""
        span.span.set_attributes(self._skipped_span_attrs[reason])

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
        self._taken[kind] += 1
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
        details: dict[str, int] | None = None,
    ) -> None:
        """``details`` (e.g. ``too_large``'s sizes) go to the log line as they are and
        to the span under ``snapshotd.``."""
        self._skipped[reason] += 1
        DURATION.record(duration_s, self._outcome_attrs["skipped"])
        extra = details or {}
        if through_seq is None and not extra:
            span.span.set_attributes(self._skipped_span_attrs[reason])
        elif through_seq is None:
            span.set(outcome="skipped", reason=reason, **extra)
        else:
            span.set(outcome="skipped", reason=reason, through_seq=through_seq, **extra)
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
            **extra,
        )


def instance_telemetry(instance: str) -> InstanceTelemetry:
    return InstanceTelemetry(instance)
