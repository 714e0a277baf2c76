"""Reads and writes on a connection's raw socket, bounded by the connection's limits.

The server's hot path: each function tries the socket first and only awaits when
it must; only those waits end early when the connection expired or was evicted
(a handler's own awaits never do, so a slow journal call is never cut short).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

from snapshotd.api.limits import Conn

RECEIVE_BYTES = 256 * 1024
_buffer = bytearray(RECEIVE_BYTES)
_view = memoryview(_buffer)
"""One receive buffer for every connection: reads never overlap (one event loop thread)."""


class Idle(Exception):
    """No complete request came within ``socket.idle_timeout_s``."""


class Evicted(Exception):
    """The buffer limit picked this connection (it held the longest incomplete line)."""


async def receive(raw: socket.socket, conn: Conn) -> bytes:
    """The next chunk from the connection's (non-blocking) socket.

    What anyio's ``receive`` does, minus two costs paid per request when requests
    come one at a time: a yield before even trying to read, and registering the
    socket object (not its fd) with the selector, whose lookup formats the socket
    (two system calls) into an exception message. A read that did not have to wait
    still yields once, so a client that always has a line ready cannot starve the
    other tasks. Raises EndOfStream at EOF, BrokenResourceError on errors, Idle
    past the connection's deadline and Evicted when the buffer limit picked it.
    """
    waited = False
    while True:
        try:
            size = raw.recv_into(_buffer)
        except BlockingIOError:
            await _wait(conn, anyio.wait_readable, raw)
            waited = True
            continue
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if not size:
            raise anyio.EndOfStream
        # One copy of exactly what came: a chunk held as part of an incomplete line
        # then costs its size, not the size of a receive buffer shrunk in place.
        data = _view[:size].tobytes()
        if not waited:
            await anyio.lowlevel.checkpoint()
        return data


async def send_now(raw: socket.socket, data: bytes, conn: Conn) -> None:
    """Send ``data``, writing what the socket takes at once, before any yield.

    anyio's ``send`` yields to the event loop before it writes, so under load a
    reply would wait for one step of every ready task (an actor's whole attempt);
    here a wait happens only when the socket cannot take more, and meanwhile
    nothing is read from this client (it is not read from until it reads). Safe
    because this connection's reader is the only task that writes to its socket.
    """
    view = memoryview(data)
    while view:
        try:
            sent = raw.send(view)
        except BlockingIOError:
            await _wait(conn, anyio.wait_writable, raw)
            continue
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        view = view[sent:]


def send_last(raw: socket.socket, data: bytes) -> None:
    """Best effort, never waits: a line before closing a connection that may not read."""
    with contextlib.suppress(OSError):
        raw.send(data)


async def _wait(
    conn: Conn, wait: Callable[[socket.socket], Awaitable[None]], raw: socket.socket
) -> None:
    """Wait for the socket unless the connection expired or was evicted (or is, meanwhile)."""
    if conn.evicted:
        raise Evicted
    if conn.expired:
        raise Idle
    try:
        await wait(raw)
    except anyio.ClosedResourceError:
        if conn.evicted:
            raise Evicted from None
        if conn.expired:
            raise Idle from None
        raise
