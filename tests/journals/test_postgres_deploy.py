"""Real deployments (SPEC section 5): multi-host DSNs that follow the primary,
``prepared_statements=false`` for transaction pooling, LISTEN on ``listen_dsn``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import anyio
import asyncpg
import pytest

from snapshotd.domain.errors import ConfigError, Unavailable
from snapshotd.domain.model import NewEvent, utcnow
from snapshotd.journals.migrate import parse_dsn
from snapshotd.journals.postgres import PostgresJournal

from .pg_cluster import Cluster, private_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def read_only(cluster: Cluster, on: bool) -> None:
    """Make a cluster refuse writes, as a standby does (``transaction_read_only``)."""
    value = "on" if on else "off"
    cluster.psql(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
    cluster.psql("SELECT pg_reload_conf()")


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Cluster, Cluster]]:
    with private_cluster() as a, private_cluster() as b:
        yield a, b


async def test_a_multi_host_dsn_follows_the_writable_host(pair: tuple[Cluster, Cluster]) -> None:
    a, b = pair
    for cluster in pair:
        seed = PostgresJournal(cluster.dsn + "?schema=fo")
        await seed.open()
        await seed.create_run("r", "w", "v1", None, utcnow())
        await seed.aclose()
    read_only(b, True)
    hosts = f"{a.host}:{a.port},{b.host}:{b.port}"
    journal = PostgresJournal(
        f"postgresql://postgres@{hosts}/postgres?schema=fo&target_session_attrs=read-write",
        backoff_s=(0.05, 0.2),
    )
    await journal.open()
    try:
        event = [NewEvent("t", 1)]
        assert await journal.append("r", event, expected_seq=None, lease=None, now=utcnow()) == 1
        a.stop()  # the primary fails; b is promoted
        read_only(b, False)
        with anyio.fail_after(30):
            while True:
                try:
                    await journal.append("r", event, expected_seq=None, lease=None, now=utcnow())
                    break
                except Unavailable:  # the pool meets the dead primary first
                    await anyio.sleep(0.1)
        assert b.psql("SELECT last_seq FROM fo.runs WHERE run_id = 'r'") == "1"
    finally:
        await journal.aclose()
        a.start()


async def test_prepared_statements_false_uses_none(pg_dsn: str) -> None:
    schema = f"t_{secrets.token_hex(6)}"
    counts = {}
    for prepared in ("true", "false"):
        journal = PostgresJournal(f"{pg_dsn}?schema={schema}&prepared_statements={prepared}")
        await journal.open()
        try:
            await journal.create_run(f"r-{prepared}", "w", "v1", None, utcnow())
            await journal.get_run(f"r-{prepared}")
            async with journal._p.acquire() as conn:
                counts[prepared] = await conn.fetchval(
                    "SELECT count(*) FROM pg_prepared_statements"
                )
        finally:
            await journal.aclose()
    assert counts["true"] > 0
    assert counts["false"] == 0
    with pytest.raises(ConfigError, match="prepared_statements"):
        parse_dsn(f"{pg_dsn}?prepared_statements=maybe")


async def test_listen_dsn_is_where_notifications_are_listened_for(pg_dsn: str) -> None:
    role = f"listener_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(parse_dsn(pg_dsn).dsn)
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    listen_dsn = f"postgresql://{role}@{pg_dsn.partition('@')[2]}"
    journal = PostgresJournal(f"{pg_dsn}?schema=t_{secrets.token_hex(6)}", listen_dsn=listen_dsn)
    await journal.open()
    seen: list[str] = []
    try:
        await journal.create_run("r", "w", "v1", None, utcnow())
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(journal.watch_appends, seen.append, lambda: None)
                user = await admin.fetchval(
                    "SELECT usename FROM pg_stat_activity "
                    "WHERE application_name = 'snapshotd-listen' AND usename = $1",
                    role,
                )
                assert user == role
                await journal.append(
                    "r", [NewEvent("t", 1)], expected_seq=0, lease=None, now=utcnow()
                )
                while not seen:
                    await anyio.sleep(0.02)
                tg.cancel_scope.cancel()
        assert seen == ["r"]
    finally:
        await journal.aclose()
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
