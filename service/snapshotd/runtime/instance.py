"""The ``Instance`` facade: one journal + policies, its mailbox, counters and the ops on it.

The API calls these methods; the actor (``runtime.actor``) drains the mailbox through
``handle``. Attempts for one run never overlap inside this process: the actor and
``snapshot_now`` share a per-run lock.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import structlog

from snapshotd.config import InstanceConfig, WorkflowConfig
from snapshotd.domain.errors import Corrupt, SnapshotCorrupt, SnapshotdError
from snapshotd.domain.model import NewEvent, SnapshotKind, utcnow
from snapshotd.domain.policies import SKIP_REASONS, Policy
from snapshotd.domain.reducers import Reducer
from snapshotd.domain.slices import SLICES
from snapshotd.journals.base import DividesSlices, Journal, KeepsConnected, QueuesAudit
from snapshotd.runtime import reads, schedule
from snapshotd.runtime.attempt import Outcome, attempt
from snapshotd.runtime.chains import Chains
from snapshotd.runtime.mailbox import Job, Mailbox, Offer
from snapshotd.runtime.recovery import (
    CorruptionReporter,
)
from snapshotd.runtime.slices import SliceKeeper
from snapshotd.telemetry.health import JournalHealth
from snapshotd.telemetry.instruments import InstanceTelemetry, SnapshotSpan

_log = structlog.get_logger("snapshotd.instance")

SILENT_REASONS = frozenset({"below_threshold", "no_events", "disabled"})
"""Outcomes of internal triggers that are routine checks: not counted, not logged."""

UNAUDITED_REASONS = SILENT_REASONS | {"no_run"}
"""Skips kept out of the audit log (still counted, logged and traced): routine checks,
and requests naming a run the journal does not have. Any client can send those at
will; auditing them would let a flood of typos grow the durable log, one write each."""

MAX_IN_FLIGHT = 16
"""Attempts the actor overlaps (each of a different run): enough to keep a journal's
connections busy while one attempt waits, few enough to bound memory and the pool."""

UpgradeFn = Callable[[dict[str, Any]], dict[str, Any]]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _reports_corrupt_run(
    op: Callable[Concatenate[Instance, str, _P], Awaitable[_R]],
) -> Callable[Concatenate[Instance, str, _P], Awaitable[_R]]:
    """Make an op on one run report a Corrupt it meets before answering ``corrupt``.

    Damaged snapshots are handled (and reported) inside the ops, so a Corrupt that
    escapes one means the run's own data is damaged: SPEC section 5 wants an audit
    event for that, once per run, whichever op or attempt meets it first.
    """

    @functools.wraps(op)
    async def reporting(self: Instance, run_id: str, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await op(self, run_id, *args, **kwargs)
        except SnapshotCorrupt:
            raise  # one snapshot, already reported as such
        except Corrupt as exc:
            await self.reporter.report_run(run_id, exc)
            raise

    return reporting


class _Hold:
    """``async with`` one run's lock (see ``RunLocks``)."""

    __slots__ = ("_locks", "_run_id")

    def __init__(self, locks: dict[str, deque[anyio.Event]], run_id: str) -> None:
        self._locks = locks
        self._run_id = run_id

    async def __aenter__(self) -> None:
        waiting = self._locks.get(self._run_id)
        if waiting is None:
            self._locks[self._run_id] = deque()
            return
        turn = anyio.Event()
        waiting.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():
                self._release()  # handed over while being cancelled: pass it on
            else:
                waiting.remove(turn)
            raise

    async def __aexit__(self, *_exc: object) -> None:
        self._release()

    def _release(self) -> None:
        waiting = self._locks[self._run_id]
        if waiting:
            waiting.popleft().set()
        else:
            del self._locks[self._run_id]


class RunLocks:
    """One lock per run currently in use; entries vanish when nobody holds or waits.

    All users run on the event loop. Taking a free lock is a dict insert and does not
    yield (most attempts end as a cheap skip, and a yield per lock was a good part of
    their cost); a release hands the lock to the oldest waiter.
    """

    def __init__(self) -> None:
        self._locks: dict[str, deque[anyio.Event]] = {}
        """Held runs -> their waiters, oldest first."""

    def hold(self, run_id: str) -> _Hold:
        return _Hold(self._locks, run_id)


