"""Measurements of snapshotd itself, through a real daemon over its unix socket.

Every figure is taken as a client sees it: from the first byte of a request to
the decoded reply. Runs use the ``bench`` workflow (``last_by_key`` reducer,
automatic snapshots disabled) so that snapshots happen exactly where a
measurement puts them, with ``snapshot_now``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.daemon import Daemon, render_config
from bench.stats import Figure, figure, percentile, rate, ratio
from bench.wire import Connection, encode, paced_round_trips
from bench.workload import event_data, fold_events

APPEND_BATCH = 5000
LOAD_PAGE = 100_000
TAIL = 50
SNAPSHOT_TAIL = 100
BENCH_WORKFLOW = {"reducer": "last_by_key", "snapshot_threshold": "infinity"}
JOURNAL_NAMES = {"fs": "fs journal", "pg": "PostgreSQL journal"}


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and repetitions of one benchmark run (``--quick`` shrinks them)."""

    sizes: tuple[int, ...]
    repeats: int
    ff_requests: int
    latency_rate: int
    latency_seconds: float
    flood_requests: int
    flood_queue: int
    flood_runs: int
    inc_starts: tuple[int, int]
    """Incremental snapshots: the two starting seqs compared (SPEC: 1,000 and 100,000)."""
    inc_consecutive: int
    """Incremental snapshots: consecutive snapshots averaged (SPEC: 100)."""
    scale_runs: int
    throughput_runs: int

    @property
    def largest(self) -> int:
        return max(self.sizes)


Figures = dict[str, Figure]


def daemon_config(socket_path: str, data_dir: Path, pg_dsn: str | None) -> str:
    instances: dict[str, dict[str, Any]] = {"fs": {"journal": f"fs:{data_dir}"}}
    if pg_dsn is not None:
        instances["pg"] = {"journal": pg_dsn}
    from bench.incremental import WORKFLOWS

    return render_config(socket_path, instances, bench=BENCH_WORKFLOW, **WORKFLOWS)


def append_events(conn: Connection, instance: str, run: str, first_seq: int, count: int) -> None:
    """Append events ``first_seq .. first_seq+count-1`` in socket-sized batches."""
    seq = first_seq
    end = first_seq + count
    while seq < end:
        batch = min(APPEND_BATCH, end - seq)
        events = [{"type": "set", "data": event_data(s)} for s in range(seq, seq + batch)]
        conn.call("append", instance=instance, run=run, events=events, expected_seq=seq - 1)
        seq += batch


def create_run(conn: Connection, instance: str, run: str) -> None:
    conn.call("create_run", instance=instance, run=run, workflow="bench", version="v1")


def snapshot_now(conn: Connection, instance: str, run: str) -> dict[str, Any]:
    result: dict[str, Any] = conn.call("snapshot_now", instance=instance, run=run, force=True)
    if result["status"] != "taken":
        raise RuntimeError(f"snapshot_now {instance}/{run}: {result}")
    return result


def settle(conn: Connection, timeout_s: float = 30.0) -> None:
    """Wait until every instance's queue is empty and no attempt completes for a
    moment, so work triggered by setup (appends notify the daemon) is not timed."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while time.monotonic() < deadline:
        instances = conn.call("status")["instances"]
        busy = any(i["queue_depth"] for i in instances.values())
        done = [(i["taken"], sum(i["skipped"].values())) for i in instances.values()]
        if not busy and done == previous:
            return
        previous = done
        time.sleep(0.05)
    raise TimeoutError(f"the daemon stayed busy for {timeout_s} s")


@dataclass(frozen=True, slots=True)
class Loaded:
    seconds: float
    """Request to decoded reply (every page)."""
    seconds_with_fold: float
    """The same plus folding the events onto the snapshot's state, as an app recovers."""
    events: int


