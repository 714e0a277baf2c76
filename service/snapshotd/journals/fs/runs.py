"""Blocking per-run work of the ``fs:`` journal: loading, creating, appending, snapshots.

Called from worker threads by the adapter; OSError propagates unchanged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import orjson

from snapshotd.domain.errors import Corrupt
from snapshotd.domain.model import NewEvent, Run, Snapshot, SnapshotMeta
from snapshotd.journals import records
from snapshotd.journals.base import Document
from snapshotd.journals.fs.cache import Loaded, RunFiles
from snapshotd.journals.fs.codec import (
    EVENT_FIELDS,
    SNAP_SUFFIX,
    entry_name,
    parse_meta,
    parse_run,
    run_json,
)
from snapshotd.journals.fs.files import TEMP_PREFIX, atomic_write, fsync_dir, temp_path, write_all
from snapshotd.journals.fs.log import JsonlLog


def run_dir(root: str, run_id: str) -> str:
    return os.path.join(root, entry_name(run_id))


def load_run(root: str, run_id: str) -> Loaded | None:
    """Read a run's record, events tip and snapshot metadata; None when it does not exist."""
    directory = run_dir(root, run_id)
    path = os.path.join(directory, "run.json")
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        if os.path.isdir(directory):
            raise Corrupt(f"{path}: missing") from None
        return None
    run = parse_run(path, raw, run_id)
    events = JsonlLog(os.path.join(directory, "events.jsonl"), "seq")
    damage = None
    try:
        events.load()
        events.check(EVENT_FIELDS)
    except Corrupt as exc:
        damage = exc.message
    return directory, run, events, *scan_snapshots(directory, run_id), damage


def scan_snapshots(directory: str, run_id: str) -> tuple[dict[str, SnapshotMeta], dict[str, str]]:
    """Metadata of every snapshot file, and the files whose metadata does not decode.

    A damaged file must not make the whole run unusable (its events, the other
    snapshots): it is set aside, never listed, so never a base nor pruned, and
    ``damaged_snapshots`` names it for ``verify`` and the audit log.
    """
    found: dict[str, SnapshotMeta] = {}
    damaged: dict[str, str] = {}
    snapshot_dir = os.path.join(directory, "snapshots")
    if not os.path.isdir(snapshot_dir):
        raise Corrupt(f"{snapshot_dir}: missing")
    with os.scandir(snapshot_dir) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(TEMP_PREFIX) or not name.endswith(SNAP_SUFFIX):
                continue
            with open(entry.path, "rb") as file:
                head = file.readline()
            snapshot_id = name[: -len(SNAP_SUFFIX)]
            try:
                found[snapshot_id] = parse_meta(entry.path, head, run_id, snapshot_id)
            except Corrupt as exc:
                damaged[snapshot_id] = str(exc)
    return found, damaged


def create_run_dir(root: str, run: Run, created: Callable[[str], None]) -> Loaded:
    """Build the run directory under a temp name, then rename it into place.

    ``created(name)`` is called here, in the worker thread, right after the rename:
    a caller cancelled meanwhile must not leave the directory unknown.
    """
    tmp = temp_path(root)
    os.mkdir(tmp)
    try:
        os.mkdir(os.path.join(tmp, "snapshots"))
        fd = os.open(os.path.join(tmp, "run.json"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            write_all(fd, run_json(run), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.close(os.open(os.path.join(tmp, "events.jsonl"), os.O_WRONLY | os.O_CREAT, 0o644))
        fsync_dir(tmp)
        directory = run_dir(root, run.run_id)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    created(os.path.basename(directory))
    fsync_dir(root)
    events = JsonlLog(os.path.join(directory, "events.jsonl"), "seq")
    events.check(EVENT_FIELDS)  # empty: marks this process's appends as trusted
    return directory, run, events, {}, {}, None


def append_events(log: JsonlLog, events: Sequence[NewEvent], now: datetime) -> int:
    seq = log.tip[0]
    lines = []
    for event in events:
        seq += 1
        lines.append(records.event_json(seq, event.type, event.data, now))
    lines.append(b"")
    return log.append(b"\n".join(lines), len(events))


def store_snapshot(files: RunFiles, snapshot: Snapshot) -> None:
    meta = snapshot.meta
    data = records.dumps(meta.to_json()) + b"\n" + snapshot.payload
    atomic_write(files.snapshot_dir, meta.snapshot_id + SNAP_SUFFIX, data)
    files.snapshots = {**files.snapshots, meta.snapshot_id: meta}


def delete_snapshots(files: RunFiles, snapshot_ids: list[str]) -> int:
    remaining = dict(files.snapshots)
    try:
        for snapshot_id in snapshot_ids:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(files.snapshot_path(snapshot_id))
            del remaining[snapshot_id]
    finally:
        files.snapshots = remaining
    fsync_dir(files.snapshot_dir)
    return len(snapshot_ids)


def read_document(path: str) -> Document | None:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    head, newline, body = data.partition(b"\n")
    try:
        version = orjson.loads(head)["version"] if newline else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        version = None
    if type(version) is not int:
        raise Corrupt(f"{path}: no valid document header")
    return Document(body, version)
