"""The unix socket server: binds the socket safely, accepts connections, moves NDJSON frames.

The read loop reads big chunks and splits lines in bulk; ``dispatch`` turns the
complete lines of a chunk into responses, sent in one write. The limits of SPEC
section 2 are enforced here: ``max_connections`` (one ``unavailable`` line, then
close), ``idle_timeout_s``, ``max_buffered_bytes`` across connections (see
``limits``), ``max_frame_bytes``, and back-pressure (a client that does not read
its responses is not read from).

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
from typing import TYPE_CHECKING

import anyio
import structlog
from anyio import TASK_STATUS_IGNORED
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskStatus

from snapshotd.api import codec
from snapshotd.api.dispatch import REJECTIONS, Tally, handle_lines
from snapshotd.api.limits import Conn, Connections, Throttled
from snapshotd.api.sockio import Evicted, Idle, receive, send_last, send_now
from snapshotd.domain.errors import ConfigError
from snapshotd.telemetry.instruments import (
    INSTANCE,
    REJECTED,
    connection_refused,
    watch_connections,
)

if TYPE_CHECKING:
    from snapshotd.config import SocketConfig
    from snapshotd.runtime import Daemon

_log = structlog.get_logger("snapshotd.api")
_REFUSALS = Throttled(_log, "connection_refused")

PROBE_TIMEOUT_S = 1.0
_PEERCRED = struct.Struct("3i")


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
        self.connections = Connections(
            config.max_connections, config.max_buffered_bytes, config.idle_timeout_s
        )
        watch_connections(self.connections.__len__)

    async def accept_loop(self, listener: SocketListener) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.connections.expire_idle)
            while True:
                try:
                    stream = await listener.accept()
                except (OSError, anyio.BrokenResourceError) as exc:
                    # Out of file descriptors and the like: wait, keep listening.
                    _log.warning("accept_failed", error=str(exc))
                    await anyio.sleep(0.1)
                    continue
                if self.connections.full():
                    self._refused("max_connections")
                    send_last(stream.extra(SocketAttribute.raw_socket), self._unavailable())
                    await stream.aclose()
                    continue
                raw = stream.extra(SocketAttribute.raw_socket)
                tg.start_soon(self.connection, stream, self.connections.add(raw))

    def _unavailable(self) -> bytes:
        limit = self.config.max_connections
        message = f"too many connections (socket.max_connections = {limit}); retry later"
        return codec.encode_error(None, "unavailable", message)

    def _refused(self, reason: str) -> None:
        connection_refused(reason)
        _REFUSALS.warning(reason=reason)

    async def connection(self, stream: SocketStream, conn: Conn) -> None:
        """Serve one client until it disconnects; never raises except on cancellation."""
        try:
            async with stream:
                raw = stream.extra(SocketAttribute.raw_socket)
                allowed = self.config.allowed_uids
                if allowed is not None and _peer_uid(stream) not in allowed:
                    self._refused("uid_not_allowed")
                    return
                try:
                    await self._read_loop(raw, conn)
                except Idle:
                    self._refused("idle_timeout")
                except Evicted:
                    self._refused("buffer_limit")
                    limit = self.config.max_buffered_bytes
                    message = (
                        "incomplete lines of all connections exceed socket.max_buffered_bytes"
                        f" ({limit}); this connection held the longest"
                    )
                    send_last(raw, codec.encode_error(None, "too_large", message))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        except Exception:  # noqa: BLE001 - one bad connection must never end the listener
            _log.exception("connection_failed")
        finally:
            self.connections.remove(conn)

    async def _read_loop(self, raw: socket.socket, conn: Conn) -> None:
        max_frame = self.config.max_frame_bytes
        daemon = self.daemon
        connections = self.connections
        idle = connections.idle_timeout_s is not None
        clock = time.perf_counter
        parts: list[bytes] = []
        held = 0
        while True:
            if conn.evicted:
                raise Evicted
            try:
                chunk = await receive(raw, conn)
            except anyio.EndOfStream:
                return
            if b"\n" not in chunk:
                held += len(chunk)
                if held > max_frame:
                    await self._too_large(raw, conn, [])
                    return
                parts.append(chunk)
                connections.hold(conn, held)
                if conn.expired:
                    raise Idle
                continue
            started = clock()
            if idle:
                conn.deadline = connections.next_deadline()
                conn.expired = False
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
            tally = Tally()
            try:
                if not await handle_lines(daemon, raw, conn, lines, out, max_frame, tally):
                    await self._too_large(raw, conn, out)
                    return
                if held > max_frame:
                    await self._too_large(raw, conn, out)
                    return
                if out:
                    await send_now(raw, b"".join(out), conn)
            finally:
                tally.flush(started)
            connections.hold(conn, held)

    async def _too_large(self, raw: socket.socket, conn: Conn, out: list[bytes]) -> None:
        message = f"line longer than socket.max_frame_bytes ({self.config.max_frame_bytes})"
        REJECTED.add(1, {INSTANCE: "-", "code": "too_large"})
        REJECTIONS.warning(code="too_large", instance="-")
        out.append(codec.encode_error(None, "too_large", message))
        await send_now(raw, b"".join(out), conn)


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
