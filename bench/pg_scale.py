"""``python -m bench.pg_scale [--quick]``: the PostgreSQL scheduling figures of issue 10.

- **notification cost**: pgbench, 16 clients (2 threads), 64 runs, one event per
  ``append_events`` call, with notifications on and with ``snapshotd.notify=off``
  (set in the session's startup options, so both cost the same round trips), a
  ``snapshotd serve`` listening with threshold 100; rounds interleaved;
- **sweep cost against due count**: ``sweep_due`` with D due runs among N runs;
- **full replay through `load`** of 100,000 events over the socket (checksums on).

Prints one JSON object; figures are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import ours
from bench.daemon import Daemon, render_config
from bench.pg import connection_parts, fresh_database
from snapshotd.domain.model import NewEvent
from snapshotd.journals.postgres import PostgresJournal

SCHEMA = "snapshotd"
PGBENCH_SCRIPT = """\\set r random(0, 63)
SELECT snapshotd.append_events('run-' || :r, NULL, '[{"type":"t","data":{"key":"k","value":1}}]');
"""


def _psql(dsn: str, sql: str) -> None:
    subprocess.run(["psql", dsn, "-qAt", "-c", sql], check=True, capture_output=True)


def _pgbench(dsn: str, script: Path, seconds: int, notify: bool) -> float:
    parts = connection_parts(dsn)
    env = dict(os.environ, PGOPTIONS="" if notify else "-c snapshotd.notify=off")
    done = subprocess.run(
        ["pgbench", "-n", "-c", "16", "-j", "2", "-T", str(seconds), "-f", str(script),
         "-h", parts["host"], "-p", parts["port"], "-U", parts["user"], parts["dbname"]],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    found = re.search(r"tps = ([0-9.]+)", done.stdout)
    if found is None:
        raise RuntimeError(done.stdout + done.stderr)
    return float(found[1])


def notification_cost(workdir: Path, rounds: int, seconds: int) -> dict[str, Any]:
    with fresh_database("bench_notify") as dsn:
        subprocess.run(
            [str(Path(sys.executable).parent / "snapshotd"), "migrate", "--dsn", dsn], check=True
        )
        _psql(dsn, "SELECT snapshotd.create_run('run-' || i, 'bench', 'v1') "
                   "FROM generate_series(0, 63) i")  # fmt: skip
        socket_path = str(workdir / "n.sock")
        config = render_config(
            socket_path,
            {"default": {"journal": dsn, "snapshot_threshold": 100, "snapshot_interval_s": 0}},
            bench={"reducer": "last_by_key"},
        )
        script = workdir / "append.sql"
        script.write_text(PGBENCH_SCRIPT)
        on: list[float] = []
        off: list[float] = []
        with Daemon(workdir, config, socket_path) as daemon:
            for _ in range(rounds):
                on.append(_pgbench(dsn, script, seconds, notify=True))
                off.append(_pgbench(dsn, script, seconds, notify=False))
            status = daemon.connect().call("status")["instances"]["default"]
    return {
        "append_events_per_s_notify_on": on,
        "append_events_per_s_notify_off": off,
        "ratio_on_over_off": statistics.median(on) / statistics.median(off),
        "daemon_taken": status["taken"],
    }


async def sweep_cost(total: int, due_counts: list[int]) -> list[dict[str, float]]:
    with fresh_database("bench_sweep") as dsn:
        journal = PostgresJournal(dsn)
        await journal.open()
        try:
            _psql(dsn, "INSERT INTO snapshotd.runs (run_id, workflow, version, last_seq, "
                       "snap_seq, due_seq) SELECT 'run-' || i, 'w', 'v', 5, 0, 100 "
                       f"FROM generate_series(1, {total}) i")  # fmt: skip
            _psql(dsn, "VACUUM ANALYZE snapshotd.runs")
            out = []
            marked = 0
            for due in due_counts:
                _psql(dsn, "UPDATE snapshotd.runs SET ready_at = now() - interval '1 hour' "
                           f"WHERE run_id IN (SELECT 'run-' || i FROM generate_series("
                           f"{marked + 1}, {due}) i)")  # fmt: skip
                marked = due
                now = datetime.now(UTC) + timedelta(seconds=1)
                samples = []
                for _ in range(5):
                    start = time.perf_counter()
                    found = await journal.sweep_due(now, 10_000_000, None)
                    samples.append(time.perf_counter() - start)
                assert len(found) == due, (len(found), due)
                out.append(
                    {"runs": total, "due": due, "sweep_ms": statistics.median(samples) * 1e3}
                )
            return out
        finally:
            await journal.aclose()


async def _fill(dsn: str, events: int) -> None:
    journal = PostgresJournal(dsn)
    await journal.open()
    try:
        await journal.create_run("replay", "bench", "v1", None, datetime.now(UTC))
        batch = [NewEvent("t", {"key": f"k{i % 1000}", "value": "x" * 82}) for i in range(10_000)]
        for _ in range(events // len(batch)):
            await journal.append("replay", batch, expected_seq=None, lease=None,
                                 now=datetime.now(UTC))  # fmt: skip
    finally:
        await journal.aclose()


def replay_rate(workdir: Path, events: int, repeats: int) -> dict[str, Any]:
    with fresh_database("bench_replay") as dsn:
        asyncio.run(_fill(dsn, events))
        socket_path = str(workdir / "r.sock")
        config = render_config(
            socket_path,
            {"default": {"journal": dsn, "snapshot_threshold": "infinity"}},
            bench={"reducer": "last_by_key"},
        )
        with Daemon(workdir, config, socket_path) as daemon:
            conn = daemon.connect()
            ours.load(conn, "default", "replay", full=True)
            seconds = [
                ours.load(conn, "default", "replay", full=True).seconds for _ in range(repeats)
            ]
    return {"events": events, "events_per_s": events / statistics.median(seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_scale")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, seconds = (1, 3) if args.quick else (3, 8)
    total = 20_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {
            "replay": replay_rate(work, 100_000, 3 if args.quick else 5),
            "sweep": asyncio.run(sweep_cost(total, [10, 100, 1_000, 10_000])),
            "notification_cost": notification_cost(work, rounds, seconds),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
