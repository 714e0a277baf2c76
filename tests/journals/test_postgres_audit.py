"""Audit at scale on PostgreSQL (migration 0004): batched writes from several daemons
without a shared lock, cursor reads that never skip a late commit, and retention."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import asyncpg
import pytest

from snapshotd.domain.model import utcnow
from snapshotd.journals.migrate import parse_dsn
from snapshotd.journals.postgres import PostgresJournal
from snapshotd.journals.postgres.audit import AuditBatches

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def url(pg_dsn: str) -> str:
    return f"{pg_dsn}?schema=t_{secrets.token_hex(6)}"


@pytest.fixture
async def daemons(url: str) -> AsyncIterator[tuple[PostgresJournal, PostgresJournal]]:
    """Two journals on one schema, as two daemons would have."""
    a, b = PostgresJournal(url), PostgresJournal(url)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def read_all(journal: PostgresJournal, page: int = 7) -> list[int]:
    cursor, seen = 0, []
    while batch := await journal.read_audit(cursor, page):
        seen.extend(e.cursor for e in batch)
        cursor = batch[-1].cursor
    return seen


async def flush(journal: PostgresJournal) -> None:
    await journal._audit.flush(wait=True)


async def test_queued_entries_reach_other_daemons_once_flushed(
    daemons: tuple[PostgresJournal, PostgresJournal],
) -> None:
    a, b = daemons
    for i in range(5):
        a.queue_audit("snapshot_taken", {"i": i}, utcnow())
    assert await b.read_audit(0, 10) == []
    await flush(a)
    entries = await b.read_audit(0, 10)
    assert [e.fields["i"] for e in entries] == [0, 1, 2, 3, 4]
    assert [e.cursor for e in entries] == sorted(e.cursor for e in entries)
    a.queue_audit("own", {}, utcnow())
    assert (await a.read_audit(entries[-1].cursor, 10))[0].kind == "own"


async def test_an_entry_committed_late_gets_a_later_cursor_never_a_skipped_one(
    daemons: tuple[PostgresJournal, PostgresJournal], url: str
) -> None:
    a, b = daemons
    late = await asyncpg.connect(parse_dsn(url).dsn)
    try:
        tx = late.transaction()
        await tx.start()
        await late.execute(
            f"INSERT INTO {a.schema}.audit_pending (at, kind) VALUES (now(), 'late')"
        )
        a.queue_audit("early", {}, utcnow())
        await flush(a)
        first = await b.read_audit(0, 10)
        assert [e.kind for e in first] == ["early"]
        await tx.commit()
        assert await late.fetchval(f"SELECT {a.schema}.sequence_audit(100)") == 1
    finally:
        await late.close()
    rest = await b.read_audit(first[-1].cursor, 10)
    assert [e.kind for e in rest] == ["late"]


async def test_concurrent_writers_and_a_paging_reader_see_every_entry_once(
    daemons: tuple[PostgresJournal, PostgresJournal],
) -> None:
    a, b = daemons
    per_writer = 60
    read: list[int] = []

    async def write(journal: PostgresJournal, tag: str) -> None:
        for i in range(per_writer):
            journal.queue_audit("w", {"tag": tag, "i": i}, utcnow())
            if i % 7 == 0:
                await flush(journal)
        await flush(journal)

    async def page_along(stop: anyio.Event) -> None:
        cursor = 0
        while True:
            batch = await b.read_audit(cursor, 5)
            read.extend(e.cursor for e in batch)
            if batch:
                cursor = batch[-1].cursor
            elif stop.is_set():
                return
            await anyio.sleep(0)

    stop = anyio.Event()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as readers:
            readers.start_soon(page_along, stop)
            async with anyio.create_task_group() as writers:
                writers.start_soon(write, a, "a")
                writers.start_soon(write, b, "b")
            stop.set()
    everything = await read_all(a)
    assert len(everything) == 2 * per_writer
    assert read == everything  # nothing skipped, nothing twice, in cursor order


async def test_retention_deletes_in_batches_one_daemon_at_a_time(
    daemons: tuple[PostgresJournal, PostgresJournal], url: str
) -> None:
    a, b = daemons
    now = utcnow()
    for i in range(25):
        a.queue_audit("old" if i < 20 else "new", {}, now - timedelta(days=40 if i < 20 else 0))
    await flush(a)
    cutoff = now - timedelta(days=30)
    holder = await asyncpg.connect(parse_dsn(url).dsn)
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"snapshotd:{a.schema}:audit-retention",
            )
            assert await b.prune_audit(cutoff, 100) == 0  # another daemon is pruning
    finally:
        await holder.close()
    assert await b.prune_audit(cutoff, 8) == 8
    assert await b.prune_audit(cutoff, 100) == 12
    assert await b.prune_audit(cutoff, 100) == 0
    kept = await a.read_audit(0, 100)
    assert [e.kind for e in kept] == ["new"] * 5
    assert (await a.read_audit(1, 100)) == kept  # a cursor older than them all


async def test_a_batch_that_fails_is_kept_and_written_later(url: str) -> None:
    journal = PostgresJournal(url)
    await journal.open()
    try:
        journal.queue_audit("kept", {}, utcnow())
        batches: AuditBatches = journal._audit
        real = batches._pool
        broken = PostgresJournal("postgresql://postgres@127.0.0.1:1/none")
        batches._pool = lambda: broken._p
        with pytest.raises(Exception, match="not open"):
            await batches.flush()
        batches._pool = real
        assert [e.kind for e in await journal.read_audit(0, 10)] == ["kept"]
    finally:
        await journal.aclose()
