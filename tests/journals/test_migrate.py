"""The migration runner: DSN parsing, ordering, idempotence, concurrency, refusals."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import anyio
import asyncpg
import pytest

from snapshotd.domain.errors import ConfigError, Unavailable
from snapshotd.journals.migrate import (
    MIGRATIONS_ENV,
    MigrationError,
    load_migrations,
    migrate,
    migrations_dir,
    parse_dsn,
)
from snapshotd.journals.postgres import PostgresJournal

pytestmark = pytest.mark.anyio

REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@pytest.fixture
def schema_dsn(pg_dsn: str) -> str:
    return f"{pg_dsn}?schema=t_{secrets.token_hex(6)}"


async def _applied(dsn: str) -> list[str]:
    target = parse_dsn(dsn)
    conn = await asyncpg.connect(target.dsn)
    try:
        rows = await conn.fetch(f"SELECT name FROM {target.quoted_schema}.schema_migrations")
    finally:
        await conn.close()
    return sorted(row["name"] for row in rows)


def test_parse_dsn_strips_schema_and_hides_password() -> None:
    target = parse_dsn("postgresql://app:s3cret@db:5433/prod?schema=journal&sslmode=disable")
    assert target.schema == "journal"
    assert target.dsn == "postgresql://app:s3cret@db:5433/prod?sslmode=disable"
    assert target.description == "postgresql://app@db:5433/prod?schema=journal&sslmode=disable"
    assert target.channel == "journal_events"
    assert parse_dsn("postgres://db/prod").schema == "snapshotd"
    assert "pw" not in parse_dsn("postgresql://db/prod?password=pw").description


@pytest.mark.parametrize("schema", ["", "Upper", "a-b", 'x";drop', "1abc", "a" * 57])
def test_parse_dsn_rejects_bad_schema(schema: str) -> None:
    with pytest.raises(ConfigError, match="schema"):
        parse_dsn(f"postgresql://db/prod?schema={schema}")


def test_packaged_migrations_are_the_top_level_ones() -> None:
    packaged = {m.name: m.sql for m in load_migrations(migrations_dir())}
    top_level = {p.stem: p.read_text() for p in REPO_MIGRATIONS.glob("*.sql")}
    assert packaged == top_level
    assert list(packaged) == sorted(packaged)


def test_malformed_migration_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_init.sql").write_text("select 1")
    with pytest.raises(ConfigError, match="NNNN_name"):
        load_migrations(tmp_path)


async def test_migrate_is_idempotent(schema_dsn: str) -> None:
    names = [m.name for m in load_migrations()]
    assert await migrate(schema_dsn) == names
    assert await migrate(schema_dsn) == []
    assert await _applied(schema_dsn) == names


async def test_concurrent_migrate_applies_once(schema_dsn: str) -> None:
    results: list[list[str]] = []

    async def run() -> None:
        results.append(await migrate(schema_dsn))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(run)
    names = [m.name for m in load_migrations()]
    assert sorted(results) == [[], [], names]
    assert await _applied(schema_dsn) == names


async def test_pending_migrations_apply_in_order_and_open_refuses_until_then(
    schema_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(schema_dsn)
    for path in REPO_MIGRATIONS.glob("*.sql"):
        shutil.copy(path, tmp_path)
    (tmp_path / "9001_extra.sql").write_text("CREATE TABLE extra (id int);")
    (tmp_path / "9002_more.sql").write_text("ALTER TABLE extra ADD COLUMN note text;")
    monkeypatch.setenv(MIGRATIONS_ENV, str(tmp_path))

    journal = PostgresJournal(schema_dsn)
    with pytest.raises(MigrationError, match=r"9001_extra, 9002_more.*snapshotd migrate"):
        await journal.open()
    assert await migrate(schema_dsn) == ["9001_extra", "9002_more"]
    await journal.open()
    await journal.aclose()


async def test_open_waits_for_a_migration_under_way(
    schema_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Daemons started together on a fresh schema: one migrates it, the others find
    it half done and must wait for that migration instead of refusing to start."""
    first = sorted(REPO_MIGRATIONS.glob("*.sql"))[0]
    shutil.copy(first, tmp_path)
    monkeypatch.setenv(MIGRATIONS_ENV, str(tmp_path))
    await migrate(schema_dsn)
    monkeypatch.delenv(MIGRATIONS_ENV)
    target = parse_dsn(schema_dsn)
    holder = await asyncpg.connect(target.dsn)
    try:
        key = target.lock_key("migrate")
        await holder.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
        journal = PostgresJournal(schema_dsn)
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.open)
            await anyio.sleep(0.5)  # open is now waiting for the lock
            names = [p.stem for p in sorted(REPO_MIGRATIONS.glob("*.sql"))[1:]]
            for path in sorted(REPO_MIGRATIONS.glob("*.sql"))[1:]:
                async with holder.transaction():
                    await holder.execute(f"SET LOCAL search_path TO {target.quoted_schema}")
                    await holder.execute(path.read_text())
                    await holder.execute(
                        f"INSERT INTO {target.quoted_schema}.schema_migrations (name) VALUES ($1)",
                        path.stem,
                    )
            await holder.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
        assert [n for n in await _applied(schema_dsn) if n in names] == names
        await journal.aclose()
    finally:
        await holder.close()


async def test_unknown_applied_migration_is_refused(schema_dsn: str) -> None:
    await migrate(schema_dsn)
    target = parse_dsn(schema_dsn)
    conn = await asyncpg.connect(target.dsn)
    try:
        await conn.execute(
            f"INSERT INTO {target.quoted_schema}.schema_migrations (name) VALUES ('9999_future')"
        )
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match=r"unknown to this version.*9999_future"):
        await migrate(schema_dsn)
    journal = PostgresJournal(schema_dsn)
    with pytest.raises(MigrationError, match="9999_future"):
        await journal.open()


async def test_failing_migration_leaves_nothing_behind(schema_dsn: str, tmp_path: Path) -> None:
    for path in REPO_MIGRATIONS.glob("*.sql"):
        shutil.copy(path, tmp_path)
    (tmp_path / "9001_broken.sql").write_text("CREATE TABLE half (id int); SELECT no_such_fn();")
    with pytest.raises(MigrationError, match="9001_broken"):
        await migrate(schema_dsn, directory=tmp_path)
    assert await _applied(schema_dsn) == [m.name for m in load_migrations()]


async def test_unreachable_database_is_unavailable() -> None:
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:1"):
        await migrate("postgresql://nobody:pw@127.0.0.1:1/none")
