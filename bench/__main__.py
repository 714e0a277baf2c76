"""``python -m bench [--quick]``: measure snapshotd against the SPEC section 8 targets.

A full run writes docs/benchmarks.md, docs/benchmarks.png and bench/results.json;
``--quick`` (CI) uses smaller sizes and writes to a temporary directory unless
``--out-dir`` is given. A part that cannot run (no PostgreSQL, say) is reported
as NOT RUN and makes the exit status 1; a target that is missed is reported as
FAIL and does not.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from bench import ours, report, throughput
from bench.daemon import SNAPSHOTD, Daemon
from bench.incremental import bench_incremental
from bench.scale import bench_scale
from bench.stats import Figure, cross_ratio
from bench.targets import evaluate, spec_targets

ROOT = Path(__file__).resolve().parents[1]

FULL = ours.Plan(
    sizes=(1_000, 10_000, 100_000),
    repeats=5,
    ff_requests=300_000,
    latency_rate=10_000,
    latency_seconds=3.0,
    flood_requests=1_000_000,
    flood_queue=100,
    flood_runs=200,
    inc_starts=(1_000, 100_000),
    inc_consecutive=100,
    scale_runs=200_000,
    throughput_runs=3000,
)
QUICK = ours.Plan(
    sizes=(1_000, 10_000),
    repeats=3,
    ff_requests=100_000,
    latency_rate=10_000,
    latency_seconds=1.0,
    flood_requests=200_000,
    flood_queue=100,
    flood_runs=50,
    inc_starts=(1_000, 2_000),
    inc_consecutive=10,
    scale_runs=10_000,
    throughput_runs=300,
)

METHOD = """
- **Daemon**: `snapshotd serve` runs as a subprocess with two instances, `fs` (a fresh
  directory) and `pg` (a fresh PostgreSQL database, migrated with `snapshotd migrate`),
  and the workflow `bench` (`last_by_key`, automatic snapshots off). The client is
  this harness in another process, over the unix socket, sending pre-encoded NDJSON.
- **Data**: event *i* sets key `k{i mod 1000}` to an 82-character string, so the state
  is ~100 KB once every key is set, whatever the history length.
- **load**: a run of N events with a snapshot 50 events before its end. *With snapshot*
  = `load` (snapshot + 50 events); *full replay* = `load` with `after_seq: 0` (every
  event, pages of up to 100,000). Times run from the request to the decoded reply;
  *load + fold* also folds the events onto the state, as an application recovering
  would, and is what the eventsourcing comparison uses.
- **snapshot cost**: `snapshot_now` (force) 100 events past the previous snapshot, on
  the 1,000-event run and on the largest run, request to reply.
- **incremental snapshots**: per reducer (`steps`, `last_by_key`, `merge_patch`; the
  data as above, so a `steps` state holds every event: ~10 MB at 100,000 events) and
  journal, a run built as it lives with the default threshold (100 events appended,
  `snapshot_now`, again and again) up to seq 1,000 or 100,000, then the mean of 100
  consecutive `snapshot_now` calls each 100 events past the previous (delta merges and
  consolidations included), with `max_snapshot_bytes` above the state's size. Storage:
  the bytes the run's snapshot files or rows take (links included) beside the
  `size_bytes` of its kept snapshots (what storing them whole took before chains).
- **fire-and-forget**: N `snapshot` requests without id over 100 runs of the `bench`
  workflow (their attempts end as `disabled`, without writes), then a `ping` with id
  on the same connection; its reply (replies are in order) marks the end.
  8 connections: N/8 each, in parallel.
- **latency**: requests with ids paced at 10,000/s from one thread; each latency runs
  from the request's scheduled send time to its reply. `ping` is the bare
  request->reply path the SPEC target is judged on; `snapshot` with id (same runs as
  above) also queues an attempt per request, which the daemon runs between reads
  (shown for comparison, marked *info*).
