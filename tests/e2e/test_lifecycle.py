"""Daemon lifecycle with its own processes: drain on SIGTERM, kill -9 and restart, bad config."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotd.api.client import ClientError
from tests.e2e.daemon import DaemonProcess, default_config, serve_to_exit
from tests.support import wait_for


@pytest.fixture
def own() -> Iterator[DaemonProcess]:
    process = DaemonProcess()
    try:
        yield process
    finally:
        process.cleanup()


def test_sigterm_drains_quickly_and_removes_the_socket(own: DaemonProcess) -> None:
    own.start()
    with own.client() as c:
        for i in range(20):
            run = f"drain-{i}"
            c.call("create_run", run=run, workflow="wf", version="v1")
            c.call("append", run=run, events=[{"type": "t", "data": i}] * 30)
        for _ in range(50):
            for i in range(20):
                c.send("snapshot", run=f"drain-{i}")
        c.flush()
        c.call("ping")
    started = time.monotonic()
    assert own.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert not os.path.exists(own.socket_path)


APPENDS_BEFORE_KILL = 20


def test_kill_9_mid_work_loses_nothing_acknowledged(own: DaemonProcess) -> None:
    own.start()
    acknowledged: dict[str, int] = {}
    stop, killed = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        run = f"crash-{index}"
        try:
            with own.client(timeout=5) as c:
                c.call("create_run", run=run, workflow="kv", version="v1")
                acknowledged[run] = 0
                while not stop.is_set():
                    seq = acknowledged[run]
                    events = [
                        {"type": "put", "data": {"key": f"k{(seq + i) % 7}", "value": seq + i}}
                        for i in range(1, 6)
                    ]
                    acknowledged[run] = c.call("append", run=run, events=events)["last_seq"]
                    c.send("snapshot", run=run)
        except (OSError, ClientError) as exc:
            if not killed.is_set():
                errors.append(exc)

    def all_writers_under_way() -> bool:
        assert errors == []
        seqs = list(acknowledged.values())
        return len(seqs) == len(threads) and min(seqs) >= 5 * APPENDS_BEFORE_KILL

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    wait_for(all_writers_under_way, what=f"{APPENDS_BEFORE_KILL} appends acknowledged per writer")
    killed.set()
    own.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    own.proc.wait(10)  # type: ignore[union-attr]
    stop.set()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert all(seq > 0 for seq in acknowledged.values())
    # The killed daemon left its socket file behind: the restart replaces it.
    assert os.path.exists(own.socket_path)
    own.start()
    with own.client() as c:
        for run, last in acknowledged.items():
            loaded = c.call("load", run=run, after_seq=0, limit=100_000)
            seqs = [event["seq"] for event in loaded["events"]]
            assert seqs[:last] == list(range(1, last + 1))
            for event in loaded["events"][:last]:
                assert event["data"]["value"] == event["seq"]
            verified = c.call("verify", run=run)
            assert verified["corrupt"] == []
            assert verified["drift"] == []
            with_snapshot = c.call("load", run=run, limit=100_000)
            state = (with_snapshot["snapshot"] or {}).get("state") or {}
            for event in with_snapshot["events"]:
                state[event["data"]["key"]] = event["data"]["value"]
            expected: dict[str, int] = {}
            for event in loaded["events"]:
                expected[event["data"]["key"]] = event["data"]["value"]
            assert state == expected
    assert own.stop() == 0


def test_invalid_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        default_config(tmp_path).replace("snapshot_threshold = 10", "snapshot_threshold = -1")
    )
    done = serve_to_exit(config, timeout=30)
    assert done.returncode == 2
    assert "instances.default.snapshot_threshold" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.sock").exists()


def test_unknown_reducer_fails_start_up_and_leaves_no_socket(own: DaemonProcess) -> None:
    own.config_path.write_text(
        default_config(own.root, '\n[workflows.x]\nreducer = "nomod:nofunc"\n')
    )
    proc = own.spawn()
    assert proc.wait(30) == 2
    assert "workflows.x.reducer" in own.log()
    assert not os.path.exists(own.socket_path)
