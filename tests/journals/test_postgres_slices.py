"""Slices in PostgreSQL: ``run_slice`` agrees with Python, leases expire and pass on,
sweeps filter by slice, hints reach the slice's holder through NOTIFY."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshotd.domain.model import NewEvent, utcnow
from snapshotd.domain.slices import SLICES, run_slice
from snapshotd.journals.postgres import PostgresJournal

pytestmark = [pytest.mark.postgres]

_RUN_IDS = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x00"),
    min_size=1,
    max_size=60,
)


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[PostgresJournal]:
    journal = PostgresJournal(f"{pg_dsn}?schema=sl_{secrets.token_hex(5)}")
    await journal.open()
    try:
        yield journal
    finally:
        await journal.aclose()


@pytest.fixture
def migrated_schema(pg_dsn: str) -> str:
    """A schema migrated once for the whole property test (not per example)."""
    schema = f"sl_{secrets.token_hex(5)}"

    async def migrate() -> None:
        journal = PostgresJournal(f"{pg_dsn}?schema={schema}")
        await journal.open()
        await journal.aclose()

    anyio.run(migrate)
    return schema


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=st.lists(_RUN_IDS, min_size=1, max_size=40))
def test_sql_run_slice_agrees_with_python(
    pg_dsn: str, migrated_schema: str, ids: list[str]
) -> None:
    async def check() -> list[int]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetch(
                f"SELECT {migrated_schema}.run_slice(x) FROM unnest($1::text[]) AS x", ids
            )
        finally:
            await conn.close()
        return [r[0] for r in rows]

    assert anyio.run(check) == [run_slice(i) for i in ids]


@pytest.mark.anyio
async def test_known_ids_including_non_ascii(pg: PostgresJournal) -> None:
    ids = ["", "r1", "zürich", "日本語-run", "🚀" * 10, "x" * 200]
    async with pg._p.acquire() as conn:
        got = [await conn.fetchval(f"SELECT {pg.schema}.run_slice($1)", i) for i in ids]
    assert got == [run_slice(i) for i in ids]


@pytest.mark.anyio
async def test_leases_are_exclusive_expire_and_pass_on(pg: PostgresJournal) -> None:
    store = pg.slice_store
    view = await store.beat("a", 0.6)
    assert view.members == ["a"] and view.leases == {}
    assert await store.claim("a", [1, 2, 3], 0.6) == [1, 2, 3]
    await store.beat("b", 5)
    assert await store.claim("b", [2, 3, 4], 5) == [4]
    view = await store.beat("a", 0.6)
    assert sorted(view.members) == ["a", "b"]
    assert view.leases == {1: "a", 2: "a", 3: "a", 4: "b"}
    await anyio.sleep(0.8)  # a stops beating: its leases and membership expire
    view = await store.beat("b", 5)
    assert view.members == ["b"] and view.leases == {4: "b"}
    assert sorted(await store.claim("b", [1, 2, 3], 5)) == [1, 2, 3]
    await store.release("b", [1])
    assert (await store.beat("b", 5)).leases == {2: "b", 3: "b", 4: "b"}
    await store.leave("b")
    assert await store.beat("c", 5) == type(view)(["c"], {})


@pytest.mark.anyio
async def test_sweeps_filter_by_slice(pg: PostgresJournal) -> None:
    runs = [f"run-{i}" for i in range(12)]
    for run_id in runs:
        await pg.create_run(run_id, "wf", "v1", None, utcnow())
        await pg.append(run_id, [NewEvent("e", 1)], expected_seq=None, lease=None, now=utcnow())
    later = utcnow() + timedelta(days=1)
    wanted = sorted({run_slice(r) for r in runs[:5]})
    got = {d.run_id for d in await pg.sweep_due(later, 100, None, wanted)}
    assert got == {r for r in runs if run_slice(r) in wanted}
    assert {d.run_id for d in await pg.sweep_due(later, 100, None)} == set(runs)
    assert await pg.sweep_due(later, 100, None, []) == []
    assert 0 < len(wanted) < SLICES


@pytest.mark.anyio
async def test_forwarded_hints_arrive_as_notifications(pg: PostgresJournal) -> None:
    seen: list[str] = []
    async with anyio.create_task_group() as tg:
        await tg.start(pg.watch_appends, seen.append, lambda: None)
        await pg.slice_store.forward(["r1", "zürich"])
        with anyio.fail_after(5):
            while len(seen) < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert seen == ["r1", "zürich"]
