"""The socket server in-process, over a real unix socket, with memory-journal instances."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import anyio
import orjson
import pytest

from snapshotd.api import ops, server
from snapshotd.api.client import AsyncClient, ClientError
from snapshotd.config import Config, load_config
from snapshotd.domain.errors import BadRequest
from snapshotd.runtime import Daemon, open_daemon

pytestmark = pytest.mark.anyio


@dataclass
class Served:
    daemon: Daemon
    config: Config
    path: str

    def client(self) -> AsyncClient:
        return AsyncClient(self.path)


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # Short paths: a unix socket path must stay under 108 bytes.
    path = tempfile.mkdtemp(prefix="sd-api-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _config(sock_dir: str, **socket_overrides: Any) -> Config:
    config = load_config(
        None,
        {
            "SNAPSHOTD_SOCKET_PATH": os.path.join(sock_dir, "s.sock"),
            "SNAPSHOTD_INSTANCES__DEFAULT__JOURNAL": "memory:",
            "SNAPSHOTD_INSTANCES__DEFAULT__SNAPSHOT_THRESHOLD": "10",
            "SNAPSHOTD_INSTANCES__OTHER__JOURNAL": "memory:",
            "SNAPSHOTD_WORKFLOWS__KV__REDUCER": "last_by_key",
        },
    )
    return replace(config, socket=replace(config.socket, **socket_overrides))


@pytest.fixture
async def served(sock_dir: str) -> AsyncIterator[Served]:
    config = _config(sock_dir, max_frame_bytes=4096, max_connections=8)
    async with open_daemon(config) as daemon, anyio.create_task_group() as tg:
        await tg.start(server.serve, daemon, config.socket)
        yield Served(daemon, config, config.socket.path)
        await _stop(tg)


async def _stop(tg: anyio.abc.TaskGroup) -> None:
    # Let connection handlers see their peers' close first: cancelling a socket read
    # in the same tick makes asyncio log InvalidStateError (STYLE.md pitfall).
    await anyio.wait_all_tasks_blocked()
    tg.cancel_scope.cancel()


class Raw:
    """A plain socket, for frames a well-behaved client never sends."""

    def __init__(self, path: str) -> None:
        self.stream: Any = None
        self.path = path
        self.buffer = b""

    async def __aenter__(self) -> Raw:
        self.stream = await anyio.connect_unix(self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def line(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            while b"\n" not in self.buffer:
                self.buffer += await self.stream.receive()
        line, self.buffer = self.buffer.split(b"\n", 1)
        result: dict[str, Any] = orjson.loads(line)
        return result

    async def closed(self) -> bool:
        """True when the server closes the connection (after any buffered lines)."""
        with anyio.fail_after(5):
            try:
                while True:
                    self.buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return True


async def _error_code(client: AsyncClient, op: str, **fields: Any) -> str:
    with pytest.raises(ClientError) as info:
        await client.call(op, **fields)
    return info.value.code


async def test_ping_and_status(served: Served) -> None:
    async with served.client() as client:
        assert await client.call("ping") == {"pong": True}
        status = await client.call("status")
    assert set(status["instances"]) == {"default", "other"}
    assert status["instances"]["default"]["journal"] == "memory:"


async def test_run_lifecycle_over_the_socket(served: Served) -> None:
    async with served.client() as client:
        assert await client.call("create_run", run="r1", workflow="kv", version="v1") == {
            "created": True
        }
        assert await client.call("create_run", run="r1", workflow="kv", version="v1") == {
            "created": False
        }
        events = [{"type": "put", "data": {"key": f"k{i % 2}", "value": i}} for i in range(5)]
        assert await client.call("append", run="r1", events=events, expected_seq=0) == {
            "last_seq": 5
        }
        taken = await client.call("snapshot_now", run="r1", force=True)
        assert taken["status"] == "taken"
        assert taken["through_seq"] == 5
        loaded = await client.call("load", run="r1")
        assert loaded["snapshot"]["state"] == {"k0": 4, "k1": 3}
        assert loaded["events"] == []
        assert loaded["next_after"] == 5
        page = await client.call("load", run="r1", after_seq=3, limit=1)
        assert page["snapshot"] is None
        assert [e["seq"] for e in page["events"]] == [4]
        assert page["has_more"] is True
        snaps = (await client.call("list_snapshots", run="r1"))["snapshots"]
        assert len(snaps) == 1
        assert "state" not in snaps[0]
        sid = snaps[0]["snapshot_id"]
        assert await client.call("pin", run="r1", snapshot_id=sid) == {}
        assert (await client.call("list_snapshots", run="r1"))["snapshots"][0]["pinned"]
        assert await client.call("unpin", run="r1", snapshot_id=sid) == {}
        assert await client.call("verify", run="r1") == {"checked": 1, "corrupt": [], "drift": []}
        assert await client.call("set_version", run="r1", version="v2") == {}
        assert (await client.call("load", run="r1"))["snapshot"] is None
        audit = await client.call("audit", limit=1000)
        kinds = [entry["kind"] for entry in audit["events"]]
        assert "snapshot_pinned" in kinds
        assert audit["has_more"] is False


async def test_leases(served: Served) -> None:
    async with served.client() as client:
        await client.call("create_run", run="l", workflow="w", version="v", lease="a")
        event = [{"type": "t", "data": 1}]
        assert await _error_code(client, "append", run="l", events=event) == "stale_lease"
        # stale_lease is checked before expected_seq
        code = await _error_code(client, "append", run="l", events=event, expected_seq=9)
        assert code == "stale_lease"
        assert await client.call("append", run="l", events=event, lease="a") == {"last_seq": 1}
        code = await _error_code(client, "set_lease", run="l", lease="b", expected="x")
        assert code == "conflict"
        assert await client.call("set_lease", run="l", lease="b", expected="a") == {}
        assert await client.call("set_lease", run="l", lease=None) == {}
        assert await client.call("append", run="l", events=event, expected_seq=1) == {"last_seq": 2}
        # a run without a lease accepts any request
        taken = await client.call("snapshot_now", run="l", force=True, lease="zzz")
        assert taken["status"] == "taken"
        assert await client.call("set_lease", run="l", lease="c") == {}
        await client.call("append", run="l", events=event, lease="c")
        skipped = await client.call("snapshot_now", run="l", force=True, lease="zzz")
        assert skipped == {"status": "skipped", "reason": "stale_lease"}


async def test_error_codes(served: Served) -> None:
    async with served.client() as client:
        assert await _error_code(client, "frobnicate") == "unknown_op"
        assert await _error_code(client, "load", run="x", instance="nope") == "unknown_instance"
        assert await _error_code(client, "snapshot", run="x", instance="nope") == (
            "unknown_instance"
        )
        assert await _error_code(client, "load", run="missing") == "not_found"
        assert await _error_code(client, "set_version", run="missing", version="v") == ("not_found")
        await client.call("create_run", run="c", workflow="w1", version="v")
        assert await _error_code(client, "create_run", run="c", workflow="w2", version="v") == (
            "conflict"
        )
        await client.call("append", run="c", events=[{"type": "t", "data": None}])
        assert await _error_code(
            client, "append", run="c", events=[{"type": "t", "data": 1}], expected_seq=0
        ) == ("conflict")
        # the other instance is a separate journal
        assert await _error_code(client, "load", run="c", instance="other") == "not_found"


@pytest.mark.parametrize(
    ("op", "fields", "named"),
    [
        ("create_run", {"run": 5, "workflow": "w", "version": "v"}, "run"),
        ("create_run", {"run": "", "workflow": "w", "version": "v"}, "run"),
        ("create_run", {"run": "a\nb", "workflow": "w", "version": "v"}, "run"),
        ("create_run", {"run": "r", "workflow": "w" * 129, "version": "v"}, "workflow"),
        ("create_run", {"run": "r", "workflow": "w", "version": None}, "version"),
        ("create_run", {"run": "r", "workflow": "w", "version": "v", "lease": ""}, "lease"),
        ("append", {"run": "r", "events": []}, "events"),
        ("append", {"run": "r", "events": {"type": "t"}}, "events"),
        ("append", {"run": "r", "events": [{"type": "t"}]}, "events[0].data"),
        ("append", {"run": "r", "events": [{"type": 1, "data": 1}]}, "events[0].type"),
        ("append", {"run": "r", "events": [1]}, "events[0]"),
        ("append", {"run": "r", "events": [{"type": "t", "data": 1}], "expected_seq": -1}, "seq"),
        ("append", {"run": "r", "events": [{"type": "t", "data": 1}], "expected_seq": "1"}, "seq"),
        ("set_lease", {"run": "r"}, "lease"),
        ("snapshot", {"run": None}, "run"),
        ("snapshot", {"run": "r", "lease": 3}, "lease"),
        ("snapshot_now", {"run": "r", "force": "yes"}, "force"),
        ("snapshot_now", {"run": "r", "kind": "auto"}, "kind"),
        ("load", {"run": "r", "limit": 0}, "limit"),
        ("load", {"run": "r", "limit": 100_001}, "limit"),
        ("load", {"run": "r", "after_seq": True}, "after_seq"),
        ("pin", {"run": "r", "snapshot_id": 7}, "snapshot_id"),
        ("audit", {"limit": 1001}, "limit"),
        ("audit", {"cursor": -1}, "cursor"),
    ],
)
async def test_invalid_fields_are_bad_requests_naming_the_field(
    served: Served, op: str, fields: dict[str, Any], named: str
) -> None:
    async with served.client() as client:
        with pytest.raises(ClientError) as info:
            await client.call(op, **fields)
    assert info.value.code == "bad_request"
    assert named in info.value.message


async def test_append_holds_at_most_10000_events(served: Served) -> None:
    request = {"instance": "default", "run": "r", "events": [{"type": "t", "data": 1}] * 10_001}
    with pytest.raises(BadRequest, match="events must hold 1-10000"):
        await ops.OPS["append"](served.daemon, request)


async def test_fire_and_forget_gets_no_response_and_pipelining_keeps_order(
    served: Served,
) -> None:
    async with Raw(served.path) as raw:
        frames = [
            b'{"op": "snapshot", "run": "ff"}',
            b'{"op": "bogus"}',
            b'{"op": "ping", "id": "a"}',
            b'{"op": "create_run", "run": "p", "workflow": "w", "version": "v"}',
            b'{"op": "load", "run": "p", "id": 2}',
            b'{"op": "ping", "id": 3}',
        ]
        await raw.send(b"\n".join(frames) + b"\n")
        assert (await raw.line())["id"] == "a"
        loaded = await raw.line()
        assert loaded["id"] == 2
        assert loaded["ok"] is True
        assert (await raw.line())["id"] == 3
    status = served.daemon.status()["instances"]["default"]
    handled = status["taken"] + sum(status["skipped"].values()) + status["coalesced"]
    assert handled + status["queue_depth"] >= 1


async def test_bad_lines_are_answered_and_the_connection_stays_open(served: Served) -> None:
    async with Raw(served.path) as raw:
        for line in (b"not json", b"[1,2]", b'"x"', b'{"op": "ping", "x": "\xff"}', b"\x00\x01"):
            await raw.send(line + b"\n")
            reply = await raw.line()
            assert reply["id"] is None
            assert reply["error"]["code"] == "bad_request"
        await raw.send(b'{"op": "ping", "id": true}\n')
        assert (await raw.line())["error"]["code"] == "bad_request"
        await raw.send(b'{"op": "ping", "id": 1}\r\n\n')
        assert (await raw.line()) == {"id": 1, "ok": True, "result": {"pong": True}}


async def test_out_of_range_integer_is_rejected_not_altered(served: Served) -> None:
    async with Raw(served.path) as raw:
        await raw.send(
            b'{"op": "create_run", "id": 1, "run": "big", "workflow": "w", "version": "v"}\n'
        )
        assert (await raw.line())["ok"]
        await raw.send(
            b'{"op": "append", "id": 2, "run": "big", '
            b'"events": [{"type": "t", "data": 9223372036854775808}]}\n'
        )
        reply = await raw.line()
        assert reply["error"]["code"] == "bad_request"
        await raw.send(b'{"op": "load", "id": 3, "run": "big"}\n')
        assert (await raw.line())["result"]["events"] == []


async def test_too_large_frame_closes_only_that_connection(served: Served) -> None:
    async with served.client() as bystander, Raw(served.path) as raw:
        assert await bystander.call("ping") == {"pong": True}
        await raw.send(b'{"op": "ping", "id": 1}\n{"op": "ping", "pad": "' + b"x" * 5000 + b'"}\n')
        assert (await raw.line())["id"] == 1
        reply = await raw.line()
        assert reply["id"] is None
        assert reply["error"]["code"] == "too_large"
        assert await raw.closed()
        assert await bystander.call("ping") == {"pong": True}


async def test_too_large_partial_line_without_newline(served: Served) -> None:
    async with Raw(served.path) as raw:
        await raw.send(b"x" * 10_000)
        assert (await raw.line())["error"]["code"] == "too_large"
        assert await raw.closed()


async def test_client_error_for_too_large_call(served: Served) -> None:
    async with served.client() as client:
        code = await _error_code(client, "ping", pad="y" * 5000)
    assert code == "too_large"


async def test_disconnect_mid_line_and_random_bytes_do_not_hurt(served: Served) -> None:
    for payload in (b'{"op": "ping", "id"', os.urandom(3000), b"\xff" * 100 + b"\n" + b"{" * 50):
        async with Raw(served.path) as raw:
            await raw.send(payload)
    async with served.client() as client:
        assert await client.call("ping") == {"pong": True}


async def test_handler_bug_answers_internal_and_keeps_serving(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(daemon: Daemon, req: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setitem(ops.OPS, "verify", broken)
    async with served.client() as client:
        assert await _error_code(client, "verify", run="r") == "internal"
        assert await client.call("ping") == {"pong": True}


async def test_socket_file_mode_and_refusal_of_a_second_server(served: Served) -> None:
    assert stat.S_IMODE(os.stat(served.path).st_mode) == 0o600
    with pytest.raises(server.SocketInUse, match="in use"):
        server.bind(served.config.socket)
    async with served.client() as client:
        assert await client.call("ping") == {"pong": True}


async def test_stale_socket_is_replaced_and_removed_on_shutdown(sock_dir: str) -> None:
    config = _config(sock_dir, mode=0o660)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(config.socket.path)
    stale.close()
    async with open_daemon(config) as daemon, anyio.create_task_group() as tg:
        await tg.start(server.serve, daemon, config.socket)
        assert stat.S_IMODE(os.stat(config.socket.path).st_mode) == 0o660
        async with AsyncClient(config.socket.path) as client:
            assert await client.call("ping") == {"pong": True}
        await _stop(tg)
    assert not os.path.exists(config.socket.path)


async def test_a_non_socket_file_is_never_replaced(sock_dir: str) -> None:
    config = _config(sock_dir)
    with open(config.socket.path, "w") as handle:
        handle.write("keep me")
    with pytest.raises(server.SocketInUse, match="not a socket"):
        server.bind(config.socket)


async def test_connection_cap(sock_dir: str) -> None:
    config = _config(sock_dir, max_connections=1)
    async with open_daemon(config) as daemon, anyio.create_task_group() as tg:
        await tg.start(server.serve, daemon, config.socket)
        async with AsyncClient(config.socket.path) as first:
            assert await first.call("ping") == {"pong": True}
            async with Raw(config.socket.path) as second:
                assert await second.closed()
            assert await first.call("ping") == {"pong": True}
        await _stop(tg)


async def test_allowed_uids_refuses_other_users(sock_dir: str) -> None:
    config = _config(sock_dir, allowed_uids=(os.getuid() + 1,))
    async with open_daemon(config) as daemon, anyio.create_task_group() as tg:
        await tg.start(server.serve, daemon, config.socket)
        async with Raw(config.socket.path) as raw:
            await raw.send(b'{"op": "ping", "id": 1}\n')
            assert await raw.closed()
            assert raw.buffer == b""
        await _stop(tg)
    config = _config(sock_dir, allowed_uids=(os.getuid(),))
    async with open_daemon(config) as daemon, anyio.create_task_group() as tg:
        await tg.start(server.serve, daemon, config.socket)
        async with AsyncClient(config.socket.path) as client:
            assert await client.call("ping") == {"pong": True}
        await _stop(tg)
