"""The socket ops for people: ``status``, ``snapshot``, ``load``, ``runs``, ``audit``...

Each prints short readable text, or the result JSON with ``--json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from snapshotd.api.client import Client, ClientError
from snapshotd.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Failure,
    fmt_skipped,
    print_json,
    socket_path,
)


def add_commands(
    add: Callable[..., Any], client: argparse.ArgumentParser, with_instance: argparse.ArgumentParser
) -> None:
    """Register the socket ops through the parser's ``add(name, parents, help)``."""
    p = add("status", [client], "daemon and instance counters")
    p.set_defaults(func=client_command("status", lambda a: {}, _human_status))
    p = add("snapshot", [with_instance], "request a snapshot (fire-and-forget hint)")
    p.add_argument("run", help="the run id")
    p.add_argument("--lease", help=LEASE_HELP)
    p.set_defaults(
        func=client_command(
            "snapshot",
            lambda a: _without_none(run=a.run, lease=a.lease),
            lambda r: print(r["status"]),
        )
    )
    p = add(
        "snapshot-now",
        [with_instance],
        "take a snapshot now and wait for the outcome (exit 1 when none could be taken)",
    )
    p.add_argument("run", help="the run id")
    p.add_argument("--lease", help=LEASE_HELP)
    p.add_argument("--force", action="store_true", help="ignore thresholds")
    p.add_argument(
        "--kind",
        choices=("manual", "safety"),
        default="manual",
        help="manual (default; kept by retention like auto ones) or safety (kept until "
        "safety_ttl_s, taken even with no event after the latest snapshot)",
    )
    p.add_argument("--label", help='a name kept with the snapshot, e.g. "before-migration-42"')
    p.set_defaults(func=cmd_snapshot_now)
    p = add("load", [with_instance], "latest snapshot + tail events of a run")
    p.add_argument("run", help="the run id")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--after-seq", type=int, help="only events after this seq (no snapshot)")
    start.add_argument(
        "--snapshot", metavar="ID", help="restore this snapshot (any version) + events after it"
    )
    p.add_argument("--limit", type=int, help="events per page (default 10000)")
    p.set_defaults(
        func=client_command(
            "load",
            lambda a: _without_none(
                run=a.run, after_seq=a.after_seq, snapshot_id=a.snapshot, limit=a.limit
            ),
            _human_load,
        )
    )
    p = add("runs", [with_instance], "runs in id order, with their snapshot lag")
    p.add_argument("--workflow", help="only runs of this workflow")
    p.add_argument("--after", metavar="RUN", help="runs after this run id (next page)")
    p.add_argument("--limit", type=int, help="runs per page (1-1000, default 100)")
    p.set_defaults(
        func=client_command(
            "list_runs",
            lambda a: _without_none(workflow=a.workflow, after=a.after, limit=a.limit),
            _human_runs,
        )
    )
    p = add("list", [with_instance], "snapshots of a run, newest first")
    p.add_argument("run", help="the run id")
    p.set_defaults(func=client_command("list_snapshots", lambda a: {"run": a.run}, _human_list))
    for name, verb, help_ in (
        ("pin", "pinned", "pin a snapshot (pinned ones are never pruned)"),
        ("unpin", "unpinned", "unpin a snapshot (retention applies again)"),
    ):
        p = add(name, [with_instance], help_)
        p.add_argument("run", help="the run id")
        p.add_argument("snapshot_id", metavar="ID", help="the snapshot id (see `list`)")
        p.set_defaults(
            func=client_command(
                name,
                lambda a: {"run": a.run, "snapshot_id": a.snapshot_id},
                partial(_print_word, verb),
            )
        )
    p = add("verify", [with_instance], "check a run's snapshots (exit 1 when problems)")
    p.add_argument("run", help="the run id")
    p.set_defaults(func=cmd_verify)
    p = add("audit", [with_instance], "the instance's audit log")
    p.add_argument(
        "--cursor",
        type=int,
        default=0,
        help="show entries after this cursor (default 0: from the oldest kept; each page "
        "prints the next cursor)",
    )
    p.add_argument("--limit", type=int, default=100, help="entries per page (default 100)")
    p.set_defaults(
        func=client_command("audit", lambda a: {"cursor": a.cursor, "limit": a.limit}, _human_audit)
    )