class Instance:
    """A named journal with its policies, mailbox, actor state and counters."""

    def __init__(
        self,
        config: InstanceConfig,
        journal: Journal,
        workflows: Mapping[str, WorkflowConfig],
        reducers: Mapping[str, Reducer],
        upgrades: Mapping[str, UpgradeFn],
    ) -> None:
        self.name = config.name
        self.config = config
        self.journal = journal
        self.telemetry = InstanceTelemetry(config.name)
        self.policy = config.policy
        self._policies = {
            name: config.policy.with_overrides(wf.overrides) for name, wf in workflows.items()
        }
        self._reducers = dict(reducers)
        self._upgrades = dict(upgrades)
        self.mailbox = Mailbox(config.queue_capacity)
        self.locks = RunLocks()
        self.health = JournalHealth(config.name)
        self.reporter = CorruptionReporter(
            config.name, self.record_audit, self.health.corruption_found
        )
        self.chains = Chains(journal, self.reporter)
        # Whether the journal answered the last snapshot attempt: the cheap signal
        # behind ``snapshotd.journal.up`` (a journal with its own probe replaces it).
        self.journal_answers = True
        self.taken = 0
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.dropped = 0
        self.coalesced = 0
        self.restarts = 0
        self.slices = (
            SliceKeeper(
                journal.slice_store, config.slice_lease_s, config.name, config.queue_capacity
            )
            if isinstance(journal, DividesSlices)
            else None
        )
        """This daemon's leases on the slices of a shared journal (None: not shared)."""
        self.max_in_flight = MAX_IN_FLIGHT
        self.in_flight: dict[str, Job] = {}
        """The actor's attempts under way, by run."""
        self._sweep_wanted = anyio.Event()
        self.telemetry.watch_queue_depth(self.mailbox.__len__)
        self.health.watch_up(lambda: self.journal_up)
        keeper = self.slices
        if keeper is not None:
            self.health.watch_slices(keeper.owned_count)
        self.telemetry.watch_requests(
            dropped=lambda: self.dropped, coalesced=lambda: self.coalesced
        )

    # --- policies -------------------------------------------------------------------

    def policy_for(self, workflow: str) -> Policy:
        """The instance policy with the workflow's overrides applied."""
        return self._policies.get(workflow, self.policy)

    def reducer_for(self, workflow: str) -> Reducer:
        return self._reducers[self.policy_for(workflow).reducer]

    def savepoint_upgrade_for(self, workflow: str) -> UpgradeFn | None:
        """The workflow's ``savepoint_upgrade`` callable, resolved at start-up (None: none)."""
        name = self.policy_for(workflow).savepoint_upgrade
        return None if name is None else self._upgrades[name]

    def sweep_interval_s(self) -> float | None:
        """The smallest positive snapshot interval among the instance and workflows."""
        intervals = [
            p.snapshot_interval_s
            for p in (self.policy, *self._policies.values())
            if p.snapshot_interval_s > 0
        ]
        return min(intervals) if intervals else None

    # --- intake ---------------------------------------------------------------------

    def request_snapshot(self, run_id: str, lease: str | None) -> Offer:
        """A ``snapshot`` request: queue it; never blocks. Counts dropped/coalesced.

        The hot path of a flood: the counts are plain ints, which the telemetry
        reads at export time.
        """
        if self.slices is not None and self.slices.held_elsewhere(run_id):
            # Another live daemon serves the run's slice: it gets the hint instead.
            if self.slices.forward(run_id):
                return "queued"
            self.dropped += 1
            return "dropped"
        status = self.mailbox.offer(run_id, lease)
        if status == "coalesced":
            self.coalesced += 1
        elif status == "dropped":
            self.dropped += 1
        return status

    def trigger(self, run_id: str) -> None:
        """An internal check of ``run_id`` (sweep, append notification); never blocks."""
        self.mailbox.offer_internal(run_id)

    def notified(self, run_id: str) -> None:
        """An append notification (or a forwarded hint): checked when the slice is ours."""
        if self.slices is None or self.slices.owns(run_id):
            self.mailbox.offer_internal(run_id)

    def request_sweep(self) -> None:
        """Ask the sweep to look for due runs now (after missed append notifications).

        A request made while a sweep runs, or before the sweep first waits, is kept
        and answered by the next sweep.
        """
        self._sweep_wanted.set()

    async def wait_sweep_request(self, period_s: float) -> bool:
        """Sleep up to ``period_s`` (may be inf); True when ``request_sweep`` woke us."""
        with anyio.move_on_after(period_s):
            await self._sweep_wanted.wait()
            self._sweep_wanted = anyio.Event()
            return True
        return False

    def journal_reconnected(self) -> None:
        """The journal's notification connection is back after a loss: count the
        reconnect, and sweep for the appends it may have missed."""
        self.health.reconnected()
        self.journal_answers = True
        self.request_sweep()

    def stop_intake(self) -> None:
        """Close the mailbox: queued requests are discarded (hints; sweeps recover them)."""
        discarded = self.mailbox.close()
        if discarded:
            _log.info("queue_discarded", instance=self.name, requests=len(discarded))

    # --- attempts -------------------------------------------------------------------

    async def handle(self, job: Job) -> None:
        """Run one queued Job (the actor's step)."""
        async with self.locks.hold(job.run_id):
            await self._attempt(
                job.run_id,
                lease=None if job.unchecked else job.lease,
                force=False,
                kind="auto",
                counted=job.requested,
            )

    async def snapshot_now(
        self,
        run_id: str,
        *,
        lease: str | None,
        force: bool,
        kind: SnapshotKind,
        label: str | None = None,
    ) -> dict[str, Any]:
        """The ``snapshot_now`` op: an attempt right away, serialised with the actor's."""
        async with self.locks.hold(run_id):
            outcome = await self._attempt(
                run_id, lease=lease, force=force, kind=kind, counted=True, label=label
            )
        return outcome.result()

    async def _attempt(
        self,
        run_id: str,
        *,
        lease: str | None,
        force: bool,
        kind: SnapshotKind,
        counted: bool,
        label: str | None = None,
    ) -> Outcome:
        started = time.perf_counter()
        with self.telemetry.snapshot_span(run_id) as span:
            outcome = await attempt(self, run_id, lease=lease, force=force, kind=kind, label=label)
            await schedule.record(self.journal, outcome, utcnow())
            await self._record(span, run_id, kind, outcome, time.perf_counter() - started, counted)
        return outcome

    async def _record(
        self,
        span: SnapshotSpan,
        run_id: str,
        kind: SnapshotKind,
        outcome: Outcome,
        duration_s: float,
        counted: bool,
    ) -> None:
        if outcome.lag is not None:
            self.telemetry.lag(outcome.lag)
        self.journal_answers = outcome.reason != "journal_error" or isinstance(
            outcome.error, Corrupt
        )
        if outcome.meta is not None:
            self.taken += 1
            meta = outcome.meta
            self.telemetry.taken(
                span,
                run_id=run_id,
                kind=kind,
                through_seq=meta.through_seq,
                size_bytes=meta.size_bytes,
                events_folded=outcome.events_folded,
                duration_s=duration_s,
            )
            await self.record_audit(
                "snapshot_taken",
                run_id=run_id,
                snapshot_id=meta.snapshot_id,
                through_seq=meta.through_seq,
                size_bytes=meta.size_bytes,
                snapshot_kind=kind,
                **({} if meta.label is None else {"label": meta.label}),
            )
            return
        reason = outcome.reason
        assert reason is not None
        if not counted and reason in SILENT_REASONS:
            self.telemetry.skipped_silently(span, reason)
            return
        self.skipped[reason] += 1
        self.telemetry.skipped(
            span,
            run_id=run_id,
            reason=reason,
            duration_s=duration_s,
            error=outcome.error,
            through_seq=outcome.through_seq,
            details=outcome.details,
        )
        if reason not in UNAUDITED_REASONS:
            fields: dict[str, Any] = {"run_id": run_id, "reason": reason, **(outcome.details or {})}
            if outcome.error is not None:
                fields["error"] = f"{type(outcome.error).__name__}: {outcome.error}"
            await self.record_audit("snapshot_skipped", **fields)

    def task_crashed(self, task: str) -> None:
        """Account for a crashed loop; the actor's Jobs in flight end as ``internal``."""
        if task == "actor":
            jobs, self.in_flight = self.in_flight, {}
            for job in jobs.values():
                if job.requested:
                    self.skipped["internal"] += 1
                    self.telemetry.attempt_lost()
        self.restarts += 1
        self.telemetry.restarted()

    @_reports_corrupt_run
    async def append(
        self,
        run_id: str,
        events: Sequence[NewEvent],
        *,
        expected_seq: int | None,
        lease: str | None,
    ) -> int:
        """The ``append`` op: the journal's append (its errors are the op's)."""
        return await self.journal.append(
            run_id, events, expected_seq=expected_seq, lease=lease, now=utcnow()
        )

    # --- reads ----------------------------------------------------------------------

    @_reports_corrupt_run
    async def load(
        self, run_id: str, *, after_seq: int | None, limit: int, snapshot_id: str | None = None
    ) -> dict[str, Any]:
        """The ``load`` op (see ``reads.load``)."""
        return await reads.load(
            self, run_id, after_seq=after_seq, limit=limit, snapshot_id=snapshot_id
        )

    @_reports_corrupt_run
    async def verify(self, run_id: str) -> dict[str, Any]:
        """The ``verify`` op (see ``reads.verify``)."""
        return await reads.verify(self, run_id)

    async def list_runs(
        self, *, after: str | None, limit: int, workflow: str | None
    ) -> dict[str, Any]:
        """The ``list_runs`` op (see ``reads.list_runs``)."""
        return await reads.list_runs(self, after=after, limit=limit, workflow=workflow)

    async def audit(self, cursor: int, limit: int) -> dict[str, Any]:
        """The ``audit`` op: entries after ``cursor``, oldest first."""
        entries = await self.journal.read_audit(cursor, limit + 1)
        page = entries[:limit]
        return {
            "events": [entry.to_json() for entry in page],
            "next_cursor": page[-1].cursor if page else cursor,
            "has_more": len(entries) > limit,
        }

    async def record_audit(self, kind: str, **fields: Any) -> None:
        """Append to the audit log, best effort: a journal failure is logged, never raised.

        A journal that batches audit writes gets the entry queued (written within
        ~1 s by its writer task), so an attempt never waits for the audit log.
        """
        if isinstance(self.journal, QueuesAudit):
            self.journal.queue_audit(kind, fields, utcnow())
            return
        try:
            await self.journal.append_audit(kind, fields, utcnow())
        except (SnapshotdError, OSError, TypeError) as exc:
            _log.warning(
                "audit_failed", instance=self.name, kind=kind, error=f"{type(exc).__name__}: {exc}"
            )

    async def record_config(self, workflows: Mapping[str, WorkflowConfig]) -> None:
        policy = asdict(self.policy)
        await self.record_audit(
            "config_loaded",
            instance=self.name,
            journal=self.journal.description,
            queue_capacity=self.config.queue_capacity,
            policy=policy,
            workflows={name: wf.overrides for name, wf in workflows.items()},
        )

    def status(self) -> dict[str, Any]:
        """This instance's part of the ``status`` op."""
        return {
            "journal": self.journal.description,
            "queue_depth": len(self.mailbox),
            "queue_capacity": self.mailbox.capacity,
            "taken": self.taken,
            "skipped": dict(self.skipped),
            "dropped": self.dropped,
            "coalesced": self.coalesced,
            "restarts": self.restarts,
            "journal_up": self.journal_up,
            "slices": None
            if self.slices is None
            else {"owned": self.slices.owned_count(), "total": SLICES},
        }

    @property
    def journal_up(self) -> bool:
        """The journal's own probe when it has one, else whether it answered the last
        snapshot attempt."""
        if isinstance(self.journal, KeepsConnected):
            return self.journal.up
        return self.journal_answers
