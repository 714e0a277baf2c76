"""The ``fs:`` journal's index of waiting runs (``due.jsonl``), so a sweep reads no run.

A run *waits* while it has events after its latest snapshot of its current
version; it waits *since* that snapshot was taken (or, with none, since the run
was created): exactly what ``due_runs`` asks. The index keeps, for waiting runs
only, that time (epoch seconds) in memory, and logs each change as one line
``["<run id>", <since or null>]`` in ``due.jsonl``; the last line of a run wins.

Durability: a run starts waiting only by an append, and the record saying so is
written and fsynced *before* the append's events, so after any crash the index
names every run with unsnapshotted events. Other records (a run stops waiting
after a snapshot) are not fsynced: losing one only makes the index name a run
that does not wait, which the adapter corrects when it next looks at the run.
The file is rewritten from memory (atomically) at open and whenever it holds
more than twice as many lines as waiting runs. A missing or damaged index is
rebuilt from the runs themselves at open (slow: it reads every run's tip).
"""

from __future__ import annotations

import heapq
import os
import threading
from collections.abc import Callable, Iterable

import orjson

from snapshotd.journals.fs.files import Root, write_all

NAME = "due.jsonl"
_SLACK = 1024


class DueIndex:
    """Waiting runs and since when. Blocking; thread-safe (worker threads update it)."""

    def __init__(self, root: Root) -> None:
        self._root = root
        self._since: dict[str, float] = {}
        self._lines = 0
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._since)

    def open(
        self,
        canonical: Callable[[str], str | None],
        rebuild: Callable[[], Iterable[tuple[str, float]]],
    ) -> bool:
        """Read ``due.jsonl`` (or ``rebuild()`` it when missing or damaged), keeping
        runs ``canonical`` knows (it returns the id object to keep, sharing memory
        with the run list); then rewrite it compacted. True when rebuilt."""
        since: dict[str, float] = {}
        try:
            raw = self._root.read(NAME)
            rebuilt = False
        except FileNotFoundError:
            raw, rebuilt = b"", True
        lines = raw.split(b"\n")
        if lines[-1]:
            lines[-1] = b""  # a torn last record: the append it preceded never happened
        try:
            for line in lines[:-1]:
                run_id, when = orjson.loads(line)
                known = canonical(run_id)
                if known is None:
                    continue
                if when is None:
                    since.pop(known, None)
                else:
                    since[known] = float(when)
        except (ValueError, TypeError):
            rebuilt = True
        if rebuilt:
            since = dict(rebuild())
        with self._lock:
            self._since = since
            self._rewrite()
        return rebuilt

    def _rewrite(self) -> None:
        data = b"".join(
            orjson.dumps([run_id, when]) + b"\n" for run_id, when in self._since.items()
        )
        self._root.atomic_write(self._root.fd, NAME, data)
        self._lines, self._size = len(self._since), len(data)

    def set(self, run_id: str, since: float | None, *, durable: bool = False) -> None:
        """Record that ``run_id`` waits since ``since`` (None: does not wait).

        Writes a line only when that changes; ``durable`` fsyncs it before returning.
        """
        with self._lock:
            if self._since.get(run_id) == since:
                return
            if since is None:
                del self._since[run_id]
            else:
                self._since[run_id] = since
            line = orjson.dumps([run_id, since]) + b"\n"
            fd = self._root.open((NAME,), os.O_WRONLY | os.O_CREAT)
            try:
                write_all(fd, line, self._size)
                if durable:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            self._size += len(line)
            self._lines += 1
            if self._lines > 2 * len(self._since) + _SLACK:
                self._rewrite()

    def waiting(self, run_id: str) -> bool:
        return run_id in self._since

    def due(self, cutoff: float, limit: int, skip: Callable[[str], bool]) -> list[str]:
        """Up to ``limit`` runs waiting since before ``cutoff``, longest waiting first,
        leaving out those ``skip`` names."""
        with self._lock:
            waiting = [(when, run_id) for run_id, when in self._since.items() if when < cutoff]
        return [run_id for _, run_id in heapq.nsmallest(limit, waiting) if not skip(run_id)]
