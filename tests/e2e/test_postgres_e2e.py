"""Real daemons on real PostgreSQL: NOTIFY-driven snapshots, two daemons on one schema,
a journal outage under a running daemon, and a database that is not there at start-up.

Every test gets a fresh ``?schema=``; the outage test gets a database of its own, since
it terminates every backend of its database.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from snapshotd.api.client import ClientError
from tests.e2e.daemon import (
    DaemonProcess,
    instance_config,
    load_all,
    psql,
    step_events,
    steps_state,
)
from tests.journals.pg_cluster import private_cluster
from tests.support import wait_for

Spawn = Callable[[str, str], DaemonProcess]


def _schema() -> str:
    return f"e2e_{secrets.token_hex(5)}"


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start daemons on a journal URL with extra policy lines; all are killed at the end."""
    started: list[DaemonProcess] = []

    def start(journal: str, policy: str) -> DaemonProcess:
        process = DaemonProcess(config="")
        started.append(process)
        process.config_path.write_text(instance_config(process.root, journal, policy))
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.cleanup()


@pytest.fixture
def own_db(pg_server: str) -> Iterator[tuple[str, str]]:
    """A database of this test's own: (its DSN, its name)."""
    name = f"sd_outage_{secrets.token_hex(4)}"
    psql(f"{pg_server}/postgres", f'create database "{name}"')
    try:
        yield f"{pg_server}/{name}", name
    finally:
        psql(f"{pg_server}/postgres", f'drop database if exists "{name}" with (force)')


def _sql_append(dsn: str, schema: str, run: str, events: list[dict[str, Any]]) -> int:
    body = orjson.dumps(events).decode().replace("'", "''")
    return int(psql(dsn, f"select {schema}.append_events('{run}', null, '{body}'::jsonb)"))


def test_notify_drives_snapshots_for_plain_sql_appends(pg_dsn: str, spawn: Spawn) -> None:
    schema = _schema()
    daemon = spawn(f"{pg_dsn}?schema={schema}", "snapshot_threshold = 10\nsnapshot_interval_s = 0")
    psql(pg_dsn, f"insert into {schema}.runs (run_id, workflow, version) values ('r1', 'wf', 'v1')")
    assert _sql_append(pg_dsn, schema, "r1", step_events(5)) == 5
    assert _sql_append(pg_dsn, schema, "r1", step_events(7, 5)) == 12

    query = f"select through_seq, kind from {schema}.snapshots where run_id = 'r1'"
    assert wait_for(lambda: psql(pg_dsn, query), timeout=10) == "12|auto"
    with daemon.client() as client:
        loaded = client.call("load", run="r1")
        assert loaded["snapshot"]["through_seq"] == 12
        assert loaded["events"] == []
        full = load_all(client, "r1")
        assert loaded["snapshot"]["state"] == steps_state(full)
        assert client.call("status")["instances"]["default"]["taken"] == 1


