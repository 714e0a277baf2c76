"""The savepoint service: one run's savepoint state kept as ONE journal document.

Every save or ack is read-modify-write of that document with compare-and-swap
(``put_document(expected_version=...)``): the input and every savepoint it
completes are written together, and the call returns only after the journal
made the write durable. An in-process lock per run avoids pointless retries; a
Conflict (another daemon sharing the journal wrote first) re-reads and re-applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from snapshotd.domain import savepoints
from snapshotd.domain.errors import Conflict, Corrupt, NotFound
from snapshotd.domain.policies import Policy
from snapshotd.domain.savepoints import Progress, Savepoint, Schedule
from snapshotd.journals.base import Journal
from snapshotd.runtime.instance import RunLocks

NAMESPACE = "savepoints"
MAX_ATTEMPTS = 50


@dataclass(frozen=True, slots=True)
class Loaded:
    """The latest complete savepoint of a run, with the run's workflow (for upgrades)."""

    workflow: str
    savepoint: Savepoint


def _default_policy(_workflow: str) -> Policy:
    return Policy()


class SavepointService:
    """Savepoint ops for one instance's journal.

    ``policy_for(workflow)`` gives ``keep_snapshots``, the number of complete
    savepoints kept per run.
    """

    def __init__(
        self,
        journal: Journal,
        policy_for: Callable[[str], Policy] = _default_policy,
        found_corrupt: Callable[[str], None] | None = None,
    ) -> None:
        self._journal = journal
        self._policy_for = policy_for
        self._locks = RunLocks()
        # ``found_corrupt("document")`` once per damaged run document per process.
        self._found_corrupt = found_corrupt
        self._corrupt: set[str] = set()

    async def init(
        self, run_id: str, *, start_ms: int, interval_ms: int, entities: Mapping[str, Any]
    ) -> None:
        """Create the run's schedule. Raises NotFound (no run), Conflict (already has one)."""
        run = await self._journal.get_run(run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        body = savepoints.encode(savepoints.init(run.workflow, start_ms, interval_ms, entities))
        async with self._locks.hold(run_id):
            try:
                await self._journal.put_document(NAMESPACE, run_id, body, None)
            except Conflict:
                raise Conflict(f"run {run_id!r} already has a savepoint schedule") from None

    async def save(self, run_id: str, entity: str, timestamp_ms: int, state: Any) -> Progress:
        """Record ``entity``'s state from ``timestamp_ms`` on; durable when it returns."""
        return await self._update(
            run_id,
            lambda schedule, keep: savepoints.save(
                schedule, entity, timestamp_ms, state, keep=keep
            ),
        )

    async def ack(self, run_id: str, entity: str, timestamp_ms: int) -> Progress:
        """Record that ``entity`` reached ``timestamp_ms`` unchanged; durable when it returns."""
        return await self._update(
            run_id, lambda schedule, keep: savepoints.ack(schedule, entity, timestamp_ms, keep=keep)
        )

    async def load(self, run_id: str) -> Loaded:
        """The latest complete savepoint. Raises NotFound when there is none (or no schedule)."""
        schedule, _version = await self._read(run_id)
        latest = savepoints.latest(schedule)
        if latest is None:
            raise NotFound(f"run {run_id!r} has no complete savepoint yet")
        return Loaded(schedule.workflow, latest)

    async def resume(
        self, run_id: str, upgrade: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None
    ) -> Loaded:
        """Set every entity back to the resume point (``savepoints.resume_point``).

        ``upgrade(workflow, states)`` turns the stored states into the ones the
        application gets (and that become the entities' bases); it may run again when
        another writer got there first. Durable when it returns. Raises NotFound
        without a schedule.
        """
        resumed: list[Loaded] = []

        def step(schedule: Schedule, _keep: int) -> tuple[Schedule, Progress]:
            point = savepoints.resume_point(schedule)
            states = (
                point.entities if upgrade is None else upgrade(schedule.workflow, point.entities)
            )
            resumed.append(Loaded(schedule.workflow, Savepoint(point.timestamp_ms, states)))
            return savepoints.resume(schedule, states), savepoints.NOTHING

        await self._update(run_id, step)
        return resumed[-1]

    async def _read(self, run_id: str) -> tuple[Schedule, int]:
        doc = await self._journal.get_document(NAMESPACE, run_id)
        if doc is None:
            raise NotFound(f"run {run_id!r} has no savepoint schedule (savepoint_init)")
        try:
            return savepoints.decode(doc.body, f"savepoints of run {run_id!r}"), doc.version
        except Corrupt:
            if self._found_corrupt is not None and run_id not in self._corrupt:
                self._corrupt.add(run_id)
                self._found_corrupt("document")
            raise

    async def _update(
        self, run_id: str, step: Callable[[Schedule, int], tuple[Schedule, Progress]]
    ) -> Progress:
        async with self._locks.hold(run_id):
            for _attempt in range(MAX_ATTEMPTS):
                schedule, version = await self._read(run_id)
                keep = max(2, self._policy_for(schedule.workflow).keep_snapshots)
                updated, progress = step(schedule, keep)
                if updated is schedule:
                    return progress
                try:
                    await self._journal.put_document(
                        NAMESPACE, run_id, savepoints.encode(updated), version
                    )
                except Conflict:
                    continue  # another daemon wrote first: apply to its version
                return progress
        raise Conflict(f"savepoints of run {run_id!r} kept changing under other writers; retry")
