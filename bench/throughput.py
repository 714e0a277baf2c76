"""Snapshots per second one daemon takes, per journal (SPEC section 8).

Setup writes straight through the journal adapter in this process, with no daemon
running, so nothing is snapshotted while the runs are prepared: every run gets a
base snapshot at ``TAIL`` events and then ``TAIL`` more events (``last_by_key``
over ``KEYS`` keys of ~100 bytes: a state of ~1 KB). A daemon (threshold
``TAIL``, no interval) then gets one fire-and-forget ``snapshot`` hint per run on
one connection; the figure is runs / (first hint sent -> ``taken`` reaching the
number of runs), polled through ``status`` on a second connection. Each round
appends ``TAIL`` more events per run first, so every round starts ``TAIL`` events
past a base.

``python -m bench.throughput [--runs N] [--rounds K] [--journal fs|pg]`` runs it
alone and prints the figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import structlog

from bench.daemon import Daemon, render_config
from bench.stats import Figure, figure
from bench.wire import Connection, encode
from snapshotd.domain import compaction
from snapshotd.domain.model import NewEvent
from snapshotd.domain.reducers import BUILTIN
from snapshotd.journals.factory import journal_from_url

TAIL = 100
KEYS = 10
WORKFLOW = "tp"
PAD = "v" * 90


def _events(first_seq: int) -> list[NewEvent]:
    return [
        NewEvent("set", {"key": f"k{seq % KEYS}", "value": f"{seq:08d}{PAD}"})
        for seq in range(first_seq, first_seq + TAIL)
    ]


async def _prepare(url: str, runs: list[str], first: bool) -> None:
    """Append ``TAIL`` events to every run; the first time, create the runs and
    snapshot them at ``TAIL`` (their base) before appending."""
    journal = journal_from_url(url)
    await journal.open()
    limiter = anyio.CapacityLimiter(8)

    async def one(run_id: str) -> None:
        async with limiter:
            now = datetime.now(UTC)
            if first:
                await journal.create_run(run_id, WORKFLOW, "v1", None, now)
                await journal.append(run_id, _events(1), expected_seq=None, lease=None, now=now)
                tail = await journal.read_events(run_id, 0)
                snap = compaction.compact(
                    run_id=run_id,
                    version="v1",
                    reducer_name="last_by_key",
                    reducer=BUILTIN["last_by_key"],
                    base=None,
                    tail=tail,
                    kind="auto",
                    now=now,
                    safety_ttl_s=60,
                )
                await journal.write_snapshot(snap.snapshot, lease=None)
            run = await journal.get_run(run_id)
            assert run is not None
            await journal.append(
                run_id,
                _events(run.last_seq + 1),
                expected_seq=run.last_seq,
                lease=None,
                now=now,
            )

    try:
        async with anyio.create_task_group() as tg:
            for run_id in runs:
                tg.start_soon(one, run_id)
    finally:
        await journal.aclose()


@contextmanager
def _daemon(workdir: Path, url: str, runs: int) -> Iterator[Daemon]:
    socket_path = str(workdir / "tp.sock")
    config = render_config(
        socket_path,
        {"tp": {"journal": url, "queue_capacity": max(10_000, runs)}},
        tp={"reducer": "last_by_key", "snapshot_threshold": TAIL, "snapshot_interval_s": 0},
    )
    with Daemon(workdir, config, socket_path) as daemon:
        yield daemon


ROUTINE_SKIPS = ("no_events", "below_threshold")
"""Re-checks of a run already snapshotted (a sweep or notification after the hint)."""


def _taken(conn: Connection) -> tuple[int, int]:
    """Snapshots taken, and attempts that failed (routine re-checks not counted)."""
    inst = conn.call("status")["instances"]["tp"]
    skipped = inst["skipped"]
    return inst["taken"], sum(n for r, n in skipped.items() if r not in ROUTINE_SKIPS)


def _one_round(workdir: Path, url: str, runs: list[str], timeout_s: float) -> float:
    """Seconds from the first hint to every run snapshotted."""
    hints = b"".join(encode("snapshot", instance="tp", run=run) for run in runs)
    with (
        _daemon(workdir, url, len(runs)) as daemon,
        daemon.connect() as sender,
        daemon.connect() as poller,
    ):
        start = time.perf_counter()
        sender.send(hints)
        deadline = start + timeout_s
        while True:
            taken, skipped = _taken(poller)
            if taken >= len(runs) or skipped:
                end = time.perf_counter()
                break
            if time.perf_counter() > deadline:
                status = poller.call("status")
                raise TimeoutError(f"{taken} of {len(runs)} taken in {timeout_s} s: {status}")
            time.sleep(0.01)
        if skipped:
            raise RuntimeError(f"{skipped} attempts skipped: {poller.call('status')}")
    return end - start


def measure(workdir: Path, journal: str, url: str, runs: int, rounds: int) -> Figure:
    """Snapshots/s over ``rounds`` rounds of ``runs`` runs on the journal at ``url``."""
    names = [f"tp-{i:06d}" for i in range(runs)]
    rates = []
    for index in range(rounds):
        anyio.run(_prepare, url, names, index == 0)
        seconds = _one_round(workdir, url, names, timeout_s=max(60.0, runs / 50))
        rates.append(runs / seconds)
    label = {"fs": "fs journal", "pg": "PostgreSQL journal"}[journal]
    return figure(f"snapshots/s, one daemon ({label})", "/s", rates)


async def _actor_seconds(url: str, runs: list[str], in_flight: int) -> float:
    """Seconds one in-process actor (``in_flight`` attempts at once) takes for ``runs``."""
    from snapshotd.config import load_config
    from snapshotd.runtime.actor import actor_loop
    from snapshotd.runtime.instance import Instance

    env = {
        "SNAPSHOTD_INSTANCES__TP__JOURNAL": url,
        "SNAPSHOTD_INSTANCES__TP__QUEUE_CAPACITY": str(max(10_000, len(runs))),
        "SNAPSHOTD_WORKFLOWS__TP__REDUCER": "last_by_key",
        "SNAPSHOTD_WORKFLOWS__TP__SNAPSHOT_THRESHOLD": str(TAIL),
    }
    config = load_config(None, env)
    journal = journal_from_url(url)
    await journal.open()
    try:
        inst = Instance(config.instances["tp"], journal, config.workflows, BUILTIN, {})
        inst.max_in_flight = in_flight
        for run_id in runs:
            inst.request_snapshot(run_id, None)
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(actor_loop, inst)
            while inst.taken + sum(inst.skipped.values()) < len(runs):
                await anyio.sleep(0.01)
            seconds = time.perf_counter() - start
            inst.stop_intake()
        inst.telemetry.forget()
        if sum(inst.skipped.values()):
            raise RuntimeError(f"attempts skipped: {inst.status()}")
        return seconds
    finally:
        await journal.aclose()


def compare_actor(url: str, runs: int, rounds: int) -> str:
    """Sequential (1 in flight) against overlapped (16) actors, rounds interleaved."""
    names = [f"ab-{i:06d}" for i in range(runs)]
    rates: dict[int, list[float]] = {1: [], 16: []}
    first = True
    for _ in range(rounds):
        for in_flight in (1, 16):
            anyio.run(_prepare, url, names, first)
            first = False
            rates[in_flight].append(runs / anyio.run(_actor_seconds, url, names, in_flight))
    return ", ".join(
        f"{n} in flight: {'/'.join(f'{r:.0f}' for r in rs)} /s" for n, rs in rates.items()
    )


def bench_throughput(
    workdir: Path, journals: list[str], pg_dsn: str | None, *, runs: int, rounds: int
) -> dict[str, Figure]:
    """``throughput.<journal>``: snapshots/s of one daemon, each in a fresh journal."""
    out: dict[str, Figure] = {}
    for journal in journals:
        sub = workdir / f"throughput-{journal}"
        sub.mkdir(parents=True, exist_ok=True)
        if journal == "fs":
            url = f"fs:{sub / 'data'}"
        else:
            assert pg_dsn is not None
            url = pg_dsn.replace("schema=bench", "schema=throughput")
        out[f"throughput.{journal}"] = measure(sub, journal, url, runs, rounds)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--journal", choices=["fs", "pg"], action="append")
    parser.add_argument(
        "--compare-actor",
        action="store_true",
        help="in-process: the actor with 1 attempt in flight against 16, interleaved",
    )
    args = parser.parse_args(argv)
    if args.compare_actor:
        return _compare_main(args.journal or ["fs", "pg"], args.runs, args.rounds)
    journals = args.journal or ["fs", "pg"]
    with tempfile.TemporaryDirectory(prefix="snapshotd-tp-") as tmp:
        if "pg" in journals:
            from bench.pg import fresh_database

            with fresh_database("snapshotd_tp") as dsn:
                figures = bench_throughput(
                    Path(tmp), journals, dsn + "?schema=bench", runs=args.runs, rounds=args.rounds
                )
        else:
            figures = bench_throughput(
                Path(tmp), journals, None, runs=args.runs, rounds=args.rounds
            )
    for key, fig in figures.items():
        samples = ", ".join(f"{s:.0f}" for s in fig.samples)
        print(f"{key}: median {fig.median:.0f} {fig.unit} ({samples})")
    return 0


def _compare_main(journals: list[str], runs: int, rounds: int) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="snapshotd-tp-") as tmp:
        for journal in journals:
            if journal == "fs":
                print("fs:", compare_actor(f"fs:{tmp}/data", runs, rounds))
                continue
            from bench.pg import fresh_database

            with fresh_database("snapshotd_tp") as dsn:
                url = dsn + "?schema=throughput"
                print("pg:", compare_actor(url, runs, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
