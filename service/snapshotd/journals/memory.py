"""The ``memory:`` journal: everything in dicts, for tests and throwaway instances.

It honours the whole Journal contract (leases, optimistic concurrency, snapshot
ordering) so the contract suite and the runtime tests can run without storage.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from snapshotd.domain.errors import Conflict, NotFound, StaleLease, Superseded
from snapshotd.domain.model import (
    AuditEntry,
    DuePoint,
    Event,
    NewEvent,
    Run,
    RunSummary,
    Snapshot,
    SnapshotMeta,
    utcnow,
)
from snapshotd.domain.policies import newest_first
from snapshotd.domain.slices import run_slice
from snapshotd.journals.base import (
    FIRST_RETRY_S,
    UNSET,
    Document,
    DueRun,
    EventPage,
    _Unset,
    kept_bases,
)
from snapshotd.journals.records import event_json


@dataclass
class _RunState:
    run: Run
    events: list[Event] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    ready_at: datetime | None = None
    """When the run became due (see ``SchedulesSweeps``); None: not due."""
    failures: int = 0
    retry_at: datetime | None = None

    def sweep_at(self) -> datetime | None:
        if self.ready_at is None:
            return None
        return self.ready_at if self.retry_at is None else max(self.ready_at, self.retry_at)

    def became_due(self, at: datetime) -> None:
        self.ready_at = at if self.ready_at is None else min(self.ready_at, at)

    def reschedule(self, now: datetime) -> None:
        """Recompute ``ready_at`` from the recorded point (after it changed)."""
        due, last = self.run.due, self.run.last_seq
        if due is None:
            self.ready_at = now if last > 0 else None
        elif last >= due.due_seq:
            self.ready_at = now
        elif due.due_at is not None and last > due.snap_seq:
            self.ready_at = due.due_at
        else:
            self.ready_at = None


class MemoryJournal:
    """In-process journal; contents vanish with the process."""

    def __init__(self) -> None:
        self._runs: dict[str, _RunState] = {}
        self._audit: list[AuditEntry] = []
        self._audit_cursor = 0
        self._documents: dict[tuple[str, str], Document] = {}

    @property
    def description(self) -> str:
        return "memory:"

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _state(self, run_id: str) -> _RunState:
        try:
            return self._runs[run_id]
        except KeyError:
            raise NotFound(f"run {run_id!r} not found") from None

    async def create_run(
        self, run_id: str, workflow: str, version: str, lease: str | None, now: datetime
    ) -> bool:
        existing = self._runs.get(run_id)
        if existing is not None:
            if existing.run.workflow != workflow:
                raise Conflict(f"run {run_id!r} exists with workflow {existing.run.workflow!r}")
            return False
        self._runs[run_id] = _RunState(Run(run_id, workflow, version, lease, 0, now))
        return True

    async def get_run(self, run_id: str) -> Run | None:
        state = self._runs.get(run_id)
        return None if state is None else state.run

    async def set_version(self, run_id: str, version: str) -> None:
        state = self._state(run_id)
        if version != state.run.version:
            state.run = replace(state.run, version=version, due=None)
            state.failures, state.retry_at = 0, None
            state.reschedule(utcnow())

    async def set_lease(
        self, run_id: str, lease: str | None, expected: str | _Unset | None = UNSET
    ) -> None:
        state = self._state(run_id)
        if not isinstance(expected, _Unset) and expected != state.run.lease:
            raise Conflict(f"run {run_id!r} has another lease than expected")
        if lease != state.run.lease:
            state.failures, state.retry_at = 0, None
        state.run = replace(state.run, lease=lease)

    async def list_runs(self, after: str | None, limit: int) -> list[str]:
        ids = sorted(r for r in self._runs if after is None or r > after)
        return ids[:limit]

    async def run_summaries(
        self, after: str | None, limit: int, workflow: str | None
    ) -> list[RunSummary]:
        # str order is code point order, which is the byte order of UTF-8.
        summaries: list[RunSummary] = []
        for run_id in sorted(r for r in self._runs if after is None or r > after):
            if len(summaries) >= limit:
                break
            state = self._runs[run_id]
            run = state.run
            if workflow is not None and run.workflow != workflow:
                continue
            newest = next(
                (
                    m
                    for m in newest_first(s.meta for s in state.snapshots.values())
                    if m.version == run.version and m.through_seq <= run.last_seq and not m.retired
                ),
                None,
            )
            summaries.append(
                RunSummary(
                    run_id,
                    run.workflow,
                    run.version,
                    run.last_seq,
                    None if newest is None else newest.snapshot_id,
                    None if newest is None else newest.through_seq,
                )
            )
        return summaries

    async def append(
        self,
        run_id: str,
        events: Sequence[NewEvent],
        *,
        expected_seq: int | None,
        lease: str | None,
        now: datetime,
    ) -> int:
        state = self._state(run_id)
        run = state.run
        if run.lease is not None and lease != run.lease:
            raise StaleLease(f"run {run_id!r} is leased to another owner")
        if expected_seq is not None and expected_seq != run.last_seq:
            raise Conflict(
                f"run {run_id!r} is at seq {run.last_seq}, not {expected_seq}",
                last_seq=run.last_seq,
            )
        seq = run.last_seq
        for new in events:
            seq += 1
            state.events.append(Event(seq, new.type, new.data, now))
            state.raw.append(event_json(seq, new.type, new.data, now))
        state.run = replace(run, last_seq=seq)
        due = run.due
        if due is None or seq >= due.due_seq:
            state.became_due(now)
        elif due.due_at is not None and seq > due.snap_seq:
            state.became_due(due.due_at)
        return seq

    async def read_events(
        self, run_id: str, after_seq: int, limit: int | None = None
    ) -> list[Event]:
        events = self._state(run_id).events
        end = None if limit is None else after_seq + limit
        return events[max(after_seq, 0) : end]

    async def read_event_page(self, run_id: str, after_seq: int, limit: int) -> EventPage:
        state = self._state(run_id)
        start = max(after_seq, 0)
        page = state.raw[start : start + limit]
        last = start + len(page) if page else after_seq
        return EventPage(page, last, last < state.run.last_seq)

    async def list_snapshots(self, run_id: str) -> list[SnapshotMeta]:
        snaps = self._state(run_id).snapshots.values()
        return newest_first(s.meta for s in snaps if not s.meta.retired)

    async def list_links(self, run_id: str) -> list[SnapshotMeta]:
        return newest_first(s.meta for s in self._state(run_id).snapshots.values())

    async def read_snapshot(self, run_id: str, snapshot_id: str) -> Snapshot:
        snapshot = await self.read_link(run_id, snapshot_id)
        if snapshot.meta.retired:
            raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found")
        return snapshot

    async def read_link(self, run_id: str, snapshot_id: str) -> Snapshot:
        try:
            return self._state(run_id).snapshots[snapshot_id]
        except KeyError:
            raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found") from None

    async def read_links(self, run_id: str, snapshot_ids: Sequence[str]) -> list[Snapshot]:
        return [await self.read_link(run_id, sid) for sid in snapshot_ids]

    async def write_snapshot(self, snapshot: Snapshot, *, lease: str | None) -> None:
        meta = snapshot.meta
        state = self._state(meta.run_id)
        if lease is not None and state.run.lease is not None and lease != state.run.lease:
            raise StaleLease(f"run {meta.run_id!r} is leased to another owner")
        if meta.base_id is not None and meta.base_id not in state.snapshots:
            raise Superseded(f"run {meta.run_id!r}: base link {meta.base_id} is gone")
        if meta.kind != "safety":
            for other in state.snapshots.values():
                if (
                    other.meta.kind != "safety"
                    and other.meta.version == meta.version
                    and other.meta.through_seq >= meta.through_seq
                    and not other.meta.retired
                ):
                    raise Superseded(
                        f"run {meta.run_id!r} already has a snapshot through seq "
                        f"{other.meta.through_seq}"
                    )
        state.snapshots[meta.snapshot_id] = snapshot

    async def delete_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        snaps = self._state(run_id).snapshots
        doomed = kept_bases(snaps.values(), snapshot_ids)
        return sum(snaps.pop(sid, None) is not None for sid in doomed)

    async def retire_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        snaps = self._state(run_id).snapshots
        retired = 0
        for sid in snapshot_ids:
            snap = snaps.get(sid)
            if snap is not None and not snap.meta.retired:
                snaps[sid] = replace(snap, meta=replace(snap.meta, retired=True, pinned=False))
                retired += 1
        return retired

    async def set_pinned(self, run_id: str, snapshot_id: str, pinned: bool) -> None:
        snap = await self.read_snapshot(run_id, snapshot_id)
        self._runs[run_id].snapshots[snapshot_id] = replace(
            snap, meta=replace(snap.meta, pinned=pinned)
        )

    async def sweep_due(
        self,
        now: datetime,
        limit: int,
        after: DueRun | None,
        slices: Sequence[int] | None = None,
    ) -> list[DueRun]:
        wanted = None if slices is None else set(slices)
        found = []
        for run_id, state in self._runs.items():
            if wanted is not None and run_slice(run_id) not in wanted:
                continue
            at = state.sweep_at()
            if at is not None and at <= now:
                item = DueRun(at, run_id)
                if after is None or item > after:
                    found.append(item)
        found.sort()
        return found[:limit]

    async def set_due(self, run_id: str, point: DuePoint, *, snapshotted: bool) -> None:
        state = self._state(run_id)
        old = state.run.due
        if old is not None and (
            old.snap_seq > point.snap_seq or (old.snap_seq == point.snap_seq and not snapshotted)
        ):
            return
        state.run = replace(state.run, due=point)
        if snapshotted:
            state.failures, state.retry_at = 0, None
        state.reschedule(utcnow())

    async def record_failure(self, run_id: str, now: datetime, max_delay_s: float) -> None:
        state = self._state(run_id)
        delay = min(max_delay_s, FIRST_RETRY_S * 2 ** min(state.failures, 30))
        state.failures += 1
        state.retry_at = now + timedelta(seconds=delay)

    async def due_runs(self, cutoff: datetime, limit: int) -> list[str]:
        due: list[str] = []
        for run_id, state in sorted(self._runs.items()):
            latest = max(
                (
                    s.meta
                    for s in state.snapshots.values()
                    if s.meta.version == state.run.version and not s.meta.retired
                ),
                key=SnapshotMeta.order_key,
                default=None,
            )
            through = 0 if latest is None else latest.through_seq
            since = state.run.created_at if latest is None else latest.created_at
            if state.run.last_seq > through and since < cutoff:
                due.append(run_id)
                if len(due) >= limit:
                    break
        return due

    async def append_audit(self, kind: str, fields: dict[str, Any], now: datetime) -> int:
        self._audit_cursor += 1
        cursor = self._audit_cursor
        self._audit.append(AuditEntry(cursor, now, kind, dict(fields)))
        return cursor

    async def read_audit(self, cursor: int, limit: int) -> list[AuditEntry]:
        start = bisect_right(self._audit, cursor, key=lambda entry: entry.cursor)
        return self._audit[start : start + limit]

    async def prune_audit(self, cutoff: datetime, limit: int) -> int:
        doomed = 0
        while doomed < min(limit, len(self._audit)) and self._audit[doomed].at < cutoff:
            doomed += 1
        del self._audit[:doomed]
        return doomed

    async def get_document(self, namespace: str, key: str) -> Document | None:
        return self._documents.get((namespace, key))

    async def put_document(
        self, namespace: str, key: str, body: bytes, expected_version: int | None
    ) -> int:
        current = self._documents.get((namespace, key))
        current_version = None if current is None else current.version
        if current_version != expected_version:
            raise Conflict(f"document {namespace}/{key} changed concurrently")
        version = 1 if current_version is None else current_version + 1
        self._documents[(namespace, key)] = Document(bytes(body), version)
        return version
