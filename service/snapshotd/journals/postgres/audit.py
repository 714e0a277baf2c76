"""Batched audit writes for the PostgreSQL journal (migration 0004).

Entries are queued in memory and written about once a second in one INSERT into
``audit_pending``; then this daemon tries to move committed pending entries into
``audit`` (``sequence_audit``), which draws their cursors one mover at a time. A
daemon that finds another one moving tries again at its next flush, so an entry
reaches readers within about a second either way. A crash loses what is queued.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import anyio
import asyncpg
import structlog
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from snapshotd.domain.errors import SnapshotdError
from snapshotd.journals.postgres.queries import Queries
from snapshotd.journals.records import dumps

_log = structlog.get_logger("snapshotd.audit")

FLUSH_EVERY_S = 1.0
MOVE_LIMIT = 10_000
QUEUE_LIMIT = 100_000
"""Entries kept while the database is down; older ones are dropped beyond it."""


class AuditBatches:
    """The queue of one journal's unwritten audit entries and how they are written."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        queries: Queries,
        errors: Callable[[str], AbstractContextManager[None]],
    ) -> None:
        self._pool = pool
        self._q = queries
        self._errors = errors
        self._queued: list[tuple[datetime, str, str]] = []
        self._owed = False
        """Entries of ours may still be pending: move them at the next flush."""
        self._lock = anyio.Lock()

    def queue(self, kind: str, fields: dict[str, Any], now: datetime) -> None:
        self._queued.append((now, kind, dumps(fields).decode()))
        if len(self._queued) > QUEUE_LIMIT:
            del self._queued[: len(self._queued) - QUEUE_LIMIT]

    async def flush(self, *, wait: bool = False) -> None:
        """Write what is queued and move pending entries; raises Unavailable and keeps
        the entries when the database does not answer.

        ``wait``: while another daemon is moving entries, try again until this one
        has moved them itself (a few ms), so a reader sees its own entries.
        """
        async with self._lock:
            batch, self._queued = self._queued, []
            try:
                if batch:
                    ats, kinds, fields = zip(*batch, strict=True)
                    with self._errors("write audit"):
                        await self._pool().execute(
                            self._q.queue_audit_batch, list(ats), list(kinds), list(fields)
                        )
                    self._owed = True
            except BaseException:
                self._queued[:0] = batch
                raise
            while self._owed:
                with self._errors("sequence audit"):
                    moved = await self._pool().fetchval(self._q.sequence_audit, MOVE_LIMIT)
                if moved < 0:
                    if not wait:
                        return  # another daemon is moving entries: ours may be among them
                    await anyio.sleep(0.005)
                    continue
                self._owed = moved == MOVE_LIMIT

    async def write_forever(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Flush every ``FLUSH_EVERY_S`` until cancelled, then once more (bounded)."""
        task_status.started()
        try:
            while True:
                await anyio.sleep(FLUSH_EVERY_S)
                try:
                    await self.flush()
                except SnapshotdError as exc:
                    _log.warning("audit_write_failed", error=str(exc), queued=len(self._queued))
        finally:
            with anyio.move_on_after(2, shield=True):
                try:
                    await self.flush()
                except SnapshotdError as exc:
                    _log.warning("audit_lost", error=str(exc), queued=len(self._queued))
