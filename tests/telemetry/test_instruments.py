"""Every SPEC section 6 metric and the ``snapshot`` span, recorded through the helpers."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    Sum,
)
from opentelemetry.trace import StatusCode

from snapshotd.domain.model import SNAPSHOT_KINDS
from snapshotd.domain.policies import SKIP_REASONS
from snapshotd.telemetry.health import JournalHealth
from snapshotd.telemetry.instruments import DURATION_BUCKETS_S, instance_telemetry, rejected
from tests.telemetry.conftest import Captured, record_skipped, record_taken

# name: (kind, unit, extra attribute keys) — SPEC section 6, verbatim.
SPEC_METRICS: dict[str, tuple[type[Any], str, frozenset[str]]] = {
    "snapshotd.snapshot.taken": (Sum, "{snapshot}", frozenset({"kind"})),
    "snapshotd.snapshot.skipped": (Sum, "{snapshot}", frozenset({"reason"})),
    "snapshotd.snapshot.duration": (Histogram, "s", frozenset({"outcome"})),
    "snapshotd.snapshot.size": (Histogram, "By", frozenset()),
    "snapshotd.snapshot.events": (Histogram, "{event}", frozenset()),
    "snapshotd.snapshot.pruned": (Sum, "{snapshot}", frozenset()),
    "snapshotd.requests.received": (Sum, "{request}", frozenset({"op"})),
    "snapshotd.requests.rejected": (Sum, "{request}", frozenset({"code"})),
    "snapshotd.requests.dropped": (Sum, "{request}", frozenset()),
    "snapshotd.requests.coalesced": (Sum, "{request}", frozenset()),
    "snapshotd.queue.depth": (Gauge, "{request}", frozenset()),
    "snapshotd.actor.restarts": (Sum, "{restart}", frozenset()),
    "snapshotd.run.lag": (Histogram, "{event}", frozenset()),
    "snapshotd.journal.up": (Gauge, "1", frozenset()),
    "snapshotd.journal.reconnects": (Sum, "{reconnect}", frozenset()),
    "snapshotd.corruption.found": (Sum, "{object}", frozenset({"object"})),
    "snapshotd.slices.owned": (Gauge, "{slice}", frozenset()),
}
POSTGRES_ONLY = frozenset({"snapshotd.slices.owned"})
"""Not exported by a daemon on a memory or fs journal."""
SERVER_METRICS: dict[str, tuple[type[Any], str, frozenset[str]]] = {
    "snapshotd.request.duration": (Histogram, "s", frozenset({"op"})),
    "snapshotd.connections": (Gauge, "{connection}", frozenset()),
    "snapshotd.connections.refused": (Sum, "{connection}", frozenset({"reason"})),
}
"""Recorded by the socket server itself (tests/api checks them)."""
ALL_SPEC_METRICS = {**SPEC_METRICS, **SERVER_METRICS}
"""Every metric of SPEC section 6."""


def values(metric: Metric) -> dict[tuple[tuple[str, Any], ...], Any]:
    """Data points keyed by their sorted attributes: sums/gauges by value, histograms by count."""
    out: dict[tuple[tuple[str, Any], ...], Any] = {}
    for point in metric.data.data_points:
        key = tuple(sorted((point.attributes or {}).items()))
        assert isinstance(point, HistogramDataPoint | NumberDataPoint)
        out[key] = point.count if isinstance(point, HistogramDataPoint) else point.value
    return out


def record_everything(instance: str) -> None:
    tel = instance_telemetry(instance)
    tel.watch_queue_depth(lambda: 7)
    tel.watch_requests(dropped=lambda: 1, coalesced=lambda: 1)
    tel.received("snapshot")
    tel.rejected("bad_request")
    tel.restarted()
    tel.lag(42)
    tel.pruned(2)
    record_taken(tel, "run-1")
    record_skipped(tel, "run-2", "below_threshold")
    health = JournalHealth(instance)
    health.watch_up(lambda: True)
    health.watch_slices(lambda: 4)
    health.reconnected()
    health.corruption_found("snapshot")


def test_every_spec_metric_has_its_kind_unit_and_attributes(otel: Captured) -> None:
    record_everything("alpha")
    found = otel.metrics()
    assert set(SPEC_METRICS) <= set(found)
    for name, (kind, unit, extra) in SPEC_METRICS.items():
        metric = found[name]
        assert isinstance(metric.data, kind), name
        assert metric.unit == unit, name
        if isinstance(metric.data, Sum):
            assert metric.data.is_monotonic, name
        # Observable instruments also report instances of earlier tests in this process.
        mine = [dict(p.attributes or {}) for p in metric.data.data_points]
        mine = [a for a in mine if a.get("snapshotd.instance") == "alpha"]
        assert mine, name
        assert all(set(attributes) == {"snapshotd.instance", *extra} for attributes in mine), name


def test_recorded_values_and_attributes(otel: Captured) -> None:
    record_everything("beta")
    rejected("bad_request")
    found = otel.metrics()
    assert (
        values(found["snapshotd.snapshot.taken"])[
            (("kind", "auto"), ("snapshotd.instance", "beta"))
        ]
        == 1
    )
    assert (
        values(found["snapshotd.snapshot.skipped"])[
            (("reason", "below_threshold"), ("snapshotd.instance", "beta"))
        ]
        == 1
    )
    assert values(found["snapshotd.snapshot.duration"]) == {
        (("outcome", "taken"), ("snapshotd.instance", "beta")): 1,
        (("outcome", "skipped"), ("snapshotd.instance", "beta")): 1,
    }
    assert values(found["snapshotd.requests.rejected"]) == {
        (("code", "bad_request"), ("snapshotd.instance", "beta")): 1,
        (("code", "bad_request"), ("snapshotd.instance", "-")): 1,
    }
    assert values(found["snapshotd.requests.received"]) == {
        (("op", "snapshot"), ("snapshotd.instance", "beta")): 1
    }
    assert values(found["snapshotd.snapshot.pruned"]) == {(("snapshotd.instance", "beta"),): 2}
    assert values(found["snapshotd.queue.depth"])[(("snapshotd.instance", "beta"),)] == 7


def test_counters_start_with_zero_series_per_instance(otel: Captured) -> None:
    instance_telemetry("gamma")
    found = otel.metrics()

    def gamma(name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        return {
            k: v for k, v in values(found[name]).items() if ("snapshotd.instance", "gamma") in k
        }

    for name in ("requests.dropped", "requests.coalesced", "actor.restarts", "snapshot.pruned"):
        assert gamma(f"snapshotd.{name}") == {(("snapshotd.instance", "gamma"),): 0}
    assert gamma("snapshotd.snapshot.taken") == {
        (("kind", kind), ("snapshotd.instance", "gamma")): 0 for kind in SNAPSHOT_KINDS
    }
    assert gamma("snapshotd.snapshot.skipped") == {
        (("reason", r), ("snapshotd.instance", "gamma")): 0 for r in SKIP_REASONS
    }


def test_a_lost_attempt_counts_as_an_internal_skip(otel: Captured) -> None:
    instance_telemetry("lambda").attempt_lost()
    skipped = values(otel.metrics()["snapshotd.snapshot.skipped"])
    assert skipped[(("reason", "internal"), ("snapshotd.instance", "lambda"))] == 1


def test_dropped_and_coalesced_are_running_totals(otel: Captured) -> None:
    tel = instance_telemetry("kappa")
    totals = {"dropped": 3, "coalesced": 1}
    tel.watch_requests(dropped=lambda: totals["dropped"], coalesced=lambda: totals["coalesced"])
    found = otel.metrics()
    assert values(found["snapshotd.requests.dropped"])[(("snapshotd.instance", "kappa"),)] == 3
    assert values(found["snapshotd.requests.coalesced"])[(("snapshotd.instance", "kappa"),)] == 1
    totals["dropped"] += 1
    # The delta reader sees only what happened since its last collection.
    assert (
        values(otel.metrics()["snapshotd.requests.dropped"])[(("snapshotd.instance", "kappa"),)]
        == 1
    )


def test_duration_histogram_uses_second_buckets(otel: Captured) -> None:
    record_everything("delta")
    (point, *_) = otel.metrics()["snapshotd.snapshot.duration"].data.data_points
    assert isinstance(point, HistogramDataPoint)
    assert tuple(point.explicit_bounds) == tuple(float(b) for b in DURATION_BUCKETS_S)
    # 3 ms lands in the (2.5 ms, 5 ms] bucket, not the first bucket of a milliseconds layout.
    assert point.bucket_counts[DURATION_BUCKETS_S.index(0.005)] == 1


def test_queue_depth_skips_a_broken_source(otel: Captured) -> None:
    def broken() -> int:
        raise RuntimeError("queue gone")

    good, bad = instance_telemetry("epsilon"), instance_telemetry("zeta")
    good.watch_queue_depth(lambda: 3)
    bad.watch_queue_depth(broken)
    depth = values(otel.metrics()["snapshotd.queue.depth"])
    assert depth[(("snapshotd.instance", "epsilon"),)] == 3
    assert (("snapshotd.instance", "zeta"),) not in depth
    good.forget()
    bad.forget()
    assert (("snapshotd.instance", "epsilon"),) not in values(
        otel.metrics()["snapshotd.queue.depth"]
    )


def test_one_snapshot_span_per_attempt(otel: Captured) -> None:
    tel = instance_telemetry("eta")
    trace_id = record_taken(tel, "run-a", kind="manual", through_seq=5)
    record_skipped(tel, "run-b", "no_events", through_seq=5)
    taken, skipped = otel.finished_spans()
    assert taken.name == skipped.name == "snapshot"
    assert taken.attributes is not None and skipped.attributes is not None
    assert dict(taken.attributes) == {
        "snapshotd.run_id": "run-a",
        "snapshotd.instance": "eta",
        "snapshotd.through_seq": 5,
        "snapshotd.outcome": "taken",
    }
    assert trace_id == format(taken.context.trace_id, "032x")
    assert skipped.attributes["snapshotd.outcome"] == "skipped"
    assert skipped.attributes["snapshotd.reason"] == "no_events"
    assert skipped.attributes["snapshotd.through_seq"] == 5
    assert skipped.status.status_code is StatusCode.UNSET


def test_errors_are_recorded_on_the_span(otel: Captured) -> None:
    tel = instance_telemetry("theta")
    record_skipped(tel, "run-c", "journal_error", error=OSError("disk gone"))
    (finished,) = otel.finished_spans()
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.status.description == "disk gone"
    (event,) = finished.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "OSError"


def test_an_exception_escaping_the_attempt_ends_the_span_with_an_error(otel: Captured) -> None:
    tel = instance_telemetry("iota")
    with pytest.raises(ValueError, match="bug"), tel.snapshot_span("run-d"):
        raise ValueError("bug")
    (finished,) = otel.finished_spans()
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.attributes is not None
    assert finished.attributes["snapshotd.run_id"] == "run-d"
