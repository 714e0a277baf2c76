"""The slice keeper: this daemon's leases on slices of a shared journal, kept by heartbeat.

Every ``lease_s / 3`` it renews its membership and leases, then moves towards its
share (``domain.slices.plan``). What it holds is trusted only until ``lease_s``
after the heartbeat was *sent* (monotonic clock): the database stamps the lease
later, so this daemon stops serving a slice before anyone else may take it, even
when it was paused (SIGSTOP) or cut off and never heard back. Correctness never
depends on it (per-run locks guard every write); it only keeps daemons from
doing the same work twice.

Snapshot hints for runs in another live daemon's slice are forwarded through the
database in batches (``forward``), from a bounded buffer so intake never waits.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections import deque
from collections.abc import Callable

import anyio
import structlog

from snapshotd.domain import slices as domain
from snapshotd.domain.errors import SnapshotdError
from snapshotd.journals.base import SliceStore

_log = structlog.get_logger("snapshotd.slices")

FORWARD_BATCH = 500


class SliceKeeper:
    """One instance's view of the slices it holds, and the loop that keeps them."""

    def __init__(self, store: SliceStore, lease_s: float, instance: str, capacity: int) -> None:
        self.store = store
        self.lease_s = lease_s
        self.instance = instance
        self.member = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.owned: frozenset[int] = frozenset()
        self.holders: dict[int, str] = {}
        """Unexpired leases of the last heartbeat, slice -> holder."""
        self.valid_until = -1.0
        self.running = False
        """Set by ``run``: a keeper that is not running restricts nothing (one daemon)."""
        self._hints: deque[str] = deque()
        self._capacity = capacity
        self._hint_ready = anyio.Event()

    def _valid(self) -> bool:
        return anyio.current_time() < self.valid_until

    def owns(self, run_id: str) -> bool:
        """True while this daemon holds the run's slice (always, when not running)."""
        if not self.running:
            return True
        return self._valid() and domain.run_slice(run_id) in self.owned

    def owned_count(self) -> int:
        return len(self.owned) if self._valid() else 0

    def sweep_slices(self) -> list[int] | None:
        """The slices a sweep may look at now: none once the leases are in doubt, and
        None (every slice) when the keeper is not running."""
        if not self.running:
            return None
        return sorted(self.owned) if self._valid() else []

    def held_elsewhere(self, run_id: str) -> bool:
        """True when another live daemon holds the run's slice (as of the last heartbeat).

        A view up to one lease past its validity still decides: a late heartbeat (a
        busy host) must not turn every hint into a local attempt racing the holder's.
        Forwarding on a stale view only risks a hint, which sweeps make up for.
        """
        if anyio.current_time() >= self.valid_until + self.lease_s:
            return False
        holder = self.holders.get(domain.run_slice(run_id))
        return holder is not None and holder != self.member

    def forward(self, run_id: str) -> bool:
        """Queue a hint for the slice's holder; False when the buffer is full. Never blocks."""
        if len(self._hints) >= self._capacity:
            return False
        self._hints.append(run_id)
        self._hint_ready.set()
        return True

    async def run(self, on_taken: Callable[[], None]) -> None:
        """Heartbeat and forward hints until cancelled; leave cleanly on the way out.

        ``on_taken()`` is called after a heartbeat that took slices (sweep them now).
        """
        self.running = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward_loop)
                await self._beat_loop(on_taken)
        finally:
            self.owned = frozenset()
            with anyio.move_on_after(1, shield=True):
                try:
                    await self.store.leave(self.member)
                except (SnapshotdError, OSError) as exc:
                    _log.warning("slices_leave_failed", instance=self.instance, error=str(exc))

    async def _beat_loop(self, on_taken: Callable[[], None]) -> None:
        every = self.lease_s / 3
        while True:
            sent = anyio.current_time()
            try:
                with anyio.fail_after(every):
                    taken = await self.beat(sent)
            except (SnapshotdError, OSError, TimeoutError) as exc:
                _log.warning(
                    "slices_heartbeat_failed",
                    instance=self.instance,
                    error=f"{type(exc).__name__}: {exc}",
                )
            else:
                if taken:
                    on_taken()
            await anyio.sleep(max(0.0, sent + every - anyio.current_time()))

    async def beat(self, sent: float) -> bool:
        """One heartbeat sent at ``sent``; True when it took slices this daemon lacked."""
        view = await self.store.beat(self.member, self.lease_s)
        holders = dict(view.leases)
        mine = {s for s, holder in holders.items() if holder == self.member}
        plan = domain.plan(self.member, view.members, holders)
        if plan.release:
            mine -= set(plan.release)
            self.owned = frozenset(mine)
            await self.store.release(self.member, plan.release)
            for s in plan.release:
                holders.pop(s, None)
        if plan.claim:
            for s in await self.store.claim(self.member, plan.claim, self.lease_s):
                mine.add(s)
                holders[s] = self.member
        gained = bool(mine - self.owned) or not self._valid()
        self.owned = frozenset(mine)
        self.holders = holders
        self.valid_until = sent + self.lease_s
        if gained and mine:
            _log.info("slices_taken", instance=self.instance, owned=len(mine))
        return gained and bool(mine)

    async def _forward_loop(self) -> None:
        while True:
            await self._hint_ready.wait()
            self._hint_ready = anyio.Event()
            while self._hints:
                batch = [self._hints.popleft() for _ in range(min(FORWARD_BATCH, len(self._hints)))]
                try:
                    await self.store.forward(batch)
                except (SnapshotdError, OSError) as exc:
                    # Hints only: the owner's sweep finds the runs that are due anyway.
                    _log.warning(
                        "slices_forward_failed",
                        instance=self.instance,
                        hints=len(batch),
                        error=f"{type(exc).__name__}: {exc}",
                    )
