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


KV_WORKFLOW, STEPS_WORKFLOW = "demo_kv", "demo_steps"
DEMO_WORKFLOWS = {KV_WORKFLOW: "last_by_key", STEPS_WORKFLOW: "steps"}
"""The demo's workflows and the reducer each is meant to show (the embedded daemon's config)."""
KEYS = 50
WHY = (
    "why they differ: last_by_key keeps one value per key ({keys} here), so its snapshot stays "
    "small and replaces the replay; steps keeps every step, so its snapshot is as large as the "
    "events and saves only the folding."
)


async def _demo(
    client: AsyncClient, args: argparse.Namespace, out: TextIO, daemon: str | None
) -> dict[str, Any]:
    """Drive the demo through ``client``; ``daemon`` is the socket of a daemon that was
    already running (None: the embedded one, configured with ``DEMO_WORKFLOWS``)."""
    instance = args.instance or "default"
    prefix = f"demo-{uuid.uuid4().hex[:8]}"
    runs = {wf: [f"{prefix}-{wf}-{i}" for i in range(args.runs)] for wf in DEMO_WORKFLOWS}
    every_run = [run for wf_runs in runs.values() for run in wf_runs]
    before = (await client.call("status"))["instances"][instance]
    total = len(every_run) * args.events
    progress = _Progress(total)
    appended = requests = 0
    started = time.perf_counter()
    for workflow, wf_runs in runs.items():
        for run in wf_runs:
            await client.call(
                "create_run", instance=instance, run=run, workflow=workflow, version="v1"
            )
    for run in every_run:
        seq = 0
        while seq < args.events:
            size = min(args.batch, args.events - seq)
            events = [
                {"type": "set", "data": {"key": f"k{(seq + i) % KEYS}", "value": seq + i}}
                for i in range(size)
            ]
            reply = await client.call("append", instance=instance, run=run, events=events)
            seq = reply["last_seq"]
            appended += size
            await client.send("snapshot", instance=instance, run=run)
            requests += 1
            progress.update(
                appended, f"appended {appended}/{total} events, {requests} snapshot requests"
            )
    await client.flush()
    append_s = time.perf_counter() - started
    after = await _settled(client, instance, before, requests, progress, total)
    progress.finish()
    workflows = {wf: await _measure(client, instance, wf_runs[0]) for wf, wf_runs in runs.items()}
    skipped = {
        reason: count - before["skipped"].get(reason, 0)
        for reason, count in after["skipped"].items()
        if count - before["skipped"].get(reason, 0)
    }
    summary = {
        "runs": len(every_run),
        "events": appended,
        "append_s": round(append_s, 3),
        "snapshot_requests": requests,
        "taken": after["taken"] - before["taken"],
        "skipped": skipped,
        "dropped": after["dropped"] - before["dropped"],
        "coalesced": after["coalesced"] - before["coalesced"],
        "workflows": workflows,
        "note": _note(workflows, daemon),
    }
    out.write(
        orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n"
        if args.json
        else _report(summary)
    )
    return summary


async def _settled(
    client: AsyncClient,
    instance: str,
    before: dict[str, Any],
    requests: int,
    progress: _Progress,
    total: int,
) -> dict[str, Any]:
    """The instance's status once the actor worked through the requests (at most 15 s)."""

    def handled(status: dict[str, Any]) -> int:
        return int(
            status["taken"]
            + sum(status["skipped"].values())
            + status["dropped"]
            + status["coalesced"]
        )

    deadline = time.monotonic() + 15
    while True:
        now = (await client.call("status"))["instances"][instance]
        done = handled(now) - handled(before)
        progress.update(total, f"snapshot requests handled: {done}/{requests}")
        if (now["queue_depth"] == 0 and done >= requests) or time.monotonic() > deadline:
            return now  # type: ignore[no-any-return]
        await anyio.sleep(0.05)