- **flood**: a fresh daemon with `queue_capacity` 100 and runs of 20 events
  (threshold 100, so each attempt reads the run and skips as `below_threshold`),
  flooded with fire-and-forget `snapshot` requests on one connection while a second
  connection polls `status` every 0.1 s; attempts/s is the growth of `taken` +
  `skipped` between polls; peak RSS is the daemon's VmHWM. The same daemon is then
  flooded again with requests naming as many runs that do not exist (each attempt
  ends as `no_run`).
- **scale**: a fresh daemon (interval 1 s) on an fs journal of N runs of 5 events,
  written straight to disk in the journal's format (none snapshotted, all due by
  time); start-up runs from spawn to the first `ping` reply; then `ping` paced at
  1,000/s for 5 s while the sweeps queue and snapshot the due runs.
- **throughput**: runs of the `tp` workflow (`last_by_key` over 10 keys of ~100 bytes,
  a ~1 KB state), each with a base snapshot and 100 events past it, written through
  the journal adapter with no daemon running; then a fresh daemon (threshold 100)
  gets one fire-and-forget `snapshot` per run and the figure is runs per second from
  the first hint to `taken` reaching the number of runs (bench/throughput.py).
- **`--quick`**: runs of at most 10,000 events, so the targets the SPEC defines on a
  100,000-event run show their figure with `n/a (quick)` instead of a verdict.
- **eventsourcing**: its `Application` with the PostgreSQL recorder on a fresh
  database and an aggregate with the same events (saved in batches of 500).
  `take_snapshot` with no earlier snapshot replays the whole history (the SPEC's
  comparison); *past a snapshot* starts from an earlier snapshot 50 events back,
  shown for completeness. Loading is `repository.get` with and without snapshots.
