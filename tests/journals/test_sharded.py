"""The sharded journal: routing by slice, the recorded layout, a shard that is down."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from structlog.testing import capture_logs

from snapshotd.domain.errors import ConfigError, Unavailable
from snapshotd.domain.model import NewEvent
from snapshotd.journals.factory import journal_from_url
from snapshotd.journals.postgres.sharded import ShardedJournal
from tests.conftest import sharded_dsns
from tests.journals.pg_cluster import Cluster
from tests.support import T0

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def expected_shard(run_id: str, shards: int) -> int:
    """SPEC section 5 computed here independently of domain.slices."""
    digest = hashlib.sha256(run_id.encode()).digest()
    slice_ = (digest[0] * 256 + digest[1]) % 1024
    return next(i for i in range(shards) if i * 1024 // shards <= slice_ < (i + 1) * 1024 // shards)


@asynccontextmanager
async def kept(journal: ShardedJournal) -> AsyncIterator[ShardedJournal]:
    """The journal opened, with its reconnect and layout loop running."""
    await journal.open()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(journal.keep_connected, lambda: None)
            yield journal
            tg.cancel_scope.cancel()
    finally:
        await journal.aclose()


def run_ids_of(cluster: Cluster, dsn: str) -> set[str]:
    schema = dsn.rpartition("schema=")[2]
    return set(cluster.psql(f"SELECT run_id FROM {schema}.runs").split())


async def test_every_run_lives_in_the_shard_of_its_slice(pg_shards: list[Cluster]) -> None:
    dsns = sharded_dsns(pg_shards)
    run_ids = [f"run-{i}-{secrets.token_hex(3)}" for i in range(60)]
    async with kept(ShardedJournal(dsns)) as journal:
        for run_id in run_ids:
            await journal.create_run(run_id, "wf", "v1", None, T0)
            await journal.append(
                run_id, [NewEvent("e", {"n": 1})], expected_seq=None, lease=None, now=T0
            )
        listed = await journal.list_runs(None, 1000)
        page = await journal.run_summaries(run_ids[0], 7, None)
    assert listed == sorted(run_ids, key=str.encode)
    assert [r.run_id for r in page] == [r for r in listed if r.encode() > run_ids[0].encode()][:7]
    held = [run_ids_of(cluster, dsn) for cluster, dsn in zip(pg_shards, dsns, strict=True)]
    for run_id in run_ids:
        where = [i for i, ids in enumerate(held) if run_id in ids]
        assert where == [expected_shard(run_id, len(pg_shards))]
    assert all(held), "60 runs leave no shard empty"


async def test_a_list_in_another_order_keeps_journal_up_false(pg_shards: list[Cluster]) -> None:
    dsns = sharded_dsns(pg_shards)
    async with kept(ShardedJournal(dsns)) as journal:
        assert journal.up
        assert journal.shard_states() == [{"index": i, "up": True} for i in range(3)]
    swapped = [dsns[1], dsns[0], dsns[2]]
    with capture_logs() as logs:
        async with kept(ShardedJournal(swapped)) as journal:
            assert not journal.up
            assert journal.shard_states() == [
                {"index": 0, "up": False},
                {"index": 1, "up": False},
                {"index": 2, "up": True},
            ]
            on_two = next(f"r{i}" for i in range(1000) if expected_shard(f"r{i}", 3) == 2)
            on_zero = next(f"r{i}" for i in range(1000) if expected_shard(f"r{i}", 3) == 0)
            assert await journal.create_run(on_two, "wf", "v1", None, T0)
            with pytest.raises(Unavailable, match="is shard 1 of 3, but is listed as shard 0"):
                await journal.create_run(on_zero, "wf", "v1", None, T0)
    errors = [e for e in logs if e["event"] == "shard_layout_mismatch"]
    assert {e["shard"] for e in errors} == {0, 1}
    assert all("the DSN list's order and length are the data layout" in e["error"] for e in errors)


async def test_a_shard_holding_runs_without_a_layout_is_refused(pg_shards: list[Cluster]) -> None:
    dsns = sharded_dsns(pg_shards)
    async with kept(ShardedJournal(dsns)):
        pass
    schema = dsns[1].rpartition("schema=")[2]
    pg_shards[1].psql(
        f"DELETE FROM {schema}.shard_layout; "
        f"INSERT INTO {schema}.runs (run_id, workflow, version, created_at) "
        "VALUES ('x', 'wf', 'v1', now())"
    )
    async with kept(ShardedJournal(dsns)) as journal:
        assert [s["up"] for s in journal.shard_states()] == [True, False, True]


async def test_a_shard_that_is_down_makes_only_its_runs_unavailable(
    pg_shards: list[Cluster],
) -> None:
    dsns = sharded_dsns(pg_shards)
    by_shard = {
        i: next(f"d{n}" for n in range(1000) if expected_shard(f"d{n}", 3) == i) for i in range(3)
    }
    journal = ShardedJournal(dsns, backoff_s=(0.1, 0.5))
    async with kept(journal):
        for run_id in by_shard.values():
            await journal.create_run(run_id, "wf", "v1", None, T0)
        pg_shards[1].stop()
        try:
            with pytest.raises(Unavailable):
                await journal.get_run(by_shard[1])
            with anyio.fail_after(20):
                while journal.up:
                    await anyio.sleep(0.1)
            assert [s["up"] for s in journal.shard_states()] == [True, False, True]
            for i in (0, 2):
                run = await journal.get_run(by_shard[i])
                assert run is not None and run.run_id == by_shard[i]
            await journal.sweep_due(T0, 10, None)
        finally:
            pg_shards[1].start()
        with anyio.fail_after(30):
            while not journal.up:
                await anyio.sleep(0.1)
        run = await journal.get_run(by_shard[1])
        assert run is not None and run.run_id == by_shard[1]


async def test_each_slice_lease_lives_in_the_shard_of_its_slice(pg_shards: list[Cluster]) -> None:
    dsns = sharded_dsns(pg_shards)
    async with kept(ShardedJournal(dsns)) as journal:
        store = journal.slice_store
        view = await store.beat("m1", 10)
        assert view.members == ["m1"] and view.leases == {}
        assert await store.claim("m1", range(1024), 10) == list(range(1024))
        assert set((await store.beat("m2", 10)).members) == {"m1", "m2"}
        for index, (cluster, dsn) in enumerate(zip(pg_shards, dsns, strict=True)):
            schema = dsn.rpartition("schema=")[2]
            held = cluster.psql(f"SELECT min(slice), max(slice) FROM {schema}.slice_leases")
            assert held == f"{index * 1024 // 3}|{(index + 1) * 1024 // 3 - 1}"
        await store.release("m1", [0, 1000])
        assert set((await store.beat("m1", 10)).leases) == set(range(1, 1024)) - {1000}
        await store.leave("m1")
        assert (await store.beat("m2", 10)).leases == {}


def test_listen_dsns_go_one_per_shard() -> None:
    with pytest.raises(ConfigError, match="listen_dsn lists 1 DSNs for 2 shards"):
        ShardedJournal(["postgresql://a/x", "postgresql://b/x"], listen_dsns=["postgresql://c/x"])
    with pytest.raises(ConfigError, match="one listen DSN per shard"):
        journal_from_url(("postgresql://a/x",), listen_dsn="postgresql://c/x")
    with pytest.raises(ConfigError, match="a list goes with a sharded journal"):
        journal_from_url("postgresql://a/x", listen_dsn=("postgresql://c/x",))
    with pytest.raises(ConfigError, match="at least one DSN"):
        ShardedJournal([])
    sharded = journal_from_url(("postgresql://u@a/x", "postgresql://u@b/x"))
    assert isinstance(sharded, ShardedJournal)
    assert sharded.description == "postgresql://u@a/x postgresql://u@b/x"
    assert not sharded.up
