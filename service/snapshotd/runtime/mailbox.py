"""The per-instance mailbox: a bounded FIFO of runs to check, coalescing by run id.

It sits behind the socket reader's hot path (hundreds of thousands of ``snapshot``
requests per second), so ``offer`` is a dict lookup and a deque append: it never
awaits, never creates a task, and only touches an Event when the actor sleeps.

Runs in flight: the actor runs several attempts at once, never two of one run. A
Job whose run is still in flight when it reaches the head is parked (still pending,
so requests keep coalescing into it) and returns to the head when ``done`` releases
the run: each run's attempts keep the order of their requests.

Coalescing and leases: the pending entry keeps the newest lease a request gave,
unless some coalesced request gave none, in which case the attempt checks no lease
at all (a request without lease asks for an unchecked attempt; widening the merged
request is safer than skipping on behalf of a requester that never fenced).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import anyio

Offer = Literal["queued", "coalesced", "dropped"]


class MailboxClosed(Exception):
    """The mailbox stopped taking work (daemon drain)."""


@dataclass(slots=True)
class Job:
    """A run waiting for a snapshot check.

    ``requested``: a ``snapshot`` request created or joined it before it ran, so its
    outcome is counted in status (exactly once for the request that was queued).
    Otherwise it is an internal trigger (sweep, append notification).
    """

    run_id: str
    lease: str | None
    requested: bool
    unchecked: bool


class Mailbox:
    """Bounded FIFO of Jobs with at most one pending Job per run.

    ``get`` hands out a run only while no Job of it is in flight; ``done`` ends it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._pending: dict[str, Job] = {}
        self._running: set[str] = set()
        self._parked: set[str] = set()
        """Pending runs that reached the head while in flight, waiting for ``done``."""
        self._wakeup: anyio.Event | None = None
        self._closed = False
        self._closed_event: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        """Return once ``close`` has been called."""
        if self._closed:
            return
        if self._closed_event is None:
            self._closed_event = anyio.Event()
        await self._closed_event.wait()

    def offer(self, run_id: str, lease: str | None) -> Offer:
        """Queue a ``snapshot`` request; never blocks."""
        job = self._pending.get(run_id)
        if job is not None:
            if not job.requested:
                # An internal trigger is pending: the request takes it over and is
                # counted when it ends, as if it had been queued itself.
                job.requested = True
                job.lease, job.unchecked = lease, lease is None
                return "queued"
            if lease is None:
                job.unchecked = True
            job.lease = lease if lease is not None else job.lease
            return "coalesced"
        if self._closed or len(self._pending) >= self.capacity:
            return "dropped"
        self._push(Job(run_id, lease, requested=True, unchecked=lease is None))
        return "queued"

    def offer_internal(self, run_id: str) -> bool:
        """Queue a check that is not a request (sweep, notification); False if full."""
        if run_id in self._pending:
            return True
        if self._closed or len(self._pending) >= self.capacity:
            return False
        self._push(Job(run_id, None, requested=False, unchecked=True))
        return True

    def _push(self, job: Job) -> None:
        self._pending[job.run_id] = job
        self._order.append(job.run_id)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def get(self) -> Job:
        """The oldest Job whose run is not in flight, now in flight until ``done``.

        Raises MailboxClosed once closed (queued Jobs are discarded).
        """
        while True:
            if self._closed:
                raise MailboxClosed
            while self._order:
                run_id = self._order.popleft()
                if run_id in self._running:
                    self._parked.add(run_id)
                    continue
                self._running.add(run_id)
                return self._pending.pop(run_id)
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            await self._wakeup.wait()

    def done(self, run_id: str) -> None:
        """The attempt of ``run_id`` that ``get`` handed out ended (or was abandoned)."""
        self._running.discard(run_id)
        if run_id in self._parked:
            self._parked.discard(run_id)
            self._order.appendleft(run_id)
            self._wake()

    def close(self) -> list[Job]:
        """Stop intake, wake the waiting actor, and return the discarded Jobs."""
        self._closed = True
        discarded = list(self._pending.values())
        self._order.clear()
        self._pending.clear()
        self._parked.clear()
        self._wake()
        if self._closed_event is not None:
            self._closed_event.set()
        return discarded
