"""``snapshotd migrate --router``: PL/Proxy functions so applications keep one DSN.

The router database gets ``run_slice`` (computed there), and ``append_events`` /
``create_run`` that run on the shard holding the run. The PL/Proxy cluster has
1024 partitions, one per slice; partition ``p`` is the connection string of the
shard of slice ``p``, so ``RUN ON run_slice(run_id)`` reaches the run's database.
Each call commits on its shard by itself (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import asyncpg

from snapshotd.domain.slices import SLICES, slice_shard
from snapshotd.journals.migrate import MigrationError, PgTarget, connection_errors, quote_ident

_FUNCTIONS = """
CREATE OR REPLACE FUNCTION {rs}.run_slice(p_run_id text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN ((get_byte(sha256(convert_to(p_run_id, 'UTF8')), 0) << 8)
        | get_byte(sha256(convert_to(p_run_id, 'UTF8')), 1)) & 1023;

CREATE OR REPLACE FUNCTION {rs}.append_events(
    p_run_id text, p_expected_seq bigint, p_events jsonb, p_lease text DEFAULT NULL
) RETURNS bigint LANGUAGE plproxy AS $$
    CLUSTER {cluster};
    RUN ON {rs_plain}.run_slice(p_run_id);
    SELECT {ss}.append_events(p_run_id, p_expected_seq, p_events, p_lease);
$$;

CREATE OR REPLACE FUNCTION {rs}.create_run(
    p_run_id text, p_workflow text, p_version text, p_lease text DEFAULT NULL
) RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER {cluster};
    RUN ON {rs_plain}.run_slice(p_run_id);
    SELECT {ss}.create_run(p_run_id, p_workflow, p_version, p_lease);
$$;
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _value(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(dsn: str) -> str:
    """A ``postgresql://`` URL as libpq ``key=value`` pairs: PL/Proxy appends its
    own pairs to a partition's connection string, which a URL cannot take."""
    parts = urlsplit(dsn)
    userinfo, _, hostports = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    hosts, ports = [], []
    for hostport in hostports.split(","):
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = hostport.partition(":")
        hosts.append(host)
        ports.append(port)
    pairs = [("host", ",".join(hosts))]
    if any(ports):
        pairs.append(("port", ",".join(port or "5432" for port in ports)))
    if parts.path.strip("/"):
        pairs.append(("dbname", unquote(parts.path.lstrip("/"))))
    if user:
        pairs.append(("user", unquote(user)))
    if password:
        pairs.append(("password", unquote(password)))
    pairs += parse_qsl(parts.query, keep_blank_values=True)
    return " ".join(f"{key}={_value(value)}" for key, value in pairs)


def router_sql(router: PgTarget, shards: Sequence[PgTarget]) -> list[str]:
    """The statements installing the router for ``shards`` (in layout order)."""
    schemas = {s.schema for s in shards}
    if len(schemas) != 1:
        raise MigrationError(
            f"--router needs every shard in the same schema, got {', '.join(sorted(schemas))}"
        )
    server = quote_ident(f"{router.schema}_shards")
    partitions = ", ".join(
        f"p{p} {_literal(conninfo(shards[slice_shard(p, len(shards))].dsn))}" for p in range(SLICES)
    )
    return [
        "CREATE EXTENSION IF NOT EXISTS plproxy",
        f"CREATE SCHEMA IF NOT EXISTS {router.quoted_schema}",
        f"DROP SERVER IF EXISTS {server} CASCADE",
        f"CREATE SERVER {server} FOREIGN DATA WRAPPER plproxy OPTIONS ({partitions})",
        f"CREATE USER MAPPING FOR PUBLIC SERVER {server}",
        _FUNCTIONS.format(
            rs=router.quoted_schema,
            rs_plain=router.schema,
            ss=shards[0].quoted_schema,
            cluster=_literal(f"{router.schema}_shards"),
        ),
    ]


async def install_router(router: PgTarget, shards: Sequence[PgTarget]) -> None:
    """Install (or replace) the routing functions in one transaction."""
    statements = router_sql(router, shards)
    with connection_errors(router.description):
        conn = await asyncpg.connect(router.dsn, timeout=10)
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    router.lock_key("router"),
                )
                for statement in statements:
                    try:
                        await conn.execute(statement)
                    except asyncpg.PostgresError as exc:
                        if exc.sqlstate == "58P01" or "plproxy" in str(exc):
                            raise MigrationError(
                                f"router {router.description}: {exc} (install the PL/Proxy "
                                "extension there: Debian package postgresql-15-plproxy)"
                            ) from None
                        raise
        finally:
            with anyio.move_on_after(5, shield=True):
                await conn.close()
