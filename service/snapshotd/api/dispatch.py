"""Complete request lines to ops and responses: the server's per-chunk work.

The hot path (SPEC section 8: >= 300,000 fire-and-forget ``snapshot`` requests/s
on one connection): ops that never await are called inline, responses of a
chunk are gathered for one send, and requests are counted and timed per chunk
rather than per line.

Fairness: a saturated reader never awaits (its socket always has data), so it
yields to the event loop every ``SLICE_S`` of work. Each yield lets the actors
and the other connections take one step, so queued attempts keep completing
during a flood and a ping on another connection waits at most about one slice.
A time slice rather than a line count keeps that bound whatever the ops cost.
"""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import anyio.lowlevel
import structlog

from snapshotd.api import codec
from snapshotd.api.limits import Conn, Throttled
from snapshotd.api.ops import OPS, SYNC_OPS, check_fields
from snapshotd.api.sockio import send_now
from snapshotd.domain.errors import SnapshotdError, UnknownOp
from snapshotd.telemetry.instruments import INSTANCE, RECEIVED, REJECTED, REQUEST_DURATION

if TYPE_CHECKING:
    from snapshotd.runtime import Daemon

_log = structlog.get_logger("snapshotd.api")

FLUSH_BYTES = 1024 * 1024
SLICE_S = 0.00025
"""Longest run of reader work between yields: at ~1.5 us a line, about 170 lines."""
CLOCK_EVERY_LINES = 32
"""The slice is checked once per this many lines (~50 us), so the clock costs next to nothing."""
MAX_LABEL_CHARS = 128

REJECTIONS = Throttled(_log, "request_rejected")
"""Rejected requests that get no response (fire-and-forget, too large): counted in
full by ``snapshotd.requests.rejected``, logged at a bounded rate."""


class Tally:
    """Counts of one chunk's requests, added to the metrics in one go by ``flush``."""

    __slots__ = ("received", "rejected")

    def __init__(self) -> None:
        # defaultdict: its += is a plain dict update (Counter's is slower, per line).
        self.received: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.rejected: defaultdict[tuple[str, str], int] = defaultdict(int)

    def flush(self, started: float) -> None:
        """Add the counts, and one duration per op: from ``started`` (the chunk's
        read, a ``perf_counter`` time) to now (its responses written)."""
        elapsed = time.perf_counter() - started
        for (instance, op), count in self.received.items():
            attributes = {INSTANCE: instance, "op": op}
            RECEIVED.add(count, attributes)
            REQUEST_DURATION.record(elapsed, attributes)
        for (instance, code), count in self.rejected.items():
            REJECTED.add(count, {INSTANCE: instance, "code": code})


def label(instance: str) -> str:
    """The ``instance`` metric attribute of a request naming no configured instance.

    SPEC: the request's instance, ``-`` when it could not be read. A name longer
    than any real one counts as unreadable, so a client cannot fill the exporter's
    series (bounded in number by the SDK) with megabyte-long attribute values.
    """
    return instance if len(instance) <= MAX_LABEL_CHARS else "-"


async def handle_lines(
    daemon: Daemon,
    raw: socket.socket,
    conn: Conn,
    lines: list[bytes],
    out: list[bytes],
    max_frame: int,
    tally: Tally,
) -> bool:
    """Handle complete lines in order, appending responses to ``out``.

    Returns False at the first line longer than ``max_frame`` (the rest is not
    read: the connection closes).
    """
    instances = daemon.instances
    received = tally.received
    rejected = tally.rejected
    out_bytes = 0
    clock = time.perf_counter
    # The receive that brought these lines was a checkpoint: the slice starts now.
    slice_end = clock() + SLICE_S
    for index, line in enumerate(lines, 1):
        if not line:
            continue
        if not index % CLOCK_EVERY_LINES and clock() >= slice_end:
            await anyio.lowlevel.checkpoint()
            slice_end = clock() + SLICE_S
        if len(line) > max_frame:
            return False
        try:
            req = codec.parse(line)
        except codec.FrameError as exc:
            rejected[label(exc.instance), exc.code] += 1
            if exc.answer:
                out.append(codec.encode_error(exc.request_id, exc.code, exc.message))
            else:
                REJECTIONS.warning(code=exc.code, error=exc.message)
            continue
        op = req["op"]
        request_id = req.get("id")
        instance = req["instance"]
        name = instance if instance in instances else label(instance)
        sync = SYNC_OPS.get(op)
        try:
            if sync is not None:
                # Sync ops check their own fields: snapshot's hot path does it cheaper.
                result = sync(daemon, req)
            else:
                handler = OPS.get(op)
                if handler is None:
                    raise UnknownOp(f"unknown op {op[:100]!r}")
                check_fields(op, req)
                if out_bytes > FLUSH_BYTES:
                    await send_now(raw, b"".join(out), conn)
                    out.clear()
                    out_bytes = 0
                result = await handler(daemon, req)
        except SnapshotdError as exc:
            received[name, op if op in OPS else "-"] += 1
            rejected[name, exc.code] += 1
            if request_id is None:
                REJECTIONS.warning(
                    op=op[:100], instance=name, code=exc.code, error=exc.message[:300]
                )
            else:
                out.append(codec.encode_error(request_id, exc.code, exc.message, exc.details))
            continue
        except Exception as exc:  # noqa: BLE001 - a handler bug answers `internal`
            _log.exception("request_failed", op=op, instance=name)
            received[name, op] += 1
            rejected[name, "internal"] += 1
            if request_id is not None:
                message = f"internal error: {type(exc).__name__}"
                out.append(codec.encode_error(request_id, "internal", message))
            continue
        received[name, op] += 1
        if request_id is not None:
            try:
                encoded = codec.encode_result(request_id, result)
            except TypeError as exc:
                _log.exception("response_unencodable", op=op)
                rejected[name, "internal"] += 1
                encoded = codec.encode_error(request_id, "internal", str(exc))
            out.append(encoded)
            out_bytes += len(encoded)
    return True
