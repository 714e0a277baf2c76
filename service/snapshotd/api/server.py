"""The unix socket server: binds the socket safely, accepts connections, moves NDJSON frames.

The read loop is the hot path (SPEC section 8: >= 300,000 fire-and-forget
``snapshot`` requests/s on one connection). It reads big chunks, splits lines in
bulk, calls the ops that never await inline, batches the response writes of a
chunk into one send, and counts requests per chunk rather than per line.

Fairness: a saturated reader never awaits (its socket always has data), so it
yields to the event loop every ``SLICE_S`` of work. Each yield lets the actors
and the other connections take one step, so queued attempts keep completing
during a flood and a ping on another connection waits at most about one slice.
A time slice rather than a line count keeps that bound whatever the ops cost.

Isolation: every connection handler catches its own errors, so no client (bad
frames, random bytes, a disconnect mid-line) affects another or the daemon.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import structlog
from anyio import TASK_STATUS_IGNORED
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskStatus

from snapshotd.api import codec
from snapshotd.api.ops import OPS, SYNC_OPS
from snapshotd.domain.errors import ConfigError, SnapshotdError, UnknownOp
from snapshotd.telemetry.instruments import INSTANCE, RECEIVED, REJECTED

if TYPE_CHECKING:
    from snapshotd.config import SocketConfig
    from snapshotd.runtime import Daemon

_log = structlog.get_logger("snapshotd.api")

RECEIVE_BYTES = 256 * 1024
FLUSH_BYTES = 1024 * 1024
PROBE_TIMEOUT_S = 1.0
SLICE_S = 0.00025
"""Longest run of reader work between yields: at ~1.5 us a line, about 170 lines."""
CLOCK_EVERY_LINES = 32
"""The slice is checked once per this many lines (~50 us), so the clock costs next to nothing."""
_PEERCRED = struct.Struct("3i")
MAX_LABEL_CHARS = 128


class SocketInUse(ConfigError):
    """Another process answers on the socket path: refusing to start."""


class BoundSocket:
    """A listening unix socket bound by this process, with the identity of its file.

    The file is removed on close only while it is still the one we bound, so a
    daemon never deletes the socket of a successor that replaced it.
    """

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        st = os.stat(path)
        self._identity = (st.st_dev, st.st_ino)

    def unlink(self) -> None:
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)

    def close(self) -> None:
        self.sock.close()
        self.unlink()


def _probe(path: str) -> bool:
    """True when something accepts connections at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind(config: SocketConfig, backlog: int = 1024) -> BoundSocket:
    """Bind and listen on ``config.path`` with ``config.mode`` from the first instant.

    A stale socket file (nothing answers) is replaced; a live one raises
    SocketInUse, as does a path holding something that is not a socket. Blocks
    for at most the probe timeout.
    """
    path = config.path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUse(f"socket.path: {path} exists and is not a socket")
        if _probe(path):
            raise SocketInUse(
                f"socket.path: {path} is in use by a running daemon; stop it or choose another path"
            )
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # On Linux bind() creates the file with the socket inode's mode (minus the
        # umask): setting it first leaves no window with looser permissions.
        os.fchmod(sock.fileno(), config.mode)
        sock.bind(path)
        os.chmod(path, config.mode)
        sock.listen(backlog)
        sock.setblocking(False)
        return BoundSocket(sock, path)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"socket.path: cannot listen on {path}: {reason}") from None


