"""The fire-and-forget hot path under load, with the OpenTelemetry SDK on (SPEC section 8).

``python -m bench.flood`` starts ``snapshotd serve`` with an fs journal in a
temporary directory, a small queue and an OTLP endpoint on a closed local port
(so the SDK records every span and metric and its exporters fail, as with a
collector that is down), then measures:

- ``flood``: N pre-encoded ``snapshot`` requests without id sent with
  ``sendall`` from a sender thread per connection; accepted rate = N / time
  until a trailing ``ping`` with id is answered (replies come in order).
  Meanwhile a second connection polls ``status`` every 0.1 s: attempts/s is the
  growth of ``taken`` + ``skipped`` while the reader is saturated.
- ``latency``: ``ping`` requests with ids paced at a fixed rate on one
  connection; each latency runs from the request's scheduled send time to the
  arrival of its reply.

``flood`` and ``latency`` only need a socket path, so the bench harness can
call them against a daemon it started itself.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.daemon import SNAPSHOTD, render_config
from bench.stats import percentile
from bench.wire import Connection, encode, paced_round_trips, wait_for_socket

STATUS_EVERY_S = 0.1
RUN_EVENTS = 20
THRESHOLD = 100
"""Runs get RUN_EVENTS events under this threshold: their attempts read the run and
skip as ``below_threshold`` (counted, logged, a span each, no write)."""


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Served:
    """A running daemon started by ``serve``."""

    socket_path: str
    pid: int
    log_path: Path


@contextmanager
def serve(workdir: Path, *, queue_capacity: int, otel: bool = True) -> Iterator[Served]:
    """Run ``snapshotd serve`` (instance ``default`` on ``fs:workdir/data``) for the block."""
    socket_path = str(workdir / "flood.sock")
    config = workdir / "snapshotd.toml"
    config.write_text(
        render_config(
            socket_path,
            {"default": {"journal": f"fs:{workdir / 'data'}", "queue_capacity": queue_capacity}},
            flood={"reducer": "last_by_key", "snapshot_threshold": THRESHOLD},
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SNAPSHOTD_"))}
    if otel:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
        env["OTEL_METRIC_EXPORT_INTERVAL"] = "60000"
    else:
        env["OTEL_SDK_DISABLED"] = "true"
    log_path = workdir / "snapshotd.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(SNAPSHOTD), "serve", "--config", str(config)],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
    try:
        wait_for_socket(socket_path, 30.0, lambda: process.poll() is None)
        yield Served(socket_path, process.pid, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def peak_rss_mb(pid: int) -> float:
    """VmHWM of ``pid``: its highest resident set size so far, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("no VmHWM in /proc status")


def prepare_runs(socket_path: str, count: int, instance: str = "default") -> list[str]:
    """Create ``count`` runs of the ``flood`` workflow with RUN_EVENTS events each."""
    names = [f"flood-{i}" for i in range(count)]
    events = [{"type": "set", "data": {"k": i}} for i in range(RUN_EVENTS)]
    with Connection(socket_path) as conn:
        for name in names:
            conn.call("create_run", instance=instance, run=name, workflow="flood", version="v1")
            if conn.call("load", instance=instance, run=name, limit=1)["run"]["last_seq"] == 0:
                conn.call("append", instance=instance, run=name, events=events)
    return names


def _completed(conn: Connection, instance: str) -> tuple[int, int, int]:
    """(attempts ended, dropped, coalesced) of ``instance`` from ``status``."""
    status: dict[str, Any] = conn.call("status")["instances"][instance]
    done = int(status["taken"]) + sum(status["skipped"].values())
    return done, int(status["dropped"]), int(status["coalesced"])


