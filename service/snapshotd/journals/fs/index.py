"""The ``fs:`` journal's run list and sweep index (``due.jsonl``): a sweep reads no run.

For every run the index keeps two times (epoch seconds; NaN for none) in arrays
parallel to the sorted run ids, 16 bytes a run:

- *since*: while the run has events after its latest snapshot of its current
  version, when they began to wait (that snapshot's time or, with none, the run's
  creation): what ``due_runs`` asks;
- *ready*: when the run becomes due for a sweep by its recorded due point (by
  count: the append that reached it; by time: ``due_at`` once an event follows
  the base; with no point: its first append), as ``SchedulesSweeps`` defines it.

Each change is logged as one line ``["<run id>", <since>, <ready>]`` (null for
none) in ``due.jsonl``; the last line of a run wins. A run only ever becomes due
(or due sooner) by an append, and the line saying so is written and fsynced
*before* the append's events, so after any crash the index names every run that
has something to snapshot. Other lines (a snapshot was taken) are not fsynced:
losing one only makes the index name a run with nothing to do, which the adapter
corrects when it next loads the run. The file is rewritten (atomically) when it
holds more than twice as many lines as runs, and at open when it holds stale
lines or a torn last one. A missing or damaged
index is rebuilt from the runs themselves at open (slow: it reads every run).
"""

from __future__ import annotations

import bisect
import heapq
import math
import os
import threading
from array import array
from collections.abc import Callable, Iterable

import orjson

from snapshotd.domain.slices import run_slice
from snapshotd.journals.fs.files import Root, write_all

NAME = "due.jsonl"
NONE = math.nan
_SLACK = 1024

Times = tuple[float, float]
"""(since, ready) of one run; NaN where there is none."""


def _json(value: float) -> float | None:
    return None if math.isnan(value) else value


class DueIndex:
    """Sorted run ids with their times. Blocking; thread-safe (one lock)."""

    def __init__(self, root: Root, ids: list[str]) -> None:
        self._root = root
        self.ids = ids
        """Sorted; shared with the adapter, which reads it (never writes) on the loop."""
        self._since = array("d", [NONE]) * len(ids)
        self._ready = array("d", [NONE]) * len(ids)
        self._lines = 0
        self._size = 0
        self._lock = threading.Lock()

    def _at(self, run_id: str) -> int:
        at = bisect.bisect_left(self.ids, run_id)
        if at == len(self.ids) or self.ids[at] != run_id:
            raise KeyError(run_id)
        return at

    def open(self, rebuild: Callable[[], Iterable[tuple[str, Times]]]) -> bool:
        """Read ``due.jsonl`` (or ``rebuild()`` it when missing or damaged), keeping
        known runs; then rewrite it compacted. True when rebuilt."""
        try:
            raw = self._root.read(NAME)
            rebuilt = False
        except FileNotFoundError:
            raw, rebuilt = b"", bool(self.ids)
        lines = raw.split(b"\n")
        lines.pop()  # b"" after the last newline, or a torn last line: never acknowledged
        try:
            for line in lines:
                run_id, since, ready = orjson.loads(line)
                self._store(
                    run_id, (NONE if since is None else since, NONE if ready is None else ready)
                )
        except (ValueError, TypeError):
            rebuilt = True
        if rebuilt:
            self._since = array("d", [NONE]) * len(self.ids)
            self._ready = array("d", [NONE]) * len(self.ids)
            for run_id, times in rebuild():
                self._store(run_id, times)
        with self._lock:
            live = sum(
                1
                for since, ready in zip(self._since, self._ready, strict=True)
                if not (math.isnan(since) and math.isnan(ready))
            )
            torn = not raw.endswith(b"\n") and bool(raw)
            if rebuilt or torn or len(lines) > live + _SLACK:
                self._rewrite()
            else:
                self._lines, self._size = len(lines), len(raw)
        return rebuilt

    def _store(self, run_id: str, times: Times) -> None:
        try:
            at = self._at(run_id)
        except KeyError:
            return
        self._since[at], self._ready[at] = times

    def _rewrite(self) -> None:
        entries = [
            orjson.dumps([run_id, _json(since), _json(ready)]) + b"\n"
            for run_id, since, ready in zip(self.ids, self._since, self._ready, strict=True)
            if not (math.isnan(since) and math.isnan(ready))
        ]
        data = b"".join(entries)
        self._root.atomic_write(self._root.fd, NAME, data)
        self._lines, self._size = len(entries), len(data)

    def add(self, run_id: str) -> None:
        """A new run (no events yet, so neither waiting nor due)."""
        with self._lock:
            at = bisect.bisect_left(self.ids, run_id)
            self.ids.insert(at, run_id)
            self._since.insert(at, NONE)
            self._ready.insert(at, NONE)

    def times(self, run_id: str) -> Times:
        with self._lock:
            at = self._at(run_id)
            return self._since[at], self._ready[at]

    def set(self, run_id: str, times: Times, *, durable: bool = False) -> None:
        """Record the run's times; writes a line only when they change (``durable``:
        fsynced before returning). KeyError for an unknown run."""
        with self._lock:
            at = self._at(run_id)
            old = (self._since[at], self._ready[at])
            if all(
                a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(old, times, strict=True)
            ):
                return
            self._since[at], self._ready[at] = times
            line = orjson.dumps([run_id, _json(times[0]), _json(times[1])]) + b"\n"
            fd = self._root.open((NAME,), os.O_WRONLY | os.O_CREAT)
            try:
                write_all(fd, line, self._size)
                if durable:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            self._size += len(line)
            self._lines += 1
            if self._lines > 2 * len(self.ids) + _SLACK:
                self._rewrite()

    def waiting(self, cutoff: float, limit: int) -> list[str]:
        """Up to ``limit`` runs waiting since before ``cutoff``, longest waiting first."""
        with self._lock:
            found = [(s, r) for s, r in zip(self._since, self.ids, strict=True) if s < cutoff]
        return [run_id for _, run_id in heapq.nsmallest(limit, found)]

    def due(
        self,
        now: float,
        limit: int,
        after: tuple[float, str] | None,
        retry: dict[str, float],
        slices: frozenset[int] | None = None,
    ) -> list[tuple[float, str]]:
        """Up to ``limit`` (time, run id) due at ``now`` after ``after``, in that order;
        ``retry`` holds back-offs (a run is due at the later of ready and retry);
        with ``slices``, only runs of those slices."""
        with self._lock:
            found = [(t, r) for t, r in zip(self._ready, self.ids, strict=True) if t <= now]
        if slices is not None:
            found = [item for item in found if run_slice(item[1]) in slices]
        if retry:
            found = [(max(t, retry.get(r, t)), r) for t, r in found]
            found = [item for item in found if item[0] <= now]
        if after is not None:
            found = [item for item in found if item > after]
        return heapq.nsmallest(limit, found)
