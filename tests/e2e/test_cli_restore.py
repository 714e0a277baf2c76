"""``snapshotd runs``, ``load --snapshot`` and ``snapshot-now --label``: the console
commands in subprocesses against a real daemon (fs journal) over its socket."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.daemon import DaemonProcess


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    process = DaemonProcess().start()
    with process.client() as c:
        for run, workflow, count in (
            ("b-run", "kv", 12),
            ("a-run", "order", 3),
            ("é-run", "kv", 0),
        ):
            c.create_run(run, workflow, "v1")
            if count:
                events = [
                    {"type": "put", "data": {"key": f"k{i}", "value": i}} for i in range(count)
                ]
                c.append(run, events)
    try:
        yield process
    finally:
        process.stop()
        process.cleanup()


def cli(daemon: DaemonProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapshotd", *argv, "--socket", daemon.socket_path],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def as_json(daemon: DaemonProcess, *argv: str) -> Any:
    done = cli(daemon, "--json", *argv)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_snapshot_now_with_label_then_list_and_load_by_id(daemon: DaemonProcess) -> None:
    done = cli(daemon, "snapshot-now", "b-run", "--kind", "safety", "--label", "before-42")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("taken ")
    snapshot_id = done.stdout.split()[1]
    listing = cli(daemon, "list", "b-run")
    assert "before-42" in listing.stdout and snapshot_id in listing.stdout

    with daemon.client() as c:
        c.append("b-run", [{"type": "put", "data": {"key": "late", "value": 1}}])
        c.set_version("b-run", "v2")
    loaded = as_json(daemon, "load", "b-run", "--snapshot", snapshot_id)
    assert loaded["snapshot"]["snapshot_id"] == snapshot_id
    assert loaded["snapshot"]["version"] == "v1"
    assert [e["seq"] for e in loaded["events"]] == [13]
    text = cli(daemon, "load", "b-run", "--snapshot", snapshot_id)
    assert f"snapshot {snapshot_id} through seq 12" in text.stdout


def test_bad_label_and_unknown_snapshot_fail_clearly(daemon: DaemonProcess) -> None:
    too_long = cli(daemon, "snapshot-now", "a-run", "--force", "--label", "x" * 129)
    assert too_long.returncode == 1
    assert "bad_request" in too_long.stderr and "label" in too_long.stderr
    missing = cli(daemon, "load", "a-run", "--snapshot", "no-such-id")
    assert missing.returncode == 1
    assert "not_found" in missing.stderr
    both = cli(daemon, "load", "a-run", "--snapshot", "x", "--after-seq", "1")
    assert both.returncode != 0


def test_runs_table_json_and_workflow_filter(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        c.snapshot_now("a-run", force=True)
    table = cli(daemon, "runs")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["RUN", "WORKFLOW", "VERSION", "LAST_SEQ", "SNAPSHOT", "LAG"]
    rows = [line.split() for line in lines[1:4]]
    assert [row[0] for row in rows] == ["a-run", "b-run", "é-run"]
    assert rows[0][3:] == ["3", "3", "0"]
    assert rows[2][3:] == ["0", "-", "0"]

    page = as_json(daemon, "runs", "--limit", "2")
    assert [r["run_id"] for r in page["runs"]] == ["a-run", "b-run"]
    assert (page["next_after"], page["has_more"]) == ("b-run", True)
    rest = as_json(daemon, "runs", "--after", page["next_after"])
    assert ([r["run_id"] for r in rest["runs"]], rest["has_more"]) == (["é-run"], False)
    kv = as_json(daemon, "runs", "--workflow", "kv")
    assert [r["run_id"] for r in kv["runs"]] == ["b-run", "é-run"]
    bad = cli(daemon, "runs", "--limit", "0")
    assert bad.returncode == 1 and "limit" in bad.stderr
