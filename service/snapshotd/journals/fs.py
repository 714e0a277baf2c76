"""The ``fs:PATH`` journal (SPEC section 5): runs, events, snapshots, audit log and documents.

Layout under the root::

    format.json                        format, schema version, storage fingerprint
    lock                               flock'ed by the one process using the root
    audit.jsonl                        audit log, one entry per line (append + fsync)
    <name>/run.json                    run record (atomic rewrite)
    <name>/events.jsonl                one ``records.event_json`` line per event
    <name>/snapshots/<snapshot_id>.snap   metadata line, then the state payload
    documents/<name>/<name>.doc        header line with the version, then the body

``<name>`` is ``id-`` + the hex of the UTF-8 id when that fits in 240 characters,
else ``h-`` + its SHA-256, so no id can reach outside the root, and a run directory
(always ``id-``/``h-``) never collides with the root's own entries. Run directories
sit directly in the root, as SPEC section 5 says, so tools can glob ``PATH/id-*``.
A run directory is built under a temp name and renamed into place, so a run exists
whole or not at all.

The flock makes this process the only writer, which is what lets each run keep a
cache (record, events tip, snapshot metadata) instead of re-reading files: caches
are filled from disk on first touch and updated by the worker thread that did the
write, so a cancelled caller can never leave a cache behind the disk. For the same
reason the set of run directory names read at open (and added to by ``create_run``)
answers "no such run" on the event loop, with no file-system call: a flood of
requests naming unknown runs must not queue a worker thread each. Once a run's
cache is filled, ``get_run``, ``list_snapshots`` and ``damaged_snapshots`` are
answered from it too; only first use of a run, event reads and writes touch disk.

Filling a run's cache also parses its whole ``events.jsonl`` once (about 0.8 s per
million events), because a bad line anywhere makes the run corrupt (SPEC section 5),
not only when a read happens to reach it. The damage is remembered: every method
that needs the run's events (``get_run``, ``append``, the reads) raises Corrupt
naming file and line until the file is repaired and the journal reopened, so
nothing is ever appended on top of it. Other runs are unaffected.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import orjson

from snapshotd.domain.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    Corrupt,
    NotFound,
    StaleLease,
    Superseded,
    Unavailable,
)
from snapshotd.domain.model import AuditEntry, Event, NewEvent, Run, Snapshot, SnapshotMeta
from snapshotd.domain.policies import newest_first
from snapshotd.journals import records
from snapshotd.journals.base import UNSET, Document, EventPage, _Unset
from snapshotd.journals.fsio import (
    TEMP_PREFIX,
    JsonlLog,
    atomic_write,
    fsync_dir,
    temp_path,
    write_all,
)

T = TypeVar("T")

FORMAT: Final = "snapshotd-fs"
SCHEMA_VERSION: Final = 2
_LAYOUT: Final = (
    "{id-<hex utf-8>|h-<sha256>}/{run.json,events.jsonl,snapshots/<uuid>.snap};"
    "documents/<name>/<name>.doc;audit.jsonl;"
    "event line=records.event_json;snapshot=meta json line+state;document=header line+body"
)
FINGERPRINT: Final = "sha256:" + hashlib.sha256(_LAYOUT.encode()).hexdigest()
"""Hash of the layout rules, so a build that changes them refuses older data."""

_MAX_NAME = 240
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SNAP_SUFFIX = ".snap"
_DOC_SUFFIX = ".doc"
_LOCK_NAME = "lock"
_FOREIGN_OK = {"lost+found", _LOCK_NAME}
_RUN_PREFIXES = ("id-", "h-")


def entry_name(text: str) -> str:
    """The file-system name of a run id, namespace or key (never a path)."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{text!r} is not valid Unicode") from None
    name = "id-" + raw.hex()
    return name if len(name) <= _MAX_NAME else "h-" + hashlib.sha256(raw).hexdigest()


def _run_json(run: Run) -> bytes:
    return records.dumps(
        {
            "run_id": run.run_id,
            "workflow": run.workflow,
            "version": run.version,
            "lease": run.lease,
            "created_at": run.created_at,
        }
    )


