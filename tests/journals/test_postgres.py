"""PostgreSQL-specific behaviour: plain-SQL appends, NOTIFY, outages, competing daemons.

The shared behaviour of every journal is in test_contract.py; this file covers
what only the PostgreSQL journal has. Every test uses a fresh schema.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import orjson
import pytest

from snapshotd.domain import compaction
from snapshotd.domain.errors import (
    Busy,
    ConfigError,
    Conflict,
    Corrupt,
    NotFound,
    StaleLease,
    Superseded,
    Unavailable,
)
from snapshotd.domain.ids import uuid7
from snapshotd.domain.model import FORMAT_VERSION, NewEvent, Snapshot, SnapshotKind, SnapshotMeta
from snapshotd.journals.factory import journal_from_url
from snapshotd.journals.migrate import parse_dsn
from snapshotd.journals.postgres import PostgresJournal
from snapshotd.journals.records import event_from_json, event_json

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def url(pg_dsn: str) -> str:
    return f"{pg_dsn}?schema=t_{secrets.token_hex(6)}"


@pytest.fixture
async def journal(url: str) -> AsyncIterator[PostgresJournal]:
    opened = PostgresJournal(url, backoff_s=(0.05, 0.2))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


async def _raw(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(parse_dsn(url).dsn)


def psql(url: str, sql: str) -> subprocess.CompletedProcess[str]:
    """Run plain SQL as another application would; VERBOSITY shows the SQLSTATE."""
    return subprocess.run(
        ["psql", parse_dsn(url).dsn, "-qAt", "-v", "VERBOSITY=verbose", "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _snapshot(
    run_id: str, through_seq: int, *, kind: SnapshotKind = "auto", state: object = None
) -> Snapshot:
    """A well-formed snapshot claiming ``through_seq`` (the tests never fold events)."""
    payload = orjson.dumps(state)
    now = datetime.now(UTC)
    meta = SnapshotMeta(
        snapshot_id=uuid7(now),
        run_id=run_id,
        through_seq=through_seq,
        version="v1",
        reducer="last_by_key",
        format_version=FORMAT_VERSION,
        size_bytes=len(payload),
        checksum=compaction.checksum(payload),
        kind=kind,
        pinned=False,
        created_at=now,
        expires_at=now + timedelta(days=1) if kind == "safety" else None,
    )
    return Snapshot(meta, payload)


def test_factory_builds_it_and_description_has_no_password() -> None:
    journal = journal_from_url("postgresql://app:hunter2@db:5432/prod?schema=sd")
    assert isinstance(journal, PostgresJournal)
    assert journal.schema == "sd"
    assert "hunter2" not in journal.description
    with pytest.raises(ConfigError):
        PostgresJournal("postgresql://db/prod?schema=Bad-Name")


async def test_open_creates_schema_with_lz4_payloads(journal: PostgresJournal, url: str) -> None:
    conn = await _raw(url)
    try:
        compression = await conn.fetchval(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = to_regclass($1) AND attname = 'payload'",
            f"{journal.schema}.snapshots",
        )
        has_lz4 = await conn.fetchval(
            "SELECT count(*) FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND 'lz4' = ANY(enumvals)"
        )
    finally:
        await conn.close()
    assert compression == (b"l" if has_lz4 else b"\x00")


async def test_an_unreachable_database_opens_down_and_answers_unavailable() -> None:
    journal = PostgresJournal("postgresql://postgres:pw@127.0.0.1:1/none")
    await journal.open()
    assert journal.up is False
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:1.*not open") as info:
        await journal.get_run("r")
    assert "pw" not in str(info.value)
    await journal.aclose()


async def test_append_events_from_plain_sql(journal: PostgresJournal, url: str) -> None:
    s = journal.schema
    await journal.create_run("order-42", "order", "v1", None, T0)
    first = await journal.append(
        "order-42",
        [NewEvent("placed", {"b": 1, "a": [1.5, "é\n"]})],
        expected_seq=0,
        lease=None,
        now=T0,
    )
    assert first == 1

    events = '[{"type":"paid","data":{"amount":12,"big":9223372036854775807}},'
    events += '{"type":"shipped \\"fast\\"","data":1E2}]'
    done = psql(url, f"select {s}.append_events('order-42', 1, '{events}')")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"

    def append_sql(args: str) -> subprocess.CompletedProcess[str]:
        return psql(url, f"select {s}.append_events({args})")

    one = """'[{"type":"x","data":1}]'"""
    conflict = append_sql(f"'order-42', 1, {one}")
    assert "SD409" in conflict.stderr and "at seq 3, not 1" in conflict.stderr
    assert "SD404" in append_sql(f"'nope', null, {one}").stderr
    assert "22023" in append_sql("""'order-42', null, '[{"type":"x"}]'""").stderr
    huge = append_sql("""'order-42', null, '[{"type":"x","data":[1e19]}]'""")
    assert "22023" in huge.stderr and "64 bits" in huge.stderr

    await journal.set_lease("order-42", "owner-a")
    assert "SD423" in append_sql(f"'order-42', 3, {one}").stderr
    assert "SD423" in append_sql(f"'order-42', 3, {one}, 'other'").stderr
    leased = append_sql("""'order-42', 3, '[{"type":"x","data":null}]', 'owner-a'""")
    assert leased.stdout.strip() == "4", leased.stderr

    decoded = await journal.read_events("order-42", 0)
    assert [(e.seq, e.type, e.data) for e in decoded] == [
        (1, "placed", {"b": 1, "a": [1.5, "é\n"]}),
        (2, "paid", {"amount": 12, "big": 9223372036854775807}),
        (3, 'shipped "fast"', 100),
        (4, "x", None),
    ]
    assert decoded[0].recorded_at == T0
    assert all(e.recorded_at.tzinfo is not None for e in decoded)
    page = await journal.read_event_page("order-42", 0, 10)
    assert [event_from_json(raw) for raw in page.events] == decoded
    # The daemon's own appends are stored byte for byte as records.event_json makes them.
    assert page.events[0] == event_json(1, "placed", {"b": 1, "a": [1.5, "é\n"]}, T0)
    run = await journal.get_run("order-42")
    assert run is not None and run.last_seq == 4


async def test_recorded_at_with_microseconds_matches_orjson(journal: PostgresJournal) -> None:
    at = datetime(2024, 5, 1, 12, 0, 0, 1234, tzinfo=UTC)
    await journal.create_run("r", "w", "v1", None, T0)
    await journal.append("r", [NewEvent("t", [])], expected_seq=None, lease=None, now=at)
    page = await journal.read_event_page("r", 0, 1)
    assert page.events == [event_json(1, "t", [], at)]


async def test_adapter_maps_append_errors(journal: PostgresJournal) -> None:
    await journal.create_run("r", "w", "v1", "L", T0)
    with pytest.raises(NotFound):
        await journal.append("x", [NewEvent("t", 1)], expected_seq=None, lease=None, now=T0)
    with pytest.raises(StaleLease):
        await journal.append("r", [NewEvent("t", 1)], expected_seq=5, lease="M", now=T0)
    with pytest.raises(Conflict):
        await journal.append("r", [NewEvent("t", 1)], expected_seq=5, lease="L", now=T0)
    assert await journal.append("r", [NewEvent("t", 1)], expected_seq=0, lease="L", now=T0) == 1


async def test_damaged_event_row_is_corrupt(journal: PostgresJournal, url: str) -> None:
    await journal.create_run("r", "w", "v1", None, T0)
    await journal.append(
        "r", [NewEvent("t", i) for i in range(3)], expected_seq=0, lease=None, now=T0
    )
    conn = await _raw(url)
    try:
        await conn.execute(
            f"UPDATE {journal.schema}.events SET body = 'garbage' WHERE run_id = 'r' AND seq = 2"
        )
    finally:
        await conn.close()
    with pytest.raises(Corrupt, match=r"run_id='r', seq=2"):
        await journal.read_events("r", 0)
    assert [e.seq for e in await journal.read_events("r", 2)] == [3]


async def test_notify_reaches_watch_appends_and_survives_lost_connection(
    journal: PostgresJournal, url: str
) -> None:
    for run_id in "abc":
        await journal.create_run(run_id, "w", "v1", None, T0)
    send, receive = anyio.create_memory_object_stream[str](100)
    gaps = 0

    def on_gap() -> None:
        nonlocal gaps
        gaps += 1
        send.send_nowait("<gap>")

    with send, receive, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(journal.watch_appends, send.send_nowait, on_gap)
            await journal.append(
                "a", [NewEvent("t", i) for i in range(5)], expected_seq=None, lease=None, now=T0
            )
            assert await receive.receive() == "a"
            sql = (
                f"""select {journal.schema}.append_events('b', null, '[{{"type":"x","data":1}}]')"""
            )
            done = psql(url, sql)
            assert done.returncode == 0, done.stderr
            assert await receive.receive() == "b"

            killed = psql(
                url,
                "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                "where application_name = 'snapshotd-listen' and datname = current_database()",
            )
            assert killed.stdout.strip() == "1"
            assert await receive.receive() == "<gap>"
            await journal.append("c", [NewEvent("t", 1)], expected_seq=None, lease=None, now=T0)
            assert await receive.receive() == "c"
            tg.cancel_scope.cancel()
        assert receive.statistics().current_buffer_used == 0
    assert gaps == 1


async def test_terminated_connection_is_unavailable_then_recovers(
    journal: PostgresJournal, url: str
) -> None:
    await journal.create_run("r", "w", "v1", None, T0)
    blocker = await _raw(url)
    try:
        # Hold the run's row lock so the journal's append waits inside the database.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(f"SELECT 1 FROM {journal.schema}.runs WHERE run_id = 'r' FOR UPDATE")
        outcome: list[BaseException] = []

        async def blocked_append() -> None:
            try:
                await journal.append("r", [NewEvent("t", 1)], expected_seq=0, lease=None, now=T0)
            except Unavailable as exc:
                outcome.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked_append)
                while not await blocker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND application_name = 'snapshotd'"
                ):
                    await anyio.sleep(0.02)
                await blocker.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'snapshotd' AND datname = current_database()"
                )
        await tx.rollback()
    finally:
        await blocker.close()
    assert len(outcome) == 1
    # The pool replaces the dead connection by itself: the retried append goes through.
    assert await journal.append("r", [NewEvent("t", 1)], expected_seq=0, lease=None, now=T0) == 1


async def test_busy_when_another_daemon_holds_the_run(journal: PostgresJournal, url: str) -> None:
    await journal.create_run("r", "w", "v1", None, T0)
    other = await _raw(url)
    try:
        async with other.transaction():
            await other.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"snapshotd:{journal.schema}:run:r",
            )
            with pytest.raises(Busy):
                await journal.write_snapshot(_snapshot("r", 1), lease=None)
    finally:
        await other.close()
    await journal.write_snapshot(_snapshot("r", 1), lease=None)


async def test_competing_daemons_never_move_through_seq_backwards(
    journal: PostgresJournal, url: str
) -> None:
    second = PostgresJournal(url)
    await second.open()
    try:
        await journal.create_run("r", "w", "v1", None, T0)
        won: list[int] = []
        lost: list[type[BaseException]] = []

        async def write(target: PostgresJournal, seq: int) -> None:
            try:
                await target.write_snapshot(_snapshot("r", seq), lease=None)
                won.append(seq)
            except (Busy, Superseded) as exc:
                lost.append(type(exc))

        seqs = list(range(1, 61))
        secrets.SystemRandom().shuffle(seqs)
        async with anyio.create_task_group() as tg:
            for i, seq in enumerate(seqs):
                tg.start_soon(write, journal if i % 2 else second, seq)
        stored = [m.through_seq for m in await journal.list_snapshots("r")]
        assert sorted(stored, reverse=True) == stored
        assert len(set(stored)) == len(stored) == len(won)
        assert len(won) + len(lost) == len(seqs)
        assert lost, "shuffled through_seqs must make some writers lose"
        with pytest.raises(Superseded):
            await second.write_snapshot(_snapshot("r", max(stored)), lease=None)
        # A safety snapshot is a restore point, never a competitor.
        await second.write_snapshot(_snapshot("r", 1, kind="safety"), lease=None)
    finally:
        await second.aclose()


async def test_created_at_order_follows_through_seq(journal: PostgresJournal) -> None:
    """A writer whose clock is behind (another host, or an attempt that started before
    the one it follows) still stores a created_at after the snapshot it supersedes."""
    await journal.create_run("r", "w", "v1", None, T0)
    first = _snapshot("r", 5)
    await journal.write_snapshot(first, lease=None)
    late = _snapshot("r", 9)
    earlier = first.meta.created_at - timedelta(hours=1)
    behind = Snapshot(replace(late.meta, created_at=earlier), late.payload)
    await journal.write_snapshot(behind, lease=None)
    stored = await journal.list_snapshots("r")
    assert [m.through_seq for m in stored] == [9, 5]
    assert stored[0].created_at == first.meta.created_at + timedelta(microseconds=1)


async def test_hundred_thousand_events_round_trip(journal: PostgresJournal) -> None:
    total, batch = 100_000, 10_000
    await journal.create_run("big", "w", "v1", None, T0)
    for start in range(0, total, batch):
        events = [
            NewEvent("set", {"key": f"k{i % 500}", "value": i}) for i in range(start, start + batch)
        ]
        await journal.append("big", events, expected_seq=start, lease=None, now=T0)

    async def load_all(after: int) -> tuple[int, float]:
        began = time.perf_counter()
        count = 0
        while True:
            page = await journal.read_event_page("big", after, 10_000)
            count += len(page.events)
            after = page.last_seq
            if not page.has_more:
                return count, time.perf_counter() - began

    count, full = await load_all(0)
    assert count == total
    page = await journal.read_event_page("big", 54_321, 3)
    assert [event_from_json(raw).seq for raw in page.events] == [54_322, 54_323, 54_324]
    assert event_from_json(page.events[0]).data == {"key": "k321", "value": 54_321}

    state = {f"k{i}": total - 500 + i for i in range(500)}
    await journal.write_snapshot(_snapshot("big", total - 10, state=state), lease=None)
    began = time.perf_counter()
    latest = (await journal.list_snapshots("big"))[0]
    snap = await journal.read_snapshot("big", latest.snapshot_id)
    tail, with_snapshot = await load_all(snap.meta.through_seq)
    with_snapshot += time.perf_counter() - began - with_snapshot
    assert tail == 10
    began = time.perf_counter()
    decoded = await journal.read_events("big", 0)
    decode_s = time.perf_counter() - began
    assert [e.seq for e in decoded[:2]] == [1, 2] and decoded[-1].seq == total
    print(
        f"\n100k events: load without snapshot {full * 1000:.0f} ms "
        f"({total / full:,.0f} events/s), with snapshot {with_snapshot * 1000:.1f} ms, "
        f"read_events (decoded) {decode_s * 1000:.0f} ms"
    )


async def test_due_runs_and_retention(journal: PostgresJournal) -> None:
    old, new = T0 - timedelta(hours=2), T0
    for run_id, created in (("a", old), ("b", old), ("c", new)):
        await journal.create_run(run_id, "w", "v1", None, created)
        await journal.append(run_id, [NewEvent("t", 1)], expected_seq=0, lease=None, now=created)
    await journal.create_run("empty", "w", "v1", None, old)
    snap = _snapshot("b", 1)
    await journal.write_snapshot(snap, lease=None)
    assert await journal.due_runs(T0 - timedelta(hours=1), 10) == ["a"]
    assert await journal.due_runs(T0 + timedelta(days=1), 1) == ["a"]
    await journal.set_version("b", "v2")
    assert await journal.due_runs(T0 - timedelta(hours=1), 10) == ["a", "b"]
    assert await journal.delete_snapshots("b", [snap.meta.snapshot_id, "missing"]) == 1
    assert await journal.list_snapshots("b") == []
