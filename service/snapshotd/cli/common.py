"""What every command group shares: exit codes, the failure type, output helpers."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class Failure(Exception):
    """A command failed: exit ``code``, an ``error`` code and a message.

    ``str()`` is the stderr text, which starts with the error code when ``show_error``
    (a daemon's error); ``message`` alone goes into a ``--json`` error object, beside
    its ``code``.
    """

    def __init__(
        self,
        message: str,
        code: int = EXIT_FAILURE,
        error: str = "failed",
        *,
        show_error: bool = False,
    ) -> None:
        super().__init__(f"{error}: {message}" if show_error else message)
        self.message = message
        self.code = code
        self.error = error


def root_cause(exc: BaseException) -> BaseException:
    """The single error inside nested task-group exception groups, or ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def socket_path(args: argparse.Namespace) -> str:
    """``--socket``, else the configuration's socket path."""
    if args.socket:
        return str(args.socket)
    from snapshotd.config import load_config

    return load_config(args.config).socket.path


def fmt_skipped(skipped: dict[str, int]) -> str:
    shown = [f"{reason}={count}" for reason, count in sorted(skipped.items()) if count]
    return ", ".join(shown) or "none"
