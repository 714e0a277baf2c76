"""Test doubles around a real daemon: OTLP receivers, a raw socket client, a daemon runner.

The HTTP receiver decodes ``ExportMetricsServiceRequest`` / ``ExportTraceServiceRequest``
with ``opentelemetry.proto``, the way a collector would; the socket client speaks
SPEC section 2 directly, so these tests do not depend on ``snapshotd.api.client``.
"""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import orjson
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import (
    MetricsServiceServicer,
    add_MetricsServiceServicer_to_server,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.support import wait_for

Attributes = tuple[tuple[str, Any], ...]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class Point:
    """One exported data point: a sum or gauge value, or a histogram's count and bounds."""

    metric: str
    unit: str
    kind: str
    attributes: dict[str, Any]
    value: float
    bounds: tuple[float, ...] = ()


@dataclass
class Received:
    """Everything the receiver got, decoded; guarded by a lock (the server is threaded)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    metric_requests: list[ExportMetricsServiceRequest] = field(default_factory=list)
    trace_requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def metric_exports(self) -> int:
        with self.lock:
            return len(self.metric_requests)

    def latest_points(self) -> dict[tuple[str, Attributes], Point]:
        """The newest point per (metric, attributes): cumulative sums are the running totals."""
        with self.lock:
            requests = list(self.metric_requests)
        latest: dict[tuple[str, Attributes], Point] = {}
        for request in requests:
            for resource_metrics in request.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        for point in _points(metric):
                            key = (point.metric, tuple(sorted(point.attributes.items())))
                            latest[key] = point
        return latest

    def resources(self) -> list[dict[str, Any]]:
        with self.lock:
            metric_requests, trace_requests = list(self.metric_requests), list(self.trace_requests)
        found = []
        for metric_request in metric_requests:
            found += [attributes(r.resource.attributes) for r in metric_request.resource_metrics]
        for trace_request in trace_requests:
            found += [attributes(r.resource.attributes) for r in trace_request.resource_spans]
        return found

    def spans(self) -> list[dict[str, Any]]:
        """Every exported span as a dict: name, trace_id (hex), status code, attributes, events."""
        with self.lock:
            requests = list(self.trace_requests)
        found = []
        for request in requests:
            for resource_spans in request.resource_spans:
                for scope in resource_spans.scope_spans:
                    found += [
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "status": span.status.code,
                            "attributes": attributes(span.attributes),
                            "events": [event.name for event in span.events],
                        }
                        for span in scope.spans
                    ]
        return found


def _points(metric: Any) -> Iterator[Point]:
    kind = metric.WhichOneof("data")
    data = getattr(metric, kind)
    for point in data.data_points:
        attrs = attributes(point.attributes)
        if kind == "histogram":
            yield Point(
                metric.name, metric.unit, kind, attrs, point.count, tuple(point.explicit_bounds)
            )
        else:
            value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
            yield Point(metric.name, metric.unit, kind, attrs, value)


def _handler(received: Received) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            encoding = self.headers.get("Content-Encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            response: bytes
            with received.lock:
                received.paths.append(self.path)
                if self.path == "/v1/metrics":
                    received.metric_requests.append(ExportMetricsServiceRequest.FromString(body))
                    response = ExportMetricsServiceResponse().SerializeToString()
                elif self.path == "/v1/traces":
                    received.trace_requests.append(ExportTraceServiceRequest.FromString(body))
                    response = ExportTraceServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(response)))
            self.end_headers()
            self.wfile.write(response)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def otlp_http_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP receiver on 127.0.0.1; yields (base endpoint URL, what it received)."""
    received = Received()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(received))
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def otlp_grpc_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/gRPC receiver on 127.0.0.1; yields (endpoint URL, what it received)."""
    received = Received()

    class Metrics(MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> ExportMetricsServiceResponse:
            with received.lock:
                received.paths.append("grpc:metrics")
                received.metric_requests.append(request)
            return ExportMetricsServiceResponse()

    class Traces(TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> ExportTraceServiceResponse:
            with received.lock:
                received.paths.append("grpc:traces")
                received.trace_requests.append(request)
            return ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    add_MetricsServiceServicer_to_server(Metrics(), server)  # type: ignore[no-untyped-call]
    add_TraceServiceServicer_to_server(Traces(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(0)


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def black_hole_port() -> Iterator[int]:
    """A local TCP port whose connections complete (kernel backlog) but never get an answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        yield int(hole.getsockname()[1])


class SocketClient:
    """Blocking NDJSON client for SPEC section 2, with ids; enough for tests."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(10)
        try:
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise
        self._reader = self._sock.makefile("rb")
        self._next_id = 0

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def send_raw(self, data: bytes) -> None:
        self._sock.sendall(data)

    def read_response(self) -> dict[str, Any]:
        line = self._reader.readline()
        assert line.endswith(b"\n"), f"connection closed: {line!r}"
        response: dict[str, Any] = orjson.loads(line)
        return response

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request with an id and return the whole response line."""
        self._next_id += 1
        self.send_raw(orjson.dumps({"op": op, "id": self._next_id, **fields}) + b"\n")
        response = self.read_response()
        assert response["id"] == self._next_id, response
        return response

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return its result; fails the test on an error response."""
        response = self.request(op, **fields)
        assert response["ok"], response
        result: dict[str, Any] = response["result"]
        return result


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket_path: Path
    stderr_path: Path

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM, then wait; returns (exit code, seconds taken)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stderr line, each of which must be a JSON object."""
        return [orjson.loads(line) for line in self.stderr_path.read_bytes().splitlines()]


def _answers_ping(daemon: Daemon) -> bool:
    """Whether the daemon answers ``ping`` yet; raises once it has exited."""
    if daemon.process.poll() is not None:
        stderr = daemon.stderr_path.read_text()
        raise AssertionError(f"snapshotd serve exited {daemon.process.returncode}: {stderr}")
    if not daemon.socket_path.exists():
        return False
    try:
        client = SocketClient(daemon.socket_path)
    except OSError:
        return False
    try:
        return client.call("ping") == {"pong": True}
    finally:
        client.close()


@contextmanager
def running_daemon(
    tmp_path: Path, config_toml: str, otel_env: Mapping[str, str]
) -> Iterator[Daemon]:
    """``snapshotd serve`` in a subprocess, configured by a TOML file and OTEL_* variables only.

    OTEL_* and SNAPSHOTD_* variables of the test process are not inherited.
    """
    config = tmp_path / "snapshotd.toml"
    config.write_text(config_toml)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SNAPSHOTD_"))}
    env.update(otel_env)
    stderr_path = tmp_path / "stderr.log"
    script = Path(sys.executable).with_name("snapshotd")
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [str(script), "serve", "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    daemon = Daemon(process, tmp_path / "snapshotd.sock", stderr_path)
    try:
        wait_for(lambda: _answers_ping(daemon), 15, what="snapshotd serve answering ping")
        yield daemon
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
