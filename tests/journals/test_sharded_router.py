"""``snapshotd migrate`` over shards and ``--router``: plain SQL reaching the run's shard."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess

import pytest

from snapshotd.cli.main import main
from snapshotd.journals.migrate import MigrationError, parse_dsn
from snapshotd.journals.postgres.router import conninfo, router_sql
from tests.conftest import sharded_dsns
from tests.journals.pg_cluster import Cluster
from tests.journals.test_sharded import expected_shard

pytestmark = pytest.mark.postgres


def psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def routed(
    pg_shards: list[Cluster], pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> tuple[str, list[str]]:
    """A router database (schema of its own on the session database) over three
    freshly migrated shards."""
    shards = sharded_dsns(pg_shards)
    router = f"{pg_dsn}?schema=r_{secrets.token_hex(4)}"
    args = ["migrate", "--json", "--router", router]
    for dsn in shards:
        args += ["--dsn", dsn]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["router"] and len(out["databases"]) == 3
    return router.replace("?schema=", "?options=-csearch_path%3D"), shards


def test_migrate_records_each_shard_s_place(
    routed: tuple[str, list[str]], pg_shards: list[Cluster]
) -> None:
    _, shards = routed
    for index, (cluster, dsn) in enumerate(zip(pg_shards, shards, strict=True)):
        schema = dsn.rpartition("schema=")[2]
        assert cluster.psql(f"SELECT shard_index, shard_count FROM {schema}.shard_layout") == (
            f"{index}|3"
        )


def test_migrate_refuses_shards_listed_in_another_order(
    routed: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, shards = routed
    code = main(["migrate", "--dsn", shards[1], "--dsn", shards[0], "--dsn", shards[2]])
    assert code != 0
    assert "is shard 1 of 3, but is listed as shard 0 of 3" in capsys.readouterr().err


def test_router_runs_each_call_on_the_shard_of_its_slice(
    routed: tuple[str, list[str]], pg_shards: list[Cluster]
) -> None:
    router, shards = routed
    run_ids = [f"r-{i}-{secrets.token_hex(2)}" for i in range(30)]
    for run_id in run_ids:
        digest = hashlib.sha256(run_id.encode()).digest()
        done = psql(router, f"SELECT run_slice('{run_id}')")
        assert done.stdout.strip() == str((digest[0] * 256 + digest[1]) % 1024)
        created = psql(router, f"SELECT create_run('{run_id}', 'wf', 'v1')")
        assert created.stdout.strip() == "t", created.stderr
        appended = psql(
            router, f"""SELECT append_events('{run_id}', 0, '[{{"type": "e", "data": 1}}]')"""
        )
        assert appended.stdout.strip() == "1", appended.stderr
    for index, (cluster, dsn) in enumerate(zip(pg_shards, shards, strict=True)):
        schema = dsn.rpartition("schema=")[2]
        held = set(cluster.psql(f"SELECT run_id FROM {schema}.runs WHERE last_seq = 1").split())
        assert held == {r for r in run_ids if expected_shard(r, 3) == index}


def test_router_passes_sqlstates_through(routed: tuple[str, list[str]]) -> None:
    router, _ = routed
    run_id = f"s-{secrets.token_hex(3)}"
    assert psql(router, f"SELECT create_run('{run_id}', 'wf', 'v1', 'lease-a')").returncode == 0
    one = """'[{"type": "e", "data": 1}]'"""
    cases = {
        f"SELECT append_events('{run_id}', 5, {one}, 'lease-a')": "SD409",
        f"SELECT append_events('nope', 0, {one})": "SD404",
        f"SELECT append_events('{run_id}', 0, {one}, 'lease-b')": "SD423",
        f"""SELECT append_events('{run_id}', 0, '"x"', 'lease-a')""": "22023",
    }
    for sql, state in cases.items():
        done = subprocess.run(
            ["psql", router, "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-qAtc", sql],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode != 0
        assert state in done.stderr, (sql, done.stderr)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u@h/db", "host='h' dbname='db' user='u'"),
        (
            "postgresql://u:p%27w@a:5432,b:5433/db?sslmode=require",
            "host='a,b' port='5432,5433' dbname='db' user='u' password='p\\'w' sslmode='require'",
        ),
        ("postgresql://u@[::1]:5/db", "host='::1' port='5' dbname='db' user='u'"),
    ],
)
def test_partitions_get_libpq_key_value_connection_strings(dsn: str, expected: str) -> None:
    assert conninfo(dsn) == expected


def test_router_needs_the_shards_in_one_schema() -> None:
    shards = [parse_dsn("postgresql://u@a/db?schema=x"), parse_dsn("postgresql://u@b/db?schema=y")]
    with pytest.raises(MigrationError, match="same schema"):
        router_sql(parse_dsn("postgresql://u@r/db"), shards)
