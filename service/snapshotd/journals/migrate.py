"""PostgreSQL DSNs and the migration runner behind ``snapshotd migrate``.

Migrations are the numbered plain ``.sql`` files of the repository's top-level
``migrations/`` directory. The package reaches them as ``snapshotd/migrations``,
a symlink in the source tree that setuptools resolves into real files when it
builds a wheel, so an installed daemon carries its own migrations;
``SNAPSHOTD_MIGRATIONS`` points at another directory (tests, packagers).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg

from snapshotd.domain.errors import ConfigError, Unavailable

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

DEFAULT_SCHEMA = "snapshotd"
MIGRATIONS_ENV = "SNAPSHOTD_MIGRATIONS"

# Lower-case only, so the name needs no case folding; 56 characters at most so
# the NOTIFY channel "<schema>_events" fits PostgreSQL's 63-byte identifiers.
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,55}")
_MIGRATION_RE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
_CONNECT_TIMEOUT_S = 10.0
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
"""SQLSTATE classes meaning "unreachable, going away or retry" (connection exceptions,
transaction rollbacks, insufficient resources, operator intervention, system errors),
as opposed to a bad statement or bad data."""


class MigrationError(ConfigError):
    """The database's schema cannot be used or upgraded by this version of snapshotd."""


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A parsed ``postgresql://`` journal URL."""

    dsn: str
    """What asyncpg gets: the URL without snapshotd's own ``schema`` and
    ``prepared_statements`` parameters."""
    schema: str
    description: str
    """The URL without its password, for ``status`` and messages."""
    prepared_statements: bool = True
    """False (``prepared_statements=false``): no named server-side prepared
    statements, for a transaction-pooling pgbouncer in between."""

    @property
    def quoted_schema(self) -> str:
        return quote_ident(self.schema)

    @property
    def channel(self) -> str:
        """The NOTIFY channel of the ``notify_appends`` trigger."""
        return f"{self.schema}_events"

    def lock_key(self, purpose: str) -> str:
        """Text hashed into advisory lock keys, distinct per schema and purpose."""
        return f"snapshotd:{self.schema}:{purpose}"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parse_dsn(url: str) -> PgTarget:
    """Split ``postgresql://user@host:port/db?schema=NAME`` into DSN and schema.

    Raises ConfigError for a schema name that is not a plain lower-case identifier.
    Several hosts (``host1:5432,host2:5432``) and ``target_session_attrs`` go to
    asyncpg as they are.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"journal DSN must start with postgresql://, got {parts.scheme!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    prepared = True
    kept: list[tuple[str, str]] = []
    for key, value in query:
        if key == "schema":
            schema = value
        elif key == "prepared_statements":
            if value not in ("true", "false"):
                raise ConfigError(
                    f"journal DSN: prepared_statements must be true or false, got {value!r}"
                )
            prepared = value == "true"
        else:
            kept.append((key, value))
    if not _SCHEMA_RE.fullmatch(schema):
        raise ConfigError(
            f"journal DSN: schema {schema!r} must be a lower-case identifier "
            "([a-z_][a-z0-9_]*, at most 56 characters)"
        )
    dsn = urlunsplit(parts._replace(query=urlencode(kept)))
    netloc = parts.netloc.rpartition("@")
    if netloc[1]:
        user = netloc[0].partition(":")[0]
        shown_netloc = f"{user}@{netloc[2]}"
    else:
        shown_netloc = parts.netloc
    shown_query = urlencode([(k, v) for k, v in query if k != "password"])
    description = urlunsplit(parts._replace(netloc=shown_netloc, query=shown_query))
    return PgTarget(dsn, schema, description, prepared)


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str


def migrations_dir() -> Path:
    override = os.environ.get(MIGRATIONS_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files("snapshotd") / "migrations"))


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migrations in order; ConfigError when the directory is missing or malformed."""
    where = migrations_dir() if directory is None else directory
    try:
        files = sorted(p for p in where.iterdir() if p.suffix == ".sql")
    except OSError as exc:
        raise ConfigError(
            f"migrations directory {str(where)!r} cannot be read ({exc}); "
            f"set {MIGRATIONS_ENV} to the snapshotd migrations/ directory"
        ) from None
    found: list[Migration] = []
    numbers: set[str] = set()
    for path in files:
        match = _MIGRATION_RE.fullmatch(path.name)
        if match is None or match.group(1) in numbers:
            raise ConfigError(f"migration file {path.name!r}: expected a unique NNNN_name.sql")
        numbers.add(match.group(1))
        found.append(Migration(path.stem, path.read_text(encoding="utf-8")))
    if not found:
        raise ConfigError(f"no migrations found in {str(where)!r}")
    return found


