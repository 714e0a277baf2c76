"""``serve`` and ``migrate``: the commands that run the daemon or change the database.

``serve`` binds the socket before opening any journal, so a second daemon on a
live socket refuses to start without touching the first one's data.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from snapshotd import __version__
from snapshotd.cli.common import EXIT_OK, EXIT_USAGE, Failure, print_json

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


def add_commands(add: Callable[..., Any], common: argparse.ArgumentParser) -> None:
    """Register ``serve`` and ``migrate`` through the parser's ``add(name, parents, help)``."""
    p = add("serve", [common], "run the daemon until SIGTERM/SIGINT")
    p.set_defaults(func=cmd_serve)
    p = add(
        "migrate",
        [common],
        "apply the PostgreSQL migrations to every DSN given (--dsn, else SNAPSHOTD_DSN)",
    )
    p.add_argument(
        "--dsn",
        action="append",
        metavar="DSN",
        help="postgresql://user@host/db[?schema=...]; repeat for every shard. Prefer "
        "SNAPSHOTD_DSN (whitespace-separated DSNs): a command line shows the password",
    )
    p.set_defaults(func=cmd_migrate)


def cmd_serve(args: argparse.Namespace) -> int:
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
            raise Failure(str(exc)) from None
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


DSN_ENV = "SNAPSHOTD_DSN"


def migrate_dsns(given: list[str] | None, env: Mapping[str, str]) -> list[str]:
    """The DSNs to migrate: every ``--dsn``, else the whitespace-separated ``SNAPSHOTD_DSN``."""
    dsns = given or env.get(DSN_ENV, "").split()
    if not dsns:
        raise Failure(f"no DSN: pass --dsn or set {DSN_ENV}", EXIT_USAGE, "usage")
    return dsns


def cmd_migrate(args: argparse.Namespace) -> int:
    from snapshotd.journals.migrate import migrate, parse_dsn

    targets = [(dsn, parse_dsn(dsn).description) for dsn in migrate_dsns(args.dsn, os.environ)]

    async def migrate_all() -> list[list[str]]:
        return [await migrate(dsn) for dsn, _ in targets]

    results = anyio.run(migrate_all)
    if args.json:
        databases = [
            {"database": where, "applied": applied}
            for (_, where), applied in zip(targets, results, strict=True)
        ]
        print_json({"applied": results[0], "databases": databases})
        return EXIT_OK
    for (_, where), applied in zip(targets, results, strict=True):
        prefix = f"{where}: " if len(targets) > 1 else ""
        print(prefix + ("applied: " + ", ".join(applied) if applied else "database is up to date"))
    return EXIT_OK
