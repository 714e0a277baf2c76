"""structlog configuration: JSON lines (or a console view on a TTY), stdlib logging routed through.

One processor chain serves both structlog's own loggers and stdlib records (asyncpg,
anyio, the OpenTelemetry exporters), so every line on stderr has the same shape:
``event``, ``level``, ``timestamp`` (ISO 8601, UTC), ``logger`` for stdlib records,
the bound context variables, and ``trace_id``/``span_id`` when logged inside a span.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog
from opentelemetry import trace
from structlog.types import EventDict, Processor, WrappedLogger

_HANDLER_NAME = "snapshotd"


def add_trace_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add the current span's ids, so a log line can be joined with its trace."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        # The snapshot lines pass trace_id themselves: it is not formatted twice.
        if "trace_id" not in event_dict:
            event_dict["trace_id"] = format(ctx.trace_id, "032x")
        if "span_id" not in event_dict:
            event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


def _dumps(obj: Any, **_kw: Any) -> str:
    # default=str: a stray non-JSON value (an exception, a path) must never lose the line.
    return orjson.dumps(obj, default=str).decode()


def _renderers(tty: bool) -> list[Processor]:
    if tty:
        return [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
    return [
        # Locals off: frames of the journal code hold DSNs with passwords.
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        ),
        structlog.processors.JSONRenderer(serializer=_dumps),
    ]


def configure_logging(stream: TextIO = sys.stderr, *, cache_loggers: bool = False) -> None:
    """Configure structlog and the stdlib root logger to write to ``stream``.

    JSON lines when ``stream`` is not a TTY, a coloured console view when it is.
    structlog events at INFO and above are written; stdlib records (libraries) at
    WARNING and above. ``cache_loggers`` (``serve``: one log line per snapshot
    attempt) makes each logger assemble its chain once instead of on every line;
    left off, ``structlog.testing.capture_logs`` keeps working after this call.
    """
    tty = stream.isatty()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
    ]
    structlog.configure(
        processors=[*shared, *_renderers(tty)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=cache_loggers,
    )

    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderers(tty),
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
