"""The Python clients: a typed method for every op, one exception type with SPEC codes."""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from snapshotd.api import server
from snapshotd.api.client import AsyncClient, Client, ClientError
from snapshotd.api.client_ops import OpMethods
from snapshotd.api.ops import OPS
from snapshotd.config import load_config
from snapshotd.runtime import open_daemon

pytestmark = pytest.mark.anyio


@pytest.fixture
def sock_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="sd-cl-")  # a unix socket path stays under 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def served(sock_dir: str) -> AsyncIterator[str]:
    config = load_config(
        None,
        {
            "SNAPSHOTD_SOCKET_PATH": os.path.join(sock_dir, "s.sock"),
            "SNAPSHOTD_INSTANCES__DEFAULT__JOURNAL": "memory:",
            "SNAPSHOTD_INSTANCES__DEFAULT__SNAPSHOT_THRESHOLD": "infinity",
        },
    )
    async with open_daemon(config) as daemon, anyio.create_task_group() as tg:
        await tg.start(server.serve, daemon, config.socket)
        yield config.socket.path
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()


def test_every_op_has_a_typed_method() -> None:
    methods = {
        name
        for name, _ in inspect.getmembers(OpMethods, inspect.isfunction)
        if not name.startswith("_")
    }
    assert methods == set(OPS)


async def test_missing_socket_is_unavailable(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "nothing.sock")
    with pytest.raises(ClientError) as sync_error:
        Client(path, timeout=1).ping()
    async with AsyncClient(path) as client:
        with pytest.raises(ClientError) as async_error:
            await client.ping()
    for error in (sync_error.value, async_error.value):
        assert error.code == "unavailable"
        assert path in error.message
        assert error.details == {}


async def test_a_connection_lost_mid_call_is_unavailable_with_unknown_outcome(
    sock_dir: str,
) -> None:
    path = os.path.join(sock_dir, "hangup.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()

    def hang_up_after_reading() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=hang_up_after_reading)
    thread.start()
    try:
        with Client(path, timeout=5) as client, pytest.raises(ClientError) as info:
            client.append("r", [{"type": "t", "data": 1}])
    finally:
        thread.join(5)
        listener.close()
    assert info.value.code == "unavailable"
    assert info.value.details == {"outcome": "unknown"}


async def test_typed_methods_walk_through_a_restore(served: str) -> None:
    async with AsyncClient(served) as client:
        assert await client.ping() == {"pong": True}
        assert await client.create_run("r", "wf", "v1", lease="me") == {"created": True}
        events = [{"type": "step", "data": {"n": n}} for n in range(3)]
        assert await client.append("r", events, expected_seq=0, lease="me") == {"last_seq": 3}
        safety = await client.snapshot_now("r", kind="safety", label="before-upgrade")
        assert safety["status"] == "taken"
        assert await client.set_version("r", "v2") == {}
        await client.append("r", [{"type": "risky", "data": None}], lease="me")
        restored = await client.load("r", snapshot_id=safety["snapshot_id"])
        assert restored["snapshot"]["version"] == "v1"
        assert [e["type"] for e in restored["events"]] == ["risky"]
        (listed,) = (await client.list_snapshots("r"))["snapshots"]
        assert listed["label"] == "before-upgrade"
        runs = await client.list_runs(workflow="wf", limit=10)
        assert [row["run_id"] for row in runs["runs"]] == ["r"]
        assert await client.pin("r", safety["snapshot_id"]) == {}
        assert await client.unpin("r", safety["snapshot_id"]) == {}
        assert (await client.verify("r"))["checked"] == 1
        assert (await client.audit(limit=1))["has_more"] is True
        assert await client.snapshot("r") == {"status": "queued"}
        assert await client.set_lease("r", None, expected="me") == {}
        assert "default" in (await client.status())["instances"]
        with pytest.raises(ClientError) as missing:
            await client.load("r", snapshot_id="nope")
        assert missing.value.code == "not_found"

        await client.savepoint_init("r", start_ms=0, interval_ms=10, entities={"a": 0})
        await client.savepoint_save("r", "a", 5, 1)
        await client.savepoint_ack("r", "a", 25)
        assert await client.savepoint_load("r") == {"timestamp_ms": 20, "entities": {"a": 1}}
        assert await client.savepoint_load("r", resume=True) == {
            "timestamp_ms": 20,
            "entities": {"a": 1},
        }


async def test_blocking_client_methods(served: str) -> None:
    def use() -> None:
        with Client(served, timeout=5) as client:
            assert client.create_run("b", "wf", "v1") == {"created": True}
            with pytest.raises(ClientError) as conflict:
                client.append("b", [{"type": "t", "data": 1}], expected_seq=4)
            assert conflict.value.code == "conflict"
            assert conflict.value.details == {"last_seq": 0}
            assert client.list_runs(after="a")["runs"][0]["run_id"] == "b"

    await anyio.to_thread.run_sync(use)
