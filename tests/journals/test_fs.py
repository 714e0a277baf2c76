"""What only the fs journal has: on-disk names, torn lines, damage, format, locking, crashes."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from snapshotd.domain import compaction
from snapshotd.domain.errors import ConfigError, Corrupt, Unavailable
from snapshotd.domain.model import DuePoint, NewEvent
from snapshotd.domain.reducers import fold, last_by_key
from snapshotd.domain.slices import run_slice
from snapshotd.journals.fs import FsJournal
from snapshotd.journals.fs import adapter as adapter_module
from snapshotd.journals.fs import files as fsfiles
from snapshotd.journals.fs import log as fslog
from snapshotd.journals.fs import runs as runs_module
from tests.support import make_snapshot

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
# The writer imports tests.support, so it runs as a module from the repository root.
REPO = Path(__file__).parents[2]


def ev(n: int) -> list[NewEvent]:
    return [NewEvent("step", {"n": i}) for i in range(n)]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
async def fs(root: Path) -> AsyncIterator[FsJournal]:
    journal = FsJournal(root)
    await journal.open()
    try:
        yield journal
    finally:
        await journal.aclose()


async def reopen(journal: FsJournal, root: Path) -> FsJournal:
    await journal.aclose()
    fresh = FsJournal(root)
    await fresh.open()
    return fresh


def events_file(root: Path, run_id: str) -> Path:
    return root / ("id-" + run_id.encode().hex()) / "events.jsonl"


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(fsfiles.TEMP_PREFIX)]


async def add_run(journal: FsJournal, run_id: str, events: int) -> None:
    await journal.create_run(run_id, "wf", "v1", None, T0)
    if events:
        await journal.append(run_id, ev(events), expected_seq=0, lease=None, now=T0)


# names --------------------------------------------------------------------------


async def test_hostile_run_ids_stay_inside_the_root(fs: FsJournal, root: Path) -> None:
    long_id = "x" * 120 + "/../" + "é" * 38
    hostile = ["../../etc", "/", "..", ".", "a/../../b", "\\..\\x", "снимок 🎉", long_id]
    assert len(long_id.encode()) <= 200
    for run_id in hostile:
        await add_run(fs, run_id, 2)
        events = await fs.read_events(run_id, 0)
        made = make_snapshot(run_id, events)
        await fs.write_snapshot(made, lease=None)
        await fs.put_document(run_id, run_id, b"{}", None)
    real_root = root.resolve()
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(real_root)
    names = sorted(p.name for p in root.iterdir() if p.name.startswith(("id-", "h-")))
    assert len(names) == len(hostile)
    assert all(n.startswith(("id-", "h-")) and len(n) <= 240 for n in names)
    assert "h-" + hashlib.sha256(long_id.encode()).hexdigest() in names
    assert (root / ("id-" + b"..".hex()) / "run.json").is_file()
    fs = await reopen(fs, root)
    assert await fs.list_runs(None, 100) == sorted(hostile)
    for run_id in hostile:
        run = await fs.get_run(run_id)
        assert run is not None
        assert (run.run_id, run.last_seq) == (run_id, 2)
        assert len(await fs.list_snapshots(run_id)) == 1
        doc = await fs.get_document(run_id, run_id)
        assert doc is not None
        assert doc.version == 1
    await fs.aclose()


async def test_run_directories_sit_in_the_root_beside_its_own_entries(
    fs: FsJournal, root: Path
) -> None:
    # Run ids spelling the root's own entries still get id- directories of their own.
    own_names = ["documents", "format.json", "lock", "audit.jsonl", "runs"]
    for run_id in own_names:
        await add_run(fs, run_id, 1)
    await fs.put_document("ns", "k", b"{}", None)
    await fs.append_audit("x", {}, T0)
    found = sorted(p.name for p in root.glob("id-*"))
    assert found == sorted("id-" + r.encode().hex() for r in own_names)
    assert all((root / name / "events.jsonl").is_file() for name in found)
    assert sorted(p.name for p in root.iterdir() if p.name not in found) == [
        "audit.jsonl",
        "documents",
        "due.jsonl",
        "format.json",
        "lock",
        "staging",
    ]
    # Foreign entries in the root are not runs: a file, a non-canonical name, junk.
    (root / "id-zz").mkdir()
    (root / ("id-" + b"J".hex().upper())).mkdir()
    (root / ("id-" + b"file".hex())).write_bytes(b"")
    (root / "h-deadbeef").mkdir()
    fs = await reopen(fs, root)
    assert await fs.list_runs(None, 100) == sorted(own_names)
    for run_id in own_names:
        assert [e.seq for e in await fs.read_events(run_id, 0)] == [1]
    doc = await fs.get_document("ns", "k")
    assert doc is not None
    assert doc.version == 1
    await fs.aclose()


async def test_journal_in_the_old_runs_subdirectory_layout_is_refused(root: Path) -> None:
    journal = FsJournal(root)
    await journal.open()
    await journal.aclose()
    old = {"format": "snapshotd-fs", "schema_version": 1, "fingerprint": "sha256:old"}
    (root / "format.json").write_bytes(orjson.dumps(old))
    (root / "runs").mkdir()
    with pytest.raises(ConfigError, match="schema_version 3"):
        await FsJournal(root).open()


# torn lines and damage -------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [b'{"seq":4,"type":"st', b"garbage\n", b"\x00\x00\x00\x00", b"\n", b'{"seq":4,"type"\n'],
    ids=["partial", "complete-garbage", "zeros", "blank-line", "cut-with-newline"],
)
async def test_torn_last_line_ignored_then_overwritten(
    fs: FsJournal, root: Path, tail: bytes
) -> None:
    await add_run(fs, "r", 3)
    path = events_file(root, "r")
    intact = path.read_bytes()
    with path.open("ab") as file:
        file.write(tail)
    fs = await reopen(fs, root)
    run = await fs.get_run("r")
    assert run is not None
    assert run.last_seq == 3
    assert [e.seq for e in await fs.read_events("r", 0)] == [1, 2, 3]
    page = await fs.read_event_page("r", 0, 10)
    assert (len(page.events), page.has_more) == (3, False)
    assert await fs.append("r", ev(2), expected_seq=3, lease=None, now=T0) == 5
    data = path.read_bytes()
    assert data.startswith(intact)
    lines = data.splitlines()
    assert [orjson.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert data.endswith(b"\n")
    fs = await reopen(fs, root)
    assert [e.seq for e in await fs.read_events("r", 0)] == [1, 2, 3, 4, 5]
    await fs.aclose()


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b'{"seq": 7, "type": "x", "data": 1, "recorded_at": "2024-05-01T12:00:00Z"}',
        b"[1,2]",
        b'{"seq": 3, "type": "x"}',
        b"",
    ],
    ids=["garbage", "wrong-seq", "not-an-object", "missing-fields", "empty-line"],
)
async def test_bad_middle_line_makes_only_that_run_corrupt(
    fs: FsJournal, root: Path, bad: bytes
) -> None:
    await add_run(fs, "damaged", 0)
    for seq in range(5):
        await fs.append("damaged", ev(1), expected_seq=seq, lease=None, now=T0)
    await add_run(fs, "healthy", 5)
    # A snapshot covering the bad line must not hide it: the whole run is corrupt.
    await fs.write_snapshot(
        make_snapshot("damaged", await fs.read_events("damaged", 0)), lease=None
    )
    path = events_file(root, "damaged")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = bad + b"\n"
    path.write_bytes(b"".join(lines))
    damaged_bytes = path.read_bytes()
    fs = await reopen(fs, root)
    with pytest.raises(Corrupt) as caught:
        await fs.get_run("damaged")
    assert caught.value.message.startswith(f"{path}: line 3: ")
    for call in (
        fs.read_events("damaged", 0),
        fs.read_events("damaged", 3),
        fs.read_events("damaged", 5),
        fs.read_event_page("damaged", 4, 10),
        fs.append("damaged", ev(1), expected_seq=None, lease=None, now=T0),
        fs.append("damaged", ev(1), expected_seq=5, lease=None, now=T0),
    ):
        with pytest.raises(Corrupt, match=re.escape(f"{path}: line 3")):
            await call
    assert path.read_bytes() == damaged_bytes, "nothing is appended on top of damage"
    assert len(await fs.list_snapshots("damaged")) == 1
    assert [e.seq for e in await fs.read_events("healthy", 0)] == [1, 2, 3, 4, 5]
    assert await fs.append("healthy", ev(1), expected_seq=5, lease=None, now=T0) == 6
    assert await fs.due_runs(datetime(2100, 1, 1, tzinfo=UTC), 10) == ["healthy"]
    await fs.aclose()
    # Repaired while closed: the next open checks again and the run is usable.
    path.write_bytes(b"".join(lines[:2]))
    fs = await reopen(fs, root)
    assert await fs.append("damaged", ev(1), expected_seq=2, lease=None, now=T0) == 3
    assert [e.seq for e in await fs.read_events("damaged", 0)] == [1, 2, 3]
    await fs.aclose()


async def test_damage_found_while_running_is_corrupt_at_once_and_remembered(
    fs: FsJournal, root: Path
) -> None:
    await add_run(fs, "r", 4)
    await fs.write_snapshot(make_snapshot("r", await fs.read_events("r", 0)), lease=None)
    assert (await fs.get_run("r")) is not None
    path = events_file(root, "r")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b"{oops}\n"
    path.write_bytes(b"".join(lines))
    # A page after the snapshot does not reach line 2, yet the changed file is checked.
    with pytest.raises(Corrupt, match="line 2"):
        await fs.read_event_page("r", 4, 10)
    with pytest.raises(Corrupt, match="line 2"):
        await fs.read_events("r", 2)
    with pytest.raises(Corrupt, match="line 2"):
        await fs.append("r", ev(1), expected_seq=4, lease=None, now=T0)
    with pytest.raises(Corrupt, match="line 2"):
        await fs.get_run("r")
    assert len(path.read_bytes().splitlines()) == 4
    await fs.aclose()


@pytest.mark.parametrize("keep_times", [False, True], ids=["touched", "times-restored"])
async def test_every_line_served_is_checked_against_its_batch(
    fs: FsJournal, root: Path, keep_times: bool
) -> None:
    await add_run(fs, "r", 4)
    await fs.append("r", ev(2), expected_seq=4, lease=None, now=T0)
    assert len((await fs.read_event_page("r", 0, 10)).events) == 6
    path = events_file(root, "r")
    before = path.stat()
    data = path.read_bytes()
    # Same size, still valid JSON, right seq: only the checksum can tell.
    path.write_bytes(data.replace(b'{"n":2}', b'{"n":7}', 1))
    if keep_times:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(Corrupt, match=r"line 1: not as written \(batch of lines 1-4"):
        await fs.read_event_page("r", 0, 10)
    await fs.aclose()


@pytest.mark.parametrize(
    "payload",
    [b'x"}\n{"id":999,"ok":true}', b"\\", b"\xff\xfe"],
    ids=["forged-line", "bad-escape", "bad-utf8"],
)
async def test_no_page_carries_damaged_bytes(fs: FsJournal, root: Path, payload: bytes) -> None:
    await add_run(fs, "r", 3)
    path = events_file(root, "r")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[0] = lines[0][:-3] + payload + b"\n"
    path.write_bytes(b"".join(lines))
    fs = await reopen(fs, root)
    with pytest.raises(Corrupt, match=re.escape(str(path))):
        await fs.read_event_page("r", 0, 10)
    await fs.aclose()


async def test_whole_events_file_is_parsed_once_per_run_per_open(
    fs: FsJournal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_run(fs, "a", 3)
    await add_run(fs, "b", 0)
    fs = await reopen(fs, root)
    checked: list[str] = []
    real_check = fslog.JsonlLog.check

    def counting(log: fslog.JsonlLog) -> None:
        checked.append(Path(log.path).parent.name)
        real_check(log)

    monkeypatch.setattr(fslog.JsonlLog, "check", counting)
    for _ in range(3):
        await fs.get_run("a")
        await fs.read_events("a", 0)
        await fs.append("a", ev(1), expected_seq=None, lease=None, now=T0)
    # The sweep reads the index, not the runs.
    assert await fs.due_runs(datetime(2100, 1, 1, tzinfo=UTC), 10) == ["a"]
    assert sorted(checked) == ["id-" + b"a".hex()]
    await fs.aclose()


@pytest.mark.parametrize(
    "tail",
    [
        b'garbage\n{"seq":4,',
        b'{"seq":9,"type":"x","data":1}\n',
        b'{"seq":4,"type":"x","data":1}\n' + b"\0" * 40 + b'"recorded_at":"","crc":"00000000"}\n',
    ],
    ids=["garbage-before-torn", "uncommitted-line", "pages-never-written"],
)
async def test_torn_batch_at_the_end_is_dropped_then_overwritten(
    fs: FsJournal, root: Path, tail: bytes
) -> None:
    await add_run(fs, "r", 3)
    with events_file(root, "r").open("ab") as file:
        file.write(tail)
    fs = await reopen(fs, root)
    assert [e.seq for e in await fs.read_events("r", 0)] == [1, 2, 3]
    assert await fs.append("r", ev(1), expected_seq=3, lease=None, now=T0) == 4
    fs = await reopen(fs, root)
    assert [e.seq for e in await fs.read_events("r", 0)] == [1, 2, 3, 4]
    await fs.aclose()


async def test_a_committed_last_batch_that_changed_is_damage_not_a_tear(
    fs: FsJournal, root: Path
) -> None:
    await add_run(fs, "r", 3)
    path = events_file(root, "r")
    path.write_bytes(path.read_bytes().replace(b'"n":2', b'"n":9'))
    fs = await reopen(fs, root)
    with pytest.raises(Corrupt, match=r"line 1: not as written \(batch of lines 1-3"):
        await fs.get_run("r")
    await fs.aclose()


async def test_only_the_last_batch_can_be_torn(fs: FsJournal, root: Path) -> None:
    await add_run(fs, "r", 3)
    await fs.append("r", ev(2), expected_seq=3, lease=None, now=T0)
    await add_run(fs, "other", 1)
    path = events_file(root, "r")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"n":1', b'"n":5')
    path.write_bytes(b"".join(lines) + b'{"seq":6,')
    fs = await reopen(fs, root)
    with pytest.raises(Corrupt, match=r"line 1: not as written \(batch of lines 1-3"):
        await fs.get_run("r")
    with pytest.raises(Corrupt, match="line 1"):
        await fs.append("r", ev(1), expected_seq=None, lease=None, now=T0)
    assert [e.seq for e in await fs.read_events("other", 0)] == [1]
    await fs.aclose()


async def test_damaged_run_record_and_snapshot_metadata(fs: FsJournal, root: Path) -> None:
    await add_run(fs, "a", 2)
    await add_run(fs, "b", 2)
    events = await fs.read_events("b", 0)
    made = make_snapshot("b", events)
    await fs.write_snapshot(made, lease=None)
    run_json = events_file(root, "a").with_name("run.json")
    run_json.write_bytes(b"{oops")
    snap_file = events_file(root, "b").parent / "snapshots" / f"{made.meta.snapshot_id}.snap"
    snap_file.write_bytes(b"{not metadata}\n" + made.payload)
    fs = await reopen(fs, root)
    with pytest.raises(Corrupt, match=re.escape(str(run_json))):
        await fs.get_run("a")
    # The damaged snapshot is set aside, not the run: never listed, named for verify.
    assert await fs.list_snapshots("b") == []
    damaged = await fs.damaged_snapshots("b")
    assert list(damaged) == [made.meta.snapshot_id]
    assert str(snap_file) in damaged[made.meta.snapshot_id]
    assert [e.seq for e in await fs.read_events("b", 0)] == [1, 2]
    await fs.aclose()


async def test_damaged_snapshot_payload_fails_verification(fs: FsJournal, root: Path) -> None:
    await add_run(fs, "r", 2)
    events = await fs.read_events("r", 0)
    made = make_snapshot("r", events)
    await fs.write_snapshot(made, lease=None)
    snap_file = events_file(root, "r").parent / "snapshots" / f"{made.meta.snapshot_id}.snap"
    snap_file.write_bytes(snap_file.read_bytes().replace(b'"steps"', b'"stepz"'))
    fs = await reopen(fs, root)
    stored = await fs.read_snapshot("r", made.meta.snapshot_id)
    with pytest.raises(Corrupt, match="checksum"):
        compaction.verify(stored)
    await fs.aclose()


# format, temp files, locking ------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b'{"format": "snapshotd-fs", "schema_version": 99, "fingerprint": "sha256:x"}',
        b'{"format": "something-else"}',
        b"not json",
    ],
    ids=["schema", "format", "garbage"],
)
async def test_format_mismatch_refuses_to_open(root: Path, content: bytes) -> None:
    journal = FsJournal(root)
    await journal.open()
    await journal.aclose()
    (root / "format.json").write_bytes(content)
    with pytest.raises(ConfigError, match=r"format\.json"):
        await FsJournal(root).open()


async def test_format_json_written_and_foreign_directory_refused(tmp_path: Path) -> None:
    journal = FsJournal(tmp_path / "new")
    await journal.open()
    await journal.aclose()
    written = orjson.loads((tmp_path / "new" / "format.json").read_bytes())
    assert written["format"] == "snapshotd-fs"
    assert written["schema_version"] == 3
    assert written["fingerprint"].startswith("sha256:")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"format\.json"):
        await FsJournal(foreign).open()
    assert sorted(p.name for p in foreign.iterdir()) == ["important.txt"], "no lock left"


async def test_leftover_temp_files_removed_on_open(fs: FsJournal, root: Path) -> None:
    await add_run(fs, "r", 2)
    await fs.put_document("ns", "k", b"{}", None)
    await fs.aclose()
    leftovers = [
        root / "staging" / ".tmp-format",
        root / "staging" / ".tmp-halfrun" / "snapshots" / "x.snap",
        root / "staging" / ".tmp-snap",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    fs = FsJournal(root)
    await fs.open()
    assert list((root / "staging").iterdir()) == []
    assert await fs.list_runs(None, 10) == ["r"]
    assert await fs.list_snapshots("r") == []
    await fs.aclose()


async def test_start_up_cleanup_never_crosses_a_symlink(
    fs: FsJournal, root: Path, tmp_path: Path
) -> None:
    await add_run(fs, "r", 2)
    await fs.put_document("ns", "k", b"{}", None)
    await fs.aclose()
    outside = tmp_path / "outside"
    (outside / ".tmp-dir").mkdir(parents=True)
    (outside / ".tmp-file").write_bytes(b"keep")
    (outside / ".tmp-dir" / "inner").write_bytes(b"keep")
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))
    run_dir = events_file(root, "r").parent
    (run_dir / "snapshots").rmdir()
    (run_dir / "snapshots").symlink_to(outside)
    namespace = next((root / "documents").iterdir())
    for doc in namespace.iterdir():
        doc.unlink()
    namespace.rmdir()
    namespace.symlink_to(outside)
    (root / "staging" / ".tmp-link").symlink_to(outside)
    (root / "staging" / ".tmp-dirlink").symlink_to(outside / ".tmp-dir")
    fs = FsJournal(root)
    await fs.open()
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before
    assert list((root / "staging").iterdir()) == []
    # The symlinked places are damage of that run and that document, never followed.
    with pytest.raises(Corrupt, match="symbolic link"):
        await fs.get_run("r")
    with pytest.raises(Corrupt, match="symbolic link"):
        await fs.get_document("ns", "k")
    with pytest.raises(Corrupt, match="symbolic link"):
        await fs.put_document("ns", "k", b"{}", 1)
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before
    await fs.aclose()


async def test_second_open_of_same_directory_refused(fs: FsJournal, root: Path) -> None:
    second = FsJournal(root)
    with pytest.raises(ConfigError, match="locked by another process"):
        await second.open()
    await fs.aclose()
    await second.open()
    await second.aclose()
    await second.aclose()


async def test_closed_journal_is_unavailable(root: Path) -> None:
    journal = FsJournal(root)
    with pytest.raises(Unavailable, match="not open"):
        await journal.get_run("r")


# persistence and positioning ---------------------------------------------------------


async def test_everything_survives_reopen(fs: FsJournal, root: Path) -> None:
    await fs.create_run("r", "wf", "v1", "lease-1", T0)
    await fs.append("r", ev(4), expected_seq=0, lease="lease-1", now=T0)
    await fs.set_version("r", "v2")
    await fs.set_lease("r", "lease-2", expected="lease-1")
    events = await fs.read_events("r", 0)
    made = make_snapshot("r", events, version="v2", kind="manual")
    await fs.write_snapshot(made, lease="lease-2")
    await fs.set_pinned("r", made.meta.snapshot_id, True)
    await fs.append_audit("taken", {"run_id": "r"}, T0)
    await fs.put_document("savepoints", "r", b'{"t": 1}', None)
    fs = await reopen(fs, root)
    run = await fs.get_run("r")
    assert run is not None
    assert (run.version, run.lease, run.last_seq, run.created_at) == ("v2", "lease-2", 4, T0)
    assert await fs.read_events("r", 0) == events
    (meta,) = await fs.list_snapshots("r")
    assert meta == made.meta.__class__(**{**made.meta.to_json(), "pinned": True})
    assert (await fs.read_snapshot("r", meta.snapshot_id)).payload == made.payload
    (entry,) = await fs.read_audit(0, 10)
    assert (entry.cursor, entry.kind, entry.fields, entry.at) == (1, "taken", {"run_id": "r"}, T0)
    assert await fs.append_audit("again", {}, T0) == 2
    doc = await fs.get_document("savepoints", "r")
    assert doc is not None
    assert (doc.body, doc.version) == (b'{"t": 1}', 1)
    await fs.aclose()


async def test_pages_from_any_position_after_restart(fs: FsJournal, root: Path) -> None:
    await add_run(fs, "r", 3000)
    fs = await reopen(fs, root)
    for after in [2999, 1500, 10, 2000, 1501, 0, 2993, 2994, 3000, 1499]:
        page = await fs.read_event_page("r", after, 7)
        seqs = [orjson.loads(raw)["seq"] for raw in page.events]
        want = list(range(after + 1, min(after + 8, 3001)))
        assert seqs == want, after
        assert page.has_more == (want[-1] < 3000 if want else False)
    await fs.aclose()


async def test_append_of_10000_events_is_one_write_and_one_fsync(
    fs: FsJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_run(fs, "r", 1)
    calls: dict[str, int] = {"pwrite": 0, "write": 0, "fsync": 0}
    real_pwrite, real_write, real_fsync = os.pwrite, os.write, os.fsync

    def counting(name: str, real: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            calls[name] += 1
            return real(*args)

        return wrapper

    monkeypatch.setattr(os, "pwrite", counting("pwrite", real_pwrite))
    monkeypatch.setattr(os, "write", counting("write", real_write))
    monkeypatch.setattr(os, "fsync", counting("fsync", real_fsync))
    assert await fs.append("r", ev(10_000), expected_seq=1, lease=None, now=T0) == 10_001
    monkeypatch.undo()
    assert calls == {"pwrite": 1, "write": 0, "fsync": 1}


async def test_disk_errors_become_unavailable_and_leave_no_partial_batch(
    fs: FsJournal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_run(fs, "r", 2)
    real_pwrite = os.pwrite

    def half_then_enospc(fd: int, data: Any, offset: int) -> int:
        real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", half_then_enospc)
    with pytest.raises(Unavailable, match="No space left"):
        await fs.append("r", ev(50), expected_seq=2, lease=None, now=T0)
    monkeypatch.undo()
    assert [e.seq for e in await fs.read_events("r", 0)] == [1, 2]
    fs = await reopen(fs, root)
    assert [e.seq for e in await fs.read_events("r", 0)] == [1, 2]
    assert await fs.append("r", ev(1), expected_seq=2, lease=None, now=T0) == 3
    assert len(events_file(root, "r").read_bytes().splitlines()) == 3
    await fs.aclose()


async def test_failed_snapshot_write_leaves_nothing(
    fs: FsJournal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_run(fs, "r", 2)
    events = await fs.read_events("r", 0)
    made = make_snapshot("r", events)

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(Unavailable, match="Input/output error"):
        await fs.write_snapshot(made, lease=None)
    monkeypatch.undo()
    assert await fs.list_snapshots("r") == []
    assert temp_files(root) == []
    await fs.write_snapshot(made, lease=None)
    assert len(await fs.list_snapshots("r")) == 1


# crash safety ---------------------------------------------------------------------


def run_writer(root: Path, seed: int, rng: random.Random) -> list[str]:
    """Start the writer, let it work for a random moment, SIGKILL it; its complete lines."""
    with subprocess.Popen(
        [sys.executable, "-m", "tests.journals.fs_writer", str(root), str(seed)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith(b"ack "), proc.stderr.read() if proc.stderr else first
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            proc.send_signal(signal.SIGKILL)
            # Read through the buffered reader: readline() may already hold later lines,
            # which communicate() (reading the raw pipe) would lose.
            assert proc.stdout is not None and proc.stderr is not None
            out = proc.stdout.read()
            proc.stderr.read()
            proc.wait(10)
    text = (first + out).decode()
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    return complete.splitlines()


async def test_kill_9_loses_no_acknowledged_write(root: Path) -> None:
    rng = random.Random(1234)
    acked_seq = acked_audit = acked_doc = 0
    snapshots: set[str] = set()
    deleting: set[str] = set()
    for iteration in range(8):
        for line in run_writer(root, iteration, rng):
            word, _, rest = line.partition(" ")
            if word == "ack":
                acked_seq = int(rest)
            elif word == "snap":
                snapshots.add(rest)
            elif word == "deleting":
                deleting.update(rest.split())
            elif word == "audit":
                acked_audit = int(rest)
            elif word == "doc":
                acked_doc = int(rest)
        journal = FsJournal(root)
        await journal.open()
        try:
            assert temp_files(root) == []
            events = await journal.read_events("crash-run", 0)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert len(events) >= acked_seq > 0
            stored = {m.snapshot_id: m for m in await journal.list_snapshots("crash-run")}
            assert snapshots - deleting <= set(stored)
            for meta in stored.values():
                snapshot = await journal.read_snapshot("crash-run", meta.snapshot_id)
                state = compaction.decode_state(snapshot)
                assert state == fold(last_by_key, None, events[: meta.through_seq])
            assert len(await journal.read_audit(0, 100_000)) >= acked_audit
            doc = await journal.get_document("savepoints", "crash-run")
            assert (doc.version if doc else 0) >= acked_doc
        finally:
            await journal.aclose()


# locked down -----------------------------------------------------------------------


async def test_files_are_private_and_directories_owner_only(root: Path) -> None:
    old_umask = os.umask(0)
    try:
        journal = FsJournal(root)
        await journal.open()
        await add_run(journal, "r", 2)
        events = await journal.read_events("r", 0)
        await journal.write_snapshot(make_snapshot("r", events), lease=None)
        await journal.set_version("r", "v2")
        await journal.put_document("ns", "k", b"{}", None)
        await journal.append_audit("x", {}, T0)
        await journal.aclose()
    finally:
        os.umask(old_umask)
    modes = {p.relative_to(root): p.stat().st_mode & 0o777 for p in root.rglob("*")}
    assert modes, "the journal holds files"
    for path, mode in modes.items():
        expected = 0o700 if (root / path).is_dir() else 0o600
        assert mode == expected, (path, oct(mode))
    assert root.stat().st_mode & 0o777 == 0o700


async def test_append_never_writes_through_a_symlinked_events_file(
    fs: FsJournal, root: Path, tmp_path: Path
) -> None:
    await add_run(fs, "r", 2)
    path = events_file(root, "r")
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)
    before = target.read_bytes()
    # Cached or reopened: either way the link is refused and the run is corrupt.
    with pytest.raises(Corrupt, match="symbolic link"):
        await fs.append("r", ev(1), expected_seq=2, lease=None, now=T0)
    fs = await reopen(fs, root)
    with pytest.raises(Corrupt, match="symbolic link"):
        await fs.append("r", ev(1), expected_seq=2, lease=None, now=T0)
    with pytest.raises(Corrupt, match="symbolic link"):
        await fs.read_event_page("r", 0, 10)
    assert target.read_bytes() == before
    await fs.aclose()


@pytest.mark.parametrize("what", ["run-dir", "run.json", "snapshots"])
async def test_a_symlink_where_a_run_file_belongs_makes_that_run_corrupt(
    fs: FsJournal, root: Path, tmp_path: Path, what: str
) -> None:
    await add_run(fs, "r", 2)
    await add_run(fs, "other", 1)
    run_dir = events_file(root, "r").parent
    copy = tmp_path / "copy"
    os.rename(run_dir, copy)
    run_dir.mkdir()
    for item in copy.iterdir():
        os.rename(item, run_dir / item.name)
    place = {
        "run-dir": run_dir,
        "run.json": run_dir / "run.json",
        "snapshots": run_dir / "snapshots",
    }[what]
    moved = tmp_path / "moved"
    os.rename(place, moved)
    place.symlink_to(moved)
    fs = await reopen(fs, root)
    assert "r" in await fs.list_runs(None, 10)
    with pytest.raises(Corrupt, match=re.escape(str(place)) + ": a symbolic link"):
        await fs.get_run("r")
    assert [e.seq for e in await fs.read_events("other", 0)] == [1]
    await fs.aclose()


async def test_a_symlinked_snapshot_file_is_set_aside(
    fs: FsJournal, root: Path, tmp_path: Path
) -> None:
    await add_run(fs, "r", 2)
    made = make_snapshot("r", await fs.read_events("r", 0))
    await fs.write_snapshot(made, lease=None)
    snap = events_file(root, "r").parent / "snapshots" / f"{made.meta.snapshot_id}.snap"
    os.rename(snap, tmp_path / "outside.snap")
    snap.symlink_to(tmp_path / "outside.snap")
    fs = await reopen(fs, root)
    assert await fs.list_snapshots("r") == []
    assert "symbolic link" in (await fs.damaged_snapshots("r"))[made.meta.snapshot_id]
    await fs.aclose()


@pytest.mark.parametrize("what", ["staging", "documents", "format.json"])
async def test_the_roots_own_entries_must_not_be_symlinks(
    root: Path, tmp_path: Path, what: str
) -> None:
    journal = FsJournal(root)
    await journal.open()
    await journal.aclose()
    place = root / what
    moved = tmp_path / "moved"
    os.rename(place, moved)
    place.symlink_to(moved)
    with pytest.raises(
        ConfigError, match=re.escape(str(place)) if what != "format.json" else "format"
    ):
        await FsJournal(root).open()


# at scale --------------------------------------------------------------------------


async def test_run_cache_is_bounded_and_evicts_least_recently_used(root: Path) -> None:
    journal = FsJournal(root, cached_runs=3)
    await journal.open()
    for n in range(6):
        await add_run(journal, f"r{n}", 1)
    assert len(journal._runs) == 3
    for n in range(6):
        run = await journal.get_run(f"r{n}")
        assert run is not None
        assert run.last_seq == 1
        assert len(journal._runs) <= 3
    assert journal._runs.get("r5") is not None
    assert journal._runs.get("r0") is None
    await journal.aclose()


async def test_a_run_being_written_is_never_evicted(root: Path) -> None:
    journal = FsJournal(root, cached_runs=1)
    await journal.open()
    await add_run(journal, "busy", 1)
    files = journal._runs.get("busy")
    assert files is not None
    async with files.lock:
        await add_run(journal, "other", 1)
        assert journal._runs.get("busy") is files
    # Writes to one run share one lock and one log whatever else is loaded meanwhile.
    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(
                partial(journal.append, "busy", ev(1), expected_seq=None, lease=None, now=T0)
            )
            tg.start_soon(journal.get_run, f"{'other' if n % 2 else 'busy'}")
    assert [e.seq for e in await journal.read_events("busy", 0)] == list(range(1, 22))
    await journal.aclose()


async def test_sweep_reads_no_run_and_survives_restart(
    fs: FsJournal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(5):
        await add_run(fs, f"r{n}", n)
    made = make_snapshot("r3", await fs.read_events("r3", 0))
    await fs.write_snapshot(made, lease=None)
    later = datetime(2100, 1, 1, tzinfo=UTC)
    assert sorted(await fs.due_runs(later, 10)) == ["r1", "r2", "r4"]
    fs = await reopen(fs, root)
    loads: list[str] = []
    real = runs_module.load_run
    monkeypatch.setattr(
        adapter_module, "load_run", lambda *a, **k: loads.append(a[2]) or real(*a, **k)
    )
    assert sorted(await fs.due_runs(later, 10)) == ["r1", "r2", "r4"]
    assert await fs.due_runs(T0, 10) == []
    assert len(await fs.due_runs(later, 2)) == 2
    assert loads == []
    await fs.append("r3", ev(1), expected_seq=3, lease=None, now=T0)
    assert "r3" in await fs.due_runs(later, 10)
    await fs.aclose()


async def test_a_lost_index_is_rebuilt_and_a_stale_entry_heals(fs: FsJournal, root: Path) -> None:
    for n in range(4):
        await add_run(fs, f"r{n}", n)
    later = datetime(2100, 1, 1, tzinfo=UTC)
    await fs.aclose()
    (root / "due.jsonl").unlink()
    fs = await reopen(fs, root)
    assert sorted(await fs.due_runs(later, 10)) == ["r1", "r2", "r3"]
    await fs.aclose()
    # A crash between the index record and the events: the index names a run with nothing new.
    with (root / "due.jsonl").open("ab") as index:
        index.write(b'["r0",1.0,1.0]\n["r1",')
    fs = await reopen(fs, root)
    assert sorted(await fs.due_runs(later, 10)) == ["r0", "r1", "r2", "r3"]
    assert (await fs.get_run("r0")) is not None  # looking at the run corrects the index
    assert sorted(await fs.due_runs(later, 10)) == ["r1", "r2", "r3"]
    await fs.aclose()
    (root / "due.jsonl").write_bytes(b"not an index\n")
    fs = await reopen(fs, root)
    assert sorted(await fs.due_runs(later, 10)) == ["r1", "r2", "r3"]
    await fs.aclose()


async def test_due_points_and_sweep_order_survive_restart_without_reading_runs(
    fs: FsJournal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    for n in range(3):
        await add_run(fs, f"r{n}", 2)
    await fs.set_due("r0", DuePoint(2, 12, now + timedelta(minutes=5)), snapshotted=True)
    await fs.append("r0", ev(1), expected_seq=2, lease=None, now=now)
    await fs.set_due("r1", DuePoint(1, 2, None), snapshotted=True)
    later = now + timedelta(hours=1)
    before = await fs.sweep_due(later, 10, None)
    assert [d.run_id for d in before] == ["r2", "r1", "r0"]
    fs = await reopen(fs, root)
    loads: list[str] = []
    real = runs_module.load_run
    monkeypatch.setattr(
        adapter_module, "load_run", lambda *a, **k: loads.append(a[2]) or real(*a, **k)
    )
    assert await fs.sweep_due(later, 10, None) == before
    assert [d.run_id for d in await fs.sweep_due(now, 10, None)] == ["r2"]
    assert loads == []
    run = await fs.get_run("r0")
    assert run is not None
    assert run.due == DuePoint(2, 12, now + timedelta(minutes=5))
    await fs.aclose()


async def test_sweep_due_keeps_to_the_slices_asked_for(fs: FsJournal) -> None:
    for n in range(10):
        await add_run(fs, f"r{n}", 1)
    later = datetime(2100, 1, 1, tzinfo=UTC)
    wanted = {run_slice("r3"), run_slice("r7")}
    found = await fs.sweep_due(later, 100, None, sorted(wanted))
    expected = sorted(f"r{n}" for n in range(10) if run_slice(f"r{n}") in wanted)
    assert sorted(d.run_id for d in found) == expected
    assert len(await fs.sweep_due(later, 100, None)) == 10
