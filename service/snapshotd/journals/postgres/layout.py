"""The shard layout row (migration 0008): each shard of a sharded journal knows its
place, so a DSN list given in another order or of another length is refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import asyncpg

from snapshotd.journals.migrate import (
    MigrationError,
    PgTarget,
    connection_errors,
    migrate_target,
    parse_dsn,
)

if TYPE_CHECKING:
    from snapshotd.journals.migrate import Conn

_READ = "SELECT shard_index, shard_count FROM {s}.shard_layout"
_RECORD = (
    "INSERT INTO {s}.shard_layout (shard_index, shard_count) VALUES ($1, $2) "
    "ON CONFLICT (only_row) DO NOTHING"
)
_HAS_RUNS = "SELECT EXISTS (SELECT 1 FROM {s}.runs)"


async def recorded(conn: Conn, target: PgTarget) -> tuple[int, int] | None:
    """(index, count) recorded in the shard, or None."""
    row = await conn.fetchrow(_READ.format(s=target.quoted_schema))
    return None if row is None else (row[0], row[1])


def _disagreement(target: PgTarget, found: tuple[int, int], index: int, count: int) -> str:
    return (
        f"{target.description} is shard {found[0]} of {found[1]}, "
        f"but is listed as shard {index} of {count}: the DSN list's order and length "
        "are the data layout (docs/scaling.md)"
    )


async def record_layout(conn: Conn, target: PgTarget, index: int, count: int) -> None:
    """Record the shard's place (``snapshotd migrate``); MigrationError when it holds
    another one already (moving slices between databases is not built)."""
    await conn.execute(_RECORD.format(s=target.quoted_schema), index, count)
    found = await recorded(conn, target)
    if found != (index, count):
        assert found is not None
        raise MigrationError(_disagreement(target, found, index, count))


async def layout_problem(conn: Conn, target: PgTarget, index: int, count: int) -> str | None:
    """Why this database cannot serve as shard ``index`` of ``count`` (None: it can).

    A database with no layout recorded takes the place when it holds no runs yet
    (or when it is the only shard): it cannot be holding another shard's runs.
    """
    found = await recorded(conn, target)
    if found is None:
        if count > 1 and await conn.fetchval(_HAS_RUNS.format(s=target.quoted_schema)):
            return (
                f"{target.description} holds runs but no shard layout: migrate every shard "
                "at once (snapshotd migrate with each shard's --dsn, in order)"
            )
        await record_layout(conn, target, index, count)
        return None
    if found != (index, count):
        return _disagreement(target, found, index, count)
    return None


async def migrate_shards(dsns: list[str]) -> list[list[str]]:
    """``snapshotd migrate`` given several DSNs: migrate each shard, then record its
    place (index, count); MigrationError when one already holds another place."""
    targets = [parse_dsn(dsn) for dsn in dsns]
    results: list[list[str]] = []
    for index, target in enumerate(targets):
        results.append(await migrate_target(target))
        with connection_errors(target.description):
            conn = await asyncpg.connect(target.dsn, timeout=10)
            try:
                await record_layout(conn, target, index, len(targets))
            finally:
                with anyio.move_on_after(5, shield=True):
                    await conn.close()
    return results
