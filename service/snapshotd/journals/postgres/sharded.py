"""The sharded PostgreSQL journal: the 1024 slices spread over several databases.

Database ``i`` of ``n`` holds slices ``floor(i*1024/n)`` up to
``floor((i+1)*1024/n)`` (``domain.slices.slice_shard``); a run lives wholly in its
slice's database, so every per-run operation goes to one shard's
``PostgresJournal`` and per-run locks stay correct. Listings merge the shards'
pages; the audit log and documents live in database 0. A shard is served only
once its recorded layout (migration 0008) agrees with its place in the list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from heapq import merge
from typing import Any, TypeVar

import anyio
import structlog
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from snapshotd.domain.errors import ConfigError, SnapshotdError, Unavailable
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
from snapshotd.domain.slices import run_slice, shard_bounds, slice_shard
from snapshotd.journals.base import UNSET, Document, DueRun, EventPage, _Unset
from snapshotd.journals.migrate import MigrationError
from snapshotd.journals.postgres.adapter import PostgresJournal
from snapshotd.journals.postgres.errors import wrap_errors
from snapshotd.journals.postgres.layout import layout_problem
from snapshotd.journals.postgres.sharded_slices import ShardedSliceStore

_log = structlog.get_logger("snapshotd.journal")
_T = TypeVar("_T")
LAYOUT_RECHECK_S = 1.0


class ShardedJournal:
    """Journal over ``n`` PostgreSQL databases, routed by ``run_slice``."""

    def __init__(
        self, urls: Sequence[str], *, listen_dsns: Sequence[str] | None = None, **options: Any
    ) -> None:
        if not urls:
            raise ConfigError("a sharded journal needs at least one DSN")
        if listen_dsns is not None and len(listen_dsns) != len(urls):
            raise ConfigError(
                f"listen_dsn lists {len(listen_dsns)} DSNs for {len(urls)} shards: "
                "give one per shard, in the same order"
            )
        self.shards = [
            PostgresJournal(
                url, listen_dsn=None if listen_dsns is None else listen_dsns[i], **options
            )
            for i, url in enumerate(urls)
        ]
        self._bounds = shard_bounds(len(urls))
        self._problems: list[str | None] = ["not reached yet"] * len(urls)
        self._slices = ShardedSliceStore([s.slice_store for s in self.shards])

    @property
    def description(self) -> str:
        return " ".join(s.description for s in self.shards)

    @property
    def slice_store(self) -> ShardedSliceStore:
        return self._slices

    @property
    def up(self) -> bool:
        return all(self.shard_up(i) for i in range(len(self.shards)))

    def shard_up(self, index: int) -> bool:
        return self.shards[index].up and self._problems[index] is None

    def shard_states(self) -> list[dict[str, Any]]:
        """``status.shards``: each shard's index and whether it serves its runs."""
        return [{"index": i, "up": self.shard_up(i)} for i in range(len(self.shards))]

    def _of(self, run_id: str) -> PostgresJournal:
        return self._serving(slice_shard(run_slice(run_id), len(self.shards)))

    def _serving(self, index: int) -> PostgresJournal:
        """Shard ``index``; Unavailable until its layout is confirmed."""
        problem = self._problems[index]
        if problem is not None:
            raise Unavailable(f"shard {index} ({self.shards[index].description}): {problem}")
        return self.shards[index]

    # connecting -------------------------------------------------------------

    async def open(self) -> None:
        """Open every shard at once (each may be down: see ``PostgresJournal.open``)."""
        await self._all(lambda shard: shard.open(), checked=False)
        await self._check_layouts()

    async def _check_layouts(self) -> None:
        for index, shard in enumerate(self.shards):
            if self._problems[index] is None or shard.pool is None:
                continue
            try:
                with wrap_errors(f"postgresql journal {shard.description}: layout"):
                    async with shard.pool.acquire() as conn:
                        problem = await layout_problem(conn, shard.target, index, len(self.shards))
            except MigrationError as exc:
                problem = str(exc)
            except Unavailable:
                continue
            if problem is not None and problem != self._problems[index]:
                _log.error("shard_layout_mismatch", shard=index, error=problem)
            elif problem is None:
                _log.info("shard_layout_confirmed", shard=index, shards=len(self.shards))
            self._problems[index] = problem

    async def keep_connected(
        self,
        on_reconnect: Callable[[], None],
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        async with anyio.create_task_group() as tg:
            for shard in self.shards:
                await tg.start(shard.keep_connected, on_reconnect)
            task_status.started()
            while True:
                await self._check_layouts()
                await anyio.sleep(LAYOUT_RECHECK_S)

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()

    async def _all(
        self, call: Callable[[PostgresJournal], Awaitable[_T]], *, checked: bool = True
    ) -> list[_T]:
        """``call`` on every shard at once, results in shard order; the first error.

        ``checked``: only on shards whose layout is confirmed (else Unavailable)."""
        results: dict[int, _T] = {}
        errors: list[BaseException] = []

        async def one(index: int) -> None:
            try:
                shard = self._serving(index) if checked else self.shards[index]
                results[index] = await call(shard)
            except (SnapshotdError, ConfigError) as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for index in range(len(self.shards)):
                tg.start_soon(one, index)
        if errors:
            raise errors[0]
        return [results[i] for i in sorted(results)]

    # runs -------------------------------------------------------------------

    async def create_run(
        self, run_id: str, workflow: str, version: str, lease: str | None, now: datetime
    ) -> bool:
        return await self._of(run_id).create_run(run_id, workflow, version, lease, now)

    async def get_run(self, run_id: str) -> Run | None:
        return await self._of(run_id).get_run(run_id)

    async def set_version(self, run_id: str, version: str) -> None:
        await self._of(run_id).set_version(run_id, version)

    async def set_lease(
        self, run_id: str, lease: str | None, expected: str | _Unset | None = UNSET
    ) -> None:
        await self._of(run_id).set_lease(run_id, lease, expected)

    async def list_runs(self, after: str | None, limit: int) -> list[str]:
        pages = await self._all(lambda s: s.list_runs(after, limit))
        return list(merge(*pages, key=_utf8))[:limit]

    async def run_summaries(
        self, after: str | None, limit: int, workflow: str | None
    ) -> list[RunSummary]:
        pages = await self._all(lambda s: s.run_summaries(after, limit, workflow))
        return list(merge(*pages, key=lambda r: _utf8(r.run_id)))[:limit]

    # events -----------------------------------------------------------------

    async def append(
        self,
        run_id: str,
        events: Sequence[NewEvent],
        *,
        expected_seq: int | None,
        lease: str | None,
        now: datetime,
    ) -> int:
        return await self._of(run_id).append(
            run_id, events, expected_seq=expected_seq, lease=lease, now=now
        )

    async def read_events(
        self, run_id: str, after_seq: int, limit: int | None = None
    ) -> list[Event]:
        return await self._of(run_id).read_events(run_id, after_seq, limit)

    async def read_event_page(self, run_id: str, after_seq: int, limit: int) -> EventPage:
        return await self._of(run_id).read_event_page(run_id, after_seq, limit)

    # snapshots --------------------------------------------------------------

    async def list_snapshots(self, run_id: str) -> list[SnapshotMeta]:
        return await self._of(run_id).list_snapshots(run_id)

    async def list_links(self, run_id: str) -> list[SnapshotMeta]:
        return await self._of(run_id).list_links(run_id)

    async def read_snapshot(self, run_id: str, snapshot_id: str) -> Snapshot:
        return await self._of(run_id).read_snapshot(run_id, snapshot_id)

    async def read_link(self, run_id: str, snapshot_id: str) -> Snapshot:
        return await self._of(run_id).read_link(run_id, snapshot_id)

    async def read_links(self, run_id: str, snapshot_ids: Sequence[str]) -> list[Snapshot]:
        return await self._of(run_id).read_links(run_id, snapshot_ids)

    async def write_snapshot(self, snapshot: Snapshot, *, lease: str | None) -> None:
        await self._of(snapshot.meta.run_id).write_snapshot(snapshot, lease=lease)

    async def delete_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        return await self._of(run_id).delete_snapshots(run_id, snapshot_ids)

    async def retire_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        return await self._of(run_id).retire_snapshots(run_id, snapshot_ids)

    async def set_pinned(self, run_id: str, snapshot_id: str, pinned: bool) -> None:
        await self._of(run_id).set_pinned(run_id, snapshot_id, pinned)

    # sweeps -----------------------------------------------------------------

    async def sweep_due(
        self,
        now: datetime,
        limit: int,
        after: DueRun | None,
        slices: Sequence[int] | None = None,
    ) -> list[DueRun]:
        """Every serving shard's page, merged; a shard that fails is left for the next
        sweep (logged) so the others' runs are still swept."""
        pages: list[list[DueRun]] = []
        for index, shard in enumerate(self.shards):
            mine = None
            if slices is not None:
                low, high = self._bounds[index], self._bounds[index + 1]
                mine = [s for s in slices if low <= s < high]
                if not mine:
                    continue
            if not self.shard_up(index):
                continue
            try:
                pages.append(await shard.sweep_due(now, limit, after, mine))
            except SnapshotdError as exc:
                _log.warning("shard_sweep_failed", shard=index, error=str(exc))
        return list(merge(*pages))[:limit]

    async def set_due(self, run_id: str, point: DuePoint, *, snapshotted: bool) -> None:
        await self._of(run_id).set_due(run_id, point, snapshotted=snapshotted)

    async def record_failure(self, run_id: str, now: datetime, max_delay_s: float) -> None:
        await self._of(run_id).record_failure(run_id, now, max_delay_s)

    async def due_runs(self, cutoff: datetime, limit: int) -> list[str]:
        pages = await self._all(lambda s: s.due_runs(cutoff, limit))
        return [run_id for page in pages for run_id in page][:limit]

    # audit log and documents: database 0 ----------------------------------------

    async def append_audit(self, kind: str, fields: dict[str, Any], now: datetime) -> int:
        return await self.shards[0].append_audit(kind, fields, now)

    def queue_audit(self, kind: str, fields: dict[str, Any], now: datetime) -> None:
        self.shards[0].queue_audit(kind, fields, now)

    async def write_queued_audit(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        await self.shards[0].write_queued_audit(task_status=task_status)

    async def prune_audit(self, cutoff: datetime, limit: int) -> int:
        return await self.shards[0].prune_audit(cutoff, limit)

    async def read_audit(self, cursor: int, limit: int) -> list[AuditEntry]:
        return await self.shards[0].read_audit(cursor, limit)

    async def get_document(self, namespace: str, key: str) -> Document | None:
        return await self.shards[0].get_document(namespace, key)

    async def put_document(
        self, namespace: str, key: str, body: bytes, expected_version: int | None
    ) -> int:
        return await self.shards[0].put_document(namespace, key, body, expected_version)

    # LISTEN/NOTIFY ------------------------------------------------------------

    async def watch_appends(
        self,
        on_append: Callable[[str], None],
        on_gap: Callable[[], None],
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        """Each shard's own LISTEN connection; a run's appends notify in its shard."""
        async with anyio.create_task_group() as tg:
            for shard in self.shards:
                await tg.start(shard.watch_appends, on_append, on_gap)
            task_status.started()


def _utf8(run_id: str) -> bytes:
    return run_id.encode("utf-8")
