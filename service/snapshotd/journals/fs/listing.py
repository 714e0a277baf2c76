"""``run_summaries`` of the ``fs:`` journal: one page of runs in byte order of their ids.

The adapter keeps every run id in one sorted list (code point order of ``str`` is
the byte order of UTF-8), so a page starts with a bisection whatever the
directory names (``id-<hex>`` or, for long ids, ``h-<sha256>``). Each run listed
costs what its first use costs (its cache is filled: record, events tip,
snapshot metadata) and nothing once cached. With a workflow filter, runs of
other workflows are passed over by reading their ``run.json`` alone, a batch of
them per worker thread (so such a page costs in proportion to the runs it skips
too: about 0.15 ms each, measured on 5,000 runs).

Runs whose stored data is damaged are left out: they are reported when used
(``load``, ``verify``, an attempt), and one of them must not hide every other run.
"""

from __future__ import annotations

from snapshotd.domain.errors import Corrupt
from snapshotd.domain.model import RunSummary
from snapshotd.journals.fs.cache import RunFiles
from snapshotd.journals.fs.codec import entry_name, parse_run
from snapshotd.journals.fs.files import Root

LISTING_BATCH = 256
"""Run ids looked at per step of a filtered page: one worker thread reads their records."""


def workflow_of(root: Root, run_id: str) -> str | None:
    """The workflow in the run's ``run.json`` (blocking); None when missing or damaged."""
    parts = (entry_name(run_id), "run.json")
    try:
        return parse_run(root.join(*parts), root.read(*parts), run_id).workflow
    except (FileNotFoundError, Corrupt):
        return None


def workflows_of(root: Root, run_ids: list[str]) -> list[str | None]:
    """``workflow_of`` each run (blocking), in one worker thread."""
    return [workflow_of(root, run_id) for run_id in run_ids]


def summary(files: RunFiles) -> RunSummary | None:
    """The run's row, from its cache; None when its events are known to be damaged."""
    if files.events_damage is not None:
        return None
    run = files.run
    last_seq = files.events.tip[0]
    newest = next(
        (m for m in files.listed() if m.version == run.version and m.through_seq <= last_seq),
        None,
    )
    return RunSummary(
        run.run_id,
        run.workflow,
        run.version,
        last_seq,
        None if newest is None else newest.snapshot_id,
        None if newest is None else newest.through_seq,
    )
