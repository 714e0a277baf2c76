"""The socket server's own metrics (SPEC section 6): ``snapshotd.connections``,
``snapshotd.connections.refused`` and ``snapshotd.request.duration``, recorded by a
server in process over a real unix socket."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

from snapshotd.api import server
from snapshotd.api.client import AsyncClient
from snapshotd.config import Config, load_config
from snapshotd.runtime import open_daemon
from tests.telemetry.conftest import Captured
from tests.telemetry.test_instruments import values

pytestmark = pytest.mark.anyio


@pytest.fixture
def sock_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="sd-met-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _config(sock_dir: str, **socket: str) -> Config:
    env = {
        "SNAPSHOTD_SOCKET_PATH": os.path.join(sock_dir, "s.sock"),
        "SNAPSHOTD_INSTANCES__DEFAULT__JOURNAL": "memory:",
    }
    env.update({f"SNAPSHOTD_SOCKET_{key.upper()}": value for key, value in socket.items()})
    return load_config(None, env)


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[str]:
    async with open_daemon(config) as daemon, anyio.create_task_group() as tg:
        await tg.start(server.serve, daemon, config.socket)
        yield config.socket.path
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()


def refused(found: dict[str, Any]) -> dict[str, int]:
    return {
        dict(key)["reason"]: count
        for key, count in values(found["snapshotd.connections.refused"]).items()
    }


async def test_open_connections_and_request_durations(otel: Captured, sock_dir: str) -> None:
    async with (
        serving(_config(sock_dir)) as path,
        AsyncClient(path) as first,
        AsyncClient(path) as second,
    ):
        assert await first.call("ping") == {"pong": True}
        await second.call("snapshot", run="r")
        found = otel.metrics()
        connections = found["snapshotd.connections"]
        assert isinstance(connections.data, Gauge)
        assert connections.unit == "{connection}"
        assert values(connections) == {(("snapshotd.instance", "-"),): 2}
        duration = found["snapshotd.request.duration"]
        assert isinstance(duration.data, Histogram)
        assert duration.unit == "s"
        assert values(duration) == {
            (("op", "ping"), ("snapshotd.instance", "default")): 1,
            (("op", "snapshot"), ("snapshotd.instance", "default")): 1,
        }
        assert all(0 < point.sum < 5 for point in duration.data.data_points)
        counter = found["snapshotd.connections.refused"]
        assert isinstance(counter.data, Sum) and counter.data.is_monotonic
        assert refused(found) == {
            "max_connections": 0,
            "uid_not_allowed": 0,
            "idle_timeout": 0,
            "buffer_limit": 0,
        }


async def test_each_refusal_is_counted_with_its_reason(otel: Captured, sock_dir: str) -> None:
    config = _config(sock_dir, max_connections="1", idle_timeout_s="0.2", max_buffered_bytes="1000")
    async with serving(config) as path:
        first = await anyio.connect_unix(path)
        async with await anyio.connect_unix(path) as second:
            with anyio.fail_after(5):
                assert b"unavailable" in await second.receive()
        await first.send(b"x" * 2000)
        with anyio.fail_after(5):
            assert b"too_large" in await first.receive()
        await first.aclose()
        async with await anyio.connect_unix(path) as idle:
            with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
                await idle.receive()
    counts = refused(otel.metrics())
    assert counts["max_connections"] == 1
    assert counts["buffer_limit"] == 1
    assert counts["idle_timeout"] == 1
