"""Choosing the snapshot to build on (for `load` and compaction), skipping damaged ones.

A snapshot is a usable base only when its ``version`` is the run's current one and
its payload passes the checksum. A damaged snapshot is never served or folded onto:
the search falls back to the next older one (or to full history) and the damage is
reported once per snapshot per process (audit event + log), so a run that is asked
for a snapshot on every step does not flood the audit log.

A run whose own stored data is damaged (fs: a bad line in ``events.jsonl``) is
``corrupt`` as a whole: the journal raises Corrupt from every method that needs
it, and the first op or attempt that meets it reports it, once per run per process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import orjson
import structlog

from snapshotd.domain.errors import Corrupt
from snapshotd.domain.model import Run, Snapshot, SnapshotMeta
from snapshotd.journals.base import HoldsDamagedSnapshots, Journal

_log = structlog.get_logger("snapshotd.recovery")

AuditFn = Callable[..., Awaitable[None]]

_MAX_REMEMBERED = 10_000


class CorruptionReporter:
    """Remembers damaged snapshots and runs so each is reported once (snapshots are
    also skipped cheaply)."""

    def __init__(
        self, instance: str, audit: AuditFn, found: Callable[[str], None] | None = None
    ) -> None:
        self._instance = instance
        self._audit = audit
        self._found = found
        self._known: set[tuple[str, str]] = set()
        self._runs: set[str] = set()

    def known(self, run_id: str, snapshot_id: str) -> bool:
        return (run_id, snapshot_id) in self._known

    async def report(self, run_id: str, snapshot_id: str, error: Exception) -> None:
        key = (run_id, snapshot_id)
        if key in self._known:
            return
        if len(self._known) >= _MAX_REMEMBERED:
            self._known.clear()
        self._known.add(key)
        if self._found is not None:
            self._found("snapshot")
        _log.error(
            "snapshot_corrupt",
            instance=self._instance,
            run_id=run_id,
            snapshot_id=snapshot_id,
            error=str(error),
        )
        await self._audit(
            "snapshot_corrupt", run_id=run_id, snapshot_id=snapshot_id, error=str(error)
        )

    async def report_run(self, run_id: str, error: Corrupt, obj: str = "run") -> None:
        """Report that the run's own data is damaged (log line + ``run_corrupt`` audit).

        ``obj`` names what was damaged for the ``snapshotd.corruption.found`` count:
        ``run`` (its record or event log as a whole) or ``event`` (one stored event).
        """
        if run_id in self._runs:
            return
        if len(self._runs) >= _MAX_REMEMBERED:
            self._runs.clear()
        self._runs.add(run_id)
        if self._found is not None:
            self._found(obj)
        _log.error("run_corrupt", instance=self._instance, run_id=run_id, error=str(error))
        await self._audit("run_corrupt", run_id=run_id, error=str(error))


def compatible(run: Run, metas: Sequence[SnapshotMeta]) -> list[SnapshotMeta]:
    """The run's snapshots of its current version, newest first (``metas`` already are).

    One beyond ``run.last_seq`` was written after ``run`` was read; it is left out so
    the base and the tail count always describe the same moment.
    """
    return [m for m in metas if m.version == run.version and m.through_seq <= run.last_seq]


async def report_damaged(journal: Journal, run_id: str, reporter: CorruptionReporter) -> list[str]:
    """Report the run's snapshots too damaged to be listed; returns their ids.

    Only some journals can hold such snapshots (``HoldsDamagedSnapshots``); they
    never reach ``list_snapshots``, so this is where their damage surfaces.
    """
    if not isinstance(journal, HoldsDamagedSnapshots):
        return []
    damaged = await journal.damaged_snapshots(run_id)
    for snapshot_id, why in damaged.items():
        await reporter.report(run_id, snapshot_id, Corrupt(why))
    return list(damaged)


def drop_known_corrupt(
    run_id: str, metas: Sequence[SnapshotMeta], reporter: CorruptionReporter
) -> list[SnapshotMeta]:
    return [m for m in metas if not reporter.known(run_id, m.snapshot_id)]


def state_fragment(snapshot: Snapshot) -> orjson.Fragment:
    """The snapshot's state as stored JSON, passed through to clients without decoding."""
    return orjson.Fragment(snapshot.payload)
