"""Shared fixtures: the anyio backend, a real PostgreSQL for the session, and ``journal``.

Async tests run on anyio's pytest plugin (``@pytest.mark.anyio``): its fixtures
may hold task groups across ``yield``, which pytest-asyncio does not support
well (pytest-asyncio stays installed in strict mode, so it never claims a test).

``journal`` is one opened journal of every kind: each kind is a factory in
``JOURNAL_FACTORIES`` and a test taking the fixture runs once per entry, so a new
adapter joins the contract suite (and every other such test) by adding one line there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from snapshotd.journals.base import Journal
from snapshotd.journals.fs import FsJournal
from snapshotd.journals.memory import MemoryJournal

if TYPE_CHECKING:
    from tests.journals.pg_cluster import Cluster

PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PGPORT", "5432"))
PG_USER = os.environ.get("PGUSER", "postgres")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _server_answers(host: str, port: int) -> bool:
    if shutil.which("psql") is None:
        return False
    probe = _psql(f"postgresql://{PG_USER}@{host}:{port}/postgres", "select 1")
    return probe.returncode == 0


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _private_cluster(stack: list[str], *, durable: bool = True) -> tuple[str, int] | None:
    """initdb + pg_ctl as the postgres user (PostgreSQL refuses to run as root).

    ``durable=False``: no fsync, for clusters whose host never crashes in a test
    (a killed server still loses nothing committed).
    """
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        return None
    datadir = tempfile.mkdtemp(prefix="snapshotd-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*prefix, initdb, "-D", datadir, "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # A port free a moment ago can be taken by another test's cluster before the
    # server binds it: try a few.
    for attempt in range(3):
        port = _free_port()
        started = subprocess.run(
            [
                *prefix,
                pg_ctl,
                "-D",
                datadir,
                "-w",
                "-o",
                f"-p {port} -k {datadir} -h 127.0.0.1" + ("" if durable else " -c fsync=off"),
                "-l",
                f"{datadir}/log",
                "start",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if started.returncode == 0:
            break
        if attempt == 2:
            log = Path(datadir, "log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"private PostgreSQL cluster did not start: {log}")
    stack.extend([*prefix, pg_ctl, "-D", datadir, "-m", "immediate", "stop"])
    return "127.0.0.1", port


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of a PostgreSQL server: the local one, else a private throwaway cluster."""
    stop: list[str] = []
    if _server_answers(PG_HOST, PG_PORT):
        host, port = PG_HOST, PG_PORT
    else:
        started = _private_cluster(stop)
        if started is None:
            message = (
                f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} and no initdb/pg_ctl "
                "was found to start a private cluster"
            )
            if os.environ.get("CI") == "true":
                pytest.fail(message + " (CI=true: PostgreSQL tests must not be skipped)")
            print(f"\n!!! SKIPPING PostgreSQL tests: {message} !!!\n")
            pytest.skip(message)
        host, port = started
    try:
        yield f"postgresql://{PG_USER}@{host}:{port}"
    finally:
        if stop:
            subprocess.run(stop, check=False, capture_output=True, timeout=60)
            shutil.rmtree(stop[stop.index("-D") + 1], ignore_errors=True)


@pytest.fixture(scope="session")
def pg_dsn(pg_server: str) -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    name = f"snapshotd_test_{os.getpid()}_{secrets.token_hex(4)}"
    result = _psql(f"{pg_server}/postgres", f'create database "{name}"')
    assert result.returncode == 0, result.stderr
    try:
        yield f"{pg_server}/{name}"
    finally:
        for _ in range(3):
            done = _psql(f"{pg_server}/postgres", f'drop database if exists "{name}" with (force)')
            if done.returncode == 0:
                break
            time.sleep(0.5)


SHARDS = 3


@pytest.fixture(scope="session")
def pg_shards() -> Iterator[list[Cluster]]:
    """Three private clusters: the databases of a sharded journal (each test takes
    its own schema in them). A test that stops one starts it again before it ends."""
    from tests.journals.pg_cluster import Cluster

    clusters: list[Cluster] = []
    try:
        for _ in range(SHARDS):
            stop: list[str] = []
            started = _private_cluster(stop, durable=False)
            if started is None:
                message = "initdb/pg_ctl are needed for the sharded journal's clusters"
                if os.environ.get("CI") == "true":
                    pytest.fail(message + " (CI=true: PostgreSQL tests must not be skipped)")
                pytest.skip(message)
            clusters.append(Cluster(started[0], started[1], stop))
        yield clusters
    finally:
        for cluster in clusters:
            subprocess.run(cluster.stop_command, check=False, capture_output=True, timeout=60)
            shutil.rmtree(cluster.datadir, ignore_errors=True)


def sharded_dsns(clusters: list[Cluster], schema: str | None = None) -> list[str]:
    """One DSN per shard, all with the same fresh (or given) schema."""
    schema = schema or f"t_{secrets.token_hex(6)}"
    return [f"{cluster.dsn}?schema={schema}" for cluster in clusters]


JournalFactory = Callable[[pytest.FixtureRequest, Path], Journal]


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    return MemoryJournal()


def _fs(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    return FsJournal(tmp_path / "journal")


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    from snapshotd.journals.postgres import PostgresJournal

    pg_dsn: str = request.getfixturevalue("pg_dsn")
    return PostgresJournal(f"{pg_dsn}?schema=t_{secrets.token_hex(6)}")


JOURNAL_FACTORIES = [
    pytest.param(_memory, id="memory"),
    pytest.param(_fs, id="fs"),
    pytest.param(_postgres, id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=JOURNAL_FACTORIES)
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    factory: JournalFactory = request.param
    opened = factory(request, tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()