async def _measure(client: AsyncClient, instance: str, run: str) -> dict[str, Any]:
    """Load ``run`` with and without its snapshot; name the reducer that built the snapshot."""
    await _timed_load(client, instance, run, use_snapshot=False)  # warm caches first
    full_s, full_events = await _timed_load(client, instance, run, use_snapshot=False)
    snap_s, tail_events = await _timed_load(client, instance, run, use_snapshot=True)
    snapshots = (await client.call("list_snapshots", instance=instance, run=run))["snapshots"]
    newest = snapshots[0] if snapshots else None
    return {
        "run": run,
        "reducer": newest["reducer"] if newest else None,
        "snapshot_bytes": newest["size_bytes"] if newest else None,
        "full_replay_ms": round(full_s * 1000, 3),
        "full_replay_events": full_events,
        "with_snapshot_ms": round(snap_s * 1000, 3),
        "tail_events": tail_events,
        "speedup": round(full_s / snap_s, 1) if snap_s > 0 else None,
    }


def _note(workflows: dict[str, dict[str, Any]], daemon: str | None) -> str:
    """One line on why the two measurements differ, or on what the demo did instead."""
    kv, steps = workflows[KV_WORKFLOW]["reducer"], workflows[STEPS_WORKFLOW]["reducer"]
    if kv is None or steps is None:
        return (
            "no snapshot was taken for a demo run (the instance's snapshot_threshold is above "
            "--events?): the loads above both replayed the events."
        )
    if (kv, steps) == tuple(DEMO_WORKFLOWS.values()):
        return WHY.format(keys=KEYS)
    where = f"the daemon at {daemon}" if daemon else "this daemon"
    return (
        f"{where} folds {KV_WORKFLOW} with {kv} and {STEPS_WORKFLOW} with {steps} (not "
        f"last_by_key and steps), so this compares those; to see a bounded state, start it with "
        f"SNAPSHOTD_WORKFLOWS__DEMO_KV__REDUCER=last_by_key (as `make run` does), or stop it "
        f"and run `snapshotd demo` alone (it starts its own daemon)."
    )


def _report(summary: dict[str, Any]) -> str:
    lines = [
        f"\nsnapshotd demo: {summary['runs']} runs, {summary['events']} events appended in "
        f"{summary['append_s']:.2f} s",
        f"  snapshot requests sent: {summary['snapshot_requests']} (fire-and-forget)",
        f"  snapshots taken:        {summary['taken']}",
        f"  skipped by reason:      {fmt_skipped(summary['skipped'])}",
        f"  dropped / coalesced:    {summary['dropped']} / {summary['coalesced']}",
    ]
    for workflow, m in summary["workflows"].items():
        speedup = f"  -> {m['speedup']:.1f}x faster" if m["speedup"] else ""
        size = f", snapshot {m['snapshot_bytes']} bytes" if m["snapshot_bytes"] else ""
        lines += [
            f"  load {m['run']} (workflow {workflow}, reducer {m['reducer'] or 'none'}{size}):",
            f"    full replay:          {m['full_replay_ms']:8.2f} ms "
            f"({m['full_replay_events']} events)",
            f"    snapshot + tail:      {m['with_snapshot_ms']:8.2f} ms "
            f"({m['tail_events']} tail events){speedup}",
        ]
    lines.append(f"  {summary['note']}")
    return "\n".join(lines) + "\n"


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
    except ClientError:
        return _demo_embedded(args)
    print(f"using the daemon at {path}", file=sys.stderr)

    async def against_running() -> None:
        async with AsyncClient(path) as client:
            await _demo(client, args, sys.stdout, path)

    anyio.run(against_running)
    return EXIT_OK


def _demo_embedded(args: argparse.Namespace) -> int:
    from snapshotd.api import server
    from snapshotd.config import load_config
    from snapshotd.runtime import open_daemon

    # The embedded daemon's per-snapshot log lines would drown the demo's own output.
    # (Restored afterwards: the demo may run inside a longer-lived process.)
    logging_config = structlog.get_config()
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
            **{
                f"SNAPSHOTD_WORKFLOWS__{workflow.upper()}__REDUCER": reducer
                for workflow, reducer in DEMO_WORKFLOWS.items()
            },
        },
    )
    args.instance = None

    async def embedded() -> None:
        async with open_daemon(config) as daemon, anyio.create_task_group() as tg:
            await tg.start(server.serve, daemon, config.socket)
            async with AsyncClient(socket_path) as client:
                await _demo(client, args, sys.stdout, None)
            # Let the server see the client's close before cancelling its read (asyncio
            # otherwise logs InvalidStateError for the reader callback).
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()

    try:
        anyio.run(embedded)
    finally:
        structlog.configure(**logging_config)
        shutil.rmtree(tmp, ignore_errors=True)
    return EXIT_OK
