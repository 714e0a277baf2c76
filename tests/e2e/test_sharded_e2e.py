"""A real daemon over three shards: plain-SQL appends through the router snapshot via
the shard's NOTIFY; a list in the wrong order keeps journal_up false and says why."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import orjson
import pytest

from snapshotd.cli.main import main
from tests.conftest import sharded_dsns
from tests.e2e.daemon import DaemonProcess, psql, step_events
from tests.journals.pg_cluster import Cluster
from tests.journals.test_sharded import expected_shard
from tests.support import wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.cleanup()


def start(daemons: list[DaemonProcess], dsns: list[str], policy: str = "") -> DaemonProcess:
    process = DaemonProcess(config="")
    daemons.append(process)
    journal = ", ".join(f'"{dsn}"' for dsn in dsns)
    process.config_path.write_text(
        f'[socket]\npath = "{process.root / "s.sock"}"\n\n'
        f"[instances.default]\njournal = [{journal}]\n{policy}\n"
    )
    return process.start()


def test_router_appends_are_snapshotted_on_their_shard(
    pg_shards: list[Cluster], pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    shards = sharded_dsns(pg_shards)
    schema = f"r_{secrets.token_hex(4)}"
    args = ["migrate", "--router", f"{pg_dsn}?schema={schema}"]
    assert main([*args, *(a for dsn in shards for a in ("--dsn", dsn))]) == 0
    daemon = start(daemons, shards, "snapshot_threshold = 10\nsnapshot_interval_s = 0")
    runs = {
        i: next(f"o{n}" for n in range(1000) if expected_shard(f"o{n}", 3) == i) for i in range(3)
    }
    for run in runs.values():
        psql(pg_dsn, f"select {schema}.create_run('{run}', 'wf', 'v1')")
        body = orjson.dumps(step_events(12)).decode()
        assert psql(pg_dsn, f"select {schema}.append_events('{run}', 0, '{body}')") == "12"
    with daemon.client() as client:

        def snapshotted() -> bool:
            listed = [client.call("list_snapshots", run=run)["snapshots"] for run in runs.values()]
            return all(s and s[0]["through_seq"] == 12 for s in listed)

        assert wait_for(snapshotted, timeout=15)
        status = client.call("status")["instances"]["default"]
        assert status["shards"] == [{"index": i, "up": True} for i in range(3)]
        assert status["journal_up"] is True
        assert status["slices"] == {"owned": 1024, "total": 1024}
        assert status["taken"] == 3


def test_a_list_in_the_wrong_order_keeps_journal_up_false(
    pg_shards: list[Cluster], daemons: list[DaemonProcess]
) -> None:
    shards = sharded_dsns(pg_shards)
    assert main(["migrate", *(a for dsn in shards for a in ("--dsn", dsn))]) == 0
    daemon = start(daemons, [shards[0], shards[2], shards[1]])
    with daemon.client() as client:
        status = client.call("status")["instances"]["default"]
        assert status["journal_up"] is False
        assert [s["up"] for s in status["shards"]] == [True, False, False]
    assert wait_for(lambda: "shard_layout_mismatch" in daemon.log(), timeout=10)
    assert "is shard 2 of 3, but is listed as shard 1 of 3" in daemon.log()


def test_two_daemons_divide_the_slices_of_three_shards_and_take_over(
    pg_shards: list[Cluster], daemons: list[DaemonProcess]
) -> None:
    shards = sharded_dsns(pg_shards)
    pair = [start(daemons, shards, "slice_lease_s = 2") for _ in range(2)]

    def owned(process: DaemonProcess) -> int:
        with process.client() as client:
            slices = client.call("status")["instances"]["default"]["slices"]
        return int(slices["owned"])

    assert wait_for(lambda: [owned(d) for d in pair] == [512, 512], timeout=20)
    pair[0].kill()
    assert wait_for(lambda: owned(pair[1]) == 1024, timeout=10)
