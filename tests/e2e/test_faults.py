"""Faults under a real daemon: kill -9 mid-snapshot (fs and PostgreSQL), a full disk,
and damaged snapshot files (payload and metadata)."""

from __future__ import annotations

import errno
import os
import random
import secrets
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapshotd.api.client import Client, ClientError
from tests.e2e.daemon import DaemonProcess, instance_config, load_all, step_events, steps_state
from tests.support import wait_for


@pytest.fixture
def own() -> Iterator[DaemonProcess]:
    process = DaemonProcess(config="")
    try:
        yield process
    finally:
        process.cleanup()


def _configure(process: DaemonProcess, journal: str | None = None, policy: str = "") -> None:
    url = journal if journal is not None else f"fs:{process.root / 'data'}"
    process.config_path.write_text(instance_config(process.root, url, policy))


def _run_dir(process: DaemonProcess, run: str) -> Path:
    return process.root / "data" / ("id-" + run.encode().hex())


def _temp_files(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*"))


# kill -9 mid-snapshot ----------------------------------------------------------------

BIG = 50_000


Trigger = Callable[[threading.Event], str]


def _snapshot_and_kill(process: DaemonProcess, trigger: Trigger) -> str:
    """Start a forced ``snapshot_now``, SIGKILL the daemon when ``trigger`` returns
    (it gets an Event set once the answer came); returns what happened, for messages."""
    answers: list[Any] = []
    answered = threading.Event()

    def snapshot_now() -> None:
        try:
            with process.client() as client:
                answers.append(client.call("snapshot_now", run="big", force=True))
        except (OSError, ClientError) as exc:
            answers.append(exc)
        finally:
            answered.set()

    thread = threading.Thread(target=snapshot_now)
    thread.start()
    when = trigger(answered)
    process.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    process.proc.wait(10)  # type: ignore[union-attr]
    thread.join(10)
    return f"killed {when}; snapshot_now answered {answers!r}"


def _after(delay: float) -> Trigger:
    def trigger(answered: threading.Event) -> str:
        answered.wait(delay)
        return f"after {delay:.3f} s"

    return trigger


def _on_temp_file(directory: Path) -> Trigger:
    """Fires while a snapshot file is being written (its temp file exists)."""

    def trigger(answered: threading.Event) -> str:
        while not answered.is_set():
            if any(name.startswith(".tmp-") for name in os.listdir(directory)):
                return "while the temp file existed"
        return "after the answer: the temp file was not seen"

    return trigger


def _check_after_restart(process: DaemonProcess, last: int, context: str) -> None:
    process.start()
    with process.client() as client:
        events = load_all(client, "big")
        assert [e["seq"] for e in events] == list(range(1, last + 1)), context
        assert all(e["data"] == {"i": e["seq"]} for e in events), context
        verified = client.call("verify", run="big")
        assert verified["corrupt"] == [] and verified["drift"] == [], (context, verified)
        loaded = client.call("load", run="big", limit=100_000)
        state = None if loaded["snapshot"] is None else loaded["snapshot"]["state"]
        assert len(steps_state(loaded["events"], state)["steps"]) == last, context


@pytest.mark.parametrize("journal", ["fs", "postgresql"])
def test_kill_9_mid_snapshot(
    journal: str, own: DaemonProcess, request: pytest.FixtureRequest
) -> None:
    if journal == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")
        url = f"{dsn}?schema=e2e_{secrets.token_hex(5)}"
    else:
        url = f"fs:{own.root / 'data'}"
    _configure(own, url, 'snapshot_threshold = "infinity"\nmax_snapshot_bytes = 100000000')
    own.start()
    with own.client() as client:
        client.call("create_run", run="big", workflow="wf", version="v1")
        for start in range(0, BIG, 10_000):
            client.call("append", run="big", events=step_events(10_000, start))

    # A full fold of 50k events takes ~0.2-0.3 s here: kill somewhere inside it.
    context = _snapshot_and_kill(own, _after(random.uniform(0.01, 0.3)))
    _check_after_restart(own, BIG, context)

    # Then an incremental one (base + 1 event), killed during its file write on fs.
    with own.client() as client:
        client.call("append", run="big", events=step_events(1, BIG))
    snapshots = _run_dir(own, "big") / "snapshots"
    trigger = _on_temp_file(snapshots) if journal == "fs" else _after(random.uniform(0, 0.15))
    context = _snapshot_and_kill(own, trigger)
    _check_after_restart(own, BIG + 1, context)

    with own.client() as client:
        client.call("append", run="big", events=step_events(1, BIG + 1))
        taken = client.call("snapshot_now", run="big", force=True)
        assert taken["status"] == "taken" and taken["through_seq"] == BIG + 2, context
        loaded = client.call("load", run="big")
        assert loaded["snapshot"]["through_seq"] == BIG + 2
        assert loaded["events"] == []
    if journal == "fs":
        assert _temp_files(own.root / "data") == [], context
    assert own.stop() == 0


# full disk ---------------------------------------------------------------------------


def _fill(path: Path) -> None:
    """Write ``path`` until the file system is full, down to its last free byte."""
    with open(path, "wb", buffering=0) as file:
        for size in (1 << 16, 4096, 1):
            chunk = b"\0" * size
            while True:
                try:
                    file.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break


@pytest.fixture
def tiny_disk(own: DaemonProcess) -> Iterator[Path]:
    """A 1 MiB tmpfs as the daemon's data directory (needs root and mount rights)."""
    data = own.root / "data"
    data.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield data
    finally:
        own.kill()
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_full_disk_answers_unavailable_then_recovers(own: DaemonProcess, tiny_disk: Path) -> None:
    _configure(own, policy="snapshot_threshold = 10")
    own.start()
    filler = tiny_disk / "filler"
    with own.client() as client:
        client.call("create_run", run="r", workflow="wf", version="v1")
        client.call("append", run="r", events=step_events(20))
        assert client.call("snapshot_now", run="r")["status"] == "taken"
        last = client.call("append", run="r", events=step_events(20, 20))["last_seq"]

        _fill(filler)
        # Bigger than a page, so it cannot fit in the slack of the file's last page.
        for op, fields in (
            ("append", {"run": "r", "events": step_events(300, last)}),
            ("create_run", {"run": "r2", "workflow": "wf", "version": "v1"}),
        ):
            with pytest.raises(ClientError) as caught:
                client.call(op, **fields)
            assert caught.value.code == "unavailable", caught.value
            assert "No space left" in str(caught.value)
        assert client.call("snapshot_now", run="r", force=True) == {
            "status": "skipped",
            "reason": "journal_error",
        }
        client.send("snapshot", run="r")

        def queued_attempt_failed() -> bool:
            status = client.call("status")["instances"]["default"]
            return bool(status["skipped"]["journal_error"] >= 2 and status["queue_depth"] == 0)

        wait_for(queued_attempt_failed)
        loaded = client.call("load", run="r")
        assert loaded["run"]["last_seq"] == last
        assert client.call("ping") == {"pong": True}

        filler.unlink()
        last = client.call("append", run="r", events=step_events(300, last))["last_seq"]
        assert last == 340
        assert client.call("create_run", run="r2", workflow="wf", version="v1") == {"created": True}
        assert client.call("snapshot_now", run="r")["status"] == "taken"
        assert client.call("verify", run="r")["corrupt"] == []
        status = client.call("status")["instances"]["default"]
        assert status["restarts"] == 0 and status["skipped"]["internal"] == 0
    assert own.stop() == 0
    assert _temp_files(tiny_disk) == []

    own.start()
    with own.client() as client:
        events = load_all(client, "r")
        assert [e["seq"] for e in events] == list(range(1, 341))
        assert [e["data"]["i"] for e in events] == list(range(1, 341))
        loaded = client.call("load", run="r")
        assert loaded["snapshot"]["through_seq"] == 340
        assert client.call("load", run="r2")["run"]["last_seq"] == 0
    assert own.stop() == 0


# damaged snapshot files --------------------------------------------------------------


def _two_snapshots(client: Client) -> tuple[str, str]:
    """Run ``r``: a snapshot through 10, one through 20, then 5 more events."""
    client.call("create_run", run="r", workflow="wf", version="v1")
    client.call("append", run="r", events=step_events(10))
    older = client.call("snapshot_now", run="r", force=True)["snapshot_id"]
    client.call("append", run="r", events=step_events(10, 10))
    newer = client.call("snapshot_now", run="r", force=True)["snapshot_id"]
    client.call("append", run="r", events=step_events(5, 20))
    return older, newer


def _corrupt_reported(client: Client, snapshot_id: str) -> list[dict[str, Any]]:
    entries = client.call("audit", limit=1000)["events"]
    return [
        e for e in entries if e["kind"] == "snapshot_corrupt" and e["snapshot_id"] == snapshot_id
    ]


def _assert_falls_back(client: Client, older: str) -> None:
    loaded = client.call("load", run="r")
    assert loaded["snapshot"]["snapshot_id"] == older
    assert loaded["snapshot"]["through_seq"] == 10
    assert [e["seq"] for e in loaded["events"]] == list(range(11, 26))
    full = load_all(client, "r")
    assert steps_state(loaded["events"], loaded["snapshot"]["state"]) == steps_state(full)


def test_damaged_snapshot_payload_falls_back_and_is_reported(own: DaemonProcess) -> None:
    _configure(own)
    own.start()
    with own.client() as client:
        older, newer = _two_snapshots(client)
        path = _run_dir(own, "r") / "snapshots" / f"{newer}.snap"
        head, _, payload = path.read_bytes().partition(b"\n")
        path.write_bytes(head + b"\n" + payload.replace(b'"steps"', b'"stepz"'))

        _assert_falls_back(client, older)
        assert client.call("verify", run="r") == {"checked": 2, "corrupt": [newer], "drift": []}
        reported = _corrupt_reported(client, newer)
        assert len(reported) == 1 and "checksum" in reported[0]["error"]

        taken = client.call("snapshot_now", run="r", force=True)
        assert taken["status"] == "taken" and taken["through_seq"] == 25
        loaded = client.call("load", run="r")
        assert loaded["snapshot"]["snapshot_id"] == taken["snapshot_id"]
        assert steps_state([], loaded["snapshot"]["state"]) == steps_state(load_all(client, "r"))
        # The damaged one does not count towards keep_snapshots = 2: the intact older
        # one stays, and the damaged one is kept for inspection.
        listed = [s["snapshot_id"] for s in client.call("list_snapshots", run="r")["snapshots"]]
        assert listed == [taken["snapshot_id"], newer, older]
    assert own.stop() == 0


def test_unreadable_snapshot_metadata_is_set_aside(own: DaemonProcess) -> None:
    _configure(own)
    own.start()
    with own.client() as client:
        older, newer = _two_snapshots(client)
    assert own.stop() == 0
    snapshots = _run_dir(own, "r") / "snapshots"
    path = snapshots / f"{newer}.snap"
    path.write_bytes(b"{garbage\n" + path.read_bytes().partition(b"\n")[2])
    empty = f"{newer[:-12]}{'f' * 12}"  # a UUID-shaped name, an empty file (a torn write)
    (snapshots / f"{empty}.snap").write_bytes(b"")

    own.start()
    with own.client() as client:
        listed = [s["snapshot_id"] for s in client.call("list_snapshots", run="r")["snapshots"]]
        assert listed == [older]
        _assert_falls_back(client, older)
        verified = client.call("verify", run="r")
        assert sorted(verified["corrupt"]) == sorted([newer, empty])
        assert verified["checked"] == 3 and verified["drift"] == []
        for damaged in (newer, empty):
            reported = _corrupt_reported(client, damaged)
            assert len(reported) == 1 and str(snapshots) in reported[0]["error"]

        assert client.call("append", run="r", events=step_events(5, 25))["last_seq"] == 30
        taken = client.call("snapshot_now", run="r", force=True)
        assert taken["status"] == "taken" and taken["through_seq"] == 30
        listed = [s["snapshot_id"] for s in client.call("list_snapshots", run="r")["snapshots"]]
        assert listed == [taken["snapshot_id"], older]
        assert path.exists(), "a damaged file is kept for inspection, never pruned"
        status = client.call("status")["instances"]["default"]
        assert status["skipped"]["journal_error"] == 0 and status["skipped"]["internal"] == 0
    assert own.stop() == 0


# a damaged events line -----------------------------------------------------------------


def test_bad_events_line_makes_only_that_run_corrupt_after_restart(own: DaemonProcess) -> None:
    _configure(own, policy="snapshot_threshold = 5")
    own.start()
    with own.client() as client:
        for run in ("bad", "good"):
            client.call("create_run", run=run, workflow="wf", version="v1")
            client.call("append", run=run, events=step_events(10))
        # A snapshot covering the damaged line must not hide the damage.
        assert client.call("snapshot_now", run="bad")["through_seq"] == 10
    assert own.stop() == 0
    path = _run_dir(own, "bad") / "events.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = b'{"seq": 5, "type": "step", "data": {"i"\n'
    path.write_bytes(b"".join(lines))
    damaged = path.read_bytes()

    own.start()
    with own.client() as client:
        for op, fields in (
            ("append", {"events": step_events(1, 10)}),
            ("load", {}),
            ("load", {"after_seq": 10}),
            ("verify", {}),
        ):
            with pytest.raises(ClientError) as caught:
                client.call(op, run="bad", **fields)
            assert caught.value.code == "corrupt", (op, caught.value)
            assert f"{path}: line 5" in caught.value.message, (op, caught.value)
        assert len(client.call("list_snapshots", run="bad")["snapshots"]) == 1
        assert client.call("snapshot_now", run="bad", force=True) == {
            "status": "skipped",
            "reason": "journal_error",
        }
        client.send("snapshot", run="bad")
        client.flush()
        wait_for(
            lambda: client.call("status")["instances"]["default"]["skipped"]["journal_error"] == 2
        )
        entries = client.call("audit", limit=1000)["events"]
        reported = [e for e in entries if e["kind"] == "run_corrupt"]
        assert len(reported) == 1, entries
        assert reported[0]["run_id"] == "bad" and f"{path}: line 5" in reported[0]["error"]
        skipped = [e for e in entries if e["kind"] == "snapshot_skipped"]
        assert {e["reason"] for e in skipped} == {"journal_error"}

        assert client.call("append", run="good", events=step_events(5, 10))["last_seq"] == 15
        assert client.call("snapshot_now", run="good")["through_seq"] == 15
        assert client.call("load", run="good")["snapshot"]["through_seq"] == 15
        assert client.call("ping") == {"pong": True}
    assert own.stop() == 0
    assert path.read_bytes() == damaged, "nothing was appended on top of the damage"
    assert "run_corrupt" in own.log()


def test_batch_torn_by_kill_9_before_its_fsync_leaves_none_of_its_events(
    own: DaemonProcess,
) -> None:
    _configure(own)
    own.env = {"FAULT_INJECT_FS": "torn-append"}
    own.start()
    with own.client() as client:
        client.call("create_run", run="r", workflow="wf", version="v1")
        assert client.call("append", run="r", events=step_events(1))["last_seq"] == 1
        # The hook writes this batch's lines but its last, then SIGKILLs the daemon.
        with pytest.raises(ClientError) as cut:
            client.call("append", run="r", events=step_events(5, 1))
        assert cut.value.details == {"outcome": "unknown"}
    assert own.proc is not None
    assert own.proc.wait(10) == -signal.SIGKILL
    path = _run_dir(own, "r") / "events.jsonl"
    assert path.read_bytes().count(b"\n") == 5, "the first four events reached the file"

    own.env = {}
    own.start()
    with own.client() as client:
        assert [e["seq"] for e in load_all(client, "r")] == [1]
        assert client.call("append", run="r", events=step_events(2, 1), expected_seq=1) == {
            "last_seq": 3
        }
        events = load_all(client, "r")
        assert [e["seq"] for e in events] == [1, 2, 3]
        assert [e["data"] for e in events] == [e["data"] for e in step_events(3)]
    assert own.stop() == 0
    assert path.read_bytes().count(b"\n") == 3
