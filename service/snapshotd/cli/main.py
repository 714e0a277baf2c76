"""The ``snapshotd`` parser and its global options; ``main`` runs a command.

Exit codes: 0 success, 1 failure (daemon error, unreachable daemon, problems
found by ``verify``), 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import orjson

from snapshotd import __version__
from snapshotd.cli import daemon, demo, ops
from snapshotd.cli.common import EXIT_FAILURE, EXIT_USAGE, Failure, root_cause
from snapshotd.domain.errors import ConfigError, SnapshotdError

EXIT_CODES = """exit codes:
  0    success (snapshot-now: a snapshot was taken, or none was due)
  1    failure: the daemon answered an error, cannot be reached, snapshot-now could not
       take a snapshot (no_run, busy, too_large, ...), verify found problems
  2    usage or configuration error
  130  interrupted (Ctrl-C)"""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors that also answer in JSON when ``--json`` was given."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            error = {"ok": False, "error": {"code": "usage", "message": message}}
            sys.stdout.write(orjson.dumps(error).decode() + "\n")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="snapshotd",
        description="Snapshot daemon for event-sourced runs.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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

    daemon.add_commands(add, common)
    demo.add_commands(add, with_instance)
    ops.add_commands(add, client, with_instance)
    return parser


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
        cause = root_cause(exc)
        if isinstance(cause, Failure):
            print(f"snapshotd: {cause}", file=sys.stderr)
            _json_error(args, cause.error, cause.message)
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
