"""Open a journal from its configured URL: ``memory:``, ``fs:PATH`` or ``postgresql://``."""

from __future__ import annotations

from collections.abc import Sequence

from snapshotd.domain.errors import ConfigError
from snapshotd.journals.base import Journal


def journal_from_url(
    url: str | Sequence[str], *, listen_dsn: str | Sequence[str] | None = None
) -> Journal:
    """Build (not open) the adapter for ``url``; ConfigError for an unknown kind.

    ``url`` a sequence of DSNs: a sharded PostgreSQL journal. ``listen_dsn``:
    PostgreSQL only, a direct DSN for LISTEN (when ``url`` goes through a
    transaction-pooling proxy), one per shard for a sharded journal.
    """
    if not isinstance(url, str):
        from snapshotd.journals.postgres.sharded import ShardedJournal

        if isinstance(listen_dsn, str):
            raise ConfigError("listen_dsn: a sharded journal needs one listen DSN per shard")
        return ShardedJournal(url, listen_dsns=listen_dsn)
    if not (listen_dsn is None or isinstance(listen_dsn, str)):
        raise ConfigError("listen_dsn: a list goes with a sharded journal (a list of DSNs)")
    if url == "memory:":
        from snapshotd.journals.memory import MemoryJournal

        return MemoryJournal()
    if url.startswith("fs:"):
        from snapshotd.journals.fs import FsJournal

        path = url[3:]
        if not path:
            raise ConfigError("journal 'fs:' needs a path, e.g. fs:./data")
        return FsJournal(path)
    if url.startswith(("postgresql://", "postgres://")):
        from snapshotd.journals.postgres import PostgresJournal

        return PostgresJournal(url, listen_dsn=listen_dsn)
    raise ConfigError(f"journal {url!r}: expected 'memory:', 'fs:PATH' or 'postgresql://...'")
