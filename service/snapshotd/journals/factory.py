"""Open a journal from its configured URL: ``memory:``, ``fs:PATH`` or ``postgresql://``."""

from __future__ import annotations

from snapshotd.domain.errors import ConfigError
from snapshotd.journals.base import Journal


def journal_from_url(url: str, *, listen_dsn: str | None = None) -> Journal:
    """Build (not open) the adapter for ``url``; ConfigError for an unknown kind.

    ``listen_dsn``: PostgreSQL only, a direct DSN for LISTEN (when ``url`` goes
    through a transaction-pooling proxy).
    """
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
