"""Blocking per-run work of the ``fs:`` journal: loading, creating, appending, snapshots.

Called from worker threads by the adapter; OSError propagates unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Sequence
from datetime import datetime

import orjson

from snapshotd.domain.errors import Corrupt, NotFound
from snapshotd.domain.model import NewEvent, Run, Snapshot, SnapshotMeta
from snapshotd.journals import records
from snapshotd.journals.base import Document
from snapshotd.journals.fs.cache import Loaded, RunFiles
from snapshotd.journals.fs.codec import (
    SNAP_SUFFIX,
    parse_meta,
    parse_run,
    run_json,
)
from snapshotd.journals.fs.files import (
    STAGING,
    Root,
    make_dir,
    temp_name,
    write_all,
)
from snapshotd.journals.fs.log import JsonlLog

_READ_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def events_log(root: Root, name: str) -> JsonlLog:
    return JsonlLog(root, (name, "events.jsonl"), "seq")


def load_run(root: Root, name: str, run_id: str, *, check: bool = True) -> Loaded | None:
    """Read a run's record, events tip and snapshot metadata; None when it does not exist.

    Raises Corrupt when ``run.json`` or a directory is missing or damaged or a
    symlink stands where one of them belongs.
    """
    try:
        raw = root.read(name, "run.json")
    except FileNotFoundError as exc:
        if exc.filename == root.join(name):
            return None
        raise Corrupt(f"{root.join(name, 'run.json')}: missing") from None
    run = parse_run(root.join(name, "run.json"), raw, run_id)
    events = events_log(root, name)
    damage = None
    try:
        events.load()
        if check:
            events.check()
    except Corrupt as exc:
        damage = exc.message
    return name, run, events, *scan_snapshots(root, name, run_id), damage


def scan_snapshots(
    root: Root, name: str, run_id: str
) -> tuple[dict[str, SnapshotMeta], dict[str, str]]:
    """Metadata of every snapshot file, and the files whose metadata does not decode.

    A damaged file must not make the whole run unusable (its events, the other
    snapshots): it is set aside, never listed, so never a base nor pruned, and
    ``damaged_snapshots`` names it for ``verify`` and the audit log. So is a
    symlink where a snapshot file belongs (it is never followed).
    """
    found: dict[str, SnapshotMeta] = {}
    damaged: dict[str, str] = {}
    try:
        directory = root.open((name, "snapshots"), 0, directory=True)
    except FileNotFoundError:
        raise Corrupt(f"{root.join(name, 'snapshots')}: missing") from None
    try:
        for entry in os.scandir(directory):
            file_name = entry.name
            if not file_name.endswith(SNAP_SUFFIX):
                continue
            snapshot_id = file_name[: -len(SNAP_SUFFIX)]
            path = root.join(name, "snapshots", file_name)
            try:
                fd = os.open(file_name, _READ_NOFOLLOW, dir_fd=directory)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                damaged[snapshot_id] = f"{path}: a symbolic link; not followed"
                continue
            try:
                head = _first_line(fd)
            finally:
                os.close(fd)
            try:
                found[snapshot_id] = parse_meta(path, head, run_id, snapshot_id)
            except Corrupt as exc:
                damaged[snapshot_id] = str(exc)
    finally:
        os.close(directory)
    return found, damaged


def _first_line(fd: int) -> bytes:
    head = b""
    while chunk := os.pread(fd, 1 << 16, len(head)):
        found = chunk.find(b"\n")
        if found >= 0:
            return head + chunk[:found]
        head += chunk
    return head


def create_run_dir(root: Root, name: str, run: Run, created: Callable[[], None]) -> Loaded:
    """Build the run directory under a temp name, then rename it into place.

    ``created()`` is called here, in the worker thread, right after the rename:
    a caller cancelled meanwhile must not leave the directory unknown.
    """
    tmp = temp_name()
    make_dir(root.staging, tmp)
    try:
        with root.directory(STAGING, tmp) as directory:
            make_dir(directory, "snapshots")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open("run.json", flags, 0o600, dir_fd=directory)
            try:
                write_all(fd, run_json(run), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.close(os.open("events.jsonl", flags, 0o600, dir_fd=directory))
            os.fsync(directory)
        os.rename(tmp, name, src_dir_fd=root.staging, dst_dir_fd=root.fd)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp, dir_fd=root.staging)
        raise
    created()
    os.fsync(root.fd)
    events = events_log(root, name)
    events.check()  # empty: marks this process's appends as trusted
    return name, run, events, {}, {}, None


def append_events(log: JsonlLog, events: Sequence[NewEvent], now: datetime) -> int:
    seq = log.tip[0]
    lines = []
    for event in events:
        seq += 1
        lines.append(records.event_json(seq, event.type, event.data, now))
    return log.append(lines)


def read_snapshots(root: Root, files: RunFiles, snapshot_ids: Sequence[str]) -> list[Snapshot]:
    """Snapshot files as stored (metadata line + payload); NotFound when one is gone."""
    run_id = files.run.run_id
    found: list[Snapshot] = []
    for snapshot_id in snapshot_ids:
        parts = files.snapshot_parts(snapshot_id)
        try:
            data = root.read(*parts)
        except FileNotFoundError:
            raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found") from None
        path = root.join(*parts)
        head, newline, payload = data.partition(b"\n")
        if not newline:
            raise Corrupt(f"{path}: no metadata line")
        found.append(Snapshot(parse_meta(path, head, run_id, snapshot_id), payload))
    return found


def store_snapshot(root: Root, files: RunFiles, snapshot: Snapshot) -> None:
    meta = snapshot.meta
    data = records.dumps(records.meta_record(meta)) + b"\n" + snapshot.payload
    with root.directory(files.name, "snapshots") as directory:
        root.atomic_write(directory, meta.snapshot_id + SNAP_SUFFIX, data)
    files.snapshots = {**files.snapshots, meta.snapshot_id: meta}


def delete_snapshots(root: Root, files: RunFiles, snapshot_ids: list[str]) -> int:
    remaining = dict(files.snapshots)
    with root.directory(files.name, "snapshots") as directory:
        try:
            for snapshot_id in snapshot_ids:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(snapshot_id + SNAP_SUFFIX, dir_fd=directory)
                del remaining[snapshot_id]
        finally:
            files.snapshots = remaining
        os.fsync(directory)
    return len(snapshot_ids)


def read_document(root: Root, parts: tuple[str, str, str]) -> Document | None:
    try:
        data = root.read(*parts)
    except FileNotFoundError:
        return None
    head, newline, body = data.partition(b"\n")
    try:
        version = orjson.loads(head)["version"] if newline else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        version = None
    if type(version) is not int:
        raise Corrupt(f"{root.join(*parts)}: no valid document header")
    return Document(body, version)


def write_document(root: Root, parts: tuple[str, str, str], data: bytes) -> None:
    docs, namespace, name = parts
    with root.directory(docs) as directory:
        if make_dir(directory, namespace):
            os.fsync(directory)
    with root.directory(docs, namespace) as directory:
        root.atomic_write(directory, name, data)