def load(conn: Connection, instance: str, run: str, *, full: bool) -> Loaded:
    """``load`` the run: latest snapshot + tail, or (``full``) every event from seq 0."""
    start = time.perf_counter()
    after: int | None = 0 if full else None
    pages = []
    while True:
        fields: dict[str, Any] = {"instance": instance, "run": run, "limit": LOAD_PAGE}
        if after is not None:
            fields["after_seq"] = after
        page = conn.call("load", **fields)
        pages.append(page)
        if not page["has_more"]:
            break
        after = page["next_after"]
    decoded = time.perf_counter()
    snapshot = pages[0]["snapshot"]
    state: dict[str, Any] = dict(snapshot["state"]) if snapshot else {}
    count = 0
    for page in pages:
        fold_events(state, page["events"])
        count += len(page["events"])
    folded = time.perf_counter()
    return Loaded(decoded - start, folded - start, count)


# --- load with and without a snapshot, replay rate, snapshot cost --------------------


def bench_load_and_snapshot(conn: Connection, journals: list[str], plan: Plan) -> Figures:
    """Per journal and size N: a run of N events with a snapshot TAIL events before
    its end, loaded with the snapshot and in full; then the cost of snapshots taken
    SNAPSHOT_TAIL events past the previous one, on the smallest and largest run."""
    out: Figures = {}
    for journal in journals:
        name = JOURNAL_NAMES[journal]
        for size in plan.sizes:
            run = f"load-{size}"
            create_run(conn, journal, run)
            append_events(conn, journal, run, 1, size - TAIL)
            snapshot_now(conn, journal, run)
            append_events(conn, journal, run, size - TAIL + 1, TAIL)
            settle(conn)
            load(conn, journal, run, full=True)  # warm-up: caches, pool connections
            load(conn, journal, run, full=False)
            full: list[Loaded] = []
            snap: list[Loaded] = []
            for _ in range(plan.repeats):
                full.append(load(conn, journal, run, full=True))
                snap.append(load(conn, journal, run, full=False))
            if full[0].events != size or snap[0].events != TAIL:
                raise RuntimeError(f"{run}: loaded {full[0].events}/{snap[0].events} events")
            prefix = f"load.{journal}.{size}"
            what = f"{name}, {size:,} events"
            out[f"{prefix}.full"] = figure(
                f"load, full replay ({what})", "s", [x.seconds for x in full]
            )
            out[f"{prefix}.snapshot"] = figure(
                f"load, snapshot + {TAIL} events ({what})", "s", [x.seconds for x in snap]
            )
            out[f"{prefix}.full_fold"] = figure(
                f"load + fold, full replay ({what})", "s", [x.seconds_with_fold for x in full]
            )
            out[f"{prefix}.snapshot_fold"] = figure(
                f"load + fold, snapshot + {TAIL} events ({what})",
                "s",
                [x.seconds_with_fold for x in snap],
            )
            out[f"{prefix}.ratio"] = ratio(
                f"load speed-up from the snapshot ({what})",
                out[f"{prefix}.full"],
                out[f"{prefix}.snapshot"],
            )
            out[f"{prefix}.replay_rate"] = rate(
                f"full replay rate through load ({what})", size, out[f"{prefix}.full"]
            )
        low, high = min(plan.sizes), plan.largest
        for size in (low, high):
            out[f"snapshot.{journal}.{size}"] = figure(
                f"snapshot_now {SNAPSHOT_TAIL} events past a snapshot at ~{size:,} ({name})",
                "s",
                _snapshot_costs(conn, journal, f"load-{size}", size, plan.repeats),
            )
        out[f"snapshot.{journal}.ratio"] = ratio(
            f"snapshot cost at ~{high:,} / at ~{low:,} ({name})",
            out[f"snapshot.{journal}.{high}"],
            out[f"snapshot.{journal}.{low}"],
        )
    return out


def _snapshot_costs(
    conn: Connection, journal: str, run: str, size: int, repeats: int
) -> list[float]:
    last_seq = size
    # The run's snapshot is TAIL events back; top the tail up to SNAPSHOT_TAIL.
    append_events(conn, journal, run, last_seq + 1, SNAPSHOT_TAIL - TAIL)
    last_seq += SNAPSHOT_TAIL - TAIL
    costs = []
    for _ in range(repeats):
        settle(conn)
        start = time.perf_counter()
        result = snapshot_now(conn, journal, run)
        costs.append(time.perf_counter() - start)
        if result["through_seq"] != last_seq:
            raise RuntimeError(f"{run}: snapshot through {result['through_seq']} != {last_seq}")
        append_events(conn, journal, run, last_seq + 1, SNAPSHOT_TAIL)
        last_seq += SNAPSHOT_TAIL
    return costs


