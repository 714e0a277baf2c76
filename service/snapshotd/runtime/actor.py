"""Per-instance tasks: the snapshotter actor under its supervisor, the sweep, the watcher.

The actor takes Jobs from the instance's mailbox and runs up to
``instance.max_in_flight`` attempts at once, each of a different run (the mailbox
never hands out a run in flight, so each run's attempts keep their order). An
attempt spends most of its time waiting for the journal, so overlapping them is
what makes one actor fast. Attempts never raise (see ``runtime.attempt``), so a
crash of the loop itself is a bug; the supervisor then restarts it with capped
exponential backoff, counting the restart, and the instance keeps taking requests
meanwhile (the bounded mailbox absorbs them).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import timedelta

import anyio
import structlog
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from snapshotd.domain.errors import SnapshotdError
from snapshotd.domain.model import utcnow
from snapshotd.journals.base import (
    DueRun,
    KeepsConnected,
    QueuesAudit,
    RetainsAudit,
    SchedulesSweeps,
    WatchesAppends,
)
from snapshotd.runtime.instance import Instance
from snapshotd.runtime.mailbox import Job, MailboxClosed

_log = structlog.get_logger("snapshotd.actor")

BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
HEALTHY_AFTER_S = 30.0
"""A loop that ran this long before crashing restarts with the initial delay again."""

SWEEP_MAX_PERIOD_S = 60.0
RETENTION_PERIOD_S = 600.0
"""How often expired audit entries are looked for (SPEC: deleted within an hour)."""
RETENTION_BATCH = 1000
SWEEP_FOLLOW_UP_S = 1.0
"""How soon a sweep whose page filled the mailbox looks for the next page."""


async def run_instance(
    instance: Instance, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
) -> None:
    """Serve ``instance`` until its intake is stopped and the attempt in flight ends."""
    async with anyio.create_task_group() as tg:
        helpers = anyio.CancelScope()
        tg.start_soon(_helpers, instance, helpers)
        task_status.started()
        await supervise(instance, "actor", actor_loop)
        helpers.cancel()


async def _helpers(instance: Instance, scope: anyio.CancelScope) -> None:
    with scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervise, instance, "sweep", sweep_loop)
            journal = instance.journal
            if isinstance(journal, KeepsConnected):
                await tg.start(journal.keep_connected, instance.health.reconnected)
            if isinstance(journal, QueuesAudit):
                await tg.start(journal.write_queued_audit)
            if isinstance(journal, RetainsAudit) and instance.config.audit_retention_s > 0:
                tg.start_soon(supervise, instance, "retention", retention_loop)
            if isinstance(journal, WatchesAppends):

                async def watch(instance: Instance) -> None:
                    await journal.watch_appends(instance.notified, instance.journal_reconnected)

                tg.start_soon(supervise, instance, "watcher", watch)
            keeper = instance.slices
            if keeper is not None:

                async def keep(instance: Instance) -> None:
                    await keeper.run(instance.request_sweep)

                tg.start_soon(supervise, instance, "slices", keep)


async def supervise(
    instance: Instance,
    task: str,
    body: Callable[[Instance], Awaitable[None]],
    *,
    initial_s: float = BACKOFF_INITIAL_S,
    max_s: float = BACKOFF_MAX_S,
) -> None:
    """Run ``body`` until it returns, restarting it with capped backoff after a crash.

    ``task`` names it in logs and the audit log (``actor``, ``sweep``, ``watcher``);
    every restart counts in the instance's ``restarts``.
    """
    delay = initial_s
    while True:
        started = anyio.current_time()
        try:
            await body(instance)
            return
        except Exception as exc:  # noqa: BLE001 -- a crashed loop is a bug; restarting keeps the instance serving
            error = f"{type(exc).__name__}: {exc}"
            instance.task_crashed(task)
            _log.error(
                "actor_restarted",
                instance=instance.name,
                task=task,
                restarts=instance.restarts,
                delay_s=delay,
                error=error,
                exc_info=exc,
            )
            await instance.record_audit(
                "actor_restarted", task=task, restarts=instance.restarts, error=error
            )
        if anyio.current_time() - started >= HEALTHY_AFTER_S:
            delay = initial_s
        with anyio.move_on_after(delay):
            await instance.mailbox.wait_closed()
        if instance.mailbox.closed:
            return
        delay = min(delay * 2, max_s)


async def actor_loop(instance: Instance) -> None:
    """Take Jobs until the mailbox closes, then let the attempts in flight finish."""
    mailbox = instance.mailbox
    slots = anyio.Semaphore(instance.max_in_flight)

    async def run(job: Job) -> None:
        try:
            await instance.handle(job)
        finally:
            mailbox.done(job.run_id)
            slots.release()
        # Only an attempt that ended leaves: a crash (or the drain deadline) leaves
        # the rest for task_crashed to account for.
        del instance.in_flight[job.run_id]

    async with anyio.create_task_group() as tg:
        while True:
            # A free slot first: Jobs wait in the mailbox, where requests coalesce.
            # The semaphore yields even when free, so a mailbox full of cheap skips
            # still leaves the socket readers and the other instances their turn.
            await slots.acquire()
            if tg.cancel_scope.cancel_called:
                return  # an attempt crashed: leave, so the task group raises its error
            try:
                job = await mailbox.get()
            except MailboxClosed:
                return
            instance.in_flight[job.run_id] = job
            tg.start_soon(run, job)


async def sweep_loop(instance: Instance) -> None:
    """Every ``min(60, interval)`` seconds (and on request after a notification gap),
    queue the runs the journal says are due as internal checks.

    A journal that keeps due points (``SchedulesSweeps``) is paged oldest-due first,
    as much as the mailbox has room for; while pages come back full the next look
    follows after ``SWEEP_FOLLOW_UP_S``, from where the last page ended.
    """
    journal = instance.journal
    interval = instance.sweep_interval_s()
    if isinstance(journal, SchedulesSweeps):
        every = min(SWEEP_MAX_PERIOD_S, interval or SWEEP_MAX_PERIOD_S)
        cursor: DueRun | None = None
        while True:
            cursor = await sweep_due(instance, journal, cursor)
            await instance.wait_sweep_request(every if cursor is None else SWEEP_FOLLOW_UP_S)
    period = None if interval is None else min(SWEEP_MAX_PERIOD_S, interval)
    gap = False
    while True:
        await sweep_once(instance, interval, gap=gap)
        gap = await instance.wait_sweep_request(period if period is not None else math.inf)


async def sweep_due(
    instance: Instance, journal: SchedulesSweeps, cursor: DueRun | None
) -> DueRun | None:
    """Queue one page of due runs; returns where to continue (None: from the oldest).

    Continuing only makes sense while earlier pages still wait in the mailbox: once
    it has drained, the oldest due runs are the ones to look at again.
    """
    if not len(instance.mailbox):
        cursor = None
    room = instance.mailbox.capacity - len(instance.mailbox)
    if room <= 0:
        return cursor
    slices = None if instance.slices is None else instance.slices.sweep_slices()
    if slices is not None and not slices:
        return None
    try:
        page = await journal.sweep_due(utcnow(), room, cursor, slices)
    except (SnapshotdError, OSError) as exc:
        _log.warning("sweep_failed", instance=instance.name, error=f"{type(exc).__name__}: {exc}")
        return None
    for due in page:
        instance.trigger(due.run_id)
    return page[-1] if len(page) == room else None


async def sweep_once(instance: Instance, interval: float | None, *, gap: bool) -> int:
    """Queue due runs; after a gap every run with unsnapshotted events is checked."""
    if interval is None and not gap:
        return 0
    now = utcnow()
    cutoff = now if gap or interval is None else now - timedelta(seconds=interval)
    try:
        due = await instance.journal.due_runs(cutoff, instance.mailbox.capacity)
    except (SnapshotdError, OSError) as exc:
        _log.warning("sweep_failed", instance=instance.name, error=f"{type(exc).__name__}: {exc}")
        return 0
    for run_id in due:
        instance.trigger(run_id)
    return len(due)


async def retention_loop(instance: Instance) -> None:
    """Delete expired audit entries every ``RETENTION_PERIOD_S``, in small batches."""
    journal = instance.journal
    assert isinstance(journal, RetainsAudit)
    while True:
        await prune_expired_audit(instance, journal)
        await anyio.sleep(RETENTION_PERIOD_S)


async def prune_expired_audit(instance: Instance, journal: RetainsAudit) -> int:
    """Delete entries older than ``audit_retention_s``, a batch at a time; returns how
    many went. Stops early when the journal fails (the next round retries)."""
    cutoff = utcnow() - timedelta(seconds=instance.config.audit_retention_s)
    total = 0
    while True:
        try:
            deleted = await journal.prune_audit(cutoff, RETENTION_BATCH)
        except (SnapshotdError, OSError) as exc:
            _log.warning(
                "audit_retention_failed",
                instance=instance.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return total
        total += deleted
        if deleted < RETENTION_BATCH:
            return total
        await anyio.lowlevel.checkpoint()
