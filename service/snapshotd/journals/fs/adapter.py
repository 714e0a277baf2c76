"""The ``FsJournal`` adapter: the Journal protocol over the files of one root directory.

See the package docstring for the layout, the caching rules and the sweep index.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
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
from snapshotd.domain.model import (
    DuePoint,
    Event,
    NewEvent,
    Run,
    RunSummary,
    Snapshot,
    SnapshotMeta,
)
from snapshotd.journals.base import FIRST_RETRY_S, UNSET, DueRun, EventPage, _Unset, kept_bases
from snapshotd.journals.fs import sweeps
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
from snapshotd.journals.fs.listing import LISTING_BATCH, summary, workflows_of
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
        self._backoff: dict[str, tuple[int, float]] = {}
        """Failing runs: failures so far and when to retry (lost on restart: they retry)."""

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
        root, index = self._opened()
        name = entry_name(run_id)
        if self._known(run_id) is None and name not in self._stray:
            raise NotFound(f"run {run_id!r} not found")

        def load() -> RunFiles | None:
            loaded = load_run(root, name, run_id)
            if loaded is None:
                return None
            files = RunFiles(*loaded)
            if files.events_damage is None and self._known(run_id) is not None:
                sweeps.after_load(index, files)
            return files

        files = await self._io(load)
        if files is None:
            raise NotFound(f"run {run_id!r} not found")
        # Mutations need a cache, so a load that finds none installed saw the current disk.
        return self._runs.add(run_id, files)

    def _indexed(
        self, files: RunFiles, func: Callable[[], T], *, reschedule: bool = False
    ) -> Callable[[], T]:
        """``func`` (a blocking write to the run), then the index brought up to date."""
        _, index = self._opened()

        def write() -> T:
            try:
                return func()
            finally:
                sweeps.after_write(index, files, reschedule=reschedule)

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
            index = DueIndex(root, run_ids)
            index.open(partial(sweeps.rebuild, root, run_ids))
        except BaseException:
            self._run_ids = []
            os.close(lock_fd)
            root.close()
            raise
        self._runs.clear()
        self._stray, self._index, self._audit = stray, index, audit
        self._root, self._lock_fd = root, lock_fd

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
            root, index = self._opened()
            run = Run(run_id, workflow, version, lease, 0, now)
            created = partial(index.add, run_id)
            loaded = await self._io(partial(create_run_dir, root, entry_name(run_id), run, created))
            self._runs.add(run_id, RunFiles(*loaded))
            return True

    async def get_run(self, run_id: str) -> Run | None:
        try:
            files = await self._files(run_id)
        except NotFound:
            return None
        return replace(files.run, last_seq=files.intact_events().tip[0])

    async def set_version(self, run_id: str, version: str) -> None:
        files = await self._files(run_id)
        async with files.lock:
            if version != files.run.version:
                self._backoff.pop(run_id, None)
                await self._rewrite_run(files, replace(files.run, version=version, due=None))

    async def set_lease(
        self, run_id: str, lease: str | None, expected: str | _Unset | None = UNSET
    ) -> None:
        files = await self._files(run_id)
        async with files.lock:
            if not isinstance(expected, _Unset) and expected != files.run.lease:
                raise Conflict(f"run {run_id!r} has another lease than expected")
            if lease != files.run.lease:
                self._backoff.pop(run_id, None)  # a new owner restarted the run
            await self._rewrite_run(files, replace(files.run, lease=lease))

    async def _rewrite_run(self, files: RunFiles, run: Run, *, durable: bool = True) -> None:
        """Replace ``run.json``; not ``durable``: the rename may be lost in a crash
        (the old record stays, whole), which only an advisory field may allow."""
        root, _ = self._opened()

        def write() -> None:
            with root.directory(files.name) as directory:
                root.atomic_write(directory, "run.json", run_json(run), durable=durable)
            files.run = run

        await self._io(self._indexed(files, write, reschedule=True))

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
            start = 0 if cursor is None else bisect.bisect_right(self._run_ids, cursor)
            batch = self._run_ids[start : start + max(limit - len(page), LISTING_BATCH)]
            if not batch:
                break
            cursor = batch[-1]
            if workflow is not None:
                batch = await self._of_workflow(root, batch, workflow)
            for run_id in batch:
                try:
                    files = await self._files(run_id)
                except (NotFound, Corrupt):
                    continue
                row = summary(files)
                if row is not None and (workflow is None or row.workflow == workflow):
                    page.append(row)
                    if len(page) == limit:
                        break
        return page

    async def _of_workflow(self, root: Root, run_ids: list[str], workflow: str) -> list[str]:
        """The runs that may be of ``workflow``: uncached ones are passed over by their
        ``run.json`` alone, all read in one worker thread; cached ones are kept."""
        uncached = [run_id for run_id in run_ids if self._runs.get(run_id) is None]
        if not uncached:
            return run_ids
        found = dict(
            zip(uncached, await self._io(partial(workflows_of, root, uncached)), strict=True)
        )
        return [run_id for run_id in run_ids if found.get(run_id, workflow) == workflow]

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

            def write() -> int:
                sweeps.before_append(index, files, last + len(events), now.timestamp())
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
        due = await self._io(partial(index.waiting, cutoff.timestamp(), limit))
        peek = self._runs.peek
        return [r for r in due if (files := peek(r)) is None or files.events_damage is None]

    # sweep schedule (SchedulesSweeps) ----------------------------------------

    async def sweep_due(
        self,
        now: datetime,
        limit: int,
        after: DueRun | None,
        slices: Sequence[int] | None = None,
    ) -> list[DueRun]:
        """From the index, in a worker thread: no run is read."""
        _, index = self._opened()
        start = None if after is None else (after.due_at.timestamp(), after.run_id)
        retry = {run_id: at for run_id, (_, at) in self._backoff.items()}
        wanted = None if slices is None else frozenset(slices)

        def find() -> list[DueRun]:
            found = index.due(now.timestamp(), limit, start, retry, wanted)
            return [DueRun(datetime.fromtimestamp(at, UTC), run_id) for at, run_id in found]

        return await self._io(find)

    async def set_due(self, run_id: str, point: DuePoint, *, snapshotted: bool) -> None:
        files = await self._files(run_id)
        async with files.lock:
            old = files.run.due
            if old is not None and (
                old.snap_seq > point.snap_seq
                or (old.snap_seq == point.snap_seq and not snapshotted)
            ):
                return
            if snapshotted:
                self._backoff.pop(run_id, None)
            # Advisory: a point lost in a crash leaves the older one, which the runtime replaces.
            await self._rewrite_run(files, replace(files.run, due=point), durable=False)

    async def record_failure(self, run_id: str, now: datetime, max_delay_s: float) -> None:
        await self._files(run_id)
        failures, _ = self._backoff.get(run_id, (0, 0.0))
        delay = min(max_delay_s, FIRST_RETRY_S * 2 ** min(failures, 30))
        self._backoff[run_id] = (failures + 1, now.timestamp() + delay)
