"""The limits that keep one client from hurting the others (SPEC section 2).

``Connections`` tracks every open connection and the bytes of incomplete lines
each one holds; past ``socket.max_buffered_bytes`` in total it evicts the
connection holding the longest one. ``Throttled`` keeps a flood of rejected
requests from turning into a flood of log lines. Both are plain bookkeeping on
the event loop's thread: no locks, no awaits.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

LOG_LINES_PER_S = 10
"""At most this many lines a second per throttled event; the rest are counted."""


class Conn:
    """One connection's share of the limits.

    ``deadline`` is when it is closed for want of a complete request (infinity when
    ``idle_timeout_s`` is 0); ``held`` the bytes of its incomplete line; ``evicted``
    is set when the buffer limit picked it, and ``waiting`` is the cancel scope of
    its current wait for the socket, so an eviction wakes it at once.
    """

    __slots__ = ("deadline", "evicted", "held", "waiting")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.held = 0
        self.evicted = False
        self.waiting: anyio.CancelScope | None = None


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

    def add(self) -> Conn:
        conn = Conn(self.next_deadline())
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
        return anyio.current_time() + self.idle_timeout_s

    def hold(self, conn: Conn, held: int) -> None:
        """Record that ``conn`` now holds ``held`` bytes of an incomplete line.

        Past the total limit, evicts the connections holding the longest lines
        (``conn`` itself, possibly) until the rest fit: each is marked, its bytes
        are no longer counted, and its wait for the socket is cancelled.
        """
        self.buffered += held - conn.held
        conn.held = held
        while self.buffered > self.max_buffered_bytes:
            victim = max(self.open, key=_held)
            victim.evicted = True
            self.buffered -= victim.held
            victim.held = 0
            if victim.waiting is not None:
                victim.waiting.cancel()


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
