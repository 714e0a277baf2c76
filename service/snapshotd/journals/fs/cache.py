"""The per-run cache of the ``fs:`` journal: what the adapter knows about one run."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
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
        return os.path.join(self.snapshot_dir, snapshot_id + SNAP_SUFFIX)

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


Loaded = tuple[str, Run, JsonlLog, dict[str, SnapshotMeta], dict[str, str], str | None]
