"""LISTEN for append notifications on a dedicated connection, reconnecting with
jittered backoff (on a multi-host DSN, to whichever host accepts it now)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, suppress

import anyio
import asyncpg
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from snapshotd.domain.errors import Unavailable
from snapshotd.journals.migrate import PgTarget, parse_dsn
from snapshotd.journals.postgres.errors import wrap_errors
from snapshotd.journals.postgres.pool import jittered

_LISTEN_APP_NAME = "snapshotd-listen"


class Listener:
    """Listens on ``target``'s channel (a pooled connection would lose it on release),
    connecting to ``listen_dsn`` when given: behind a transaction-pooling pgbouncer
    notifications never arrive, so LISTEN needs a direct connection."""

    def __init__(
        self,
        target: PgTarget,
        *,
        listen_dsn: str | None = None,
        connect_timeout_s: float,
        keepalive_s: float,
        backoff_s: tuple[float, float],
    ) -> None:
        self._target = target
        self._dsn = target.dsn if listen_dsn is None else parse_dsn(listen_dsn).dsn
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._backoff_s = backoff_s

    async def watch(
        self,
        on_append: Callable[[str], None],
        on_gap: Callable[[], None],
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled (see ``WatchesAppends.watch_appends``).

        ``task_status.started()`` comes once listening, or after a first failed
        attempt, so a database that is down never blocks the caller's start-up;
        every later successful LISTEN is followed by ``on_gap()``. A ``SELECT 1``
        every ``keepalive_s`` notices a connection that died silently.
        """
        started = False
        listened = False

        def listening() -> None:
            nonlocal started, listened
            listened = True
            if started:
                on_gap()
            else:
                started = True
                task_status.started()

        delay = self._backoff_s[0]
        while True:
            listened = False
            with suppress(Unavailable):
                await self._listen_once(on_append, listening)
            if not started:
                started = True
                task_status.started()
            if listened:
                delay = self._backoff_s[0]
            await anyio.sleep(jittered(delay))
            delay = min(delay * 2, self._backoff_s[1])

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return wrap_errors(f"postgresql journal {self._target.description}: {what}")

    async def _listen_once(
        self, on_append: Callable[[str], None], listening: Callable[[], None]
    ) -> None:
        """Listen until the connection is lost; raises Unavailable when it cannot start."""
        lost = anyio.Event()
        with self._errors("listen"):
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout_s,
                server_settings={"application_name": _LISTEN_APP_NAME},
            )
        try:
            with self._errors("listen"):
                conn.add_termination_listener(lambda _conn: lost.set())
                await conn.add_listener(
                    self._target.channel, lambda _conn, _pid, _chan, payload: on_append(payload)
                )
            listening()
            with self._errors("listen keepalive"):
                while not lost.is_set():
                    with anyio.move_on_after(self._keepalive_s):
                        await lost.wait()
                    if not lost.is_set():
                        await conn.execute("SELECT 1", timeout=self._connect_timeout_s)
        finally:
            with anyio.move_on_after(2, shield=True) as scope:
                try:
                    await conn.close()
                except (asyncpg.InterfaceError, OSError):
                    conn.terminate()
            if scope.cancelled_caught:
                conn.terminate()
