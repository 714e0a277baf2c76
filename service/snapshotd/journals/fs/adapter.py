"""The ``FsJournal`` adapter: the Journal protocol over the files of one root directory.

See the package docstring for the layout, the caching rules and the sweep index.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import TypeVar

import anyio
import anyio.to_thread

from snapshotd.domain.errors import (
    BadRequest,
    Conflict,
    Corrupt,
    NotFound,
    StaleLease,
    Superseded,
    Unavailable,
)
from snapshotd.domain.model import Event, NewEvent, Run, RunSummary, Snapshot, SnapshotMeta
from snapshotd.journals.base import UNSET, EventPage, _Unset, kept_bases
from snapshotd.journals.fs.cache import RunCache, RunFiles
from snapshotd.journals.fs.codec import (
    SNAPSHOT_ID,
    decode_events,
    entry_name,
    run_json,
)
from snapshotd.journals.fs.files import Root
from snapshotd.journals.fs.index import DueIndex
from snapshotd.journals.fs.layout import open_root, scan_runs
from snapshotd.journals.fs.listing import summary, workflow_of
from snapshotd.journals.fs.log import JsonlLog
from snapshotd.journals.fs.runs import (
    append_events,
    create_run_dir,
    delete_snapshots,
    load_run,
    read_snapshots,
    store_snapshot,
)
from snapshotd.journals.fs.shared import SharedFiles, unavailable

T = TypeVar("T")

DEFAULT_CACHED_RUNS = 4096
"""Runs whose record, events tip and snapshot list stay in memory (about 3 KB each)."""


class FsJournal(SharedFiles):
    """Journal in a directory; one process at a time (enforced with flock)."""

    def __init__(self, path: str | os.PathLike[str], *, cached_runs: int = DEFAULT_CACHED_RUNS):
        if cached_runs < 1:
            raise ValueError("cached_runs must be at least 1")
        super().__init__(path)
        self._path = os.path.abspath(self._given)
        self._lock_fd: int | None = None
        self._runs = RunCache(cached_runs)
        self._run_ids: list[str] = []
        self._stray: set[str] = set()
        self._index: DueIndex | None = None
        self._create_lock = anyio.Lock()

    # plumbing -------------------------------------------------------------

    def _opened(self) -> tuple[Root, DueIndex]:
        root, _ = self._shared()
        if self._index is None:
            raise Unavailable(f"journal {self.description} is not open")
        return root, self._index

    def _known(self, run_id: str) -> str | None:
        """The id object kept in the run list (shared by the index), None if unknown."""
        at = bisect.bisect_left(self._run_ids, run_id)
        if at < len(self._run_ids) and self._run_ids[at] == run_id:
            return self._run_ids[at]
        return None

    async def _files(self, run_id: str) -> RunFiles:
        """The run's cache, filled from disk on first touch. Raises NotFound.

        A run whose directory was not there at open nor created since does not
        exist (nothing else writes the root): that answer needs no worker thread.
        """
        files = self._runs.get(run_id)
        if files is not None:
            return files
        root, _ = self._opened()
        name = entry_name(run_id)
        if self._known(run_id) is None and name not in self._stray:
            raise NotFound(f"run {run_id!r} not found")

        def load() -> RunFiles | None:
            loaded = load_run(root, name, run_id)
            if loaded is None:
                return None
            files = RunFiles(*loaded)
            if files.events_damage is None:
                self._reindex(files)
            return files

        files = await self._io(load)
        if files is None:
            raise NotFound(f"run {run_id!r} not found")
        # Mutations need a cache, so a load that finds none installed saw the current disk.
        return self._runs.add(run_id, files)

    def _reindex(self, files: RunFiles) -> None:
        """Tell the index whether the run waits for a snapshot (blocking)."""
        run_id = self._known(files.run.run_id)
        if run_id is not None and self._index is not None:
            self._index.set(run_id, files.due_since())

    def _indexed(self, files: RunFiles, func: Callable[[], T]) -> Callable[[], T]:
        """``func`` (a blocking write to the run), then the index brought up to date."""

        def write() -> T:
            try:
                return func()
            finally:
                self._reindex(files)

        return write

    # open / close ---------------------------------------------------------

    async def open(self) -> None:
        if self._lock_fd is not None:
            return
        try:
            await anyio.to_thread.run_sync(self._open_blocking)
        except OSError as exc:
            raise unavailable(exc) from exc

    def _open_blocking(self) -> None:
        root, lock_fd = open_root(self._path, self.description)
        try:
            run_ids, stray = scan_runs(root)
            audit = JsonlLog(root, ("audit.jsonl",), "cursor")
            audit.load()
            self._run_ids = run_ids
            index = DueIndex(root)
            index.open(self._known, partial(self._rebuild_index, root))
        except BaseException:
            self._run_ids = []
            os.close(lock_fd)
            root.close()
            raise
        self._runs.clear()
        self._stray, self._index, self._audit = stray, index, audit
        self._root, self._lock_fd = root, lock_fd

    def _rebuild_index(self, root: Root) -> Iterator[tuple[str, float]]:
        """Every waiting run, read from disk (a missing or damaged index only)."""
        for run_id in self._run_ids:
            try:
                loaded = load_run(root, entry_name(run_id), run_id, check=False)
            except Corrupt:
                continue
            since = None if loaded is None else RunFiles(*loaded).due_since()
            if since is not None:
                yield run_id, since

    async def aclose(self) -> None:
        root, self._root = self._root, None
        fd, self._lock_fd = self._lock_fd, None
        self._runs.clear()
        self._run_ids, self._stray, self._index, self._audit = [], set(), None, None
        if fd is not None:
            os.close(fd)
        if root is not None:
            root.close()

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
            root, _ = self._opened()
            run = Run(run_id, workflow, version, lease, 0, now)
            created = partial(bisect.insort, self._run_ids, run_id)
            loaded = await self._io(partial(create_run_dir, root, entry_name(run_id), run, created))
            self._runs.add(run_id, RunFiles(*loaded))
            return True

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
            await self._rewrite_run(files, replace(files.run, version=version))

    async def set_lease(
        self, run_id: str, lease: str | None, expected: str | _Unset | None = UNSET
    ) -> None:
        files = await self._files(run_id)
        async with files.lock:
            if not isinstance(expected, _Unset) and expected != files.run.lease:
                raise Conflict(f"run {run_id!r} has another lease than expected")
            await self._rewrite_run(files, replace(files.run, lease=lease))

    async def _rewrite_run(self, files: RunFiles, run: Run) -> None:
        root, _ = self._opened()

        def write() -> None:
            with root.directory(files.name) as directory:
                root.atomic_write(directory, "run.json", run_json(run))
            files.run = run

        await self._io(self._indexed(files, write))

    async def list_runs(self, after: str | None, limit: int) -> list[str]:
        self._opened()
        start = 0 if after is None else bisect.bisect_right(self._run_ids, after)
        return self._run_ids[start : start + max(limit, 0)]

    async def run_summaries(
        self, after: str | None, limit: int, workflow: str | None
    ) -> list[RunSummary]:
        root, _ = self._opened()
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
                and self._runs.get(run_id) is None
                and await self._io(partial(workflow_of, root, run_id)) != workflow
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
            _, index = self._opened()
            known = self._known(run_id) or run_id

            def write() -> int:
                if not index.waiting(known):
                    # Durable before the events: after a crash the index still names the run.
                    index.set(known, files.since(), durable=True)
                return append_events(log, events, now)

            return await self._io(self._indexed(files, write))

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

    async def list_links(self, run_id: str) -> list[SnapshotMeta]:
        files = await self._files(run_id)
        return files.links()

    async def read_snapshot(self, run_id: str, snapshot_id: str) -> Snapshot:
        files = await self._files(run_id)
        listed = files.snapshots.get(snapshot_id)
        if listed is None or listed.retired:
            raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found")
        return await self.read_link(run_id, snapshot_id)

    async def read_link(self, run_id: str, snapshot_id: str) -> Snapshot:
        (link,) = await self.read_links(run_id, [snapshot_id])
        return link

    async def read_links(self, run_id: str, snapshot_ids: Sequence[str]) -> list[Snapshot]:
        files = await self._files(run_id)
        for snapshot_id in snapshot_ids:
            if snapshot_id not in files.snapshots:
                raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found")
        root, _ = self._opened()
        return await self._io(partial(read_snapshots, root, files, list(snapshot_ids)))

    async def write_snapshot(self, snapshot: Snapshot, *, lease: str | None) -> None:
        meta = snapshot.meta
        if not SNAPSHOT_ID.fullmatch(meta.snapshot_id):
            raise BadRequest(f"snapshot id {meta.snapshot_id!r} is not a UUID")
        files = await self._files(meta.run_id)
        async with files.lock:
            if lease is not None and files.run.lease is not None and lease != files.run.lease:
                raise StaleLease(f"run {meta.run_id!r} is leased to another owner")
            if meta.base_id is not None and meta.base_id not in files.snapshots:
                raise Superseded(f"run {meta.run_id!r}: base link {meta.base_id} is gone")
            if meta.kind != "safety":
                for other in files.snapshots.values():
                    if (
                        other.kind != "safety"
                        and other.version == meta.version
                        and other.through_seq >= meta.through_seq
                        and not other.retired
                    ):
                        raise Superseded(
                            f"run {meta.run_id!r} already has a snapshot through seq "
                            f"{other.through_seq}"
                        )
            root, _ = self._opened()
            await self._io(self._indexed(files, partial(store_snapshot, root, files, snapshot)))

    async def delete_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        files = await self._files(run_id)
        async with files.lock:
            doomed = [
                sid
                for sid in kept_bases(files.snapshots.values(), snapshot_ids)
                if sid in files.snapshots
            ]
            if not doomed:
                return 0
            root, _ = self._opened()
            return await self._io(
                self._indexed(files, partial(delete_snapshots, root, files, doomed))
            )

    async def retire_snapshots(self, run_id: str, snapshot_ids: Sequence[str]) -> int:
        files = await self._files(run_id)
        retired = 0
        async with files.lock:
            root, _ = self._opened()
            for snapshot_id in dict.fromkeys(snapshot_ids):
                listed = files.snapshots.get(snapshot_id)
                if listed is None or listed.retired:
                    continue
                (link,) = await self._io(partial(read_snapshots, root, files, [snapshot_id]))
                meta = replace(link.meta, retired=True, pinned=False)
                store = partial(store_snapshot, root, files, Snapshot(meta, link.payload))
                await self._io(self._indexed(files, store))
                retired += 1
        return retired

    async def set_pinned(self, run_id: str, snapshot_id: str, pinned: bool) -> None:
        files = await self._files(run_id)
        async with files.lock:
            snapshot = await self.read_snapshot(run_id, snapshot_id)
            if snapshot.meta.pinned == pinned:
                return
            updated = Snapshot(replace(snapshot.meta, pinned=pinned), snapshot.payload)
            root, _ = self._opened()
            await self._io(partial(store_snapshot, root, files, updated))

    async def due_runs(self, cutoff: datetime, limit: int) -> list[str]:
        """From the index, in a worker thread: no run is read. Runs known damaged
        are left out (they are reported when used; sweeping them would only repeat it)."""
        _, index = self._opened()
        cached = self._runs.get

        def damaged(run_id: str) -> bool:
            files = cached(run_id)
            return files is not None and files.events_damage is not None

        return await self._io(partial(index.due, cutoff.timestamp(), limit, damaged))
