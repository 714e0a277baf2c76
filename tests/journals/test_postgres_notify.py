"""Quiet notifications and the plain-SQL functions of migration 0002 (SPEC section 5).

A raw LISTEN counts what the appends send: one notification per due point, one for
the first append to a run no daemon has seen, none with ``snapshotd.notify = off``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import anyio
import asyncpg
import orjson
import pytest

from snapshotd.domain.errors import Conflict
from snapshotd.domain.model import DuePoint, NewEvent, utcnow
from snapshotd.journals.migrate import parse_dsn
from snapshotd.journals.postgres import PostgresJournal

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def journal(pg_dsn: str) -> AsyncIterator[PostgresJournal]:
    opened = PostgresJournal(f"{pg_dsn}?schema=t_{secrets.token_hex(6)}")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
async def app(journal: PostgresJournal, pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """An application's own connection."""
    conn = await asyncpg.connect(parse_dsn(pg_dsn).dsn)
    try:
        yield conn
    finally:
        await conn.close()


class Counter:
    """LISTENs on the journal's channel; ``settle()`` returns what arrived so far."""

    def __init__(self, conn: asyncpg.Connection, channel: str) -> None:
        self.conn = conn
        self.channel = channel
        self.seen: list[str] = []
        self._end = anyio.Event()

    def _got(self, _c: object, _pid: int, _chan: str, payload: str) -> None:
        if payload == "<end>":
            self._end.set()
        else:
            self.seen.append(payload)

    async def settle(self) -> list[str]:
        """Notifications are delivered in commit order: one sent now comes after all."""
        self._end = anyio.Event()
        await self.conn.execute("SELECT pg_notify($1, '<end>')", self.channel)
        with anyio.fail_after(5):
            await self._end.wait()
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture
async def notes(journal: PostgresJournal, pg_dsn: str) -> AsyncIterator[Counter]:
    conn = await asyncpg.connect(parse_dsn(pg_dsn).dsn)
    counter = Counter(conn, f"{journal.schema}_events")
    await conn.add_listener(counter.channel, counter._got)
    try:
        yield counter
    finally:
        await conn.close()


async def append_sql(app: asyncpg.Connection, schema: str, run_id: str, n: int = 1) -> int:
    events = orjson.dumps([{"type": "t", "data": i} for i in range(n)]).decode()
    last: int = await app.fetchval(
        f"SELECT {schema}.append_events($1, NULL, $2::jsonb)", run_id, events
    )
    return last


async def test_appends_notify_once_per_due_point(
    journal: PostgresJournal, app: asyncpg.Connection, notes: Counter
) -> None:
    s = journal.schema
    assert await app.fetchval(f"SELECT {s}.create_run('r', 'wf', 'v1', NULL)") is True
    await journal.set_due("r", DuePoint(0, 5, None), snapshotted=False)
    for _ in range(12):
        await append_sql(app, s, "r")
    assert await notes.settle() == ["r"]
    await journal.set_due("r", DuePoint(5, 10, None), snapshotted=True)
    await journal.append("r", [NewEvent("t", 1)], expected_seq=None, lease=None, now=utcnow())
    assert await notes.settle() == []  # already past 10 when recorded: the sweep finds it
    await journal.set_due("r", DuePoint(13, 20, None), snapshotted=True)
    await append_sql(app, s, "r", 6)
    assert await notes.settle() == []
    await append_sql(app, s, "r", 3)
    await append_sql(app, s, "r", 3)
    assert await notes.settle() == ["r"]


async def test_unseen_runs_notify_on_their_first_append_only(
    journal: PostgresJournal, app: asyncpg.Connection, notes: Counter
) -> None:
    s = journal.schema
    await app.execute(f"INSERT INTO {s}.runs (run_id, workflow, version) VALUES ('raw', 'w', 'v')")
    for _ in range(3):
        await append_sql(app, s, "raw")
    assert await notes.settle() == ["raw"]
    due = await journal.sweep_due(utcnow(), 10, None)
    assert [d.run_id for d in due] == ["raw"]


async def test_notify_off_silences_a_session(
    journal: PostgresJournal, app: asyncpg.Connection, notes: Counter
) -> None:
    s = journal.schema
    await app.fetchval(f"SELECT {s}.create_run('r', 'wf', 'v1')")
    await app.execute("SET snapshotd.notify = 'off'")
    await append_sql(app, s, "r", 200)
    assert await notes.settle() == []
    assert [d.run_id for d in await journal.sweep_due(utcnow(), 10, None)] == ["r"]
    await app.execute("SET snapshotd.notify = 'on'")
    await app.fetchval(f"SELECT {s}.create_run('q', 'wf', 'v1')")
    await append_sql(app, s, "q")
    assert await notes.settle() == ["q"]


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_append_events_refuses_data_nested_deeper_than_64(
    journal: PostgresJournal, app: asyncpg.Connection
) -> None:
    s = journal.schema
    await app.fetchval(f"SELECT {s}.create_run('r', 'wf', 'v1')")
    sql = f"SELECT {s}.append_events('r', NULL, $1::jsonb)"
    ok = orjson.dumps([{"type": "t", "data": nested(64)}]).decode()
    assert await app.fetchval(sql, ok) == 1
    deep = orjson.dumps([{"type": "t", "data": {"a": nested(64)}}]).decode()
    with pytest.raises(asyncpg.PostgresError) as caught:
        await app.fetchval(sql, deep)
    assert caught.value.sqlstate == "22023"
    assert "64 levels" in str(caught.value)
    events = await journal.read_events("r", 0)
    assert [e.data for e in events] == [nested(64)]


async def test_create_run_function(journal: PostgresJournal, app: asyncpg.Connection) -> None:
    s = journal.schema
    assert await app.fetchval(f"SELECT {s}.create_run('r', 'wf', 'v1', 'L')") is True
    assert await app.fetchval(f"SELECT {s}.create_run('r', 'wf', 'v2')") is False
    run = await journal.get_run("r")
    assert run is not None and (run.workflow, run.version, run.lease) == ("wf", "v1", "L")
    with pytest.raises(asyncpg.PostgresError) as caught:
        await app.fetchval(f"SELECT {s}.create_run('r', 'other', 'v1')")
    assert caught.value.sqlstate == "SD409"
    for bad in ["'', 'wf', 'v1'", "'x', '', 'v1'", "'x', 'wf', NULL", "E'a\\nb', 'wf', 'v1'"]:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await app.fetchval(f"SELECT {s}.create_run({bad})")
        assert caught.value.sqlstate == "22023", bad


async def test_conflict_carries_last_seq_from_the_error_detail(
    journal: PostgresJournal, app: asyncpg.Connection
) -> None:
    s = journal.schema
    await app.fetchval(f"SELECT {s}.create_run('r', 'wf', 'v1')")
    await append_sql(app, s, "r", 4)
    with pytest.raises(Conflict) as caught:
        await journal.append("r", [NewEvent("t", 1)], expected_seq=2, lease=None, now=utcnow())
    assert caught.value.details == {"last_seq": 4}
    with pytest.raises(asyncpg.PostgresError) as raw:
        await app.fetchval(f"SELECT {s}.append_events('r', 1, '[]'::jsonb)")
    assert raw.value.detail == "last_seq=4"