def _peer_uid(stream: SocketStream) -> int:
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    _pid, uid, _gid = _PEERCRED.unpack(
        raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return int(uid)


class Server:
    """Serves one daemon's ops to any number of connections."""

    def __init__(self, daemon: Daemon, config: SocketConfig) -> None:
        self.daemon = daemon
        self.config = config
        self.connections = 0

    async def accept_loop(self, listener: SocketListener) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    stream = await listener.accept()
                except (OSError, anyio.BrokenResourceError) as exc:
                    # Out of file descriptors and the like: wait, keep listening.
                    _log.warning("accept_failed", error=str(exc))
                    await anyio.sleep(0.1)
                    continue
                if self.connections >= self.config.max_connections:
                    _log.warning("connection_refused", reason="max_connections")
                    await stream.aclose()
                    continue
                self.connections += 1
                tg.start_soon(self.connection, stream)

    async def connection(self, stream: SocketStream) -> None:
        """Serve one client until it disconnects; never raises except on cancellation."""
        try:
            async with stream:
                allowed = self.config.allowed_uids
                if allowed is not None and _peer_uid(stream) not in allowed:
                    _log.warning("connection_refused", reason="uid_not_allowed")
                    return
                await self._read_loop(stream)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        except Exception:  # noqa: BLE001 - one bad connection must never end the listener
            _log.exception("connection_failed")
        finally:
            self.connections -= 1

    async def _read_loop(self, stream: SocketStream) -> None:
        max_frame = self.config.max_frame_bytes
        raw = stream.extra(SocketAttribute.raw_socket)
        parts: list[bytes] = []
        held = 0
        while True:
            try:
                chunk = await _receive(raw)
            except anyio.EndOfStream:
                return
            if b"\n" not in chunk:
                held += len(chunk)
                if held > max_frame:
                    await self._too_large(stream, [])
                    return
                parts.append(chunk)
                continue
            if parts:
                parts.append(chunk)
                data = b"".join(parts)
                parts.clear()
            else:
                data = chunk
            lines = data.split(b"\n")
            tail = lines.pop()
            held = len(tail)
            if tail:
                parts.append(tail)
            out: list[bytes] = []
            if not await self._handle_lines(stream, raw, lines, out, max_frame):
                await self._too_large(stream, out)
                return
            if held > max_frame:
                await self._too_large(stream, out)
                return
            if out:
                await _send_now(stream, raw, b"".join(out))

    async def _too_large(self, stream: SocketStream, out: list[bytes]) -> None:
        message = f"line longer than socket.max_frame_bytes ({self.config.max_frame_bytes})"
        REJECTED.add(1, {INSTANCE: "-", "code": "too_large"})
        _log.warning("request_rejected", code="too_large", instance="-")
        out.append(codec.encode_error(None, "too_large", message))
        await stream.send(b"".join(out))

    async def _handle_lines(
        self,
        stream: SocketStream,
        raw: socket.socket,
        lines: list[bytes],
        out: list[bytes],
        max_frame: int,
    ) -> bool:
        """Handle complete lines in order, appending responses to ``out``.

        Returns False at the first line longer than ``max_frame`` (the rest is not
        read: the connection closes). Counts are added once per call.
        """
        daemon = self.daemon
        instances = daemon.instances
        # defaultdict: its += is a plain dict update (Counter's is slower, per line).
        received: defaultdict[tuple[str, str], int] = defaultdict(int)
        rejected: defaultdict[tuple[str, str], int] = defaultdict(int)
        out_bytes = 0
        clock = time.perf_counter
        # The receive that brought these lines was a checkpoint: the slice starts now.
        slice_end = clock() + SLICE_S
        try:
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
                    rejected[_label(exc.instance), exc.code] += 1
                    if exc.answer:
                        out.append(codec.encode_error(exc.request_id, exc.code, exc.message))
                    else:
                        _log.warning("request_rejected", code=exc.code, error=exc.message)
                    continue
                op = req["op"]
                request_id = req.get("id")
                instance = req["instance"]
                label = instance if instance in instances else _label(instance)
                sync = SYNC_OPS.get(op)
                try:
                    if sync is not None:
                        result = sync(daemon, req)
                    else:
                        handler = OPS.get(op)
                        if handler is None:
                            raise UnknownOp(f"unknown op {op[:100]!r}")
                        if out_bytes > FLUSH_BYTES:
                            await _send_now(stream, raw, b"".join(out))
                            out.clear()
                            out_bytes = 0
                        result = await handler(daemon, req)
                except SnapshotdError as exc:
                    received[label, op if op in OPS else "-"] += 1
                    rejected[label, exc.code] += 1
                    if request_id is None:
                        _log.warning(
                            "request_rejected",
                            op=op[:100],
                            instance=label,
                            code=exc.code,
                            error=exc.message,
                        )
                    else:
                        out.append(
                            codec.encode_error(request_id, exc.code, exc.message, exc.details)
                        )
                    continue
                except Exception as exc:  # noqa: BLE001 - a handler bug answers `internal`
                    _log.exception("request_failed", op=op, instance=label)
                    received[label, op] += 1
                    rejected[label, "internal"] += 1
                    if request_id is not None:
                        message = f"internal error: {type(exc).__name__}"
                        out.append(codec.encode_error(request_id, "internal", message))
                    continue
                received[label, op] += 1
                if request_id is not None:
                    try:
                        encoded = codec.encode_result(request_id, result)
                    except TypeError as exc:
                        _log.exception("response_unencodable", op=op)
                        rejected[label, "internal"] += 1
                        encoded = codec.encode_error(request_id, "internal", str(exc))
                    out.append(encoded)
                    out_bytes += len(encoded)
            return True
        finally:
            _flush_counts(received, rejected)


def _label(instance: str) -> str:
    """The ``instance`` metric attribute of a request naming no configured instance.

    SPEC: the request's instance, ``-`` when it could not be read. A name longer
    than any real one counts as unreadable, so a client cannot fill the exporter's
    series (bounded in number by the SDK) with megabyte-long attribute values.
    """
    return instance if len(instance) <= MAX_LABEL_CHARS else "-"


async def _receive(raw: socket.socket) -> bytes:
    """The next chunk from the connection's (non-blocking) socket.

    What anyio's ``receive`` does, minus two costs paid per request when requests
    come one at a time: a yield before even trying to read, and registering the
    socket object (not its fd) with the selector, whose lookup formats the socket
    (two system calls) into an exception message. A read that did not have to wait
    still yields once, so a client that always has a line ready cannot starve the
    other tasks. Raises EndOfStream at EOF and BrokenResourceError on errors.
    """
    waited = False
    while True:
        try:
            data = raw.recv(RECEIVE_BYTES)
        except BlockingIOError:
            await anyio.wait_readable(raw)
            waited = True
            continue
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        if not waited:
            await anyio.lowlevel.checkpoint()
        return data


async def _send_now(stream: SocketStream, raw: socket.socket, data: bytes) -> None:
    """Send ``data``, writing what the socket takes at once, before any yield.

    anyio's ``send`` yields to the event loop before it writes, so under load a
    reply would wait for one step of every ready task (an actor's whole attempt);
    only what the socket cannot take now goes through it. Safe because this
    connection's reader is the only task that writes to its socket.
    """
    try:
        sent = raw.send(data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise anyio.BrokenResourceError from exc
    if sent < len(data):
        await stream.send(data[sent:])


def _flush_counts(
    received: defaultdict[tuple[str, str], int], rejected: defaultdict[tuple[str, str], int]
) -> None:
    for (instance, op), count in received.items():
        RECEIVED.add(count, {INSTANCE: instance, "op": op})
    for (instance, code), count in rejected.items():
        REJECTED.add(count, {INSTANCE: instance, "code": code})


async def serve(
    daemon: Daemon,
    config: SocketConfig,
    *,
    bound: BoundSocket | None = None,
    task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
) -> None:
    """Serve ``daemon`` on the unix socket until cancelled, then remove the socket file.

    ``bound`` is a socket the caller bound earlier with ``bind`` (the CLI binds
    before opening journals, so a second daemon refuses before touching them);
    without it the socket is bound here (SocketInUse when another daemon answers).
    """
    if bound is None:
        bound = bind(config)
    try:
        listener = await SocketListener.from_socket(bound.sock)
        async with listener:
            _log.info("listening", socket=bound.path)
            task_status.started()
            await Server(daemon, config).accept_loop(listener)
    finally:
        bound.unlink()
