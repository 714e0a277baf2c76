"""Delta chains under kill -9: a real daemon taking `steps` snapshots (deltas, merges,
retirements, consolidations) is killed at random moments, again and again; after
each restart every listed snapshot restores by id, whole and equal to the fold of
its events, nothing is corrupt, and the chains keep growing from there."""

from __future__ import annotations

import random
import secrets
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from snapshotd.api.client import ClientError
from tests.e2e.daemon import DaemonProcess, instance_config, load_all, step_events, steps_state


@pytest.fixture
def own() -> Iterator[DaemonProcess]:
    process = DaemonProcess(config="")
    try:
        yield process
    finally:
        process.cleanup()


def _work(process: DaemonProcess, stop: threading.Event) -> None:
    """Append a few steps and take a snapshot, until the daemon dies."""
    try:
        with process.client() as client:
            while not stop.is_set():
                client.call("append", run="r", events=step_events(7))
                client.call("snapshot_now", run="r", force=True)
    except (OSError, ClientError):
        return


def _check(process: DaemonProcess) -> int:
    with process.client() as client:
        events = load_all(client, "r")
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        verified = client.call("verify", run="r")
        assert verified["corrupt"] == [] and verified["drift"] == [], verified
        for meta in client.call("list_snapshots", run="r")["snapshots"]:
            loaded = client.call("load", run="r", snapshot_id=meta["snapshot_id"], limit=1)
            state = loaded["snapshot"]["state"]
            assert state == steps_state(events[: meta["through_seq"]]), meta
            assert meta["stored_bytes"] <= meta["size_bytes"]
        loaded = client.call("load", run="r", limit=100_000)
        state = None if loaded["snapshot"] is None else loaded["snapshot"]["state"]
        assert steps_state(loaded["events"], state) == steps_state(events)
        return len(events)


@pytest.mark.parametrize(
    "journal",
    [
        pytest.param(
            "fs",
            marks=pytest.mark.xfail(
                strict=False,
                reason="open bug: about one run in ten, a kill -9 on fs leaves a link that "
                "verify reports corrupt (load still falls back); see docs/operations.md",
            ),
        ),
        "postgresql",
    ],
)
def test_kill_9_at_any_point_leaves_every_chain_usable(
    journal: str, own: DaemonProcess, request: pytest.FixtureRequest
) -> None:
    if journal == "postgresql":
        url = f"{request.getfixturevalue('pg_dsn')}?schema=e2e_{secrets.token_hex(5)}"
    else:
        url = f"fs:{own.root / 'data'}"
    own.config_path.write_text(instance_config(own.root, url, 'snapshot_threshold = "infinity"'))
    own.start()
    with own.client() as client:
        client.call("create_run", run="r", workflow="wf", version="v1")
        client.call("append", run="r", events=step_events(300))
    rng = random.Random(7)
    seen = 0
    for _ in range(4):
        stop = threading.Event()
        worker = threading.Thread(target=_work, args=(own, stop))
        worker.start()
        time.sleep(rng.uniform(0.2, 0.6))
        own.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        own.proc.wait(10)  # type: ignore[union-attr]
        stop.set()
        worker.join(10)
        own.start()
        count = _check(own)
        assert count >= seen
        seen = count
    with own.client() as client:
        listed = client.call("list_snapshots", run="r")["snapshots"]
        assert any(m["stored_bytes"] < m["size_bytes"] for m in listed)
    assert own.stop() == 0
