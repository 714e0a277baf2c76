"""The per-run cache of the ``fs:`` journal: what the adapter knows about one run."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

import anyio

from snapshotd.domain.errors import Corrupt
from snapshotd.domain.model import Run, SnapshotMeta
from snapshotd.domain.policies import newest_first
from snapshotd.journals.fs.codec import SNAP_SUFFIX
from snapshotd.journals.fs.log import JsonlLog

T = TypeVar("T")


@dataclass(eq=False)
class RunFiles:
    """What the adapter keeps about one run besides the event lines.

    ``run.last_seq`` is not maintained (the events tip is). Attributes are
    replaced, never changed in place, so the event loop can read them while a
    worker thread holding ``lock`` writes.
    """

    name: str
    """The run directory's name in the root."""
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

    def snapshot_parts(self, snapshot_id: str) -> tuple[str, str, str]:
        return (self.name, "snapshots", snapshot_id + SNAP_SUFFIX)

    def latest(self) -> SnapshotMeta | None:
        """The newest snapshot of the run's current version."""
        version = self.run.version
        return max(
            (m for m in self.snapshots.values() if m.version == version and not m.retired),
            key=SnapshotMeta.order_key,
            default=None,
        )

    def since(self) -> float:
        """When events after the latest snapshot began to wait (epoch seconds): that
        snapshot's time or, with none, the run's creation."""
        latest = self.latest()
        return (self.run.created_at if latest is None else latest.created_at).timestamp()

    def waiting_since(self) -> float:
        """``since()`` while events wait for a snapshot, else NaN."""
        latest = self.latest()
        through = 0 if latest is None else latest.through_seq
        return self.since() if self.events.tip[0] > through else math.nan

    def schedule(self, seq: int, now: float) -> float:
        """When a sweep should take the run once its events reach ``seq``, by its
        recorded due point (``SchedulesSweeps``); NaN: not due."""
        due = self.run.due
        if due is None:
            return now if seq > 0 else math.nan
        if seq >= due.due_seq:
            return now
        if due.due_at is not None and seq > due.snap_seq:
            return due.due_at.timestamp()
        return math.nan

    def listed(self) -> list[SnapshotMeta]:
        """The snapshots newest first, retired links left out."""
        return [m for m in self.links() if not m.retired]

    def links(self) -> list[SnapshotMeta]:
        """Every snapshot file newest first, sorted once per replacement of ``snapshots``."""
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


class RunCache:
    """The runs used last, at most ``bound`` of them (least recently used go first).

    A run whose lock is held (a write in progress, or queued behind one) is never
    evicted: its writers must keep sharing one lock and one log.
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._runs: OrderedDict[str, RunFiles] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, run_id: str) -> RunFiles | None:
        files = self._runs.get(run_id)
        if files is not None:
            self._runs.move_to_end(run_id)
        return files

    def peek(self, run_id: str) -> RunFiles | None:
        """The cached run without marking it used."""
        return self._runs.get(run_id)

    def add(self, run_id: str, files: RunFiles) -> RunFiles:
        """Keep ``files`` unless the run is already cached; returns the cached one."""
        kept = self._runs.setdefault(run_id, files)
        self._runs.move_to_end(run_id)
        excess = len(self._runs) - self.bound
        if excess > 0:
            idle = [
                k
                for k, v in islice(self._runs.items(), excess + 8)
                if k != run_id and not v.lock.locked()
            ]
            for key in idle[:excess]:
                del self._runs[key]
        return kept

    def clear(self) -> None:
        self._runs.clear()


Loaded = tuple[str, Run, JsonlLog, dict[str, SnapshotMeta], dict[str, str], str | None]
