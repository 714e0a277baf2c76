"""A real ``snapshotd serve``, configured by OTEL_* variables only, exporting to a test receiver.

Checks that every SPEC section 6 metric arrives with ``instance`` and its extra
attributes, that ``snapshot`` spans arrive and match the log lines, that the
exported counters agree with the ``status`` op, and that a dead collector does
not disturb the daemon.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from snapshotd.telemetry.instruments import DURATION_BUCKETS_S
from tests.runtime.support import counted
from tests.support import wait_for
from tests.telemetry.otlp import (
    Daemon,
    Point,
    Received,
    SocketClient,
    black_hole_port,
    closed_port,
    otlp_grpc_receiver,
    otlp_http_receiver,
    running_daemon,
)
from tests.telemetry.test_instruments import ALL_SPEC_METRICS, POSTGRES_ONLY

pytestmark = pytest.mark.slow

KIND_NAMES = {"Sum": "sum", "Histogram": "histogram", "Gauge": "gauge"}


def config(tmp_path: Path) -> str:
    return f"""
[socket]
path = "{tmp_path / "snapshotd.sock"}"

[instances.default]
journal = "memory:"
snapshot_threshold = 3
keep_snapshots = 2
queue_capacity = 1
"""


def fast_export(endpoint: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_SERVICE_NAME": "snapshotd-e2e",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }


def events(n: int) -> list[dict[str, Any]]:
    return [{"type": "step", "data": {"i": i}} for i in range(n)]


def drive(client: SocketClient) -> int:
    """A known mix of requests: taken, skipped, pruned, dropped, coalesced and rejected ones.

    Returns how many snapshot requests (``snapshot`` and ``snapshot_now``) it sent.
    """
    client.call("create_run", run="r1", workflow="order", version="v1")
    client.call("append", run="r1", events=events(5))
    for _ in range(3):  # three manual snapshots with keep_snapshots = 2: one pruned
        assert client.call("snapshot_now", run="r1", force=True)["status"] == "taken"
        client.call("append", run="r1", events=events(1))
    assert client.call("snapshot_now", run="r1") == {
        "status": "skipped",
        "reason": "below_threshold",
    }
    assert client.call("snapshot_now", run="ghost") == {"status": "skipped", "reason": "no_run"}

    bad = client.request("append", run="r1", events=[])
    assert bad["error"]["code"] == "bad_request"
    unknown = client.request("frobnicate")
    assert unknown["error"]["code"] == "unknown_op"
    client.send_raw(b"this is not json\n")
    assert client.read_response()["error"]["code"] == "bad_request"

    for i in range(8):
        client.call("create_run", run=f"b{i}", workflow="order", version="v1")
        client.call("append", run=f"b{i}", events=events(4))
    # One write, fire-and-forget: with queue_capacity = 1, repeats of a pending run
    # coalesce and other runs find the queue full.
    burst = b"".join(
        orjson.dumps({"op": "snapshot", "run": f"b{i}"}) + b"\n" for i in range(8) for _ in range(3)
    )
    client.send_raw(burst)
    assert client.call("ping") == {"pong": True}
    return 3 + 2 + burst.count(b"\n")


def settled_status(client: SocketClient, sent: int) -> dict[str, Any]:
    """The default instance's status once all ``sent`` snapshot requests are counted.

    A request is counted when dropped or coalesced, or when its attempt ends, so an
    empty queue alone is not enough: the attempt in flight is in no queue.
    """

    def complete() -> dict[str, Any] | None:
        status: dict[str, Any] = client.call("status")["instances"]["default"]
        return status if counted(status) == sent else None

    return wait_for(complete, what=f"{sent} snapshot requests counted")


def sums(points: dict[tuple[str, Any], Point], metric: str, by: str | None = None) -> Any:
    selected = [p for (name, _), p in points.items() if name == metric]
    if by is None:
        return sum(p.value for p in selected)
    totals: dict[str, float] = {}
    for p in selected:
        totals[p.attributes[by]] = totals.get(p.attributes[by], 0) + p.value
    return totals


def check_every_spec_metric(points: dict[tuple[str, Any], Point]) -> None:
    for name, (kind, unit, extra) in ALL_SPEC_METRICS.items():
        if name in POSTGRES_ONLY:
            continue
        arrived = [p for (metric, _), p in points.items() if metric == name]
        assert arrived, f"{name} was not exported"
        for point in arrived:
            assert point.kind == KIND_NAMES[kind.__name__], name
            assert point.unit == unit, name
            assert point.attributes.get("snapshotd.instance") in ("default", "-"), (name, point)
            assert set(point.attributes) == {"snapshotd.instance", *extra}, (name, point)
    durations = [p for (m, _), p in points.items() if m == "snapshotd.snapshot.duration"]
    assert all(p.bounds == tuple(float(b) for b in DURATION_BUCKETS_S) for p in durations)


def check_spans_and_logs(received: Received, daemon: Daemon) -> None:
    snapshot_spans = [s for s in received.spans() if s["name"] == "snapshot"]
    outcomes = [s["attributes"].get("snapshotd.outcome") for s in snapshot_spans]
    assert outcomes.count("taken") >= 3
    assert "skipped" in outcomes
    for span in snapshot_spans:
        assert {"snapshotd.run_id", "snapshotd.outcome"} <= set(span["attributes"]), span
    taken_r1 = [
        s
        for s in snapshot_spans
        if s["attributes"]["snapshotd.run_id"] == "r1"
        and s["attributes"]["snapshotd.outcome"] == "taken"
    ]
    assert sorted(s["attributes"]["snapshotd.through_seq"] for s in taken_r1) == [5, 6, 7]

    lines = daemon.log_lines()  # every stderr line parses as JSON
    assert all({"event", "level", "timestamp"} <= set(line) for line in lines)
    snapshot_lines = [
        line for line in lines if line["event"] in ("snapshot_taken", "snapshot_skipped")
    ]
    assert snapshot_lines
    for line in snapshot_lines:
        assert {"run_id", "instance", "reason", "trace_id"} <= set(line), line
    span_traces = {(s["attributes"]["snapshotd.run_id"], s["trace_id"]) for s in snapshot_spans}
    logged_r1 = [line for line in snapshot_lines if line["run_id"] == "r1"]
    assert logged_r1
    assert all((line["run_id"], line["trace_id"]) in span_traces for line in logged_r1)
    ghost = next(line for line in snapshot_lines if line["run_id"] == "ghost")
    assert ghost["reason"] == "no_run"


def test_exports_every_metric_spans_and_counters_matching_status(tmp_path: Path) -> None:
    with (
        otlp_http_receiver() as (endpoint, received),
        running_daemon(tmp_path, config(tmp_path), fast_export(endpoint)) as daemon,
    ):
        client = SocketClient(daemon.socket_path)
        status = settled_status(client, drive(client))
        assert status["queue_depth"] == 0
        assert status["dropped"] > 0
        assert status["coalesced"] > 0

        # Two exports after the counters settled: the latest one holds the final totals.
        exports = received.metric_exports()
        wait_for(lambda: received.metric_exports() >= exports + 2, 5, what="two more exports")
        assert client.call("status")["instances"]["default"] == status
        points = received.latest_points()
        assert sums(points, "snapshotd.snapshot.taken") == status["taken"]
        skipped = {
            k: v for k, v in sums(points, "snapshotd.snapshot.skipped", "reason").items() if v
        }
        assert skipped == {k: v for k, v in status["skipped"].items() if v}
        assert sums(points, "snapshotd.requests.dropped") == status["dropped"]
        assert sums(points, "snapshotd.requests.coalesced") == status["coalesced"]
        assert sums(points, "snapshotd.actor.restarts") == status["restarts"] == 0
        assert sums(points, "snapshotd.snapshot.pruned") >= 1
        assert sums(points, "snapshotd.requests.rejected", "code") == {
            "bad_request": 2,
            "unknown_op": 1,
        }
        check_every_spec_metric(points)

        wait_for(
            lambda: sum(s["name"] == "snapshot" for s in received.spans()) >= 5,
            5,
            what="snapshot spans",
        )
        client.close()
        code, seconds = daemon.stop()
        assert code == 0
        assert seconds < 10
        check_spans_and_logs(received, daemon)
        resource = received.resources()[0]
        assert resource["service.name"] == "snapshotd-e2e"
        assert resource["deployment.environment"] == "test"
        assert set(received.paths) == {"/v1/metrics", "/v1/traces"}


def test_grpc_protocol(tmp_path: Path) -> None:
    with otlp_grpc_receiver() as (endpoint, received):
        otel_env = {**fast_export(endpoint), "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        with running_daemon(tmp_path, config(tmp_path), otel_env) as daemon:
            client = SocketClient(daemon.socket_path)
            client.call("create_run", run="r1", workflow="order", version="v1")
            client.call("append", run="r1", events=events(3))
            assert client.call("snapshot_now", run="r1")["status"] == "taken"
            client.close()
            assert daemon.stop()[0] == 0
    points = received.latest_points()
    assert sums(points, "snapshotd.snapshot.taken", "kind")["manual"] == 1
    (span,) = [s for s in received.spans() if s["name"] == "snapshot"]
    assert span["attributes"]["snapshotd.through_seq"] == 3
    assert set(received.paths) == {"grpc:metrics", "grpc:traces"}


def test_traces_exporter_none_sends_metrics_and_no_spans(tmp_path: Path) -> None:
    with otlp_http_receiver() as (endpoint, received):
        otel_env = {**fast_export(endpoint), "OTEL_TRACES_EXPORTER": "none"}
        with running_daemon(tmp_path, config(tmp_path), otel_env) as daemon:
            client = SocketClient(daemon.socket_path)
            client.call("create_run", run="r1", workflow="order", version="v1")
            client.call("append", run="r1", events=events(3))
            assert client.call("snapshot_now", run="r1")["status"] == "taken"
            wait_for(lambda: received.metric_exports() >= 2, 5, what="two metric exports")
            client.close()
            assert daemon.stop()[0] == 0
    assert sums(received.latest_points(), "snapshotd.snapshot.taken", "kind")["manual"] == 1
    assert received.spans() == []
    assert set(received.paths) == {"/v1/metrics"}
    # Logs are not an exporter: the snapshot line is still on stderr, without a trace id.
    (line,) = [line for line in daemon.log_lines() if line["event"] == "snapshot_taken"]
    assert line["trace_id"] is None


@pytest.mark.postgres
def test_journal_health_on_postgresql(tmp_path: Path, pg_dsn: str) -> None:
    """A lost LISTEN connection is counted as a reconnect; the journal stays up."""
    schema = f"otel_{secrets.token_hex(4)}"
    toml = config(tmp_path).replace('"memory:"', f'"{pg_dsn}?schema={schema}"')
    with (
        otlp_http_receiver() as (endpoint, received),
        running_daemon(tmp_path, toml, fast_export(endpoint)) as daemon,
    ):
        client = SocketClient(daemon.socket_path)
        client.call("create_run", run="r1", workflow="order", version="v1")
        client.call("append", run="r1", events=events(3))
        # The append's notification, or this request, takes the snapshot.
        assert client.call("snapshot_now", run="r1", force=True)["status"] in ("taken", "skipped")
        assert client.call("list_snapshots", run="r1")["snapshots"]
        killed = subprocess.run(
            [
                "psql",
                pg_dsn,
                "-qAt",
                "-c",
                "select count(pg_terminate_backend(pid)) from "
                "pg_stat_activity where application_name = 'snapshotd-listen' "
                "and datname = current_database()",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert killed.stdout.strip() == "1", killed.stderr

        def reconnected() -> bool:
            return sums(received.latest_points(), "snapshotd.journal.reconnects") == 1

        wait_for(reconnected, 10, what="one journal reconnect exported")
        points = received.latest_points()
        assert sums(points, "snapshotd.journal.up") == 1
        assert sums(points, "snapshotd.corruption.found") == 0
        client.close()
        assert daemon.stop()[0] == 0


@contextmanager
def dead_collector(kind: str) -> Iterator[str]:
    if kind == "refused":
        yield f"http://127.0.0.1:{closed_port()}"
    else:
        with black_hole_port() as port:
            yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("kind", ["refused", "black_hole"])
def test_a_dead_collector_does_not_disturb_the_daemon(tmp_path: Path, kind: str) -> None:
    with dead_collector(kind) as endpoint:
        otel_env = {**fast_export(endpoint), "OTEL_METRIC_EXPORT_INTERVAL": "100"}
        with running_daemon(tmp_path, config(tmp_path), otel_env) as daemon:
            client = SocketClient(daemon.socket_path)
            client.call("create_run", run="r1", workflow="order", version="v1")
            slowest = 0.0
            deadline = time.monotonic() + 1.0  # several failed exports meanwhile
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert client.call("ping") == {"pong": True}
                client.call("append", run="r1", events=events(1))
                assert client.call("snapshot_now", run="r1", force=True)["status"] == "taken"
                slowest = max(slowest, time.monotonic() - started)
            assert slowest < 0.5
            client.close()
            code, seconds = daemon.stop()
    assert code == 0
    assert seconds < 5
    lines = daemon.log_lines()  # exporter errors too are JSON lines
    assert any(line["event"] == "snapshot_taken" for line in lines)
