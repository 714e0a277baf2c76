"""The ``snapshotd`` command line (SPEC section 3): the daemon, migrations, a demo, and the ops.

``serve`` binds the socket before opening any journal, so a second daemon on a
live socket refuses to start without touching the first one's data. Client
commands print short readable text, or the result JSON with ``--json``.
Exit codes: 0 success, 1 failure (daemon error, unreachable daemon, problems
found by ``verify``), 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import anyio
import orjson
import structlog

from snapshotd import __version__
from snapshotd.api.client import AsyncClient, Client, ClientError
from snapshotd.domain.errors import ConfigError, SnapshotdError

if TYPE_CHECKING:
    from snapshotd.api.server import BoundSocket
    from snapshotd.config import Config

DRAIN_S = 6.0
"""Budget for a graceful stop after SIGTERM: with at most 3 s of telemetry flush after it,
the daemon exits within the SPEC's 10 s."""
SWITCH_INTERVAL_S = 0.0005
"""``serve``'s GIL switch interval (Python's default: 5 ms). Worker threads (file reads,
the OpenTelemetry exporters encoding a batch) then hold up the event loop, and so a
reply, for at most about this long instead of 5 ms at a time."""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Failure(Exception):
    """A command failed with a message for stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE, error: str = "failed") -> None:
        super().__init__(message)
        self.code = code
        self.error = error


def _root_cause(exc: BaseException) -> BaseException:
    """The single error inside nested task-group exception groups, or ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# serve -------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from snapshotd.api.server import SocketInUse, bind
    from snapshotd.config import load_config
    from snapshotd.telemetry.logs import configure_logging
    from snapshotd.telemetry.setup import setup_telemetry

    configure_logging(cache_loggers=True)
    config = load_config(args.config)
    shutdown_telemetry = setup_telemetry(__version__)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        try:
            bound = bind(config.socket)
        except SocketInUse as exc:
            raise _Failure(str(exc)) from None
        try:
            anyio.run(_serve, config, bound)
        finally:
            bound.close()
    finally:
        shutdown_telemetry()
    return EXIT_OK


async def _serve(config: Config, bound: BoundSocket) -> None:
    from snapshotd.api import server
    from snapshotd.runtime import open_daemon

    log = structlog.get_logger("snapshotd.cli")
    stop = anyio.Event()
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as outer:

            async def watch_signals() -> None:
                async for signum in signals:
                    if stop.is_set():
                        log.warning("shutdown_forced", signal=signal.Signals(signum).name)
                        outer.cancel_scope.cancel()
                        return
                    log.info("shutdown_requested", signal=signal.Signals(signum).name)
                    stop.set()
                    # Whatever still runs after the drain budget is cancelled.
                    outer.cancel_scope.deadline = anyio.current_time() + DRAIN_S

            outer.start_soon(watch_signals)
            # The listener's task group closes before the daemon's: stop accepting
            # first, then the daemon's exit drains the actors.
            async with open_daemon(config) as daemon, anyio.create_task_group() as listener:
                await listener.start(partial(server.serve, daemon, config.socket, bound=bound))
                # What start-up built (modules, config, telemetry) lives as long as the
                # process: frozen, full collections no longer walk it, pausing the loop.
                gc.collect()
                gc.freeze()
                await stop.wait()
                listener.cancel_scope.cancel()
            log.info("stopped")
            outer.cancel_scope.cancel()


# migrate -----------------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace) -> int:
    from snapshotd.journals.migrate import migrate

    applied = anyio.run(migrate, args.dsn)
    if args.json:
        _print_json({"applied": applied})
    elif applied:
        print("applied: " + ", ".join(applied))
    else:
        print("database is up to date")
    return EXIT_OK


# client commands ---------------------------------------------------------------


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    from snapshotd.config import load_config

    return load_config(args.config).socket.path


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _call(args: argparse.Namespace, op: str, **fields: Any) -> Any:
    path = _socket_path(args)
    if getattr(args, "instance", None):
        fields["instance"] = args.instance
    try:
        with Client(path, timeout=args.timeout) as client:
            return client.call(op, **fields)
    except ClientError as exc:
        raise _Failure(f"{exc.code}: {exc.message}", error=exc.code) from None
    except OSError as exc:
        raise _Failure(f"cannot reach snapshotd at {path}: {exc}", error="unavailable") from None


def _fmt_skipped(skipped: dict[str, int]) -> str:
    shown = [f"{reason}={count}" for reason, count in sorted(skipped.items()) if count]
    return ", ".join(shown) or "none"


