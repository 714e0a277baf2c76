"""The PostgreSQL Journal: one asyncpg pool over the migrations' schema.

Driver errors are translated at the edge (``errors.wrap_errors``). The pool
replaces dead connections by itself, so the journal works again once the
database is back. Events are stored as the bytes ``load`` serves (see
migrations/0001_initial.sql for why bytea); decoding for compaction joins a
page into one JSON array and decodes it with a single orjson call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import orjson
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from snapshotd.domain.errors import (
    Conflict,
    NotFound,
    SnapshotdError,
    Unavailable,
)
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
from snapshotd.journals.base import FIRST_RETRY_S, UNSET, Document, DueRun, EventPage, _Unset
from snapshotd.journals.migrate import (
    PgTarget,
    parse_dsn,
)
from snapshotd.journals.postgres.audit import AuditBatches
from snapshotd.journals.postgres.errors import commit_errors, wrap_errors
from snapshotd.journals.postgres.listener import Listener
from snapshotd.journals.postgres.pool import PoolKeeper
from snapshotd.journals.postgres.queries import Queries
from snapshotd.journals.postgres.rows import checked_bodies, decode_events, meta, summary
from snapshotd.journals.postgres.slices import PgSliceStore
from snapshotd.journals.postgres.snapshots import write_locked
from snapshotd.journals.records import dumps

if TYPE_CHECKING:
    from snapshotd.journals.migrate import Conn


_MIN_TIME = datetime.min.replace(tzinfo=UTC)
"""Below every due time: the keyset start of a sweep from the oldest due run."""


class PostgresJournal:
    """Journal on PostgreSQL; several daemons may share one database and schema."""

    def __init__(
        self,
        url: str,
        *,
        listen_dsn: str | None = None,
        pool_max_size: int = 10,
        command_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        keepalive_s: float = 15.0,
        backoff_s: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self._target: PgTarget = parse_dsn(url)
        self._q = Queries(self._target.quoted_schema)
        self._keeper = PoolKeeper(
            self._target,
            self._errors,
            pool_max_size=pool_max_size,
            command_timeout_s=command_timeout_s,
            connect_timeout_s=connect_timeout_s,
            backoff_s=backoff_s,
        )
        self._listener = Listener(
            self._target,
            listen_dsn=listen_dsn,
            connect_timeout_s=connect_timeout_s,
            keepalive_s=keepalive_s,
            backoff_s=backoff_s,
        )
        self._audit = AuditBatches(lambda: self._p, self._q, self._errors)
        self._slices = PgSliceStore(self._target, lambda: self._p)

    @property
    def slice_store(self) -> PgSliceStore:
        """Leases on the slices, for daemons sharing this database (``DividesSlices``)."""
        return self._slices

    @property
    def description(self) -> str:
        return self._target.description

    @property
    def schema(self) -> str:
        return self._target.schema

    @property
    def up(self) -> bool:
        return self._keeper.up

    async def open(self) -> None:
        """Open the pool, or leave it to ``keep_connected`` while the database is
        unreachable (operations answer Unavailable meanwhile). Raises ConfigError for a
        schema this version cannot use (see ``PoolKeeper.connect``)."""
        await self._keeper.open()

    async def keep_connected(
        self,
        on_reconnect: Callable[[], None],
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        await self._keeper.keep(on_reconnect, task_status=task_status)

    async def aclose(self) -> None:
        if self._keeper.pool is not None:
            with anyio.move_on_after(2, shield=True), suppress(SnapshotdError):
                await self._audit.flush()
        await self._keeper.close()

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return wrap_errors(f"postgresql journal {self.description}: {what}")

    @property
    def _p(self) -> asyncpg.Pool:
        pool = self._keeper.pool
        if pool is None:
            raise Unavailable(f"postgresql journal {self.description} is not open (yet)")
        return pool

    # runs -----------------------------------------------------------------

    async def create_run(
        self, run_id: str, workflow: str, version: str, lease: str | None, now: datetime
    ) -> bool:
        with self._errors("create_run"):
            async with self._p.acquire() as conn:
                if await conn.fetchval(self._q.create_run, run_id, workflow, version, lease, now):
                    return True
                existing = await conn.fetchval(self._q.run_workflow, run_id)
        if existing is None:
            raise Conflict(f"run {run_id!r} was created and removed concurrently")
        if existing != workflow:
            raise Conflict(f"run {run_id!r} exists with workflow {existing!r}")
        return False

    async def get_run(self, run_id: str) -> Run | None:
        with self._errors("get_run"):
            row = await self._p.fetchrow(self._q.get_run, run_id)
        if row is None:
            return None
        due_seq = row["due_seq"]
        return Run(
            row["run_id"],
            row["workflow"],
            row["version"],
            row["lease"],
            row["last_seq"],
            row["created_at"],
            None if due_seq is None else DuePoint(row["snap_seq"], due_seq, row["due_at"]),
        )

    async def _require_run(self, conn: Conn, run_id: str) -> None:
        if not await conn.fetchval(self._q.run_exists, run_id):
            raise NotFound(f"run {run_id!r} not found")

    async def set_version(self, run_id: str, version: str) -> None:
        with self._errors("set_version"):
            done = await self._p.fetchval(self._q.set_version, run_id, version)
        if not done:
            raise NotFound(f"run {run_id!r} not found")

    async def set_lease(
        self, run_id: str, lease: str | None, expected: str | _Unset | None = UNSET
    ) -> None:
        unchecked = isinstance(expected, _Unset)
        wanted = None if isinstance(expected, _Unset) else expected
        with self._errors("set_lease"):
            async with self._p.acquire() as conn:
                if await conn.fetchval(self._q.set_lease, run_id, lease, unchecked, wanted):
                    return
                await self._require_run(conn, run_id)
        raise Conflict(f"run {run_id!r} has another lease than expected")

    async def list_runs(self, after: str | None, limit: int) -> list[str]:
        with self._errors("list_runs"):
            rows = await self._p.fetch(self._q.list_runs, after, limit)
        return [row[0] for row in rows]

    async def run_summaries(
        self, after: str | None, limit: int, workflow: str | None
    ) -> list[RunSummary]:
        # run_id is COLLATE "C": '' sorts before every id, and the order is UTF-8's.
        with self._errors("run_summaries"):
            if workflow is None:
                rows = await self._p.fetch(self._q.run_summaries, after or "", limit)
            else:
                rows = await self._p.fetch(
                    self._q.workflow_run_summaries, after or "", limit, workflow
                )
        return [summary(row) for row in rows]

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
        types = [e.type for e in events]
        data = [orjson.dumps(e.data).decode() for e in events]
        with self._errors("append"):
            conn = await self._p.acquire()
        try:
            with commit_errors(f"postgresql journal {self.description}: append"):
                last: int = await conn.fetchval(
                    self._q.append, run_id, expected_seq, lease, types, data, now
                )
        finally:
            with anyio.move_on_after(5, shield=True):
                await self._p.release(conn)
        return last

    async def _bodies(self, run_id: str, after_seq: int, limit: int | None) -> list[Any]:
        """Stored (body, md5) rows after ``after_seq``, unchecked."""
        with self._errors("read events"):
            async with self._p.acquire() as conn:
                rows = await conn.fetch(self._q.event_bodies, run_id, after_seq, limit)
                if not rows:
                    await self._require_run(conn, run_id)
        return rows

    async def read_events(
        self, run_id: str, after_seq: int, limit: int | None = None
    ) -> list[Event]:
        bodies = checked_bodies(
            self.description, run_id, after_seq, await self._bodies(run_id, after_seq, limit)
        )
        return decode_events(run_id, bodies, max(after_seq, 0))

    async def read_event_page(self, run_id: str, after_seq: int, limit: int) -> EventPage:
        bodies = await self._bodies(run_id, after_seq, limit + 1)
        has_more = len(bodies) > limit
        if has_more:
            del bodies[limit:]
        last = max(after_seq, 0) + len(bodies) if bodies else after_seq
        return EventPage(
            checked_bodies(self.description, run_id, after_seq, bodies), last, has_more
        )

    # snapshots ------------------------------------------------------------

    async def list_snapshots(self, run_id: str) -> list[SnapshotMeta]:
        with self._errors("list_snapshots"):
            async with self._p.acquire() as conn:
                rows = await conn.fetch(self._q.list_snapshots, run_id)
                if not rows:
                    await self._require_run(conn, run_id)
        return [meta(row) for row in rows]

    async def list_links(self, run_id: str) -> list[SnapshotMeta]:
        with self._errors("list_links"):
            async with self._p.acquire() as conn:
                rows = await conn.fetch(self._q.list_links, run_id)
                if not rows:
                    await self._require_run(conn, run_id)
        return [meta(row) for row in rows]

    async def read_snapshot(self, run_id: str, snapshot_id: str) -> Snapshot:
        snapshot = await self.read_link(run_id, snapshot_id)
        if snapshot.meta.retired:
            raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found")
        return snapshot

    async def read_link(self, run_id: str, snapshot_id: str) -> Snapshot:
        with self._errors("read_snapshot"):
            row = await self._p.fetchrow(self._q.read_snapshot, run_id, snapshot_id)
        if row is None:
            raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found")
        return Snapshot(meta(row), row["payload"])

    async def read_links(self, run_id: str, snapshot_ids: Sequence[str]) -> list[Snapshot]:
        with self._errors("read_links"):
            rows = await self._p.fetch(self._q.read_links, run_id, list(snapshot_ids))
        found = {row["snapshot_id"]: Snapshot(meta(row), row["payload"]) for row in rows}
        missing = [sid for sid in snapshot_ids if sid not in found]
        if missing:
            raise NotFound(f"snapshot {missing[0]!r} of run {run_id!r} not found")
        return [found[sid] for sid in snapshot_ids]

    async def write_snapshot(self, snapshot: Snapshot, *, lease: str | None) -> None:
        """One transaction holding the run's advisory xact lock (key in docs/postgres.md).

        ``created_at`` is stored just above the newest auto/manual snapshot's when it
        is not already later: daemons on other hosts (other clocks, attempts started
        earlier but written later) must not make ``created_at`` order disagree with
        ``through_seq`` order.
        """
        with self._errors("write_snapshot"):
            async with self._p.acquire() as conn, conn.transaction():
                key = self._target.lock_key(f"run:{snapshot.meta.run_id}")
                await write_locked(conn, self._q, key, snapshot, lease)

    async def delete_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        """Under the run's lock, so a link a concurrent write stores a delta on (it
        holds the lock until it commits) is seen as needed and kept."""
        with self._errors("delete_snapshots"):
            async with self._p.acquire() as conn, conn.transaction():
                await conn.execute(self._q.lock, self._target.lock_key(f"run:{run_id}"))
                status = await conn.execute(self._q.delete_snapshots, run_id, list(snapshot_ids))
        return int(status.rpartition(" ")[2])

    async def retire_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        with self._errors("retire_snapshots"):
            status = await self._p.execute(self._q.retire_snapshots, run_id, list(snapshot_ids))
        return int(status.rpartition(" ")[2])

    async def set_pinned(self, run_id: str, snapshot_id: str, pinned: bool) -> None:
        with self._errors("set_pinned"):
            done = await self._p.fetchval(self._q.set_pinned, run_id, snapshot_id, pinned)
        if not done:
            raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found")

    async def sweep_due(
        self,
        now: datetime,
        limit: int,
        after: DueRun | None,
        slices: Sequence[int] | None = None,
    ) -> list[DueRun]:
        """``slices``: only runs of these slices (None: every run)."""
        start = (_MIN_TIME, "") if after is None else (after.due_at, after.run_id)
        with self._errors("sweep_due"):
            if slices is None:
                rows = await self._p.fetch(self._q.sweep_due, now, *start, limit)
            else:
                rows = await self._p.fetch(
                    self._q.sweep_due_slices, now, *start, limit, list(slices)
                )
        return [DueRun(row[0], row[1]) for row in rows]

    async def set_due(self, run_id: str, point: DuePoint, *, snapshotted: bool) -> None:
        with self._errors("set_due"):
            async with self._p.acquire() as conn:
                done = await conn.fetchval(
                    self._q.set_due,
                    run_id,
                    point.snap_seq,
                    point.due_seq,
                    point.due_at,
                    snapshotted,
                )
                if not done:
                    await self._require_run(conn, run_id)

    async def record_failure(self, run_id: str, now: datetime, max_delay_s: float) -> None:
        with self._errors("record_failure"):
            done = await self._p.fetchval(
                self._q.record_failure, run_id, now, max_delay_s, FIRST_RETRY_S
            )
        if not done:
            raise NotFound(f"run {run_id!r} not found")

    async def due_runs(self, cutoff: datetime, limit: int) -> list[str]:
        with self._errors("due_runs"):
            rows = await self._p.fetch(self._q.due_runs, cutoff, limit)
        return [row[0] for row in rows]

    # audit log ------------------------------------------------------------

    async def append_audit(self, kind: str, fields: dict[str, Any], now: datetime) -> int:
        """One entry at once, under the lock ``sequence_audit`` takes (migration 0004),
        so its cursor too becomes visible in order. The daemon queues instead."""
        with self._errors("append_audit"):
            async with self._p.acquire() as conn, conn.transaction():
                await conn.execute(self._q.lock, self._target.lock_key("audit"))
                cursor: int = await conn.fetchval(
                    self._q.append_audit, now, kind, dumps(fields).decode()
                )
        return cursor

    def queue_audit(self, kind: str, fields: dict[str, Any], now: datetime) -> None:
        self._audit.queue(kind, fields, now)

    async def write_queued_audit(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        await self._audit.write_forever(task_status=task_status)

    async def prune_audit(self, cutoff: datetime, limit: int) -> int:
        with self._errors("prune_audit"):
            deleted: int = await self._p.fetchval(self._q.prune_audit, cutoff, limit)
        return max(deleted, 0)

    async def read_audit(self, cursor: int, limit: int) -> list[AuditEntry]:
        """Entries after ``cursor``; this daemon's queued entries are written first."""
        with anyio.move_on_after(1):
            await self._audit.flush(wait=True)
        with self._errors("read_audit"):
            rows = await self._p.fetch(self._q.read_audit, cursor, limit)
        return [AuditEntry(row[0], row[1], row[2], orjson.loads(row[3])) for row in rows]

    # documents ------------------------------------------------------------

    async def get_document(self, namespace: str, key: str) -> Document | None:
        with self._errors("get_document"):
            row = await self._p.fetchrow(self._q.get_document, namespace, key)
        return None if row is None else Document(row["body"], row["version"])

    async def put_document(
        self, namespace: str, key: str, body: bytes, expected_version: int | None
    ) -> int:
        with self._errors("put_document"):
            if expected_version is None:
                version = await self._p.fetchval(self._q.insert_document, namespace, key, body)
            else:
                version = await self._p.fetchval(
                    self._q.update_document, namespace, key, body, expected_version
                )
        if version is None:
            raise Conflict(f"document {namespace}/{key} changed concurrently")
        return int(version)

    # LISTEN/NOTIFY ----------------------------------------------------------

    async def watch_appends(
        self,
        on_append: Callable[[str], None],
        on_gap: Callable[[], None],
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        """LISTEN on a dedicated connection; see ``Listener.watch``."""
        await self._listener.watch(on_append, on_gap, task_status=task_status)
