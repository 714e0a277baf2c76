"""The Journal protocol every adapter implements, and the records it returns.

Every method may raise Unavailable (storage unreachable; retrying may help) and
Corrupt (the run's stored data is damaged; other runs are unaffected). Methods
never block the event loop: file I/O runs in worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol, runtime_checkable

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from snapshotd.domain.model import (
    AuditEntry,
    DuePoint,
    Event,
    NewEvent,
    Run,
    RunSummary,
    Snapshot,
    SnapshotMeta,
)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()
"""Marks an optional argument the caller did not give (distinct from None)."""


@dataclass(frozen=True, slots=True)
class EventPage:
    """A page of stored events as JSON objects, ready to pass through to a client.

    Each item of ``events`` is the UTF-8 JSON of ``{"seq", "type", "data",
    "recorded_at"}``; ``last_seq`` is the seq of the last one (or ``after_seq``
    when the page is empty) and ``has_more`` says whether later events exist.
    """

    events: list[bytes]
    last_seq: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class Document:
    """An opaque document with a version for compare-and-swap updates."""

    body: bytes
    version: int


class Journal(Protocol):
    """Storage for one instance. Safe for concurrent use by many tasks of one process.

    Per-run operations are serialised inside the adapter where they must be
    (appends, snapshot writes); reads may run concurrently with writes and see
    either the state before or after a write, never a torn one.
    """

    @property
    def description(self) -> str:
        """What `status` shows as ``journal`` (a DSN without its password)."""
        ...

    async def open(self) -> None:
        """Prepare storage (directories, format check, temp-file cleanup, pool).

        Raises ConfigError with a clear message when the storage cannot be used by
        this version (a ``format.json`` mismatch, a directory held by another daemon,
        unknown migrations) and Unavailable when it cannot be reached.
        """
        ...

    async def aclose(self) -> None:
        """Release everything ``open`` acquired. Safe to call twice."""
        ...

    # runs -----------------------------------------------------------------

    async def create_run(
        self, run_id: str, workflow: str, version: str, lease: str | None, now: datetime
    ) -> bool:
        """Create a run; False if it exists with the same workflow, Conflict otherwise."""
        ...

    async def get_run(self, run_id: str) -> Run | None: ...

    async def set_version(self, run_id: str, version: str) -> None:
        """Move the run to new code. Raises NotFound."""
        ...

    async def set_lease(
        self, run_id: str, lease: str | None, expected: str | _Unset | None = UNSET
    ) -> None:
        """Replace the run's lease; with ``expected`` given, Conflict unless it matches."""
        ...

    async def list_runs(self, after: str | None, limit: int) -> list[str]:
        """Run ids in ascending order after ``after``, for sweeps and tools."""
        ...

    async def run_summaries(
        self, after: str | None, limit: int, workflow: str | None
    ) -> list[RunSummary]:
        """At most ``limit`` runs with ids after ``after`` (of ``workflow`` only, when
        given), ascending in the byte order of their UTF-8 ids, each with its newest
        snapshot of the run's version at or below its ``last_seq`` (``list_runs``).

        Costs in proportion to ``limit`` (plus, for an fs journal with ``workflow``,
        the runs of other workflows passed over), not to all runs.
        """
        ...

    # events ---------------------------------------------------------------

    async def append(
        self,
        run_id: str,
        events: Sequence[NewEvent],
        *,
        expected_seq: int | None,
        lease: str | None,
        now: datetime,
    ) -> int:
        """Append events atomically and durably; returns the new last seq.

        Raises NotFound, StaleLease (checked first: the run has a lease and
        ``lease`` differs) and Conflict (``expected_seq`` is not the last seq).
        """
        ...

    async def read_events(
        self, run_id: str, after_seq: int, limit: int | None = None
    ) -> list[Event]:
        """Decoded events with ``seq > after_seq`` in order, at most ``limit`` of them."""
        ...

    async def read_event_page(self, run_id: str, after_seq: int, limit: int) -> EventPage:
        """Like ``read_events`` but as stored JSON, for `load` to pass through."""
        ...

    # snapshots ------------------------------------------------------------

    async def list_snapshots(self, run_id: str) -> list[SnapshotMeta]:
        """Metadata of every stored snapshot of the run, newest first."""
        ...

    async def read_snapshot(self, run_id: str, snapshot_id: str) -> Snapshot:
        """One snapshot with its payload, unverified. Raises NotFound."""
        ...

    async def write_snapshot(self, snapshot: Snapshot, *, lease: str | None) -> None:
        """Persist atomically: a crash leaves either no trace or the whole snapshot.

        Raises Busy when another daemon holds the run, StaleLease when ``lease`` is
        given and the run's lease differs, Superseded when an auto/manual snapshot
        of the same version already has ``through_seq`` >= this one, NotFound when
        the run is gone.
        """
        ...

    async def delete_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        """Delete the given snapshots (missing ones are ignored); returns how many went.

        A snapshot another one not being deleted is stored on (a delta chain's link)
        stays: see ``StoresLinks``.
        """
        ...

    async def set_pinned(self, run_id: str, snapshot_id: str, pinned: bool) -> None:
        """Pin or unpin a snapshot. Raises NotFound."""
        ...

    async def due_runs(self, cutoff: datetime, limit: int) -> list[str]:
        """Runs with events after their latest snapshot, whose latest snapshot (or,
        with none, creation) is older than ``cutoff``: candidates for the interval sweep."""
        ...

    # audit log ------------------------------------------------------------

    async def append_audit(self, kind: str, fields: dict[str, Any], now: datetime) -> int:
        """Append an audit entry durably; returns its cursor (increasing from 1)."""
        ...

    async def read_audit(self, cursor: int, limit: int) -> list[AuditEntry]:
        """Entries with cursor > ``cursor``, oldest first, at most ``limit``."""
        ...

    # documents ------------------------------------------------------------

    async def get_document(self, namespace: str, key: str) -> Document | None:
        """A small document (savepoint state) stored beside the runs."""
        ...

    async def put_document(
        self, namespace: str, key: str, body: bytes, expected_version: int | None
    ) -> int:
        """Write atomically if the stored version is ``expected_version`` (None: absent).

        Returns the new version; raises Conflict when another writer got there first.
        """
        ...