@contextmanager
def connection_errors(description: str) -> Iterator[None]:
    """Translate driver and network errors into Unavailable, naming the DSN (no password)."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise Unavailable(f"postgresql {description}: {type(exc).__name__}: {exc}") from None


async def applied_migrations(conn: Conn, target: PgTarget) -> list[str]:
    """Names recorded in the schema's ``schema_migrations`` ([] for a fresh schema)."""
    present = await conn.fetchval(
        "SELECT to_regclass(quote_ident($1) || '.schema_migrations') IS NOT NULL",
        target.schema,
    )
    if not present:
        return []
    rows = await conn.fetch(
        f"SELECT name FROM {target.quoted_schema}.schema_migrations ORDER BY name"
    )
    return [row["name"] for row in rows]


def check_known(applied: list[str], known: list[Migration], target: PgTarget) -> list[Migration]:
    """The pending migrations; MigrationError when the database has unknown ones."""
    names = {m.name for m in known}
    unknown = [name for name in applied if name not in names]
    if unknown:
        raise MigrationError(
            f"schema {target.schema!r} of {target.description} has migrations unknown to this "
            f"version of snapshotd: {', '.join(unknown)} (a newer snapshotd migrated it; "
            "upgrade snapshotd)"
        )
    done = set(applied)
    return [m for m in known if m.name not in done]


async def migrate(dsn: str, *, directory: Path | None = None) -> list[str]:
    """Apply pending migrations in order; returns the names applied (empty: up to date).

    Each migration runs in its own transaction, all under a session advisory lock
    per schema, so several hosts may run this at once: the others wait, then find
    nothing to do. Raises MigrationError when the database holds migrations this
    version does not know, Unavailable when the database cannot be reached, and
    ConfigError for a bad DSN.
    """
    return await migrate_target(parse_dsn(dsn), directory=directory)


async def migrate_target(target: PgTarget, *, directory: Path | None = None) -> list[str]:
    """``migrate`` for an already parsed DSN."""
    known = load_migrations(directory)
    with connection_errors(target.description):
        conn = await asyncpg.connect(target.dsn, timeout=_CONNECT_TIMEOUT_S)
        try:
            return await _migrate_locked(conn, target, known)
        finally:
            # Closing also releases the session advisory lock taken in _migrate_locked.
            with anyio.move_on_after(5, shield=True):
                await conn.close()


async def _migrate_locked(
    conn: asyncpg.Connection, target: PgTarget, known: list[Migration]
) -> list[str]:
    await conn.execute(
        "SELECT pg_advisory_lock(hashtextextended($1, 0))", target.lock_key("migrate")
    )
    pending = check_known(await applied_migrations(conn, target), known, target)
    schema_exists = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", target.schema
    )
    applied: list[str] = []
    for migration in pending:
        async with conn.transaction():
            if not schema_exists:
                await conn.execute(f"CREATE SCHEMA {target.quoted_schema}")
                schema_exists = True
            await conn.execute(f"SET LOCAL search_path TO {target.quoted_schema}")
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES:
                    raise
                raise MigrationError(
                    f"migration {migration.name} failed on {target.description}: {exc}"
                ) from None
            await conn.execute(
                f"INSERT INTO {target.quoted_schema}.schema_migrations (name) VALUES ($1)",
                migration.name,
            )
        applied.append(migration.name)
    return applied
