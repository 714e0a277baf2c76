"""``list_runs`` on PostgreSQL: byte order under a linguistic collation, index-only pages,
and labels through the migration."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from snapshotd.journals.migrate import parse_dsn
from snapshotd.journals.postgres import PostgresJournal
from tests.journals.test_contract_restore import AWKWARD_IDS, byte_order
from tests.support import T0

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture(scope="module")
def icu_dsn(pg_server: str) -> Iterator[str]:
    """A database whose default collation is ICU English: case and punctuation insensitive
    at first level, so an ORDER BY without COLLATE "C" would not be byte order."""
    import subprocess

    name = f"snapshotd_icu_{secrets.token_hex(4)}"
    create = (
        f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' "
        "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    )
    for sql in (create,):
        done = subprocess.run(
            ["psql", f"{pg_server}/postgres", "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    try:
        yield f"{pg_server}/{name}"
    finally:
        subprocess.run(
            ["psql", f"{pg_server}/postgres", "-qAtc", f'DROP DATABASE "{name}" WITH (force)'],
            capture_output=True,
            check=False,
        )


@pytest.fixture
async def journal(icu_dsn: str) -> AsyncIterator[PostgresJournal]:
    opened = PostgresJournal(f"{icu_dsn}?schema=t_{secrets.token_hex(6)}")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_the_database_collation_would_not_be_byte_order(icu_dsn: str) -> None:
    conn = await asyncpg.connect(parse_dsn(icu_dsn).dsn)
    try:
        rows = await conn.fetch("SELECT x FROM unnest($1::text[]) x ORDER BY x", AWKWARD_IDS)
    finally:
        await conn.close()
    assert [r["x"] for r in rows] != byte_order(AWKWARD_IDS)


async def test_pages_are_in_byte_order_whatever_the_collation(journal: PostgresJournal) -> None:
    for index, run_id in enumerate(AWKWARD_IDS):
        await journal.create_run(run_id, "even" if index % 2 == 0 else "odd", "v1", None, T0)
    seen: list[str] = []
    after: str | None = None
    while page := await journal.run_summaries(after, 4, None):
        seen += [s.run_id for s in page]
        after = page[-1].run_id
    assert seen == byte_order(AWKWARD_IDS)
    even = [s.run_id for s in await journal.run_summaries("a", 100, "even")]
    assert even == [r for r in byte_order(AWKWARD_IDS[::2]) if r.encode() > b"a"]


@pytest.mark.parametrize("workflow", [None, "wf"])
async def test_a_page_is_an_index_range_scan(
    journal: PostgresJournal, workflow: str | None
) -> None:
    for index in range(50):
        await journal.create_run(f"run-{index:02d}", "wf" if index % 2 else "other", "v1", None, T0)
    url = journal._target  # the adapter's parsed DSN and schema
    conn = await asyncpg.connect(url.dsn)
    try:
        await conn.execute(f"SET search_path TO {url.quoted_schema}")
        await conn.execute("ANALYZE runs; SET enable_seqscan = off; SET enable_sort = off")
        query = journal._q.run_summaries if workflow is None else journal._q.workflow_run_summaries
        args = ("run-10", 5) if workflow is None else ("run-10", 5, workflow)
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {query}", *args))
    finally:
        await conn.close()
    index = "runs_pkey" if workflow is None else "runs_workflow_run_id"
    assert f"Index Scan using {index} on runs" in plan
    assert "Sort Key: r." not in plan  # the runs come in index order (a run's snapshots may sort)
    assert "Seq Scan" not in plan
