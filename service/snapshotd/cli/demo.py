"""``snapshotd demo``: create runs, append events, request snapshots, show what they buy.

Runs against the daemon at the socket when one answers, else against an embedded one.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any, TextIO

import anyio
import orjson
import structlog

from snapshotd.api.client import AsyncClient, Client, ClientError
from snapshotd.cli.common import EXIT_OK, fmt_skipped, socket_path


def add_commands(add: Callable[..., Any], with_instance: argparse.ArgumentParser) -> None:
    """Register ``demo`` through the parser's ``add(name, parents, help)``."""
    p = add("demo", [with_instance], "create runs, append events, show what snapshots buy")
    p.add_argument("--runs", type=positive, default=5, help="runs to create (default 5)")
    p.add_argument("--events", type=positive, default=2000, help="events per run (2000)")
    p.add_argument("--batch", type=positive, default=100, help="events per append (100)")
    p.set_defaults(func=cmd_demo)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


class _Progress:
    """One progress line, rewritten in place on a terminal, every 25% otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._quarter = -1

    def update(self, done: int, text: str) -> None:
        quarter = done * 4 // self.total
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K")
        elif quarter != self._quarter:
            self.stream.write(text + "\n")
        self._quarter = quarter
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def _demo(client: AsyncClient, args: argparse.Namespace, out: TextIO) -> dict[str, Any]:
    instance = args.instance or "default"
    prefix = f"demo-{uuid.uuid4().hex[:8]}"
    runs = [f"{prefix}-{i}" for i in range(args.runs)]
    before = (await client.call("status"))["instances"][instance]
    total = args.runs * args.events
    progress = _Progress(total)
    appended = requests = 0
    started = time.perf_counter()
    for run in runs:
        await client.call("create_run", instance=instance, run=run, workflow="demo", version="v1")
    for run in runs:
        seq = 0
        while seq < args.events:
            size = min(args.batch, args.events - seq)
            events = [
                {"type": "set", "data": {"key": f"k{(seq + i) % 50}", "value": seq + i}}
                for i in range(size)
            ]
            seq = (await client.call("append", instance=instance, run=run, events=events))[
                "last_seq"
            ]
            appended += size
            await client.send("snapshot", instance=instance, run=run)
            requests += 1
            progress.update(
                appended, f"appended {appended}/{total} events, {requests} snapshot requests"
            )
    await client.flush()
    append_s = time.perf_counter() - started
    # Let the actor work through the requests (bounded wait).
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = (await client.call("status"))["instances"][instance]
        handled = now["taken"] + sum(now["skipped"].values()) + now["dropped"] + now["coalesced"]
        previous = (
            before["taken"]
            + sum(before["skipped"].values())
            + before["dropped"]
            + before["coalesced"]
        )
        progress.update(total, f"snapshot requests handled: {handled - previous}/{requests}")
        if now["queue_depth"] == 0 and handled - previous >= requests:
            break
        await anyio.sleep(0.05)
    progress.finish()
    after = (await client.call("status"))["instances"][instance]
    target = runs[0]
    full_s, full_events = await _timed_load(client, instance, target, use_snapshot=False)
    snap_s, tail_events = await _timed_load(client, instance, target, use_snapshot=True)
    skipped = {
        reason: count - before["skipped"].get(reason, 0)
        for reason, count in after["skipped"].items()
        if count - before["skipped"].get(reason, 0)
    }
    summary = {
        "runs": len(runs),
        "events": appended,
        "append_s": round(append_s, 3),
        "snapshot_requests": requests,
        "taken": after["taken"] - before["taken"],
        "skipped": skipped,
        "dropped": after["dropped"] - before["dropped"],
        "coalesced": after["coalesced"] - before["coalesced"],
        "load": {
            "run": target,
            "full_replay_ms": round(full_s * 1000, 3),
            "full_replay_events": full_events,
            "with_snapshot_ms": round(snap_s * 1000, 3),
            "tail_events": tail_events,
        },
    }
    if args.json:
        out.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        speedup = full_s / snap_s if snap_s > 0 else float("inf")
        out.write(
            f"\nsnapshotd demo: {len(runs)} runs, {appended} events appended in "
            f"{append_s:.2f} s\n"
            f"  snapshot requests sent: {requests} (fire-and-forget)\n"
            f"  snapshots taken:        {summary['taken']}\n"
            f"  skipped by reason:      {fmt_skipped(skipped)}\n"
            f"  dropped / coalesced:    {summary['dropped']} / {summary['coalesced']}\n"
            f"  load {target}:\n"
            f"    full replay:          {full_s * 1000:8.2f} ms ({full_events} events)\n"
            f"    snapshot + tail:      {snap_s * 1000:8.2f} ms ({tail_events} tail events)"
            f"  -> {speedup:.1f}x faster\n"
        )
    return summary


async def _timed_load(
    client: AsyncClient, instance: str, run: str, *, use_snapshot: bool
) -> tuple[float, int]:
    """Best of three loads of ``run``: latest snapshot + tail, or every event from seq 0."""
    best = float("inf")
    count = 0
    for _ in range(3):
        started = time.perf_counter()
        fields: dict[str, Any] = {} if use_snapshot else {"after_seq": 0}
        count = 0
        while True:
            page = await client.call("load", instance=instance, run=run, **fields)
            count += len(page["events"])
            if not page["has_more"]:
                break
            fields = {"after_seq": page["next_after"]}
        best = min(best, time.perf_counter() - started)
    return best, count


def cmd_demo(args: argparse.Namespace) -> int:
    path = socket_path(args)
    try:
        with Client(path, timeout=2) as probe:
            probe.call("ping")
    except (OSError, ClientError):
        return _demo_embedded(args)
    print(f"using the daemon at {path}", file=sys.stderr)

    async def against_running() -> None:
        async with AsyncClient(path) as client:
            await _demo(client, args, sys.stdout)

    anyio.run(against_running)
    return EXIT_OK


def _demo_embedded(args: argparse.Namespace) -> int:
    from snapshotd.api import server
    from snapshotd.config import load_config
    from snapshotd.runtime import open_daemon

    # The embedded daemon's per-snapshot log lines would drown the demo's own output.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    tmp = tempfile.mkdtemp(prefix="snapshotd-demo-")
    print(f"no daemon answers: starting an embedded one in {tmp}", file=sys.stderr)
    socket_path = os.path.join(tmp, "snapshotd.sock")
    config = load_config(
        None,
        {
            "SNAPSHOTD_SOCKET_PATH": socket_path,
            "SNAPSHOTD_INSTANCES__DEFAULT__JOURNAL": f"fs:{tmp}/data",
            "SNAPSHOTD_WORKFLOWS__DEMO__REDUCER": "last_by_key",
        },
    )
    args.instance = None

    async def embedded() -> None:
        async with open_daemon(config) as daemon, anyio.create_task_group() as tg:
            await tg.start(server.serve, daemon, config.socket)
            async with AsyncClient(socket_path) as client:
                await _demo(client, args, sys.stdout)
            # Let the server see the client's close before cancelling its read (asyncio
            # otherwise logs InvalidStateError for the reader callback).
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()

    try:
        anyio.run(embedded)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return EXIT_OK
