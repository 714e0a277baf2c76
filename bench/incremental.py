"""Snapshot cost along a run's life, per reducer: the incremental-snapshot bar.

A run per reducer, journal and starting point is built as a run with the default
threshold lives (append 100 events, ``snapshot_now``, again and again, so its
delta chains are in their steady state), up to ``start`` events; then the mean of
``consecutive`` snapshots, each 100 events past the previous, consolidations
included, is measured through the socket. SPEC section 8 wants the mean starting
at 100,000 within 1.5x of the one starting at 1,000, for `steps` too, with
``max_snapshot_bytes`` above the state's size. The run's storage (what its
snapshots take on disk or in the table, links included) is reported beside what
whole copies of its kept snapshots would take, and so are `load` times.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.ours import JOURNAL_NAMES, Figures, load, settle
from bench.stats import figure
from bench.wire import Connection
from bench.workload import event_data

STEP = 100
REDUCERS = ("steps", "last_by_key", "merge_patch")
WORKFLOWS = {
    f"inc_{reducer}": {
        "reducer": reducer,
        "snapshot_threshold": "infinity",
        "max_snapshot_bytes": 1_000_000_000,
    }
    for reducer in REDUCERS
}


def _append(conn: Connection, journal: str, run: str, first: int, count: int) -> None:
    events = [{"type": "set", "data": event_data(s)} for s in range(first, first + count)]
    conn.call("append", instance=journal, run=run, events=events, expected_seq=first - 1)


def _snapshot(conn: Connection, journal: str, run: str, through: int) -> None:
    result = conn.call("snapshot_now", instance=journal, run=run, force=True)
    if result.get("through_seq") != through:
        raise RuntimeError(f"{journal}/{run}: snapshot_now gave {result}, wanted {through}")


def _build(conn: Connection, journal: str, run: str, reducer: str, start: int) -> None:
    conn.call("create_run", instance=journal, run=run, workflow=f"inc_{reducer}", version="v1")
    for first in range(1, start + 1, STEP):
        _append(conn, journal, run, first, STEP)
        _snapshot(conn, journal, run, first + STEP - 1)


def _costs(conn: Connection, journal: str, run: str, start: int, count: int) -> list[float]:
    costs = []
    last = start
    for _ in range(count):
        _append(conn, journal, run, last + 1, STEP)
        last += STEP
        began = time.perf_counter()
        _snapshot(conn, journal, run, last)
        costs.append(time.perf_counter() - began)
    return costs


def _storage(conn: Connection, journal: str, run: str, data_dir: Path, dsn: str | None) -> int:
    """Bytes the run's snapshots occupy: files (fs) or payloads (PostgreSQL)."""
    if journal == "fs":
        directory = data_dir / ("id-" + run.encode().hex()) / "snapshots"
        return sum(p.stat().st_size for p in directory.iterdir())
    import psycopg

    assert dsn is not None
    parts = urlsplit(dsn)
    schema = dict(q.split("=", 1) for q in parts.query.split("&") if q).get("schema", "snapshotd")
    with psycopg.connect(urlunsplit(parts._replace(query=""))) as db:
        row = db.execute(
            f'SELECT coalesce(sum(octet_length(payload)), 0) FROM "{schema}".snapshots'
            " WHERE run_id = %s",
            (run,),
        ).fetchone()
    return int(row[0]) if row else 0


def bench_incremental(
    conn: Connection,
    journals: list[str],
    starts: tuple[int, int],
    consecutive: int,
    repeats: int,
    data_dir: Path,
    pg_dsn: str | None,
) -> Figures:
    out: Figures = {}
    low, high = starts
    for journal in journals:
        name = JOURNAL_NAMES[journal]
        for reducer in REDUCERS:
            means: dict[int, float] = {}
            for start in starts:
                run = f"inc-{reducer}-{start}"
                _build(conn, journal, run, reducer, start)
                settle(conn)
                costs = _costs(conn, journal, run, start, consecutive)
                means[start] = statistics.fmean(costs)
                key = f"inc.{journal}.{reducer}.{start}"
                what = f"{reducer}, {name}, {consecutive} snapshots from seq {start:,}"
                out[f"{key}.mean"] = figure(f"mean snapshot cost ({what})", "s", [means[start]])
                out[f"{key}.max"] = figure(f"slowest snapshot ({what})", "s", [max(costs)])
            out[f"inc.{journal}.{reducer}.ratio"] = figure(
                f"mean snapshot cost from seq {high:,} / from seq {low:,} ({reducer}, {name})",
                "x",
                [means[high] / means[low]],
            )
            run = f"inc-{reducer}-{high}"
            listed = conn.call("list_snapshots", instance=journal, run=run)["snapshots"]
            whole = sum(s["size_bytes"] for s in listed)
            stored = _storage(conn, journal, run, data_dir, pg_dsn)
            what = f"{reducer}, {name}, {high + consecutive * STEP:,} events"
            out[f"inc.{journal}.{reducer}.stored"] = figure(
                f"snapshot storage per run, delta chains ({what})", "MB", [stored / 1e6]
            )
            out[f"inc.{journal}.{reducer}.whole"] = figure(
                f"snapshot storage per run, kept snapshots stored whole ({what})",
                "MB",
                [whole / 1e6],
            )
            if reducer == "steps":
                out.update(_load_times(conn, journal, run, repeats, what))
    return out


def _load_times(conn: Connection, journal: str, run: str, repeats: int, what: str) -> Figures:
    load(conn, journal, run, full=False)  # warm-up
    snap = [load(conn, journal, run, full=False).seconds for _ in range(repeats)]
    full = [load(conn, journal, run, full=True).seconds for _ in range(repeats)]
    key = f"inc.{journal}.steps.load"
    return {
        f"{key}.snapshot": figure(f"load with snapshot ({what})", "s", snap),
        f"{key}.full": figure(f"load, full replay ({what})", "s", full),
    }
