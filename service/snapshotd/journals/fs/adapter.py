"""The ``FsJournal`` adapter: the Journal protocol over the files of one root directory.

See the package docstring for the layout and the caching rules.
"""

from __future__ import annotations

import bisect
import fcntl
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

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
from snapshotd.domain.model import (
    AuditEntry,
    Event,
    NewEvent,
    Run,
    RunSummary,
    Snapshot,
    SnapshotMeta,
)
from snapshotd.journals import records
from snapshotd.journals.base import UNSET, Document, EventPage, _Unset
from snapshotd.journals.fs.cache import Loaded, RunFiles
from snapshotd.journals.fs.codec import (
    DOC_SUFFIX,
    LOCK_NAME,
    SNAPSHOT_ID,
    decode_events,
    entry_name,
    parse_meta,
    run_json,
)
from snapshotd.journals.fs.files import atomic_write, fsync_dir
from snapshotd.journals.fs.layout import check_format, remove_temp_files, scan_runs
from snapshotd.journals.fs.listing import summary, workflow_of
from snapshotd.journals.fs.log import JsonlLog
from snapshotd.journals.fs.runs import (
    append_events,
    create_run_dir,
    delete_snapshots,
    load_run,
    read_document,
    store_snapshot,
)

T = TypeVar("T")


class FsJournal:
    """Journal in a directory; one process at a time (enforced with flock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._given = os.fspath(path)
        self._root = os.path.abspath(self._given)
        self._docs_dir = os.path.join(self._root, "documents")
        self._lock_fd: int | None = None
        self._runs: dict[str, RunFiles] = {}
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
            raise unavailable(exc) from exc

    async def _files(self, run_id: str) -> RunFiles:
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
        loaded = await self._io(partial(load_run, self._root, run_id))
        if loaded is None:
            raise NotFound(f"run {run_id!r} not found")
        # Mutations need a cache, so a load that finds none installed saw the current disk.
        return self._runs.setdefault(run_id, RunFiles(*loaded))

    # open / close ---------------------------------------------------------

    async def open(self) -> None:
        if self._lock_fd is not None:
            return
        try:
            await anyio.to_thread.run_sync(self._open_blocking)
        except OSError as exc:
            raise unavailable(exc) from exc

    def _open_blocking(self) -> None:
        os.makedirs(self._root, exist_ok=True)
        lock_path = os.path.join(self._root, LOCK_NAME)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"journal {self.description}: {lock_path} is locked by another process "
                    "(another snapshotd uses this directory)"
                ) from None
            check_format(self._root, self.description)
            os.makedirs(self._docs_dir, exist_ok=True)
            remove_temp_files(self._root, self._docs_dir)
            self._run_ids, self._run_dirs = scan_runs(self._root)
            self._audit.load()
        except BaseException:
            os.close(fd)
            raise
        self._runs.clear()
        self._lock_fd = fd

    async def aclose(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        self._runs.clear()
        self._run_ids = []
        self._run_dirs = set()
        if fd is not None:
            os.close(fd)

    # runs -----------------------------------------------------------------

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
            loaded = await self._io(
                partial(create_run_dir, self._root, run, partial(self._created, run_id))
            )
            self._runs.setdefault(run_id, RunFiles(*loaded))
            return True

    def _created(self, run_id: str, name: str) -> None:
        self._run_dirs.add(name)
        bisect.insort(self._run_ids, run_id)

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
    def _rewrite_run(files: RunFiles, run: Run) -> None:
        atomic_write(files.directory, "run.json", run_json(run))
        files.run = run

    async def list_runs(self, after: str | None, limit: int) -> list[str]:
        self._require_open()
        start = 0 if after is None else bisect.bisect_right(self._run_ids, after)
        return self._run_ids[start : start + max(limit, 0)]

    async def run_summaries(
        self, after: str | None, limit: int, workflow: str | None
    ) -> list[RunSummary]:
        self._require_open()
        page: list[RunSummary] = []
        cursor = after
        while len(page) < limit:
            # Bisect again after every await: create_run may insert meanwhile.
            index = 0 if cursor is None else bisect.bisect_right(self._run_ids, cursor)
            if index >= len(self._run_ids):
                break
            cursor = run_id = self._run_ids[index]
            if (
                workflow is not None
                and run_id not in self._runs
                and await self._io(partial(workflow_of, self._root, run_id)) != workflow
            ):
                continue  # passed over without filling its cache
            try:
                files = await self._files(run_id)
            except (NotFound, Corrupt):
                continue
            row = summary(files)
            if row is not None and (workflow is None or row.workflow == workflow):
                page.append(row)
        return page

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
            return await self._io(partial(append_events, log, events, now))

    async def read_events(
        self, run_id: str, after_seq: int, limit: int | None = None
    ) -> list[Event]:
        files = await self._files(run_id)
        log = files.intact_events()
        tip = log.tip
        count = tip[0] if limit is None else limit

        def read() -> list[Event]:
            _, objects = log.read(after_seq, count, tip)
            return decode_events(log.path, objects)

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
            return Snapshot(parse_meta(path, head, run_id, snapshot_id), payload)

        return await self._io(read)

    async def write_snapshot(self, snapshot: Snapshot, *, lease: str | None) -> None:
        meta = snapshot.meta
        if not SNAPSHOT_ID.fullmatch(meta.snapshot_id):
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
            await self._io(partial(store_snapshot, files, snapshot))

    async def delete_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        files = await self._files(run_id)
        async with files.lock:
            doomed = [sid for sid in dict.fromkeys(snapshot_ids) if sid in files.snapshots]
            if not doomed:
                return 0
            return await self._io(partial(delete_snapshots, files, doomed))

    async def set_pinned(self, run_id: str, snapshot_id: str, pinned: bool) -> None:
        files = await self._files(run_id)
        async with files.lock:
            snapshot = await self.read_snapshot(run_id, snapshot_id)
            if snapshot.meta.pinned == pinned:
                return
            updated = Snapshot(replace(snapshot.meta, pinned=pinned), snapshot.payload)
            await self._io(partial(store_snapshot, files, updated))

    async def due_runs(self, cutoff: datetime, limit: int) -> list[str]:
        self._require_open()
        ids = list(self._run_ids)
        missing = [run_id for run_id in ids if run_id not in self._runs]
        if missing:
            for run_id, loaded in (await self._io(partial(self._load_many, missing))).items():
                self._runs.setdefault(run_id, RunFiles(*loaded))
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

    def _load_many(self, run_ids: list[str]) -> dict[str, Loaded]:
        """Load every given run; damaged ones are left out (they surface when used)."""
        loaded: dict[str, Loaded] = {}
        for run_id in run_ids:
            try:
                found = load_run(self._root, run_id)
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
        return os.path.join(self._docs_dir, entry_name(namespace)), entry_name(key) + DOC_SUFFIX

    async def get_document(self, namespace: str, key: str) -> Document | None:
        directory, name = self._document_path(namespace, key)
        return await self._io(partial(read_document, os.path.join(directory, name)))

    async def put_document(
        self, namespace: str, key: str, body: bytes, expected_version: int | None
    ) -> int:
        directory, name = self._document_path(namespace, key)
        path = os.path.join(directory, name)

        def write() -> int:
            current = read_document(path)
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


def unavailable(exc: OSError) -> Unavailable:
    where = f" ({exc.filename})" if exc.filename else ""
    return Unavailable(f"fs journal: {exc.strerror or exc}{where}")
