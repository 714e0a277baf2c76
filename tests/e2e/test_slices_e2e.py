"""Three real daemons on one database divide the 1024 slices, snapshot each run once
(hints sent to any of them reach the slice's holder), and take over a ``kill -9``'d
daemon's slices within two leases."""

from __future__ import annotations

import random
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from snapshotd.domain.slices import SLICES, run_slice, share
from tests.e2e.daemon import DaemonProcess, instance_config, psql, step_events
from tests.support import wait_for

pytestmark = pytest.mark.postgres

LEASE_S = 1.0


@pytest.fixture
def daemons(pg_dsn: str) -> Iterator[Callable[[int], list[DaemonProcess]]]:
    started: list[DaemonProcess] = []
    schema = f"e2e_sl_{secrets.token_hex(4)}"
    url = f"{pg_dsn}?schema={schema}"
    policy = f"snapshot_threshold = 10\nsnapshot_interval_s = 0\nslice_lease_s = {LEASE_S}"

    def start(count: int) -> list[DaemonProcess]:
        for _ in range(count):
            process = DaemonProcess(config="")
            started.append(process)
            process.config_path.write_text(instance_config(process.root, url, policy))
        with ThreadPoolExecutor(count) as pool:  # start-up is mostly waiting: overlap it
            list(pool.map(DaemonProcess.start, started))
        return started

    try:
        yield start
    finally:
        for process in started:
            process.cleanup()


def _status(daemon: DaemonProcess) -> dict[str, Any]:
    with daemon.client() as client:
        status: dict[str, Any] = client.call("status")["instances"]["default"]
    return status


def _owned(live: list[DaemonProcess]) -> list[int]:
    return [_status(d)["slices"]["owned"] for d in live]


def _schema_of(daemon: DaemonProcess) -> str:
    text = daemon.config_path.read_text()
    return text.split("?schema=", 1)[1].split('"', 1)[0]


def test_three_daemons_divide_serve_and_take_over(
    pg_dsn: str, daemons: Callable[[int], list[DaemonProcess]]
) -> None:
    live = daemons(3)
    schema = _schema_of(live[0])
    target = share(3)

    def divided() -> bool:
        owned = _owned(live)
        return sum(owned) == SLICES and max(owned) <= target

    wait_for(divided, timeout=10 * LEASE_S, what="an even division of the slices")
    assert all(_status(d)["slices"]["total"] == SLICES for d in live)

    # Runs appended with plain SQL (notifications) and hinted at random daemons.
    runs = [f"run-{i}" for i in range(90)]
    values = ", ".join(f"('{r}', 'wf', 'v1')" for r in runs)
    psql(pg_dsn, f"insert into {schema}.runs (run_id, workflow, version) values {values}")
    body = orjson.dumps(step_events(12)).decode()
    appends = "; ".join(
        f"select {schema}.append_events('{r}', null, '{body}'::jsonb)" for r in runs
    )
    psql(pg_dsn, appends)
    rng = random.Random(7)
    clients = [d.client() for d in live]
    try:
        for run in runs:
            rng.choice(clients).send("snapshot", run=run)
        for client in clients:
            client.call("ping")
    finally:
        for client in clients:
            client.close()

    count = f"select count(distinct run_id) from {schema}.snapshots"
    wait_for(
        lambda: psql(pg_dsn, count) == str(len(runs)), timeout=20, what="every run snapshotted"
    )
    wait_for(lambda: sum(_status(d)["taken"] for d in live) >= len(runs), what="taken counted")
    statuses = [_status(d) for d in live]
    taken = sum(s["taken"] for s in statuses)
    busy = sum(s["skipped"]["busy"] for s in statuses)
    assert busy <= max(1, taken // 100), statuses
    print(f"busy {busy} of {taken} taken")
    snapshots = psql(pg_dsn, f"select count(*) from {schema}.snapshots")
    assert int(snapshots) == len(runs), "a run was snapshotted twice at one due point"

    # kill -9 one daemon: the other two hold every slice again within two leases.
    victim, survivors = live[0], live[1:]
    leases = psql(
        pg_dsn, f"select slice from {schema}.slice_leases where member like '%:{victim.pid}:%'"
    )
    held_by_victim = {int(s) for s in leases.split()}
    assert len(held_by_victim) > 300
    victim.kill()
    killed = time.monotonic()
    wait_for(
        lambda: sum(_owned(survivors)) == SLICES,
        timeout=2 * LEASE_S + 2,
        interval=0.02,
        what="the survivors holding every slice",
    )
    print(f"takeover after kill -9: {time.monotonic() - killed:.2f} s")
    assert max(_owned(survivors)) <= share(2)

    # The survivors now serve runs of every slice, the victim's included.
    psql(pg_dsn, appends)
    again = f"select count(*) from {schema}.snapshots where through_seq = 24"
    wait_for(lambda: psql(pg_dsn, again) == str(len(runs)), timeout=20, what="second snapshots")
    assert [r for r in runs if run_slice(r) in held_by_victim], "no run in the victim's slices"

    # SIGSTOP: the paused daemon's slices pass to the last one; once resumed, the
    # two divide them again.
    paused, last = survivors
    assert paused.proc is not None
    paused.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(
            lambda: _owned([last]) == [SLICES],
            timeout=2 * LEASE_S + 2,
            interval=0.02,
            what="the last daemon holding every slice",
        )
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: sorted(_owned(survivors)) == [512, 512], timeout=10 * LEASE_S)
