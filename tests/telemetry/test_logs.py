"""Log lines: JSON shape, stdlib routing, trace ids, and no local variables in tracebacks."""

from __future__ import annotations

import io
import logging
from typing import Any

import orjson
import pytest
import structlog

from snapshotd.telemetry.instruments import instance_telemetry
from snapshotd.telemetry.logs import configure_logging
from tests.telemetry.conftest import Captured, record_skipped, record_taken

pytestmark = pytest.mark.usefixtures("restore_logging")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_snapshot_lines_are_json_with_the_spec_keys(otel: Captured) -> None:
    stream = io.StringIO()
    configure_logging(stream)
    tel = instance_telemetry("default")
    record_taken(tel, "run-1")
    record_skipped(tel, "run-2", "below_threshold")
    taken, skipped = lines(stream)
    spans = {s.attributes["snapshotd.run_id"]: s for s in otel.finished_spans() if s.attributes}
    for line, run_id, reason in ((taken, "run-1", None), (skipped, "run-2", "below_threshold")):
        assert line["run_id"] == run_id
        assert line["instance"] == "default"
        assert line["reason"] == reason
        assert line["trace_id"] == format(spans[run_id].context.trace_id, "032x")
        assert line["span_id"] == format(spans[run_id].context.span_id, "016x")
        assert line["level"] == "info"
        assert str(line["timestamp"]).endswith("Z")
    assert taken["event"] == "snapshot_taken"
    assert skipped["event"] == "snapshot_skipped"


def test_context_variables_are_merged() -> None:
    stream = io.StringIO()
    configure_logging(stream)
    with structlog.contextvars.bound_contextvars(connection=7):
        structlog.get_logger().info("hello")
    (line,) = lines(stream)
    assert line["connection"] == 7
    assert "trace_id" not in line


def test_stdlib_records_go_through_structlog_at_warning_and_above() -> None:
    stream = io.StringIO()
    configure_logging(stream)
    library = logging.getLogger("asyncpg.pool")
    library.info("chatty")
    library.warning("connection lost to %s", "db")
    (line,) = lines(stream)
    assert line["event"] == "connection lost to db"
    assert line["logger"] == "asyncpg.pool"
    assert line["level"] == "warning"
    assert "timestamp" in line


def test_configuring_twice_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(first)
    configure_logging(second)
    logging.getLogger("anyio").error("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_tracebacks_never_show_local_variables() -> None:
    stream = io.StringIO()
    configure_logging(stream)

    def connect() -> None:
        dsn = "postgresql://app:hunter2@db/prod"
        raise ConnectionError(f"cannot reach {dsn.split('@')[1]}")

    try:
        connect()
    except ConnectionError:
        structlog.get_logger().exception("journal_down")
    try:
        connect()
    except ConnectionError:
        logging.getLogger("asyncpg").exception("pool error")
    first, second = lines(stream)
    assert "hunter2" not in stream.getvalue()
    for line in (first, second):
        (exc,) = line["exception"]
        assert exc["exc_type"] == "ConnectionError"
        assert exc["frames"][-1]["name"] == "connect"


def test_console_renderer_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    configure_logging(stream)
    structlog.get_logger().info("snapshot_taken", run_id="r1")
    text = stream.getvalue()
    assert "snapshot_taken" in text
    assert "run_id" in text
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
