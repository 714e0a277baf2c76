"""Every op and error code against a real ``snapshotd serve`` process over its real socket."""

from __future__ import annotations

import os
import stat
import uuid
from typing import Any

import pytest

from snapshotd.api.client import Client, ClientError
from tests.e2e.daemon import DaemonProcess, read_line
from tests.support import wait_for

EVENT = [{"type": "t", "data": {"n": 1}}]


def _new_run(client: Client, workflow: str = "wf", **fields: Any) -> str:
    run = f"run-{uuid.uuid4().hex[:12]}"
    assert client.call("create_run", run=run, workflow=workflow, version="v1", **fields) == {
        "created": True
    }
    return run


def _code(client: Client, op: str, **fields: Any) -> str:
    with pytest.raises(ClientError) as info:
        client.call(op, **fields)
    return info.value.code


def test_every_op(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        assert c.call("ping") == {"pong": True}
        run = _new_run(c, "kv")
        events = [{"type": "put", "data": {"key": f"k{i % 3}", "value": i}} for i in range(12)]
        assert c.call("append", run=run, events=events, expected_seq=0) == {"last_seq": 12}
        assert c.call("snapshot", run=run)["status"] in ("queued", "coalesced")
        taken = c.call("snapshot_now", run=run, force=True, kind="safety")
        assert taken["status"] == "taken"
        assert taken["through_seq"] == 12
        loaded = c.call("load", run=run)
        assert loaded["snapshot"]["state"] == {"k0": 9, "k1": 10, "k2": 11}
        assert loaded["run"]["last_seq"] == 12
        full = c.call("load", run=run, after_seq=0, limit=5)
        assert [e["seq"] for e in full["events"]] == [1, 2, 3, 4, 5]
        assert full["events"][0]["data"] == {"key": "k0", "value": 0}
        assert full["has_more"] is True
        assert full["next_after"] == 5
        snaps = c.call("list_snapshots", run=run)["snapshots"]
        assert snaps
        assert all("state" not in s for s in snaps)
        sid = snaps[0]["snapshot_id"]
        assert c.call("pin", run=run, snapshot_id=sid) == {}
        assert c.call("unpin", run=run, snapshot_id=sid) == {}
        verified = c.call("verify", run=run)
        assert verified["corrupt"] == []
        assert verified["drift"] == []
        assert verified["checked"] >= 1
        assert c.call("set_lease", run=run, lease="owner-1") == {}
        assert c.call("set_version", run=run, version="v2") == {}
        status = c.call("status")
        assert {"default", "mem", "tiny"} <= set(status["instances"])
        audit = c.call("audit", limit=5)
        assert audit["events"]
        assert audit["next_cursor"] == audit["events"][-1]["cursor"]
        later = c.call("audit", cursor=audit["next_cursor"])
        assert all(e["cursor"] > audit["next_cursor"] for e in later["events"])


def test_every_error_code(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        run = _new_run(c, lease="a")
        assert _code(c, "create_run", run=run, workflow="other", version="v1") == "conflict"
        assert _code(c, "append", run=run, events=EVENT, lease="b") == "stale_lease"
        with pytest.raises(ClientError) as conflict:
            c.call("append", run=run, events=EVENT, lease="a", expected_seq=3)
        assert (conflict.value.code, conflict.value.details) == ("conflict", {"last_seq": 0})
        assert _code(c, "append", run=run, events=[{"type": ""}]) == "bad_request"
        assert _code(c, "nope") == "unknown_op"
        assert _code(c, "load", run=run, instance="ghost") == "unknown_instance"
        assert _code(c, "load", run="no-such-run") == "not_found"
        assert _code(c, "pin", run=run, snapshot_id=str(uuid.uuid4())) == "not_found"
        assert _code(c, "ping", pad="x" * 70_000) == "too_large"
        assert c.call("ping") == {"pong": True}


def test_unknown_instance_for_fire_and_forget_snapshot_with_id(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        assert _code(c, "snapshot", run="r", instance="ghost") == "unknown_instance"
        # the run's existence is not checked by `snapshot`
        assert c.call("snapshot", run="never-created")["status"] in ("queued", "coalesced")


def test_corrupt_events_line_fails_only_that_run(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        bad = _new_run(c)
        good = _new_run(c)
        for run in (bad, good):
            c.call("append", run=run, events=EVENT * 3)
        path = daemon.root / "data" / ("id-" + bad.encode().hex()) / "events.jsonl"
        lines = path.read_bytes().split(b"\n")
        lines[1] = b"{" + b"x" * (len(lines[1]) - 1)
        path.write_bytes(b"\n".join(lines))
        with pytest.raises(ClientError) as info:
            c.call("load", run=bad, after_seq=0)
        assert info.value.code == "corrupt"
        assert "events.jsonl" in info.value.message
        assert len(c.call("load", run=good, after_seq=0)["events"]) == 3


def test_fire_and_forget_snapshots_follow_the_threshold(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        run = _new_run(c)
        c.call("append", run=run, events=EVENT * 5)
        c.send("snapshot", run=run)
        c.flush()
        # below the threshold of 10: counted as skipped, nothing written
        c.call("ping")
        wait_for(lambda: c.call("status")["instances"]["default"]["queue_depth"] == 0)
        assert c.call("list_snapshots", run=run)["snapshots"] == []
        c.call("append", run=run, events=EVENT * 7)
        c.send("snapshot", run=run)
        c.flush()
        snaps = wait_for(lambda: c.call("list_snapshots", run=run)["snapshots"])
        assert snaps[0]["through_seq"] == 12
        assert snaps[0]["kind"] == "auto"
        loaded = c.call("load", run=run)
        assert loaded["snapshot"]["through_seq"] == 12
        assert loaded["events"] == []


def test_flood_is_coalesced_and_dropped_with_bounded_memory(daemon: DaemonProcess) -> None:
    """200,000 fire-and-forget requests at a 20-request queue: every request is counted
    once (dropped, coalesced, or its attempt's outcome); pings are answered throughout."""
    total = 200_000
    with daemon.client() as c:
        before = c.call("status")["instances"]["tiny"]
    # 500 runs: each comes back well within the 20 attempts a queued one waits for.
    frames = b"".join(
        b'{"op":"snapshot","instance":"tiny","run":"flood-%d"}\n' % (i % 500) for i in range(total)
    )
    flood = daemon.raw()
    with daemon.client(timeout=10) as bystander:
        for start in range(0, len(frames), len(frames) // 4 + 1):
            flood.sendall(frames[start : start + len(frames) // 4 + 1])
            assert bystander.call("ping") == {"pong": True}
        flood.sendall(b'{"op":"ping","id":"end"}\n')
        assert b'"end"' in read_line(flood, bytearray())
        flood.close()
        rss_mb = daemon.rss_kb() / 1024
        print(f"\ndaemon RSS after a {total}-request flood: {rss_mb:.1f} MB")
        assert rss_mb < 150

        def settled() -> dict[str, Any] | None:
            tiny: dict[str, Any] = bystander.call("status")["instances"]["tiny"]
            return tiny if tiny["queue_depth"] == 0 else None

        after = wait_for(settled)

    def handled(counts: dict[str, Any]) -> int:
        return int(
            counts["taken"]
            + sum(counts["skipped"].values())
            + counts["dropped"]
            + counts["coalesced"]
        )

    assert handled(after) - handled(before) == total
    assert after["dropped"] > before["dropped"]
    assert after["coalesced"] > before["coalesced"]
    assert after["skipped"]["no_run"] > before["skipped"]["no_run"]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json\n",
        b"[1,2,3]\n",
        b'{"op": "ping", "id": 1, "bad": "\xc3\x28"}\n',
        os.urandom(5000),
        b'{"op": "append", "id": 1, "run": "x", "events": [{"type": "t", "da',
    ],
)
def test_garbage_never_affects_other_connections(daemon: DaemonProcess, payload: bytes) -> None:
    with daemon.client() as other:
        assert other.call("ping") == {"pong": True}
        sock = daemon.raw()
        sock.sendall(payload)
        sock.close()
        assert other.call("ping") == {"pong": True}
    assert daemon.alive()


def test_non_object_lines_are_answered_and_the_connection_stays_open(
    daemon: DaemonProcess,
) -> None:
    sock = daemon.raw()
    buffer = bytearray()
    sock.sendall(b'42\n\xff\xfe\n{"op": "ping", "id": 5}\n')
    for _ in range(2):
        assert b'"code":"bad_request"' in read_line(sock, buffer)
    assert read_line(sock, buffer) == b'{"id":5,"ok":true,"result":{"pong":true}}'
    sock.close()


def test_oversized_frame_closes_only_that_connection(daemon: DaemonProcess) -> None:
    with daemon.client() as other:
        sock = daemon.raw()
        buffer = bytearray()
        sock.sendall(b'{"op": "ping", "id": 1}\n' + b"y" * 70_000)
        assert b'"id":1' in read_line(sock, buffer)
        assert b'"too_large"' in read_line(sock, buffer)
        assert read_line(sock, buffer) == b""
        sock.close()
        assert other.call("ping") == {"pong": True}


def test_socket_file_mode_is_0600(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket_path).st_mode) == 0o600


def test_second_daemon_on_a_live_socket_refuses(daemon: DaemonProcess) -> None:
    second = DaemonProcess(root=daemon.root)
    second.log_path = daemon.root / "second.log"
    proc = second.spawn()
    assert proc.wait(15) != 0
    assert "in use" in second.log_path.read_text()
    with daemon.client() as c:
        assert c.call("ping") == {"pong": True}
