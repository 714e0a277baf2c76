"""Honest append outcomes (SPEC section 2): a connection lost while an append commits
answers `unavailable` with `outcome: unknown`, and the append may well be stored.

The commit is held open deterministically by synchronous replication to a standby
that does not exist, on a private cluster (the setting is server-wide).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import asyncpg
import pytest

from snapshotd.domain.errors import Unavailable
from snapshotd.domain.model import NewEvent, utcnow
from snapshotd.journals.postgres import PostgresJournal

from .pg_cluster import Cluster, private_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with private_cluster() as started:
        yield started


@pytest.fixture
async def journal(cluster: Cluster) -> AsyncIterator[PostgresJournal]:
    opened = PostgresJournal(cluster.dsn + "?schema=outcome")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()
        cluster.psql("DROP SCHEMA outcome CASCADE")


async def test_connection_killed_during_commit_answers_outcome_unknown(
    journal: PostgresJournal, cluster: Cluster
) -> None:
    await journal.create_run("r", "w", "v1", None, utcnow())
    admin = await asyncpg.connect(cluster.dsn)
    caught: list[Unavailable] = []

    async def append() -> None:
        try:
            await journal.append("r", [NewEvent("t", 1)], expected_seq=0, lease=None, now=utcnow())
        except Unavailable as exc:
            caught.append(exc)

    try:
        await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        await admin.execute("SELECT pg_reload_conf()")
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(append)
                while not await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event = 'SyncRep' AND application_name = 'snapshotd'"
                ):
                    await anyio.sleep(0.02)
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE wait_event = 'SyncRep' AND application_name = 'snapshotd'"
                )
    finally:
        await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()
    (error,) = caught
    assert error.details == {"outcome": "unknown"}
    assert "expected_seq" in error.message
    run = await journal.get_run("r")
    assert run is not None and run.last_seq == 1  # it had committed after all
