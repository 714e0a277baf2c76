"""Stored event rows are checked on read (migration 0003): a damaged row is `corrupt`,
naming run and seq, and never served — even above the newest snapshot."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from snapshotd.domain.errors import Corrupt
from snapshotd.domain.model import NewEvent, utcnow
from snapshotd.journals.migrate import parse_dsn
from snapshotd.journals.postgres import PostgresJournal
from snapshotd.runtime.instance import Instance
from tests.runtime.support import make_instance

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

FORGED = b'{"seq":2,"type":"t","data":1,"recorded_at":"2024-05-01T12:00:00Z"}]}}\n' + (
    b'{"id":999,"ok":true,"result":{"forged":true}}'
)


@pytest.fixture
async def journal(pg_dsn: str) -> AsyncIterator[PostgresJournal]:
    opened = PostgresJournal(f"{pg_dsn}?schema=t_{secrets.token_hex(6)}")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


async def damage(journal: PostgresJournal, pg_dsn: str, seq: int, sql_value: str) -> None:
    conn = await asyncpg.connect(parse_dsn(pg_dsn).dsn)
    try:
        await conn.execute(
            f"UPDATE {journal.schema}.events SET body = {sql_value} "
            f"WHERE run_id = 'r' AND seq = {seq}"
        )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "damaged",
    [
        "substr(body, 1, 20)",
        "convert_to('not json at all', 'UTF8')",
        "'\\x" + FORGED.hex() + "'::bytea",
    ],
    ids=["truncated", "not-json", "embedded-newline"],
)
async def test_damaged_rows_are_corrupt_and_never_served(
    journal: PostgresJournal, pg_dsn: str, damaged: str
) -> None:
    await journal.create_run("r", "w", "v1", None, utcnow())
    events = [NewEvent("t", i) for i in range(5)]
    await journal.append("r", events, expected_seq=0, lease=None, now=utcnow())
    await damage(journal, pg_dsn, 4, damaged)
    for read in (journal.read_event_page("r", 0, 100), journal.read_events("r", 0)):
        with pytest.raises(Corrupt, match=r"run_id='r', seq=4\)"):
            await read
    page = await journal.read_event_page("r", 0, 3)
    assert [orjson.loads(b)["seq"] for b in page.events] == [1, 2, 3]
    with pytest.raises(Corrupt, match=r"seq=4\)"):
        await journal.read_event_page("r", 3, 1)
    assert [e.seq for e in await journal.read_events("r", 4)] == [5]


async def test_load_answers_corrupt_for_a_damaged_row_above_the_snapshot(
    journal: PostgresJournal, pg_dsn: str
) -> None:
    inst: Instance = make_instance(journal, snapshot_threshold=2)
    await journal.create_run("r", "w", "v1", None, utcnow())
    await journal.append(
        "r", [NewEvent("t", i) for i in range(3)], expected_seq=0, lease=None, now=utcnow()
    )
    assert (await inst.snapshot_now("r", lease=None, force=False, kind="manual"))["status"] == (
        "taken"
    )
    await journal.append("r", [NewEvent("t", 9)], expected_seq=3, lease=None, now=utcnow())
    await damage(journal, pg_dsn, 4, "'\\x" + FORGED.hex() + "'::bytea")
    with pytest.raises(Corrupt, match="seq=4"):
        await inst.load("r", after_seq=None, limit=100)
    kinds = [entry.kind for entry in await journal.read_audit(0, 10)]
    assert "run_corrupt" in kinds


async def test_line_breaks_in_json_text_never_reach_a_stored_body(
    journal: PostgresJournal, pg_dsn: str
) -> None:
    await journal.create_run("r", "w", "v1", None, utcnow())
    conn = await asyncpg.connect(parse_dsn(pg_dsn).dsn)
    try:
        await conn.execute(
            f"SELECT {journal.schema}.append_encoded_events("
            "'r', NULL, NULL, ARRAY['t'], ARRAY[E'{\"a\":\\n [1,\\r\\n2]}'::json], now())"
        )
    finally:
        await conn.close()
    page = await journal.read_event_page("r", 0, 10)
    assert b"\n" not in page.events[0] and b"\r" not in page.events[0]
    assert orjson.loads(page.events[0])["data"] == {"a": [1, 2]}