def _human_status(result: dict[str, Any]) -> None:
    print(f"snapshotd {result.get('version')}, up {result.get('uptime_s', 0):.0f} s")
    for name, inst in sorted(result.get("instances", {}).items()):
        print(
            f"  {name} ({inst['journal']}): queue {inst['queue_depth']}/{inst['queue_capacity']}, "
            f"taken {inst['taken']}, skipped {_fmt_skipped(inst['skipped'])}, "
            f"dropped {inst['dropped']}, coalesced {inst['coalesced']}, "
            f"restarts {inst['restarts']}"
        )


def _human_snapshot_now(result: dict[str, Any]) -> None:
    if result.get("status") == "taken":
        print(
            f"taken {result['snapshot_id']} through seq {result['through_seq']} "
            f"({result['size_bytes']} bytes)"
        )
    else:
        print(f"skipped: {result.get('reason')}")


def _short(value: Any, width: int = 100) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 3] + "..."


def _human_load(result: dict[str, Any]) -> None:
    run = result["run"]
    lease = run.get("lease")
    print(
        f"run {run['run_id']}: workflow {run['workflow']}, version {run['version']}, "
        f"last seq {run['last_seq']}" + (f", lease {lease}" if lease else "")
    )
    snap = result.get("snapshot")
    if snap:
        print(
            f"snapshot {snap['snapshot_id']} through seq {snap['through_seq']}: "
            f"{_short(snap['state'])}"
        )
    else:
        print("no snapshot used")
    events = result.get("events", [])
    print(f"{len(events)} events" + (":" if events else ""))
    for event in events:
        print(f"  {event['seq']:>8}  {event['type']}  {_short(event['data'], 80)}")
    if result.get("has_more"):
        print(f"more events follow: --after-seq {result['next_after']}")


def _human_list(result: dict[str, Any]) -> None:
    snaps = result.get("snapshots", [])
    if not snaps:
        print("no snapshots")
        return
    print(f"{'snapshot_id':<36}  {'kind':<6}  {'through':>8}  {'bytes':>9}  pinned  version")
    for s in snaps:
        print(
            f"{s['snapshot_id']:<36}  {s['kind']:<6}  {s['through_seq']:>8}  "
            f"{s['size_bytes']:>9}  {'yes' if s['pinned'] else 'no':<6}  {s['version']}"
        )


def _human_audit(result: dict[str, Any]) -> None:
    for entry in result.get("events", []):
        rest = {k: v for k, v in entry.items() if k not in ("cursor", "at", "kind")}
        details = " ".join(f"{k}={_short(v, 60)}" for k, v in rest.items())
        print(f"{entry['cursor']:>6}  {entry['at']}  {entry['kind']}  {details}".rstrip())
    more = " (more: --cursor {})".format(result["next_cursor"]) if result.get("has_more") else ""
    print(f"next cursor {result.get('next_cursor')}{more}")


