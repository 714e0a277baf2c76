"""The per-instance mailbox: a bounded FIFO of runs to check, coalescing by run id.

It sits behind the socket reader's hot path (hundreds of thousands of ``snapshot``
requests per second), so ``offer`` is a dict lookup and a deque append: it never
awaits, never creates a task, and only touches an Event when the actor sleeps.

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
    """Bounded FIFO of Jobs with at most one pending Job per run."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._pending: dict[str, Job] = {}
        self._wakeup: anyio.Event | None = None
        self._closed = False
        self._closed_event: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._order)

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
        if self._closed or len(self._order) >= self.capacity:
            return "dropped"
        self._push(Job(run_id, lease, requested=True, unchecked=lease is None))
        return "queued"

    def offer_internal(self, run_id: str) -> bool:
        """Queue a check that is not a request (sweep, notification); False if full."""
        if run_id in self._pending:
            return True
        if self._closed or len(self._order) >= self.capacity:
            return False
        self._push(Job(run_id, None, requested=False, unchecked=True))
        return True

    def _push(self, job: Job) -> None:
        self._pending[job.run_id] = job
        self._order.append(job.run_id)
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def get(self) -> Job:
        """The oldest Job; raises MailboxClosed once closed (queued Jobs are discarded)."""
        while not self._order:
            if self._closed:
                raise MailboxClosed
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        if self._closed:
            raise MailboxClosed
        return self._pending.pop(self._order.popleft())

    def close(self) -> list[Job]:
        """Stop intake, wake the waiting actor, and return the discarded Jobs."""
        self._closed = True
        discarded = [self._pending[run_id] for run_id in self._order]
        self._order.clear()
        self._pending.clear()
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        if self._closed_event is not None:
            self._closed_event.set()
        return discarded