@dataclass(frozen=True, slots=True, order=True)
class DueRun:
    """A run found by a sweep, with the time it became due (its place in the order)."""

    due_at: datetime
    run_id: str


FIRST_RETRY_S: Final = 1.0
"""Back-off after a run's first failed attempt; it doubles with every further one."""


@runtime_checkable
class SchedulesSweeps(Protocol):
    """A journal that keeps each run's due point, so sweeps cost what is due (SPEC 1).

    A run is due when it has events and: no daemon recorded its due point yet, or
    ``last_seq`` reached ``due_seq``, or ``due_at`` passed and an event follows
    ``snap_seq``. It becomes due at the append that makes it so (by count), at
    ``due_at`` (by time), or at once when unseen; a back-off after failures pushes
    that later. ``get_run`` returns the recorded point in ``Run.due``.
    """

    async def sweep_due(
        self,
        now: datetime,
        limit: int,
        after: DueRun | None,
        slices: Sequence[int] | None = None,
    ) -> list[DueRun]:
        """Runs due at ``now`` after ``after`` in (due time, run id) order, at most ``limit``;
        with ``slices``, only runs of those slices (``domain.slices.run_slice``).

        Costs in proportion to the runs returned (an index on the due time), never
        to all runs.
        """
        ...

    async def set_due(self, run_id: str, point: DuePoint, *, snapshotted: bool) -> None:
        """Record the run's next due point; NotFound when the run is gone.

        Ignored when it would go backwards (a recorded ``snap_seq`` above
        ``point.snap_seq``) or, unless ``snapshotted`` (this daemon just wrote the
        base), when a point is already recorded for the same ``snap_seq``: the due
        point follows whichever daemon snapshotted the run last. ``snapshotted``
        also ends a back-off. A version change or a lease change (the run was
        restarted) forgets the point and the back-off.
        """
        ...

    async def record_failure(self, run_id: str, now: datetime, max_delay_s: float) -> None:
        """Back the run off after a failed attempt: ``FIRST_RETRY_S`` after the first
        failure, doubling with every further one, at most ``max_delay_s``."""
        ...