"""


def _host() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    postgresql = "-"
    try:
        import psycopg

        from bench.pg import ADMIN_DSN

        with psycopg.connect(ADMIN_DSN) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            postgresql = str(row[0]) if row else "-"
    except Exception:
        pass
    return {
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "postgresql": postgresql,
    }


class Sections:
    """Runs measurement sections, keeping their figures and turning a failure into
    an error entry (with traceback on stderr) so the other sections still run."""

    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}
        self.errors: dict[str, str] = {}

    def run(self, name: str, measure: Callable[[], dict[str, Figure]]) -> None:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            self.figures.update(measure())
        except Exception as exc:
            traceback.print_exc()
            self.errors[name] = f"{type(exc).__name__}: {exc}"
        print(f"bench: {name} took {time.perf_counter() - start:.1f} s", file=sys.stderr)


def _migrate(dsn: str) -> None:
    subprocess.run(
        [str(SNAPSHOTD), "migrate", "--dsn", dsn], check=True, capture_output=True, timeout=60
    )


def measure(plan: ours.Plan, workdir: Path, journals: list[str], sections: Sections) -> None:
    from bench.pg import fresh_database

    with ExitStack() as stack:
        pg_dsn: str | None = None
        if "pg" in journals:
            try:
                pg_dsn = stack.enter_context(fresh_database("snapshotd_bench")) + "?schema=bench"
                _migrate(pg_dsn)
            except Exception as exc:
                sections.errors["postgresql"] = f"{type(exc).__name__}: {exc}"
                journals = [j for j in journals if j != "pg"]
                pg_dsn = None
        socket_path = str(workdir / "bench.sock")
        config = ours.daemon_config(socket_path, workdir / "data", pg_dsn)
        try:
            daemon = stack.enter_context(Daemon(workdir, config, socket_path))
        except Exception as exc:
            sections.errors["daemon"] = f"snapshotd serve did not start: {exc}"
            return
        conn = stack.enter_context(daemon.connect())
        sections.run("load", lambda: ours.bench_load_and_snapshot(conn, journals, plan))
        sections.run(
            "incremental",
            lambda: bench_incremental(
                conn,
                journals,
                plan.inc_starts,
                plan.inc_consecutive,
                plan.repeats,
                workdir / "data",
                pg_dsn,
            ),
        )
        sections.run("latency", lambda: ours.bench_latency(socket_path, plan))
        sections.run("fire_and_forget", lambda: ours.bench_fire_and_forget(socket_path, plan))
        if daemon.process is not None and daemon.process.poll() is not None:
            sections.errors["daemon"] = "the daemon exited: " + daemon.log_tail()
        sections.run(
            "throughput",
            lambda: throughput.bench_throughput(
                workdir, journals, pg_dsn, runs=plan.throughput_runs, rounds=plan.repeats
            ),
        )
    sections.run("flood", lambda: ours.bench_flood(workdir / "flood", plan))
    sections.run("scale", lambda: bench_scale(workdir / "scale", plan.scale_runs))


def compare_eventsourcing(plan: ours.Plan, sections: Sections) -> None:
    def measure_theirs() -> dict[str, Figure]:
        from bench.pg import fresh_database
        from bench.theirs import bench_eventsourcing

        with fresh_database("snapshotd_bench_es") as dsn:
            return bench_eventsourcing(dsn, plan.largest, ours.TAIL, plan.repeats)

    sections.run("eventsourcing", measure_theirs)
    figures = sections.figures
    n = plan.largest
    comparisons = {
        "compare.snapshot": ("es.snapshot_full", f"snapshot.pg.{n}"),
        "compare.snapshot_incremental": ("es.snapshot_incremental", f"snapshot.pg.{n}"),
        "compare.load_snapshot": ("es.load_snapshot", f"load.pg.{n}.snapshot_fold"),
        "compare.load_full": ("es.load_full", f"load.pg.{n}.full_fold"),
    }
    for key, (theirs, mine) in comparisons.items():
        if theirs in figures and mine in figures:
            label = f"{figures[theirs].label} / snapshotd's {figures[mine].label}"
            figures[key] = cross_ratio(label, figures[theirs], figures[mine])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for CI (< 60 s)")
    parser.add_argument("--out-dir", type=Path, help="write the report files here")
    parser.add_argument(
        "--no-postgres", action="store_true", help="skip PostgreSQL (fs journal only)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    journals = ["fs"] if args.no_postgres else ["fs", "pg"]
    started = time.perf_counter()
    host = _host()
    if os.getloadavg()[0] > 0.5:
        print(
            f"bench: warning: load average {host['load_average']} at start; other work"
            " on this machine will show in the figures",
            file=sys.stderr,
        )
    sections = Sections()
    with tempfile.TemporaryDirectory(prefix="snapshotd-bench-") as tmp:
        measure(plan, Path(tmp), journals, sections)
    if not args.no_postgres:
        compare_eventsourcing(plan, sections)

    verdicts = evaluate(
        spec_targets(plan.largest, min(plan.sizes), tuple(journals), plan.scale_runs),
        sections.figures,
        quick=args.quick,
    )
    command = "make bench-quick" if args.quick else "make bench"
    meta = {
        "command": command,
        "quick": args.quick,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.perf_counter() - started,
        "host": host,
        "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__},
    }
    if args.out_dir is not None:
        docs = results = args.out_dir
    elif args.quick:
        docs = results = Path(tempfile.gettempdir()) / "snapshotd-bench-quick"
    else:
        docs, results = ROOT / "docs", ROOT / "bench"
    plot = docs / "benchmarks.png"
    has_plot = report.write_plot(plot, sections.figures, plan.sizes, tuple(journals))
    report.write_json(results / "results.json", meta, sections.figures, verdicts, sections.errors)
    report.write_markdown(
        docs / "benchmarks.md",
        meta,
        sections.figures,
        verdicts,
        sections.errors,
        plot.name if has_plot else None,
        METHOD,
    )
    print(report.console_table(verdicts))
    for name, message in sections.errors.items():
        print(f"NOT RUN {name}: {message}", file=sys.stderr)
    print(
        f"bench: wrote {docs / 'benchmarks.md'} and {results / 'results.json'}"
        f" in {meta['duration_s']:.0f} s",
        file=sys.stderr,
    )
    return 1 if sections.errors else 0


if __name__ == "__main__":
    sys.exit(main())
