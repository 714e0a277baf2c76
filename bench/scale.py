"""Scale of the fs journal: a daemon on a directory of many runs (SPEC section 8).

The runs are written straight to disk in the journal's own format (record, one
checksummed batch of events, index line) without fsync, which takes seconds
where going through ``create_run`` and ``append`` one by one would take minutes;
``format.json`` comes from opening the journal once, so the daemon accepts it.
Then: start-up time (spawn until ``ping`` answers), RSS once started, and ``ping``
round trips paced at 1,000/s while the daemon sweeps: every run is due by time
(interval 1 s), so each sweep queues a mailbox-full of attempts that snapshot them.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import orjson

from bench.daemon import Daemon, render_config
from bench.stats import Figure, figure, percentile
from bench.wire import encode, paced_round_trips
from bench.workload import event_data
from snapshotd.domain.model import Run
from snapshotd.journals import records
from snapshotd.journals.fs import FsJournal, entry_name
from snapshotd.journals.fs.codec import run_json
from snapshotd.journals.fs.framing import frame

EVENTS_PER_RUN = 5
PING_RATE = 1000
PING_SECONDS = 5.0


def build_runs(data_dir: Path, runs: int) -> None:
    """``runs`` runs of ``EVENTS_PER_RUN`` events each, created a day ago, none snapshotted."""

    async def format_root() -> None:
        journal = FsJournal(data_dir)
        await journal.open()
        await journal.aclose()

    anyio.run(format_root)
    created = datetime.now(UTC) - timedelta(days=1)
    since = created.timestamp()
    index = []
    for n in range(runs):
        run_id = f"scale-{n:07d}"
        directory = data_dir / entry_name(run_id)
        os.mkdir(directory, 0o700)
        os.mkdir(directory / "snapshots", 0o700)
        run = Run(run_id, "bench", "v1", None, 0, created)
        (directory / "run.json").write_bytes(run_json(run))
        lines = [
            records.event_json(seq, "set", event_data(seq), created)
            for seq in range(1, EVENTS_PER_RUN + 1)
        ]
        (directory / "events.jsonl").write_bytes(frame(lines, 1))
        index.append(orjson.dumps([run_id, since, since]) + b"\n")
    (data_dir / "due.jsonl").write_bytes(b"".join(index))


def bench_scale(workdir: Path, runs: int) -> dict[str, Figure]:
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    build_runs(data_dir, runs)
    socket_path = str(workdir / "scale.sock")
    config = render_config(
        socket_path,
        {
            "fs": {
                "journal": f"fs:{data_dir}",
                "snapshot_interval_s": 1,
                "snapshot_threshold": 1_000_000,
            }
        },
        bench={"reducer": "last_by_key"},
    )
    what = f"{runs:,} fs runs"
    started = time.perf_counter()
    with Daemon(workdir, config, socket_path) as daemon:
        startup = time.perf_counter() - started
        rss_started = daemon.peak_rss_bytes()
        lines = [encode("ping", i) for i in range(int(PING_RATE * PING_SECONDS))]
        latencies = paced_round_trips(socket_path, lines, 1.0 / PING_RATE, PING_SECONDS)
        with daemon.connect() as conn:
            taken = conn.call("status")["instances"]["fs"]["taken"]
        rss_peak = daemon.peak_rss_bytes()
    return {
        "scale.startup": figure(f"start-up with {what} (spawn until ping answers)", "s", [startup]),
        "scale.rss_started": figure(f"daemon RSS once started ({what})", "MB", [rss_started / 1e6]),
        "scale.rss_peak": figure(
            f"daemon peak RSS while sweeping and snapshotting ({what})", "MB", [rss_peak / 1e6]
        ),
        "scale.ping_p99": figure(
            f"ping p99 at {PING_RATE:,}/s while sweeps run ({what})",
            "ms",
            [percentile(latencies, 0.99) * 1000],
        ),
        "scale.snapshots": figure(
            f"snapshots the sweeps took in {PING_SECONDS:.0f} s ({what})", "", [float(taken)]
        ),
    }
