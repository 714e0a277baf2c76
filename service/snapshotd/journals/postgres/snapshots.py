"""Writing a snapshot inside its run's lock: lease, progress and created_at checks."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg

from snapshotd.domain.errors import Busy, NotFound, StaleLease, Superseded
from snapshotd.domain.model import Snapshot
from snapshotd.journals.postgres.queries import Queries

if TYPE_CHECKING:
    from snapshotd.journals.migrate import Conn

_TICK = timedelta(microseconds=1)
"""The resolution of timestamptz: the smallest step that keeps created_at increasing."""


async def write_locked(
    conn: Conn, q: Queries, key: str, snapshot: Snapshot, lease: str | None
) -> None:
    """Insert ``snapshot`` in the caller's transaction, first taking the run's
    advisory xact lock ``key`` (Busy when another daemon holds it).

    ``created_at`` is stored just above the newest auto/manual snapshot's when it
    is not already later: daemons on other hosts (other clocks, attempts started
    earlier but written later) must not make ``created_at`` order disagree with
    ``through_seq`` order.
    """
    m = snapshot.meta
    created_at = m.created_at
    if not await conn.fetchval(q.try_run_lock, key):
        raise Busy(f"run {m.run_id!r} is being snapshotted by another daemon")
    lease_row = await conn.fetchrow(q.run_lease, m.run_id)
    if lease_row is None:
        raise NotFound(f"run {m.run_id!r} not found")
    current = lease_row["lease"]
    if lease is not None and current is not None and lease != current:
        raise StaleLease(f"run {m.run_id!r} is leased to another owner")
    if m.base_id is not None and not await conn.fetchval(q.lock_base, m.run_id, m.base_id):
        raise Superseded(f"run {m.run_id!r}: base link {m.base_id} is gone")
    if m.kind != "safety":
        latest = await conn.fetchrow(q.latest_progress, m.run_id, m.version)
        if latest is not None:
            if latest["through_seq"] >= m.through_seq:
                raise Superseded(
                    f"run {m.run_id!r} already has a snapshot through seq {latest['through_seq']}"
                )
            created_at = max(created_at, latest["created_at"] + _TICK)
    try:
        await conn.execute(
            q.insert_snapshot,
            m.snapshot_id,
            m.run_id,
            m.through_seq,
            m.version,
            m.reducer,
            m.format_version,
            m.size_bytes,
            m.checksum,
            m.kind,
            m.pinned,
            created_at,
            m.expires_at,
            m.label,
            snapshot.payload,
            m.base_id,
            m.stored_bytes,
        )
    except asyncpg.UniqueViolationError:
        raise Superseded(
            f"run {m.run_id!r}: snapshot {m.snapshot_id} or its through_seq "
            f"{m.through_seq} is already stored"
        ) from None