# --- fire-and-forget intake and round-trip latency ------------------------------------


HINT_RUNS = 100


def create_hint_runs(socket_path: str) -> None:
    """The runs that intake and latency requests name: real runs of the ``bench``
    workflow, whose attempts end quickly as ``disabled`` (automatic snapshots off),
    so the figures show the request path rather than snapshot writes."""
    with Connection(socket_path) as conn:
        for i in range(HINT_RUNS):
            create_run(conn, "fs", f"hint-{i}")


def _snapshot_hints(count: int, offset: int = 0) -> bytes:
    """``count`` fire-and-forget snapshot requests over the hint runs, pre-encoded."""
    return b"".join(
        encode("snapshot", instance="fs", run=f"hint-{(offset + i) % HINT_RUNS}")
        for i in range(count)
    )


def _flood(path: str, payload: bytes) -> None:
    with Connection(path) as conn:
        conn.send(payload)
        conn.barrier()


def bench_fire_and_forget(socket_path: str, plan: Plan) -> Figures:
    """Requests accepted per second: send N hints, then wait for a ping behind them."""
    create_hint_runs(socket_path)
    one = _snapshot_hints(plan.ff_requests)
    per_conn = plan.ff_requests // 8
    eight = [_snapshot_hints(per_conn, offset=k * per_conn) for k in range(8)]
    single: list[float] = []
    multi: list[float] = []
    settler = Connection(socket_path)
    for _ in range(plan.repeats):
        settle(settler)
        start = time.perf_counter()
        _flood(socket_path, one)
        single.append(plan.ff_requests / (time.perf_counter() - start))
        settle(settler)
        threads = [threading.Thread(target=_flood, args=(socket_path, p)) for p in eight]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        multi.append(per_conn * 8 / (time.perf_counter() - start))
    settler.close()
    return {
        "ff.one": figure("fire-and-forget snapshot requests, 1 connection", "/s", single),
        "ff.eight": figure("fire-and-forget snapshot requests, 8 connections", "/s", multi),
    }


LATENCY_OPS = ("ping", "snapshot")
"""``ping``: the bare request->reply path (the SPEC target). ``snapshot`` with an id:
each request also queues an attempt (on a hint run: span, metrics, log line) that the
daemon runs between reads, so it shows what attempts add to a reply's wait."""


def _paced_round_trips(path: str, op: str, per_second: int, seconds: float) -> list[float]:
    """Send ``op`` requests with ids (``snapshot``: over the hint runs) at a fixed rate
    from one thread and return each reply's latency (s), measured from the request's
    scheduled send time."""
    total = int(per_second * seconds)
    interval = 1.0 / per_second
    if op == "snapshot":
        lines = [
            encode("snapshot", i, instance="fs", run=f"hint-{i % HINT_RUNS}") for i in range(total)
        ]
    else:
        lines = [encode(op, i) for i in range(total)]
    return paced_round_trips(path, lines, interval, seconds)


def bench_latency(socket_path: str, plan: Plan) -> Figures:
    """Round trips of ``ping`` and of ``snapshot`` with id, each paced at the plan's rate."""
    create_hint_runs(socket_path)
    out: Figures = {}
    with Connection(socket_path) as conn:
        for op in LATENCY_OPS:
            p50: list[float] = []
            p99: list[float] = []
            for _ in range(plan.repeats):
                settle(conn)
                latencies = _paced_round_trips(
                    socket_path, op, plan.latency_rate, plan.latency_seconds
                )
                p50.append(percentile(latencies, 0.50) * 1000)
                p99.append(percentile(latencies, 0.99) * 1000)
            what = f"{op}{' with id' if op == 'snapshot' else ''} at {plan.latency_rate:,}/s"
            out[f"latency.{op}.p50"] = figure(f"round trip p50 ({what})", "ms", p50)
            out[f"latency.{op}.p99"] = figure(f"round trip p99 ({what})", "ms", p99)
    return out


# --- memory and fairness under a flood -------------------------------------------------


