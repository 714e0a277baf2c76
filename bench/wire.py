"""A minimal blocking client of the snapshotd socket protocol, for measurements.

The benchmarks drive the daemon with pre-encoded NDJSON so that client-side
Python costs stay out of what is measured; this module only frames lines.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import orjson


class DaemonError(Exception):
    """The daemon answered a request with an error."""


def encode(op: str, request_id: int | None = None, **fields: Any) -> bytes:
    body: dict[str, Any] = {"op": op, **fields}
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body) + b"\n"


class Connection:
    """One connection; ``call`` waits for the reply to its own request id."""

    def __init__(self, path: str, timeout: float = 120.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._reader = self.sock.makefile("rb", buffering=1 << 20)
        self._next_id = 0

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_reply(self, request_id: int) -> dict[str, Any]:
        """Read lines until the reply for ``request_id``; earlier replies are skipped."""
        while True:
            line = self._reader.readline()
            if not line:
                raise ConnectionError("the daemon closed the connection")
            reply: dict[str, Any] = orjson.loads(line)
            if reply.get("id") == request_id:
                return reply
            if not reply.get("ok", True) and reply.get("id") is None:
                raise DaemonError(f"frame rejected: {reply.get('error')}")

    def call(self, op: str, **fields: Any) -> Any:
        request_id = self.new_id()
        self.send(encode(op, request_id, **fields))
        reply = self.read_reply(request_id)
        if not reply["ok"]:
            error = reply["error"]
            raise DaemonError(f"{op}: {error['code']}: {error['message']}")
        return reply["result"]

    def barrier(self) -> None:
        """Return once every request sent before it has been read and handled:
        replies come in request order, so a ping's reply marks the point."""
        self.call("ping")


def wait_for_socket(path: str, deadline_s: float, alive: Any) -> None:
    """Poll until a ping on ``path`` succeeds; ``alive()`` False means give up."""
    until = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < until:
        if not alive():
            raise RuntimeError("the daemon exited during start-up")
        try:
            with Connection(path, timeout=2.0) as conn:
                conn.call("ping")
                return
        except (OSError, DaemonError) as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"no ping reply on {path} within {deadline_s} s: {last}")


def paced_round_trips(
    path: str, lines: list[bytes], interval: float, seconds: float
) -> list[float]:
    """Send ``lines`` (requests whose ids are their indexes) one every ``interval`` s
    on one connection and return each reply's latency (s), measured from the
    request's scheduled send time, so a stalled sender counts against the daemon.

    Blocking sends (a line rarely fills the buffer); recv only once select says so.
    """
    total = len(lines)
    latencies = [0.0] * total
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    buffer = b""
    sent = received = 0
    start = time.perf_counter()
    deadline = start + seconds + 10.0
    try:
        while received < total:
            now = time.perf_counter()
            if now > deadline:
                raise TimeoutError(f"{received}/{total} replies after {seconds + 10} s")
            while sent < total and start + sent * interval <= now:
                sock.sendall(lines[sent])
                sent += 1
            wait = start + sent * interval - now if sent < total else 0.5
            readable, _, _ = select.select([sock], [], [], max(0.0, wait))
            if not readable:
                continue
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            arrived = time.perf_counter()
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                request_id = orjson.loads(line)["id"]
                latencies[request_id] = arrived - (start + request_id * interval)
                received += 1
    finally:
        sock.close()
    return latencies