def _client_command(
    op: str, fields: Callable[[argparse.Namespace], dict[str, Any]], human: Callable[[Any], None]
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        result = _call(args, op, **fields(args))
        if args.json:
            _print_json(result)
        else:
            human(result)
        return EXIT_OK

    return run


def _cmd_verify(args: argparse.Namespace) -> int:
    result = _call(args, "verify", run=args.run)
    problems = bool(result.get("corrupt") or result.get("drift"))
    if args.json:
        _print_json(result)
    elif problems:
        print(f"checked {result['checked']} snapshots")
        print("corrupt: " + (", ".join(result["corrupt"]) or "none"))
        print("drift: " + (", ".join(result["drift"]) or "none"))
    else:
        print(f"checked {result['checked']} snapshots: all good")
    return EXIT_FAILURE if problems else EXIT_OK


def _print_word(word: str, _result: Any) -> None:
    print(word)


def _without_none(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


# demo --------------------------------------------------------------------------


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
            f"  skipped by reason:      {_fmt_skipped(skipped)}\n"
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


def _cmd_demo(args: argparse.Namespace) -> int:
    path = _socket_path(args)
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


# parser ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors that also answer in JSON when ``--json`` was given."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            error = {"ok": False, "error": {"code": "usage", "message": message}}
            sys.stdout.write(orjson.dumps(error).decode() + "\n")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="snapshotd", description="Snapshot daemon for event-sourced runs.")
    parser.add_argument("--version", action="version", version=f"snapshotd {__version__}")
    # Accepted before the command too (`snapshotd --json status`); merged in ``_merge_globals``.
    parser.add_argument("--config", dest="global_config", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--json", dest="global_json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--socket", dest="global_socket", metavar="PATH", help=argparse.SUPPRESS)
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML configuration file")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    client = _Parser(add_help=False, parents=[common])
    client.add_argument(
        "--socket",
        metavar="PATH",
        help="daemon socket (default: socket.path of the config, SNAPSHOTD_SOCKET_PATH, "
        "./snapshotd.sock)",
    )
    client.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    with_instance = _Parser(add_help=False, parents=[client])
    with_instance.add_argument("--instance", help="instance name (default: default)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, parents: list[_Parser], help_: str) -> Any:
        return sub.add_parser(name, parents=parents, help=help_, description=help_)

    p = add("serve", [common], "run the daemon until SIGTERM/SIGINT")
    p.set_defaults(func=_cmd_serve)
    p = add("migrate", [common], "apply the PostgreSQL migrations")
    p.add_argument("--dsn", required=True, help="postgresql://user@host/db[?schema=...]")
    p.set_defaults(func=_cmd_migrate)
    p = add("demo", [with_instance], "create runs, append events, show what snapshots buy")
    p.add_argument("--runs", type=_positive, default=5, help="runs to create (default 5)")
    p.add_argument("--events", type=_positive, default=2000, help="events per run (2000)")
    p.add_argument("--batch", type=_positive, default=100, help="events per append (100)")
    p.set_defaults(func=_cmd_demo)

    p = add("status", [client], "daemon and instance counters")
    p.set_defaults(func=_client_command("status", lambda a: {}, _human_status))
    p = add("snapshot", [with_instance], "request a snapshot (fire-and-forget hint)")
    p.add_argument("run")
    p.add_argument("--lease")
    p.set_defaults(
        func=_client_command(
            "snapshot",
            lambda a: _without_none(run=a.run, lease=a.lease),
            lambda r: print(r["status"]),
        )
    )
    p = add("snapshot-now", [with_instance], "take a snapshot now and wait for the outcome")
    p.add_argument("run")
    p.add_argument("--lease")
    p.add_argument("--force", action="store_true", help="ignore thresholds")
    p.add_argument("--kind", choices=("manual", "safety"), default="manual")
    p.set_defaults(
        func=_client_command(
            "snapshot_now",
            lambda a: _without_none(run=a.run, lease=a.lease, force=a.force, kind=a.kind),
            _human_snapshot_now,
        )
    )
    p = add("load", [with_instance], "latest snapshot + tail events of a run")
    p.add_argument("run")
    p.add_argument("--after-seq", type=int, help="only events after this seq (no snapshot)")
    p.add_argument("--limit", type=int, help="events per page (default 10000)")
    p.set_defaults(
        func=_client_command(
            "load",
            lambda a: _without_none(run=a.run, after_seq=a.after_seq, limit=a.limit),
            _human_load,
        )
    )
    p = add("list", [with_instance], "snapshots of a run, newest first")
    p.add_argument("run")
    p.set_defaults(func=_client_command("list_snapshots", lambda a: {"run": a.run}, _human_list))
    for name, verb, help_ in (
        ("pin", "pinned", "pin a snapshot (pinned ones are never pruned)"),
        ("unpin", "unpinned", "unpin a snapshot (retention applies again)"),
    ):
        p = add(name, [with_instance], help_)
        p.add_argument("run")
        p.add_argument("snapshot_id", metavar="ID")
        p.set_defaults(
            func=_client_command(
                name,
                lambda a: {"run": a.run, "snapshot_id": a.snapshot_id},
                partial(_print_word, verb),
            )
        )
    p = add("verify", [with_instance], "check a run's snapshots (exit 1 when problems)")
    p.add_argument("run")
    p.set_defaults(func=_cmd_verify)
    p = add("audit", [with_instance], "the instance's audit log")
    p.add_argument("--cursor", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(
        func=_client_command(
            "audit", lambda a: {"cursor": a.cursor, "limit": a.limit}, _human_audit
        )
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _merge_globals(args: argparse.Namespace) -> None:
    """Options given before the command apply unless the command repeats them."""
    if args.config is None:
        args.config = args.global_config
    args.json = args.json or args.global_json
    if hasattr(args, "socket") and args.socket is None:
        args.socket = args.global_socket


def _json_error(args: argparse.Namespace, code: str, message: str) -> None:
    """With ``--json`` a failure is also a JSON object on stdout, shaped like a response."""
    if getattr(args, "json", False):
        error = {"ok": False, "error": {"code": code, "message": message}}
        sys.stdout.write(orjson.dumps(error).decode() + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snapshotd`` console script; returns the exit code."""
    _Parser.json_errors = "--json" in (sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _merge_globals(args)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BaseException as exc:
        cause = _root_cause(exc)
        if isinstance(cause, _Failure):
            print(f"snapshotd: {cause}", file=sys.stderr)
            _json_error(args, cause.error, str(cause))
            return cause.code
        if isinstance(cause, ConfigError):
            print(f"snapshotd: configuration error: {cause}", file=sys.stderr)
            _json_error(args, "config", str(cause))
            return EXIT_USAGE
        if isinstance(cause, SnapshotdError):
            print(f"snapshotd: {cause.code}: {cause.message}", file=sys.stderr)
            _json_error(args, cause.code, cause.message)
            return EXIT_FAILURE
        if isinstance(cause, KeyboardInterrupt):
            return 130
        raise