def _completed(status: dict[str, Any]) -> int:
    instance: dict[str, Any] = status["instances"]["fs"]
    skipped: dict[str, int] = instance["skipped"]
    return int(instance["taken"]) + sum(skipped.values())


def _flood_sampled(conn: Connection, socket_path: str, payload: bytes) -> tuple[float, float]:
    """Send ``payload`` on its own connection (until a ping behind it is answered) while
    polling ``status`` every 0.1 s; returns (seconds, attempts ended per second, from the
    second poll on: the first may land before the reader is busy)."""
    sender = threading.Thread(target=_flood, args=(socket_path, payload))
    samples: list[tuple[float, int]] = []
    start = time.perf_counter()
    sender.start()
    while sender.is_alive():
        samples.append((time.perf_counter(), _completed(conn.call("status"))))
        sender.join(0.1)
    elapsed = time.perf_counter() - start
    if len(samples) < 3:
        raise RuntimeError(f"the flood ended after {elapsed:.2f} s: too short to sample")
    (t0, c0), (t1, c1) = samples[1], samples[-1]
    return elapsed, (c1 - c0) / (t1 - t0)


def flood_once(workdir: Path, plan: Plan) -> dict[str, float]:
    """A fresh daemon with a small queue, flooded with ``snapshot`` requests over
    ``flood_runs`` runs of 20 events (threshold 100: each attempt reads the run and
    skips as ``below_threshold``), polling ``status`` on a second connection; then
    flooded again over as many runs that do not exist (each attempt: ``no_run``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    socket_path = str(workdir / "flood.sock")
    config = render_config(
        socket_path,
        {"fs": {"journal": f"fs:{workdir / 'data'}", "queue_capacity": plan.flood_queue}},
        bench={"reducer": "last_by_key", "snapshot_threshold": 100},
    )
    with Daemon(workdir, config, socket_path) as daemon, daemon.connect() as conn:
        for r in range(plan.flood_runs):
            create_run(conn, "fs", f"ff-{r}")
            append_events(conn, "fs", f"ff-{r}", 1, 20)
        settle(conn)
        rss_before = daemon.peak_rss_bytes()

        def payload(prefix: str) -> bytes:
            return b"".join(
                encode("snapshot", instance="fs", run=f"{prefix}-{i % plan.flood_runs}")
                for i in range(plan.flood_requests)
            )

        elapsed, attempts = _flood_sampled(conn, socket_path, payload("ff"))
        status = conn.call("status")["instances"]["fs"]
        rss_peak = daemon.peak_rss_bytes()
        settle(conn)
        _, attempts_missing = _flood_sampled(conn, socket_path, payload("missing"))
    return {
        "accepted_per_s": plan.flood_requests / elapsed,
        "attempts_per_s": attempts,
        "attempts_missing_per_s": attempts_missing,
        "rss_before_mb": rss_before / 1e6,
        "rss_peak_mb": rss_peak / 1e6,
        "dropped": float(status["dropped"]),
        "coalesced": float(status["coalesced"]),
    }


def bench_flood(workdir: Path, plan: Plan) -> Figures:
    runs = [flood_once(workdir / f"flood-{i}", plan) for i in range(plan.repeats)]
    n = f"{plan.flood_requests:,} requests, queue {plan.flood_queue}"

    def col(key: str) -> list[float]:
        return [r[key] for r in runs]

    return {
        "flood.rss_peak": figure(f"daemon peak RSS (VmHWM) through {n}", "MB", col("rss_peak_mb")),
        "flood.rss_before": figure("daemon peak RSS before the flood", "MB", col("rss_before_mb")),
        "flood.attempts": figure(
            f"snapshot attempts completed during the flood ({n})", "/s", col("attempts_per_s")
        ),
        "flood.attempts_missing": figure(
            f"snapshot attempts completed during a flood naming runs that do not exist ({n})",
            "/s",
            col("attempts_missing_per_s"),
        ),
        "flood.accepted": figure(
            f"requests read during the flood ({n})", "/s", col("accepted_per_s")
        ),
        "flood.dropped": figure("requests dropped (queue full) per flood", "", col("dropped")),
        "flood.coalesced": figure("requests coalesced per flood", "", col("coalesced")),
    }