LEASE_HELP = (
    "the caller's lease on the run: when the run has another lease, the request is "
    "skipped as stale_lease (default: not checked)"
)
ROUTINE_SKIPS = frozenset({"below_threshold", "no_events", "disabled"})
"""``snapshot-now`` outcomes that need no snapshot: the command still succeeds."""


def cmd_snapshot_now(args: argparse.Namespace) -> int:
    """Exit 0 when a snapshot was taken or none was due, 1 when none could be taken."""
    fields = _without_none(
        run=args.run, lease=args.lease, force=args.force, kind=args.kind, label=args.label
    )
    result = call(args, "snapshot_now", **fields)
    if args.json:
        print_json(result)
    else:
        _human_snapshot_now(result)
    taken_or_not_due = result.get("status") == "taken" or result.get("reason") in ROUTINE_SKIPS
    return EXIT_OK if taken_or_not_due else EXIT_FAILURE


def call(args: argparse.Namespace, op: str, **fields: Any) -> Any:
    path = socket_path(args)
    if getattr(args, "instance", None):
        fields["instance"] = args.instance
    try:
        with Client(path, timeout=args.timeout) as client:
            return client.call(op, **fields)
    except ClientError as exc:
        raise Failure(exc.message, error=exc.code, show_error=True) from None


def _human_status(result: dict[str, Any]) -> None:
    print(f"snapshotd {result.get('version')}, up {result.get('uptime_s', 0):.0f} s")
    for name, inst in sorted(result.get("instances", {}).items()):
        print(
            f"  {name} ({inst['journal']}): queue {inst['queue_depth']}/{inst['queue_capacity']}, "
            f"taken {inst['taken']}, skipped {fmt_skipped(inst['skipped'])}, "
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
    rows = [
        [
            s["snapshot_id"],
            s["kind"],
            str(s["through_seq"]),
            str(s["size_bytes"]),
            "yes" if s["pinned"] else "no",
            s["version"],
            s.get("label") or "-",
        ]
        for s in snaps
    ]
    header = ["SNAPSHOT_ID", "KIND", "THROUGH", "BYTES", "PINNED", "VERSION", "LABEL"]
    print_table(header, rows, right={2, 3})


def _human_runs(result: dict[str, Any]) -> None:
    runs = result.get("runs", [])
    if not runs:
        print("no runs")
        return
    rows = []
    for r in runs:
        through = r["snapshot_through_seq"]
        lag = r["last_seq"] - (through or 0)
        shown = "-" if through is None else str(through)
        rows.append([r["run_id"], r["workflow"], r["version"], str(r["last_seq"]), shown, str(lag)])
    header = ["RUN", "WORKFLOW", "VERSION", "LAST_SEQ", "SNAPSHOT", "LAG"]
    print_table(header, rows, right={3, 4, 5})
    if result.get("has_more"):
        print(f"more runs follow: --after {result['next_after']}")


def print_table(header: list[str], rows: list[list[str]], right: set[int]) -> None:
    """Columns as wide as their widest cell; ``right``: indexes of right-aligned ones."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def _human_audit(result: dict[str, Any]) -> None:
    for entry in result.get("events", []):
        rest = {k: v for k, v in entry.items() if k not in ("cursor", "at", "kind")}
        details = " ".join(f"{k}={_short(v, 60)}" for k, v in rest.items())
        print(f"{entry['cursor']:>6}  {entry['at']}  {entry['kind']}  {details}".rstrip())
    more = " (more: --cursor {})".format(result["next_cursor"]) if result.get("has_more") else ""
    print(f"next cursor {result.get('next_cursor')}{more}")


def client_command(
    op: str, fields: Callable[[argparse.Namespace], dict[str, Any]], human: Callable[[Any], None]
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        result = call(args, op, **fields(args))
        if args.json:
            print_json(result)
        else:
            human(result)
        return EXIT_OK

    return run


def cmd_verify(args: argparse.Namespace) -> int:
    result = call(args, "verify", run=args.run)
    problems = bool(result.get("corrupt") or result.get("drift"))
    if args.json:
        print_json(result)
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