@runtime_checkable
class KeepsConnected(Protocol):
    """A journal behind a network connection (PostgreSQL): it opens even while its
    database is down and reconnects by itself; ``up`` says whether it answers."""

    @property
    def up(self) -> bool: ...

    async def keep_connected(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Reconnect (with jittered backoff) and probe until cancelled; never raises
        except on cancellation."""
        ...


@runtime_checkable
class QueuesAudit(Protocol):
    """A journal whose audit writes are batched (PostgreSQL): entries are queued
    without waiting and written within ~1 s; a crash may lose the last batch."""

    def queue_audit(self, kind: str, fields: dict[str, Any], now: datetime) -> None:
        """Queue an entry for the next batch; never blocks, never raises."""
        ...

    async def write_queued_audit(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Write queued entries about every second until cancelled, then the rest
        (bounded). Failed batches are kept and retried; never raises except on
        cancellation."""
        ...


@runtime_checkable
class RetainsAudit(Protocol):
    """A journal that deletes expired audit entries (``audit_retention_s``)."""

    async def prune_audit(self, cutoff: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest entries older than ``cutoff``; returns
        how many went (0 also when another daemon is pruning: one at a time)."""
        ...


@runtime_checkable
class WatchesAppends(Protocol):
    """A journal whose appends can come from outside the daemon (PostgreSQL NOTIFY).

    The runtime runs ``watch_appends`` in the instance's task group when the
    journal has it, turning each appended run into a coalesced snapshot check.
    """

    async def watch_appends(
        self,
        on_append: Callable[[str], None],
        on_gap: Callable[[], None],
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_append(run_id)`` for every notified append until cancelled.

        Calls ``task_status.started()`` once listening. After a lost connection it
        reconnects with backoff, listens again, then calls ``on_gap()`` so the
        runtime sweeps for what it may have missed. Never raises except on
        cancellation.
        """
        ...


@dataclass(frozen=True, slots=True)
class SliceView:
    """What one heartbeat saw: live daemons, and unexpired leases (slice -> holder)."""

    members: list[str]
    leases: dict[int, str]


class SliceStore(Protocol):
    """Leases on the 1024 slices, shared by the daemons of one database.

    Expiry runs on the store's clock. Every method may raise Unavailable.
    """

    async def beat(self, member: str, lease_s: float) -> SliceView:
        """Renew ``member`` and every lease it holds for ``lease_s``; what is live now."""
        ...

    async def claim(self, member: str, slices: Sequence[int], lease_s: float) -> list[int]:
        """Take those of ``slices`` that are free or expired; returns the ones taken."""
        ...

    async def release(self, member: str, slices: Sequence[int]) -> None: ...

    async def leave(self, member: str) -> None:
        """Give up every lease and the membership (a clean stop)."""
        ...

    async def forward(self, run_ids: Sequence[str]) -> None:
        """Pass snapshot hints to whichever daemon holds each run's slice."""
        ...


@runtime_checkable
class DividesSlices(Protocol):
    """A journal several daemons share, dividing its runs' slices with leases."""

    @property
    def slice_store(self) -> SliceStore: ...


@runtime_checkable
class HoldsDamagedSnapshots(Protocol):
    """A journal that can hold snapshots too damaged to list (fs: a file whose
    metadata line does not decode; PostgreSQL metadata are columns, so never).

    Such snapshots are left out of ``list_snapshots``, so they are never a base and
    never pruned; the runtime reports them (audit event, log, ``verify``'s ``corrupt``).
    """

    async def damaged_snapshots(self, run_id: str) -> dict[str, str]:
        """The run's unlistable snapshots: snapshot id -> what is wrong. Raises NotFound."""
        ...


@runtime_checkable
class StoresLinks(Protocol):
    """A journal that stores snapshots as delta chains (domain.chains).

    ``write_snapshot`` keeps ``meta.base_id`` and ``meta.stored_bytes`` and raises
    Superseded when the base link is gone. A retired snapshot (retention removed it
    while a kept snapshot still needs its link) stays readable here, but
    ``list_snapshots``, ``read_snapshot`` and ``set_pinned`` treat it as absent.
    Journals without this store every snapshot whole.
    """

    async def list_links(self, run_id: str) -> list[SnapshotMeta]:
        """Every stored snapshot of the run, retired ones included, newest first."""
        ...

    async def read_link(self, run_id: str, snapshot_id: str) -> Snapshot:
        """One stored snapshot as stored (whole or a delta), retired or not. Raises NotFound."""
        ...

    async def read_links(self, run_id: str, snapshot_ids: Sequence[str]) -> list[Snapshot]:
        """``read_link`` of each of ``snapshot_ids``, in that order, in one round trip
        (a chain is read whole to load it). Raises NotFound when one is missing."""
        ...

    async def retire_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        """Retire the given snapshots (missing ones are ignored); returns how many."""
        ...


def kept_bases(snapshots: Iterable[Snapshot | SnapshotMeta], doomed: Sequence[str]) -> list[str]:
    """``doomed`` without the links another snapshot outside ``doomed`` is stored on:
    ``delete_snapshots`` never breaks a chain, whatever its caller computed."""
    gone = set(doomed)
    metas = (s.meta if isinstance(s, Snapshot) else s for s in snapshots)
    needed = {m.base_id for m in metas if m.base_id is not None and m.snapshot_id not in gone}
    return [sid for sid in dict.fromkeys(doomed) if sid not in needed]