def _wait_idle(conn: Connection, instance: str, timeout_s: float = 60.0) -> None:
    """Until the queue is empty and no attempt ends for a moment."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while time.monotonic() < deadline:
        status = conn.call("status")["instances"][instance]
        done = _completed(conn, instance)
        if not status["queue_depth"] and done == previous:
            return
        previous = done
        time.sleep(0.05)
    raise TimeoutError(f"the daemon stayed busy for {timeout_s} s")


def _send_then_ping(path: str, payload: bytes, finished: list[float]) -> None:
    with Connection(path) as conn:
        conn.send(payload)
        conn.barrier()
    finished.append(time.perf_counter())


def flood(
    socket_path: str,
    n: int,
    connections: int = 1,
    *,
    runs: Sequence[str] = ("flood-0",),
    instance: str = "default",
    pid: int | None = None,
) -> dict[str, float]:
    """Send ``n`` fire-and-forget ``snapshot`` requests over ``runs`` on ``connections``
    connections (n / connections each, in parallel) and measure what the daemon did.

    Returns ``accepted_per_s`` and ``seconds`` (until every connection's trailing
    ping was answered), ``attempts_per_s`` (attempts ended while the senders ran,
    from ``status`` polls), ``samples`` (polls), ``dropped`` and ``coalesced``
    (deltas) and, given the daemon's ``pid``, ``rss_peak_mb`` (VmHWM).
    """
    per_conn = n // connections
    payloads = [
        b"".join(
            encode("snapshot", instance=instance, run=runs[(k * per_conn + i) % len(runs)])
            for i in range(per_conn)
        )
        for k in range(connections)
    ]
    finished: list[float] = []
    senders = [
        threading.Thread(target=_send_then_ping, args=(socket_path, p, finished)) for p in payloads
    ]
    with Connection(socket_path) as poller:
        _wait_idle(poller, instance)
        _, dropped0, coalesced0 = _completed(poller, instance)
        samples: list[tuple[float, int]] = []
        start = time.perf_counter()
        for sender in senders:
            sender.start()
        while any(s.is_alive() for s in senders):
            samples.append((time.perf_counter(), _completed(poller, instance)[0]))
            senders[0].join(STATUS_EVERY_S)
        for sender in senders:
            sender.join()
        end = max(finished)
        _, dropped, coalesced = _completed(poller, instance)
    result = {
        "requests": float(per_conn * connections),
        "seconds": end - start,
        "accepted_per_s": per_conn * connections / (end - start),
        "samples": float(len(samples)),
        "dropped": float(dropped - dropped0),
        "coalesced": float(coalesced - coalesced0),
    }
    if len(samples) >= 3:
        # From the second poll: the first one may land before the reader is busy.
        (t0, c0), (t1, c1) = samples[1], samples[-1]
        result["attempts_per_s"] = (c1 - c0) / (t1 - t0)
    if pid is not None:
        result["rss_peak_mb"] = peak_rss_mb(pid)
    return result


def latency(
    socket_path: str,
    rate: int,
    seconds: float,
    *,
    runs: Sequence[str] = (),
    instance: str = "default",
) -> dict[str, float]:
    """``ping`` with ids paced at ``rate``/s for ``seconds`` on one connection
    (with ``runs``: ``snapshot`` requests with ids over them, so attempts run too).

    Latency runs from a request's scheduled send time (so a stalled sender counts
    against the daemon, not in its favour) to the arrival of its reply. Returns
    ``p50_ms``, ``p99_ms``, ``max_ms`` and the achieved ``rate``.
    """
    total = int(rate * seconds)
    interval = 1.0 / rate
    if runs:
        lines = [
            encode("snapshot", i, instance=instance, run=runs[i % len(runs)]) for i in range(total)
        ]
    else:
        lines = [encode("ping", i) for i in range(total)]
    start = time.perf_counter()
    latencies = paced_round_trips(socket_path, lines, interval, seconds)
    elapsed = time.perf_counter() - start
    return {
        "rate": total / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    parser.add_argument("-n", type=int, default=1_000_000, help="requests per flood")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200, help="runs the requests name")
    parser.add_argument("--missing", action="store_true", help="name runs that do not exist")
    parser.add_argument("--queue", type=int, default=100, help="queue_capacity")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=int, default=10_000, help="paced ping rate")
    parser.add_argument("--seconds", type=float, default=3.0, help="paced ping duration")
    parser.add_argument(
        "--latency-op", choices=("ping", "snapshot"), default="ping", help="paced request"
    )
    parser.add_argument("--no-otel", action="store_true", help="OTEL_SDK_DISABLED=true")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="snapshotd-flood-") as tmp,
        serve(Path(tmp), queue_capacity=args.queue, otel=not args.no_otel) as served,
    ):
        path = served.socket_path
        if args.missing:
            runs = [f"missing-{i}" for i in range(args.runs)]
        else:
            runs = prepare_runs(path, args.runs)
        paced = runs if args.latency_op == "snapshot" else ()
        for _ in range(args.repeats):
            figures = latency(path, args.rate, args.seconds, runs=paced)
            print("latency", _fmt(figures), flush=True)
        for _ in range(args.repeats):
            figures = flood(path, args.n, args.connections, runs=runs, pid=served.pid)
            print("flood", _fmt(figures), flush=True)
    return 0


def _fmt(figures: dict[str, float]) -> str:
    return " ".join(f"{k}={v:,.3f}" if v < 100 else f"{k}={v:,.0f}" for k, v in figures.items())


if __name__ == "__main__":
    sys.exit(main())
