"""How the ``fs:`` journal keeps its sweep index in step with each run (blocking).

The adapter calls these from the worker thread that did the write, so the index
is never behind the disk for long; see ``index`` for what the two times mean.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from snapshotd.domain.errors import Corrupt
from snapshotd.journals.fs.cache import RunFiles
from snapshotd.journals.fs.codec import entry_name
from snapshotd.journals.fs.files import Root
from snapshotd.journals.fs.index import DueIndex, Times
from snapshotd.journals.fs.runs import load_run


def _sooner(a: float, b: float) -> float:
    """The earlier of two times where NaN means never."""
    return b if math.isnan(a) else a if math.isnan(b) else min(a, b)


def before_append(index: DueIndex, files: RunFiles, seq: int, now: float) -> None:
    """Record (durably, when it makes the run due sooner) what an append reaching
    ``seq`` does to the run's times, before its events are written: after a crash
    the index names the run even if the events made it."""
    since, ready = index.times(files.run.run_id)
    times = (_sooner(since, files.since()), _sooner(ready, files.schedule(seq, now)))
    index.set(files.run.run_id, times, durable=_made_sooner((since, ready), times))


def after_write(index: DueIndex, files: RunFiles, *, reschedule: bool) -> None:
    """The run's exact waiting time after a write; ``reschedule`` (a new due point,
    version or back-off reset) also recomputes when a sweep takes it, else that
    stays as recorded."""
    since, ready = index.times(files.run.run_id)
    last = files.events.tip[0]
    if reschedule:
        ready = files.schedule(last, time.time())
    times = (files.waiting_since(), ready)
    index.set(files.run.run_id, times, durable=_made_sooner((since, ready), times))


def after_load(index: DueIndex, files: RunFiles) -> None:
    """Correct the run's times from its files: a run the index names but that has
    nothing to do (a crash between an index line and the events) is dropped."""
    since, ready = index.times(files.run.run_id)
    due = files.schedule(files.events.tip[0], ready if not math.isnan(ready) else time.time())
    times = (files.waiting_since(), due)
    index.set(files.run.run_id, times, durable=_made_sooner((since, ready), times))


def _made_sooner(old: Times, new: Times) -> bool:
    return any(
        not math.isnan(b) and (math.isnan(a) or b < a) for a, b in zip(old, new, strict=True)
    )


def rebuild(root: Root, run_ids: list[str]) -> Iterator[tuple[str, Times]]:
    """Every run's times, read from disk (a missing or damaged index only)."""
    now = time.time()
    for run_id in run_ids:
        try:
            loaded = load_run(root, entry_name(run_id), run_id, check=False)
        except Corrupt:
            continue
        if loaded is not None:
            files = RunFiles(*loaded)
            yield run_id, (files.waiting_since(), files.schedule(files.events.tip[0], now))