def _parse_run(path: str, raw: bytes, run_id: str) -> Run:
    try:
        obj = orjson.loads(raw)
        run = Run(
            obj["run_id"],
            obj["workflow"],
            obj["version"],
            obj["lease"],
            0,
            records.parse_time(obj["created_at"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise Corrupt(f"{path}: not a valid run record ({exc})") from None
    if run.run_id != run_id:
        raise Corrupt(f"{path}: holds run {run.run_id!r}, expected {run_id!r}")
    return run


def _parse_meta(path: str, line: bytes, run_id: str, snapshot_id: str) -> SnapshotMeta:
    try:
        meta = records.meta_from_json(orjson.loads(line))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise Corrupt(f"{path}: snapshot metadata does not decode ({exc})") from None
    if meta.snapshot_id != snapshot_id or meta.run_id != run_id:
        raise Corrupt(f"{path}: metadata names another snapshot or run")
    return meta


def _events(path: str, objects: list[dict[str, Any]]) -> list[Event]:
    """Decode validated event lines; one append shares one time, so times are parsed once."""
    times: dict[str, datetime] = {}
    events: list[Event] = []
    for obj in objects:
        try:
            stamp = obj["recorded_at"]
            recorded_at = times.get(stamp)
            if recorded_at is None:
                recorded_at = times[stamp] = records.parse_time(stamp)
            events.append(Event(obj["seq"], obj["type"], obj["data"], recorded_at))
        except (KeyError, TypeError, ValueError):
            raise Corrupt(f"{path}: line {obj.get('seq')}: not an event record") from None
    return events


@dataclass(eq=False)
class _RunFiles:
    """What the adapter keeps about one run besides the event lines.

    ``run.last_seq`` is not maintained (the events tip is). Attributes are
    replaced, never changed in place, so the event loop can read them while a
    worker thread holding ``lock`` writes.
    """

    directory: str
    run: Run
    events: JsonlLog
    snapshots: dict[str, SnapshotMeta]
    damaged: dict[str, str]
    """Snapshot files whose metadata does not decode: id -> why. Never listed."""
    events_damage: str | None
    """Why ``events.jsonl`` is corrupt (file and line), once found; None while intact."""
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    _listed: list[SnapshotMeta] = field(default_factory=list)
    _listed_from: dict[str, SnapshotMeta] | None = None

    @property
    def snapshot_dir(self) -> str:
        return os.path.join(self.directory, "snapshots")

    def snapshot_path(self, snapshot_id: str) -> str:
        return os.path.join(self.snapshot_dir, snapshot_id + _SNAP_SUFFIX)

    def listed(self) -> list[SnapshotMeta]:
        """The snapshots newest first, sorted once per replacement of ``snapshots``."""
        snapshots = self.snapshots
        if self._listed_from is not snapshots:
            self._listed = newest_first(snapshots.values())
            self._listed_from = snapshots
        return list(self._listed)

    def intact_events(self) -> JsonlLog:
        """The events log; Corrupt when it is known to be damaged."""
        if self.events_damage is not None:
            raise Corrupt(self.events_damage)
        return self.events

    def reading(self, func: Callable[[], T]) -> Callable[[], T]:
        """``func`` (a blocking read of the events), remembering damage it finds."""

        def read() -> T:
            try:
                return func()
            except Corrupt as exc:
                self.events_damage = exc.message
                raise

        return read


_Loaded = tuple[str, Run, JsonlLog, dict[str, SnapshotMeta], dict[str, str], str | None]
_EVENT_FIELDS: Final = ("type", "data", "recorded_at")


class FsJournal:
    """Journal in a directory; one process at a time (enforced with flock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._given = os.fspath(path)
        self._root = os.path.abspath(self._given)
        self._docs_dir = os.path.join(self._root, "documents")
        self._lock_fd: int | None = None
        self._runs: dict[str, _RunFiles] = {}
        self._run_ids: list[str] = []
        self._run_dirs: set[str] = set()
        self._audit = JsonlLog(os.path.join(self._root, "audit.jsonl"), "cursor")
        self._create_lock = anyio.Lock()
        self._audit_lock = anyio.Lock()
        self._doc_lock = anyio.Lock()

    @property
    def description(self) -> str:
        return f"fs:{self._given}"

    # plumbing -------------------------------------------------------------

    def _require_open(self) -> None:
        if self._lock_fd is None:
            raise Unavailable(f"journal {self.description} is not open")

    async def _io(self, func: Callable[[], T]) -> T:
        """Run one whole blocking operation in a worker thread; OSError -> Unavailable."""
        self._require_open()
        try:
            return await anyio.to_thread.run_sync(func)
        except OSError as exc:
            raise _unavailable(exc) from exc

    async def _files(self, run_id: str) -> _RunFiles:
        """The run's cache, filled from disk on first touch. Raises NotFound.

        A run whose directory name was not there at open nor created since does not
        exist (nothing else writes the root): that answer needs no worker thread.
        """
        files = self._runs.get(run_id)
        if files is not None:
            return files
        self._require_open()
        if entry_name(run_id) not in self._run_dirs:
            raise NotFound(f"run {run_id!r} not found")
        loaded = await self._io(partial(self._load_run, run_id))
        if loaded is None:
            raise NotFound(f"run {run_id!r} not found")
        # Mutations need a cache, so a load that finds none installed saw the current disk.
        return self._runs.setdefault(run_id, _RunFiles(*loaded))

    # open / close ---------------------------------------------------------

    async def open(self) -> None:
        if self._lock_fd is not None:
            return
        try:
            await anyio.to_thread.run_sync(self._open_blocking)
        except OSError as exc:
            raise _unavailable(exc) from exc

    def _open_blocking(self) -> None:
        os.makedirs(self._root, exist_ok=True)
        lock_path = os.path.join(self._root, _LOCK_NAME)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"journal {self.description}: {lock_path} is locked by another process "
                    "(another snapshotd uses this directory)"
                ) from None
            self._check_format()
            os.makedirs(self._docs_dir, exist_ok=True)
            self._remove_temp_files()
            self._run_ids, self._run_dirs = self._scan_runs()
            self._audit.load()
        except BaseException:
            os.close(fd)
            raise
        self._runs.clear()
        self._lock_fd = fd

    def _check_format(self) -> None:
        path = os.path.join(self._root, "format.json")
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            foreign = [
                name
                for name in os.listdir(self._root)
                if name not in _FOREIGN_OK and not name.startswith(".")
            ]
            if foreign:
                raise ConfigError(
                    f"journal {self.description}: {path} is missing and the directory is "
                    f"not empty ({', '.join(sorted(foreign)[:5])}); refusing to use it"
                ) from None
            body = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "fingerprint": FINGERPRINT}
            atomic_write(self._root, "format.json", orjson.dumps(body) + b"\n")
            return
        try:
            found = orjson.loads(raw)
        except orjson.JSONDecodeError:
            found = None
        expected = (FORMAT, SCHEMA_VERSION, FINGERPRINT)
        actual = (
            (found.get("format"), found.get("schema_version"), found.get("fingerprint"))
            if isinstance(found, dict)
            else None
        )
        if actual != expected:
            raise ConfigError(
                f"journal {self.description}: {path} says {actual!r} but this snapshotd "
                f"reads format {FORMAT!r} schema_version {SCHEMA_VERSION} fingerprint "
                f"{FINGERPRINT}; refusing to open"
            )

    def _remove_temp_files(self) -> None:
        """Delete what interrupted writes left: temp files and half-built run directories."""
        directories = [self._root, self._docs_dir]
        with os.scandir(self._root) as runs:
            for entry in runs:
                if entry.name.startswith(_RUN_PREFIXES) and entry.is_dir(follow_symlinks=False):
                    directories.append(entry.path)
                    directories.append(os.path.join(entry.path, "snapshots"))
        with os.scandir(self._docs_dir) as namespaces:
            directories.extend(e.path for e in namespaces if e.is_dir())
        for directory in directories:
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)

    def _scan_runs(self) -> tuple[list[str], set[str]]:
        """The sorted ids of the runs in the root, and the names of every run directory.

        A directory that no id maps to (damaged ``run.json`` of an ``h-`` name, say)
        is not listed, but its name is kept, so using the run reports the damage.
        """
        ids: list[str] = []
        directories: set[str] = set()
        with os.scandir(self._root) as entries:
            for entry in entries:
                name = entry.name
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if name.startswith(_RUN_PREFIXES):
                    directories.add(name)
                try:
                    if name.startswith("id-"):
                        run_id = bytes.fromhex(name[3:]).decode("utf-8")
                    elif name.startswith("h-"):
                        run_id = orjson.loads(Path(entry.path, "run.json").read_bytes())["run_id"]
                    else:
                        continue
                    if entry_name(run_id) == name:
                        ids.append(run_id)
                except (ValueError, KeyError, TypeError, FileNotFoundError, BadRequest):
                    # Not addressable by any id: a damaged or foreign directory.
                    continue
        ids.sort()
        return ids, directories

    async def aclose(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        self._runs.clear()
        self._run_ids = []
        self._run_dirs = set()
        if fd is not None:
            os.close(fd)

    # runs -----------------------------------------------------------------

    def _run_dir(self, run_id: str) -> str:
        return os.path.join(self._root, entry_name(run_id))

    def _load_run(self, run_id: str) -> _Loaded | None:
        directory = self._run_dir(run_id)
        path = os.path.join(directory, "run.json")
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            if os.path.isdir(directory):
                raise Corrupt(f"{path}: missing") from None
            return None
        run = _parse_run(path, raw, run_id)
        events = JsonlLog(os.path.join(directory, "events.jsonl"), "seq")
        damage = None
        try:
            events.load()
            events.check(_EVENT_FIELDS)
        except Corrupt as exc:
            damage = exc.message
        return directory, run, events, *self._scan_snapshots(directory, run_id), damage

    def _scan_snapshots(
        self, directory: str, run_id: str
    ) -> tuple[dict[str, SnapshotMeta], dict[str, str]]:
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
                if name.startswith(TEMP_PREFIX) or not name.endswith(_SNAP_SUFFIX):
                    continue
                with open(entry.path, "rb") as file:
                    head = file.readline()
                snapshot_id = name[: -len(_SNAP_SUFFIX)]
                try:
                    found[snapshot_id] = _parse_meta(entry.path, head, run_id, snapshot_id)
                except Corrupt as exc:
                    damaged[snapshot_id] = str(exc)
        return found, damaged

    async def create_run(
        self, run_id: str, workflow: str, version: str, lease: str | None, now: datetime
    ) -> bool:
        async with self._create_lock:
            try:
                existing = await self._files(run_id)
            except NotFound:
                pass
            else:
                if existing.run.workflow != workflow:
                    raise Conflict(f"run {run_id!r} exists with workflow {existing.run.workflow!r}")
                return False
            run = Run(run_id, workflow, version, lease, 0, now)
            loaded = await self._io(partial(self._create_blocking, run))
            self._runs.setdefault(run_id, _RunFiles(*loaded))
            return True

    def _create_blocking(self, run: Run) -> _Loaded:
        """Build the run directory under a temp name, then rename it into place.

        The run is made known here, in the worker thread, right after the rename: a
        caller cancelled meanwhile must not leave the directory unknown.
        """
        tmp = temp_path(self._root)
        os.mkdir(tmp)
        try:
            os.mkdir(os.path.join(tmp, "snapshots"))
            fd = os.open(os.path.join(tmp, "run.json"), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                write_all(fd, _run_json(run), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.close(os.open(os.path.join(tmp, "events.jsonl"), os.O_WRONLY | os.O_CREAT, 0o644))
            fsync_dir(tmp)
            directory = self._run_dir(run.run_id)
            os.rename(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._run_dirs.add(os.path.basename(directory))
        bisect.insort(self._run_ids, run.run_id)
        fsync_dir(self._root)
        events = JsonlLog(os.path.join(directory, "events.jsonl"), "seq")
        events.check(_EVENT_FIELDS)  # empty: marks this process's appends as trusted
        return directory, run, events, {}, {}, None

    async def get_run(self, run_id: str) -> Run | None:
        try:
            files = await self._files(run_id)
        except NotFound:
            return None
        run = files.run
        last_seq = files.intact_events().tip[0]
        return Run(run.run_id, run.workflow, run.version, run.lease, last_seq, run.created_at)

    async def set_version(self, run_id: str, version: str) -> None:
        files = await self._files(run_id)
        async with files.lock:
            await self._io(partial(self._rewrite_run, files, replace(files.run, version=version)))

    async def set_lease(
        self, run_id: str, lease: str | None, expected: str | _Unset | None = UNSET
    ) -> None:
        files = await self._files(run_id)
        async with files.lock:
            if not isinstance(expected, _Unset) and expected != files.run.lease:
                raise Conflict(f"run {run_id!r} has another lease than expected")
            await self._io(partial(self._rewrite_run, files, replace(files.run, lease=lease)))

    @staticmethod
    def _rewrite_run(files: _RunFiles, run: Run) -> None:
        atomic_write(files.directory, "run.json", _run_json(run))
        files.run = run

    async def list_runs(self, after: str | None, limit: int) -> list[str]:
        self._require_open()
        start = 0 if after is None else bisect.bisect_right(self._run_ids, after)
        return self._run_ids[start : start + max(limit, 0)]

    # events ---------------------------------------------------------------

    async def append(
        self,
        run_id: str,
        events: Sequence[NewEvent],
        *,
        expected_seq: int | None,
        lease: str | None,
        now: datetime,
    ) -> int:
        files = await self._files(run_id)
        async with files.lock:
            run = files.run
            log = files.intact_events()
            last = log.tip[0]
            if run.lease is not None and lease != run.lease:
                raise StaleLease(f"run {run_id!r} is leased to another owner")
            if expected_seq is not None and expected_seq != last:
                raise Conflict(
                    f"run {run_id!r} is at seq {last}, not {expected_seq}", last_seq=last
                )
            if not events:
                return last
            return await self._io(partial(_append_blocking, log, events, now))

    async def read_events(
        self, run_id: str, after_seq: int, limit: int | None = None
    ) -> list[Event]:
        files = await self._files(run_id)
        log = files.intact_events()
        tip = log.tip
        count = tip[0] if limit is None else limit

        def read() -> list[Event]:
            _, objects = log.read(after_seq, count, tip)
            return _events(log.path, objects)

        return await self._io(files.reading(read))

    async def read_event_page(self, run_id: str, after_seq: int, limit: int) -> EventPage:
        files = await self._files(run_id)
        log = files.intact_events()
        tip = log.tip
        read = partial(log.read, after_seq, limit, tip, parse=False)
        raws, _ = await self._io(files.reading(read))
        last = max(after_seq, 0) + len(raws) if raws else after_seq
        return EventPage(raws, last, last < tip[0])

    # snapshots ------------------------------------------------------------

    async def list_snapshots(self, run_id: str) -> list[SnapshotMeta]:
        files = await self._files(run_id)
        return files.listed()

    async def damaged_snapshots(self, run_id: str) -> dict[str, str]:
        files = await self._files(run_id)
        return dict(files.damaged)

    async def read_snapshot(self, run_id: str, snapshot_id: str) -> Snapshot:
        files = await self._files(run_id)
        if snapshot_id not in files.snapshots:
            raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found")
        path = files.snapshot_path(snapshot_id)

        def read() -> Snapshot:
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found") from None
            head, newline, payload = data.partition(b"\n")
            if not newline:
                raise Corrupt(f"{path}: no metadata line")
            return Snapshot(_parse_meta(path, head, run_id, snapshot_id), payload)

        return await self._io(read)

    async def write_snapshot(self, snapshot: Snapshot, *, lease: str | None) -> None:
        meta = snapshot.meta
        if not _SNAPSHOT_ID.fullmatch(meta.snapshot_id):
            raise BadRequest(f"snapshot id {meta.snapshot_id!r} is not a UUID")
        files = await self._files(meta.run_id)
        async with files.lock:
            if lease is not None and files.run.lease is not None and lease != files.run.lease:
                raise StaleLease(f"run {meta.run_id!r} is leased to another owner")
            if meta.kind != "safety":
                for other in files.snapshots.values():
                    if (
                        other.kind != "safety"
                        and other.version == meta.version
                        and other.through_seq >= meta.through_seq
                    ):
                        raise Superseded(
                            f"run {meta.run_id!r} already has a snapshot through seq "
                            f"{other.through_seq}"
                        )
            await self._io(partial(_store_snapshot, files, snapshot))

    async def delete_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        files = await self._files(run_id)
        async with files.lock:
            doomed = [sid for sid in dict.fromkeys(snapshot_ids) if sid in files.snapshots]
            if not doomed:
                return 0
            return await self._io(partial(_delete_snapshots, files, doomed))

    async def set_pinned(self, run_id: str, snapshot_id: str, pinned: bool) -> None:
        files = await self._files(run_id)
        async with files.lock:
            snapshot = await self.read_snapshot(run_id, snapshot_id)
            if snapshot.meta.pinned == pinned:
                return
            updated = Snapshot(replace(snapshot.meta, pinned=pinned), snapshot.payload)
            await self._io(partial(_store_snapshot, files, updated))

    async def due_runs(self, cutoff: datetime, limit: int) -> list[str]:
        self._require_open()
        ids = list(self._run_ids)
        missing = [run_id for run_id in ids if run_id not in self._runs]
        if missing:
            for run_id, loaded in (await self._io(partial(self._load_many, missing))).items():
                self._runs.setdefault(run_id, _RunFiles(*loaded))
        due: list[str] = []
        for run_id in ids:
            files = self._runs.get(run_id)
            if files is None or files.events_damage is not None:
                # Damaged runs are reported when used; sweeping them would only repeat that.
                continue
            run = files.run
            latest = max(
                (m for m in files.snapshots.values() if m.version == run.version),
                key=SnapshotMeta.order_key,
                default=None,
            )
            through = 0 if latest is None else latest.through_seq
            since = run.created_at if latest is None else latest.created_at
            if files.events.tip[0] > through and since < cutoff:
                due.append(run_id)
                if len(due) >= limit:
                    break
        return due

    def _load_many(self, run_ids: list[str]) -> dict[str, _Loaded]:
        """Load every given run; damaged ones are left out (they surface when used)."""
        loaded: dict[str, _Loaded] = {}
        for run_id in run_ids:
            try:
                found = self._load_run(run_id)
            except Corrupt:
                continue
            if found is not None:
                loaded[run_id] = found
        return loaded

    # audit log ------------------------------------------------------------

    async def append_audit(self, kind: str, fields: dict[str, Any], now: datetime) -> int:
        log = self._audit

        def write() -> int:
            cursor = log.tip[0] + 1
            line = records.dumps({"cursor": cursor, "at": now, "kind": kind, "fields": fields})
            return log.append(line + b"\n", 1)

        async with self._audit_lock:
            return await self._io(write)

    async def read_audit(self, cursor: int, limit: int) -> list[AuditEntry]:
        log = self._audit
        tip = log.tip

        def read() -> list[AuditEntry]:
            _, objects = log.read(cursor, limit, tip)
            try:
                return [
                    AuditEntry(o["cursor"], records.parse_time(o["at"]), o["kind"], o["fields"])
                    for o in objects
                ]
            except (KeyError, TypeError, ValueError):
                raise Corrupt(f"{log.path}: not an audit entry after cursor {cursor}") from None

        return await self._io(read)

    # documents ------------------------------------------------------------

    def _document_path(self, namespace: str, key: str) -> tuple[str, str]:
        return os.path.join(self._docs_dir, entry_name(namespace)), entry_name(key) + _DOC_SUFFIX

    async def get_document(self, namespace: str, key: str) -> Document | None:
        directory, name = self._document_path(namespace, key)
        return await self._io(partial(_read_document, os.path.join(directory, name)))

    async def put_document(
        self, namespace: str, key: str, body: bytes, expected_version: int | None
    ) -> int:
        directory, name = self._document_path(namespace, key)
        path = os.path.join(directory, name)

        def write() -> int:
            current = _read_document(path)
            current_version = None if current is None else current.version
            if current_version != expected_version:
                raise Conflict(f"document {namespace}/{key} changed concurrently")
            version = 1 if current_version is None else current_version + 1
            if not os.path.isdir(directory):
                os.mkdir(directory)
                fsync_dir(self._docs_dir)
            header = orjson.dumps({"namespace": namespace, "key": key, "version": version})
            atomic_write(directory, name, header + b"\n" + bytes(body))
            return version

        async with self._doc_lock:
            return await self._io(write)


def _unavailable(exc: OSError) -> Unavailable:
    where = f" ({exc.filename})" if exc.filename else ""
    return Unavailable(f"fs journal: {exc.strerror or exc}{where}")


def _append_blocking(log: JsonlLog, events: Sequence[NewEvent], now: datetime) -> int:
    seq = log.tip[0]
    lines = []
    for event in events:
        seq += 1
        lines.append(records.event_json(seq, event.type, event.data, now))
    lines.append(b"")
    return log.append(b"\n".join(lines), len(events))


def _store_snapshot(files: _RunFiles, snapshot: Snapshot) -> None:
    meta = snapshot.meta
    data = records.dumps(meta.to_json()) + b"\n" + snapshot.payload
    atomic_write(files.snapshot_dir, meta.snapshot_id + _SNAP_SUFFIX, data)
    files.snapshots = {**files.snapshots, meta.snapshot_id: meta}


def _delete_snapshots(files: _RunFiles, snapshot_ids: list[str]) -> int:
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


def _read_document(path: str) -> Document | None:
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