def test_two_daemons_share_one_schema(pg_dsn: str, spawn: Spawn) -> None:
    schema = _schema()
    url = f"{pg_dsn}?schema={schema}"
    policy = "snapshot_threshold = 5\nkeep_snapshots = 100000"
    daemons = [spawn(url, policy), spawn(url, policy)]
    runs = [f"shared-{i}" for i in range(4)]
    with daemons[0].client() as client:
        for run in runs:
            client.call("create_run", run=run, workflow="wf", version="v1")

    acknowledged: dict[str, list[Any]] = {run: [] for run in runs}
    outcomes: list[tuple[int, dict[str, Any]]] = []
    errors: list[BaseException] = []
    appending = threading.Event()
    appending.set()

    def appender() -> None:
        clients = [d.client() for d in daemons]
        try:
            for round_ in range(40):
                for index, run in enumerate(runs):
                    events = step_events(3, round_ * 3)
                    last = clients[(round_ + index) % 2].call("append", run=run, events=events)
                    assert last["last_seq"] == len(acknowledged[run]) + 3
                    acknowledged[run].extend(e["data"] for e in events)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            appending.clear()
            for c in clients:
                c.close()

    def requester(which: int) -> None:
        try:
            with daemons[which].client() as client:
                while appending.is_set():
                    for run in runs:
                        client.send("snapshot", run=run)
                        result = client.call("snapshot_now", run=run, force=True)
                        outcomes.append((which, result))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=appender)] + [
        threading.Thread(target=requester, args=(which,)) for which in (0, 1, 0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []

    # Let both actors finish what was queued.
    def drained() -> bool:
        depths = []
        for d in daemons:
            with d.client() as client:
                depths.append(client.call("status")["instances"]["default"]["queue_depth"])
        return depths == [0, 0]

    wait_for(drained, timeout=15)

    reasons = Counter(r.get("reason", "taken") for _, r in outcomes)
    assert set(reasons) <= {"taken", "busy", "no_events"}, reasons
    assert reasons["taken"] > 0

    rows = psql(
        pg_dsn,
        f"select run_id, version, kind, through_seq from {schema}.snapshots "
        "order by run_id, created_at, snapshot_id",
    ).splitlines()
    progress: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        run_id, version, kind, through_seq = row.split("|")
        if kind in ("auto", "manual"):
            progress.setdefault((run_id, version), []).append(int(through_seq))
    assert set(progress) == {(run, "v1") for run in runs}
    for key, seqs in progress.items():
        assert seqs == sorted(seqs), f"through_seq went backwards for {key}: {seqs}"
        assert len(seqs) == len(set(seqs)), f"two snapshots share a through_seq for {key}"

    statuses = []
    for d in daemons:
        with d.client() as client:
            statuses.append(client.call("status")["instances"]["default"])
            for run in runs:
                full = load_all(client, run)
                assert [e["seq"] for e in full] == list(range(1, 121))
                assert [e["data"] for e in full] == acknowledged[run]
                loaded = client.call("load", run=run)
                state = None if loaded["snapshot"] is None else loaded["snapshot"]["state"]
                assert steps_state(loaded["events"], state) == steps_state(full)
                verified = client.call("verify", run=run)
                assert (verified["corrupt"], verified["drift"]) == ([], [])
    # Contention shows as `busy`, counted by the daemon that answered it (its queued
    # attempts may add more); without contention the advisory lock never refused.
    for which, status in enumerate(statuses):
        answered_busy = sum(1 for w, r in outcomes if w == which and r.get("reason") == "busy")
        assert status["skipped"]["busy"] >= answered_busy
    assert all(status["restarts"] == 0 for status in statuses)
    assert all(status["skipped"]["journal_error"] == 0 for status in statuses)
    assert all(status["skipped"]["internal"] == 0 for status in statuses)


def _outage(admin_dsn: str, database: str, script_dir: Path) -> subprocess.Popen[str]:
    """One psql session (on another database) that terminates every backend of
    ``database`` every ~10 ms for ~0.5 s, then also refuses new connections for ~0.7 s,
    then lets them in again."""
    kill = (
        "select count(pg_terminate_backend(pid)) from pg_stat_activity "
        f"where datname = '{database}' and pid <> pg_backend_pid();\n"
        "select pg_sleep(0.01);\n"
    )
    script = (
        kill * 40
        + f'alter database "{database}" with allow_connections false;\n'
        + kill * 60
        + f'alter database "{database}" with allow_connections true;\n'
    )
    # From a file, not -c: psql sends a -c string as one query, one transaction, in which
    # pg_stat_activity would never change and the ALTER would show only at the end.
    script_path = script_dir / "outage.sql"
    script_path.write_text(script)
    return subprocess.Popen(
        ["psql", admin_dsn, "-qAtX", "-v", "ON_ERROR_STOP=1", "-f", str(script_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_journal_outage_and_recovery(
    pg_server: str, own_db: tuple[str, str], spawn: Spawn, tmp_path: Path
) -> None:
    dsn, database = own_db
    schema = _schema()
    daemon = spawn(f"{dsn}?schema={schema}", "snapshot_threshold = 10\nsnapshot_interval_s = 0")
    with daemon.client() as client:
        client.call("create_run", run="r1", workflow="wf", version="v1")
        acknowledged = client.call("append", run="r1", events=step_events(5))["last_seq"]

    killer = _outage(f"{pg_server}/postgres", database, tmp_path)
    seen: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    with daemon.client(timeout=40) as client:
        while killer.poll() is None:
            for op, fields in (
                ("append", {"run": "r1", "events": step_events(1)}),
                ("load", {"run": "r1"}),
                ("list_snapshots", {"run": "r1"}),
                ("snapshot_now", {"run": "r1", "force": True}),
                ("verify", {"run": "r1"}),
                ("audit", {}),
            ):
                try:
                    result = client.call(op, **fields)
                except ClientError as exc:
                    seen[exc.code] += 1
                    continue
                seen["ok"] += 1
                if op == "append":
                    acknowledged = result["last_seq"]
                if op == "snapshot_now":
                    reasons[result.get("reason", "taken")] += 1
            client.send("snapshot", run="r1")
            assert client.call("ping") == {"pong": True}
    out, err = killer.communicate(timeout=10)
    assert killer.returncode == 0, err
    assert sum(int(n) for n in out.split()) > 0, "the terminator found no backend to end"
    assert set(seen) <= {"ok", "unavailable"}, (seen, _problems(daemon))
    assert seen["unavailable"] > 0, f"the outage went unnoticed: {seen}"
    assert set(reasons) <= {"taken", "journal_error", "no_events"}, reasons
    assert reasons["journal_error"] > 0, reasons
    assert daemon.alive()

    # Afterwards every op works again, first time, without a restart.
    with daemon.client() as client:
        status = client.call("status")["instances"]["default"]
        assert status["restarts"] == 0
        assert status["skipped"]["internal"] == 0, _problems(daemon)
        assert status["skipped"]["journal_error"] >= reasons["journal_error"]
        last = client.call("append", run="r1", events=step_events(2))["last_seq"]
        assert last >= acknowledged + 2
        full = load_all(client, "r1")
        assert [e["seq"] for e in full] == list(range(1, last + 1))
        assert client.call("snapshot_now", run="r1", force=True)["status"] == "taken"
        assert client.call("verify", run="r1")["corrupt"] == []
        kinds = {e["kind"] for e in client.call("audit", limit=1000)["events"]}
        assert "snapshot_taken" in kinds

    # The watcher listens again: a plain-SQL append still gets its snapshot.
    psql(dsn, f"insert into {schema}.runs (run_id, workflow, version) values ('r2', 'wf', 'v1')")
    _sql_append(dsn, schema, "r2", step_events(12))
    query = f"select through_seq from {schema}.snapshots where run_id = 'r2'"
    assert wait_for(lambda: psql(dsn, query), timeout=20) == "12"
    assert daemon.alive()


def _problems(daemon: DaemonProcess) -> str:
    """The daemon's error log lines, for assertion messages."""
    lines = daemon.log_path.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if '"level":"error"' in line)[-8000:]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_daemon_started_while_its_database_is_down_serves_and_reconnects(
    tmp_path: Path,
) -> None:
    """A sidecar must not crash-loop during a database outage (SPEC section 5)."""
    with private_cluster() as cluster:
        cluster.stop()
        journal = f"postgresql://postgres@{cluster.host}:{cluster.port}/postgres?schema=sd"
        process = DaemonProcess(tmp_path, instance_config(tmp_path, journal))
        try:
            process.start()
            with process.client() as client:
                assert client.call("ping") == {"pong": True}
                status = client.call("status")["instances"]["default"]
                assert status["journal_up"] is False
                with pytest.raises(ClientError) as caught:
                    client.call("create_run", run="r", workflow="w", version="v1")
                assert caught.value.code == "unavailable"
                cluster.start()

                def up() -> bool:
                    return bool(client.call("status")["instances"]["default"]["journal_up"])

                wait_for(up, 30, what="journal_up after the database started")
                assert client.call("create_run", run="r", workflow="w", version="v1") == {
                    "created": True
                }
                assert client.call("append", run="r", events=[{"type": "t", "data": 1}]) == {
                    "last_seq": 1
                }
            assert process.alive()
        finally:
            process.cleanup()
