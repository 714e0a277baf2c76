"""The limits that keep one client from hurting the others (SPEC section 2).

``Connections`` tracks every open connection and the bytes of incomplete lines
each one holds; past ``socket.max_buffered_bytes`` in total it evicts the
connection holding the longest one. ``Throttled`` keeps a flood of rejected
requests from turning into a flood of log lines. Both are plain bookkeeping on
the event loop's thread: no locks, no awaits.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import anyio

LOG_LINES_PER_S = 10
"""At most this many lines a second per throttled event; the rest are counted."""


class Conn:
    """One connection's share of the limits.

    ``deadline`` (a ``time.monotonic`` time) is when it is closed for want of a
    complete request (infinity when ``idle_timeout_s`` is 0), and ``expired`` is set
    once it passed; ``held`` is the bytes of its incomplete line; ``evicted`` is set
    when the buffer limit picked it. Setting either flag also wakes the connection's
    wait for its socket (``anyio.notify_closing``): no per-wait timer or cancel
    scope is needed on the hot path.
    """

    __slots__ = ("deadline", "evicted", "expired", "held", "raw")

    def __init__(self, raw: socket.socket, deadline: float) -> None:
        self.raw = raw
        self.deadline = deadline
        self.expired = False
        self.held = 0
        self.evicted = False

    def wake(self) -> None:
        """Make a wait for this connection's socket end (ClosedResourceError)."""
        anyio.notify_closing(self.raw)


class Connections:
    """The open connections and the bytes of incomplete lines they hold together."""

    def __init__(self, max_connections: int, max_buffered_bytes: int, idle_timeout_s: float):
        self.max_connections = max_connections
        self.max_buffered_bytes = max_buffered_bytes
        self.idle_timeout_s = idle_timeout_s or None
        self.open: set[Conn] = set()
        self.buffered = 0

    def __len__(self) -> int:
        return len(self.open)

    def full(self) -> bool:
        return len(self.open) >= self.max_connections

    def add(self, raw: socket.socket) -> Conn:
        conn = Conn(raw, self.next_deadline())
        self.open.add(conn)
        return conn

    def remove(self, conn: Conn) -> None:
        self.open.discard(conn)
        self.buffered -= conn.held
        conn.held = 0

    def next_deadline(self) -> float:
        """When a connection that just sent a complete request becomes idle."""
        if self.idle_timeout_s is None:
            return float("inf")
        return time.monotonic() + self.idle_timeout_s

    async def expire_idle(self) -> None:
        """Flag and wake the connections past their deadline, until cancelled.

        One task for all connections, checking a few times per ``idle_timeout_s``
        (at most every second): a connection is closed at most that much late.
        """
        if self.idle_timeout_s is None:
            return
        period = min(1.0, self.idle_timeout_s / 4)
        while True:
            await anyio.sleep(period)
            now = time.monotonic()
            for conn in list(self.open):
                if conn.deadline <= now and not conn.expired:
                    conn.expired = True
                    conn.wake()

    def hold(self, conn: Conn, held: int) -> None:
        """Record that ``conn`` now holds ``held`` bytes of an incomplete line.

        Past the total limit, evicts the connections holding the longest lines
        (``conn`` itself, possibly) until the rest fit: each is marked, its bytes
        are no longer counted, and its wait for the socket is woken.
        """
        self.buffered += held - conn.held
        conn.held = held
        while self.buffered > self.max_buffered_bytes:
            victim = max(self.open, key=_held)
            victim.evicted = True
            self.buffered -= victim.held
            victim.held = 0
            victim.wake()


def _held(conn: Conn) -> int:
    return conn.held


class Throttled:
    """A warning log event limited to ``per_s`` lines a second.

    The first line after a quiet second carries ``suppressed``: how many lines were
    left out since the previous one. What a line reports is counted elsewhere, in
    full, by the metrics.
    """

    def __init__(self, log: Any, event: str, per_s: int = LOG_LINES_PER_S):
        self._log = log
        self._event = event
        self._per_s = per_s
        self._window_end = 0.0
        self._lines = 0
        self._suppressed = 0

    def warning(self, **fields: Any) -> None:
        now = time.monotonic()
        if now >= self._window_end:
            self._window_end = now + 1.0
            self._lines = 0
            if self._suppressed:
                fields["suppressed"] = self._suppressed
                self._suppressed = 0
        if self._lines < self._per_s:
            self._lines += 1
            self._log.warning(self._event, **fields)
        else:
            self._suppressed += 1
