"""The asyncpg pool of a PostgreSQL journal: opened even while the database is down,
reconnected with jitter, probed so ``status`` can say whether the journal answers."""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager

import anyio
import asyncpg
import structlog
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from snapshotd.domain.errors import ConfigError, Unavailable
from snapshotd.journals.migrate import (
    MigrationError,
    PgTarget,
    applied_migrations,
    check_known,
    load_migrations,
    migrate_target,
)

_log = structlog.get_logger("snapshotd.postgres")

_APP_NAME = "snapshotd"
PROBE_EVERY_S = 5.0


def jittered(delay: float) -> float:
    """``delay`` spread over [0.5, 1.5) of itself, so daemons do not reconnect in step."""
    return delay * (0.5 + random.random())


class PoolKeeper:
    """Owns the pool: ``open`` never fails for an unreachable database (the daemon
    starts and answers ``unavailable``); ``keep`` connects and probes until cancelled."""

    def __init__(
        self,
        target: PgTarget,
        errors: Callable[[str], AbstractContextManager[None]],
        *,
        pool_max_size: int,
        command_timeout_s: float,
        connect_timeout_s: float,
        backoff_s: tuple[float, float],
    ) -> None:
        self._target = target
        self._errors = errors
        self._pool_max_size = pool_max_size
        self._command_timeout_s = command_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff_s = backoff_s
        self.pool: asyncpg.Pool | None = None
        self.up = False
        """Whether the database answered the last connection attempt or probe."""

    async def open(self) -> None:
        """Connect, or log that the database is unreachable and leave it to ``keep``.

        Raises ConfigError (MigrationError) for a schema this version cannot use.
        """
        try:
            await self.connect()
        except Unavailable as exc:
            _log.warning("journal_unreachable", journal=self._target.description, error=str(exc))

    async def connect(self) -> None:
        """Create the pool; migrate a fresh schema, refuse one that is behind or unknown.

        A schema that is behind is left for ``snapshotd migrate``, so that a rolling
        deploy never changes a schema under daemons of the older version.
        """
        if self.pool is not None:
            return
        known = load_migrations()
        with self._errors("open"):
            pool = await asyncpg.create_pool(
                self._target.dsn,
                min_size=1,
                max_size=self._pool_max_size,
                timeout=self._connect_timeout_s,
                command_timeout=self._command_timeout_s,
                statement_cache_size=100 if self._target.prepared_statements else 0,
                server_settings={"application_name": _APP_NAME},
            )
        try:
            with self._errors("open"):
                async with pool.acquire() as conn:
                    applied = await applied_migrations(conn, self._target)
                    if applied and check_known(applied, known, self._target):
                        # Another daemon may be migrating this fresh schema right now
                        # (it holds the lock): wait for it, then look again.
                        async with conn.transaction():
                            await conn.execute(
                                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                                self._target.lock_key("migrate"),
                            )
                        applied = await applied_migrations(conn, self._target)
            if not applied:
                await migrate_target(self._target)
            else:
                pending = check_known(applied, known, self._target)
                if pending:
                    raise MigrationError(
                        f"schema {self._target.schema!r} of {self._target.description} needs "
                        f"migrations {', '.join(m.name for m in pending)}: "
                        "run `snapshotd migrate --dsn ...`"
                    )
        except BaseException:
            with anyio.move_on_after(5, shield=True):
                await pool.close()
            raise
        self.pool = pool
        self.up = True

    async def keep(
        self,
        on_reconnect: Callable[[], None],
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        """Until cancelled: connect while there is no pool (backoff with jitter), then
        probe it every ``PROBE_EVERY_S`` (the pool replaces dead connections itself,
        on a multi-host DSN on whichever host is primary now)."""
        task_status.started()
        delay = self._backoff_s[0]
        while True:
            was_up = self.up
            try:
                if self.pool is None:
                    await self.connect()
                else:
                    with self._errors("probe"):
                        await self.pool.fetchval("SELECT 1", timeout=self._connect_timeout_s)
                self.up = True
                delay = self._backoff_s[0]
                if not was_up:
                    _log.info("journal_reconnected", journal=self._target.description)
                    on_reconnect()
                await anyio.sleep(PROBE_EVERY_S)
                continue
            except Unavailable as exc:
                if was_up:
                    _log.warning("journal_down", journal=self._target.description, error=str(exc))
            except ConfigError as exc:
                _log.error("journal_refused", journal=self._target.description, error=str(exc))
                delay = self._backoff_s[1]
            self.up = False
            await anyio.sleep(jittered(delay))
            delay = min(delay * 2, self._backoff_s[1])

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        self.up = False
        if pool is None:
            return
        with anyio.move_on_after(5, shield=True) as scope:
            await pool.close()
        if scope.cancelled_caught:
            pool.terminate()
