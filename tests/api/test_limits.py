"""The limits that keep one client from hurting the others (SPEC section 2), in process
over a real unix socket: connection cap, idle timeout, buffered bytes, back-pressure,
strict fields and rate-limited rejection logs."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest
from structlog.testing import capture_logs

from snapshotd.api import ops, server
from snapshotd.api.client import AsyncClient, ClientError
from snapshotd.api.limits import LOG_LINES_PER_S
from snapshotd.config import Config
from snapshotd.runtime import open_daemon
from tests.api.test_server import Raw, Served, _config, _stop, served, sock_dir

pytestmark = pytest.mark.anyio
__all__ = ["served", "sock_dir"]


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[Served]:
    async with open_daemon(config) as daemon, anyio.create_task_group() as tg:
        await tg.start(server.serve, daemon, config.socket)
        yield Served(daemon, config, config.socket.path)
        await _stop(tg)


async def ping(path: str) -> dict[str, Any]:
    async with AsyncClient(path) as client:
        with anyio.fail_after(5):
            result: dict[str, Any] = await client.call("ping")
            return result


# connections ---------------------------------------------------------------------------


async def test_beyond_max_connections_one_unavailable_line_then_close(sock_dir: str) -> None:
    config = _config(sock_dir, max_connections=2)
    async with serving(config) as served, Raw(served.path) as first, Raw(served.path) as second:
        await anyio.wait_all_tasks_blocked()
        async with Raw(served.path) as third:
            assert await third.closed()
            lines = third.buffer.splitlines()
            assert len(lines) == 1
            reply = orjson.loads(lines[0])
            assert reply["id"] is None and reply["ok"] is False
            assert reply["error"]["code"] == "unavailable"
            assert "max_connections" in reply["error"]["message"]
        for raw in (first, second):
            await raw.send(b'{"op": "ping", "id": 1}\n')
            assert (await raw.line())["result"] == {"pong": True}


async def test_idle_connections_no_longer_lock_everyone_out(sock_dir: str) -> None:
    # The issue: connections that send nothing held every slot, and new clients'
    # pings failed for good. Now they are closed after idle_timeout_s.
    config = _config(sock_dir, max_connections=20, idle_timeout_s=0.3)
    async with serving(config) as served:
        idle = [socket.socket(socket.AF_UNIX) for _ in range(20)]
        try:
            for sock in idle:
                sock.connect(served.path)
            await anyio.sleep(0.05)
            async with Raw(served.path) as refused:
                assert await refused.closed()
                assert b'"unavailable"' in refused.buffer
            await anyio.sleep(0.6)
            assert await ping(served.path) == {"pong": True}
            for sock in idle:
                sock.settimeout(5)
                assert sock.recv(100) == b""  # closed by the daemon, without a word
        finally:
            for sock in idle:
                sock.close()


async def test_a_trickled_half_line_counts_as_idle(sock_dir: str) -> None:
    async with serving(_config(sock_dir, idle_timeout_s=0.3)) as served, Raw(served.path) as raw:
        with anyio.fail_after(5):
            closed = False
            while not closed:
                try:
                    await raw.send(b" ")
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    closed = True
                await anyio.sleep(0.05)


async def test_an_active_connection_outlives_the_idle_timeout(sock_dir: str) -> None:
    config = _config(sock_dir, idle_timeout_s=0.3)
    async with serving(config) as served, served.client() as client:
        for _ in range(8):
            assert await client.call("ping") == {"pong": True}
            await anyio.sleep(0.1)


async def test_idle_timeout_zero_keeps_idle_connections(sock_dir: str) -> None:
    async with serving(_config(sock_dir, idle_timeout_s=0)) as served, Raw(served.path) as raw:
        await anyio.sleep(0.5)
        await raw.send(b'{"op": "ping", "id": 1}\n')
        assert (await raw.line())["ok"]


async def test_buffered_half_lines_are_bounded_across_connections(sock_dir: str) -> None:
    config = _config(sock_dir, max_frame_bytes=60_000, max_buffered_bytes=100_000)
    async with serving(config) as served, Raw(served.path) as longer, Raw(served.path) as shorter:
        await longer.send(b'{"pad": "' + b"x" * 55_000)
        await anyio.sleep(0.1)
        await shorter.send(b'{"op": "ping", "id": 2, "pad": "' + b"y" * 50_000)
        assert await longer.closed()
        reply = orjson.loads(longer.buffer)
        assert reply["id"] is None
        assert reply["error"]["code"] == "too_large"
        assert "max_buffered_bytes" in reply["error"]["message"]
        # The connection with the shorter line is untouched and completes its request.
        await shorter.send(b'"}\n{"op": "ping", "id": 3}\n')
        assert (await shorter.line())["id"] == 2
        assert (await shorter.line())["result"] == {"pong": True}
        assert await ping(served.path) == {"pong": True}


async def test_a_client_that_does_not_read_is_not_read_from(sock_dir: str) -> None:
    config = _config(sock_dir, idle_timeout_s=0)
    async with serving(config) as served:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(served.path)
        sock.setblocking(False)
        request = b'{"op": "status", "id": 1}\n' * 1000
        sent = 0
        try:
            with anyio.fail_after(20):
                while True:
                    try:
                        sent += sock.send(request)
                    except BlockingIOError:
                        # Both socket buffers are full: the daemon stopped reading.
                        await anyio.sleep(0.2)
                        try:
                            sent += sock.send(request)
                        except BlockingIOError:
                            break
                    await anyio.sleep(0)
            assert sent < 200 * 1024 * 1024
            assert await ping(served.path) == {"pong": True}
        finally:
            sock.close()


# strict requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "fields", "named"),
    [
        ("ping", {"pad": 1}, "pad"),
        ("status", {"verbose": True}, "verbose"),
        ("create_run", {"run": "r", "workflow": "w", "version": "v", "leas": "x"}, "leas"),
        ("append", {"run": "r", "events": [{"type": "t", "data": 1}], "expect_seq": 0}, "expect"),
        ("append", {"run": "r", "events": [{"type": "t", "data": 1, "seq": 4}]}, "seq"),
        ("append", {"run": "r", "events": [{"type": "t", "dat": 1}]}, "dat"),
        ("snapshot_now", {"run": "r", "forced": True}, "forced"),
        ("load", {"run": "r", "after": 3}, "after"),
        ("audit", {"cursor": 0, "page": 2}, "page"),
        ("savepoint_save", {"run": "r", "entity": "e", "timestamp_ms": 1, "stat": {}}, "stat"),
    ],
)
async def test_a_field_the_op_does_not_define_is_named(
    served: Served, op: str, fields: dict[str, Any], named: str
) -> None:
    async with served.client() as client:
        with pytest.raises(ClientError) as info:
            await client.call(op, **fields)
    assert info.value.code == "bad_request"
    assert repr(named) in info.value.message or f"'{named}" in info.value.message


async def test_snapshot_with_an_unknown_field_is_rejected_not_queued(served: Served) -> None:
    async with served.client() as client:
        with pytest.raises(ClientError, match="unknown field 'runn'"):
            await client.call("snapshot", runn="r")
        assert await client.call("snapshot", run="r", lease="l") == {"status": "queued"}


async def test_the_fields_of_this_revision_are_not_unknown(served: Served) -> None:
    async with served.client() as client:
        await client.call("create_run", run="r", workflow="w", version="v")
        await client.call("append", run="r", events=[{"type": "t", "data": 1}])
        for op, fields in (
            ("snapshot_now", {"run": "r", "label": "before-migration-42"}),
            ("load", {"run": "r", "snapshot_id": "0190e8a0-0000-7000-8000-000000000000"}),
            ("savepoint_load", {"run": "r", "resume": False}),
            ("list_runs", {"after": "a", "limit": 5, "workflow": "w"}),
        ):
            try:
                await client.call(op, **fields)
            except ClientError as exc:
                assert "unknown field" not in exc.message
        with pytest.raises(ClientError, match="unknown field 'cursor' for op list_runs"):
            await client.call("list_runs", cursor="a")


def test_every_op_has_its_fields() -> None:
    assert set(ops.OPS) <= set(ops.FIELDS)


@pytest.mark.parametrize("levels", [252, 253, 254, 300, 990, 1020, 1900])
async def test_deep_event_data_is_refused_and_the_run_stays_healthy(
    served: Served, levels: int
) -> None:
    # 252-253 levels were accepted, then every snapshot of the run failed for good.
    data = b"[" * (levels - 3) + b"]" * (levels - 3)
    async with served.client() as client, Raw(served.path) as raw:
        await client.call("create_run", run="deep", workflow="w", version="v")
        await raw.send(
            b'{"op":"append","id":9,"run":"deep","events":[{"type":"t","data":' + data + b"}]}\n"
        )
        reply = await raw.line()
        assert reply["id"] == 9
        assert reply["error"]["code"] == "bad_request"
        await client.call("append", run="deep", events=[{"type": "t", "data": [[1]]}])
        taken = await client.call("snapshot_now", run="deep", force=True)
        assert taken["status"] == "taken"


@pytest.mark.parametrize("levels", [250, 300])
async def test_deep_savepoint_states_are_bad_requests(served: Served, levels: int) -> None:
    state = b"[" * (levels - 1) + b"]" * (levels - 1)
    async with served.client() as client, Raw(served.path) as raw:
        await client.call("create_run", run="sp", workflow="w", version="v")
        await raw.send(
            b'{"op":"savepoint_init","id":1,"run":"sp","start_ms":0,"interval_ms":10,'
            b'"entities":{"e":' + state + b"}}\n"
        )
        assert (await raw.line())["error"]["code"] == "bad_request"
        await client.call("savepoint_init", run="sp", start_ms=0, interval_ms=10, entities={"e": 0})
        await raw.send(
            b'{"op":"savepoint_save","id":2,"run":"sp","entity":"e","timestamp_ms":5,'
            b'"state":' + state + b"}\n"
        )
        assert (await raw.line())["error"]["code"] == "bad_request"


# logs ----------------------------------------------------------------------------------


async def test_rejected_fire_and_forget_requests_are_logged_at_a_bounded_rate(
    served: Served,
) -> None:
    # 200,000 unknown ops once wrote 37 MB of warnings in 1.9 s.
    with capture_logs() as logs:
        async with Raw(served.path) as raw:
            await raw.send(b'{"op": "nope"}\n' * 5000 + b'{"op": "ping", "id": 1}\n')
            assert (await raw.line())["id"] == 1
    rejected = [entry for entry in logs if entry["event"] == "request_rejected"]
    assert 1 <= len(rejected) <= 3 * LOG_LINES_PER_S
    assert rejected[0]["code"] == "unknown_op"
