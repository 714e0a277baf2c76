"""After an attempt: record the run's next due point, or back it off (SPEC section 1).

Only journals that keep due points (``SchedulesSweeps``) take part. The point is
written when the daemon first sees a run, after each snapshot it writes, and
when the recorded one counts from an older base; a routine check costs no write.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

import structlog

from snapshotd.domain.errors import NotFound, SnapshotdError
from snapshotd.domain.model import NEVER_SEQ, DuePoint
from snapshotd.domain.policies import Policy
from snapshotd.journals.base import Journal, SchedulesSweeps
from snapshotd.runtime.attempt import Outcome, Seen

_log = structlog.get_logger("snapshotd.schedule")

FAILING_REASONS: Final = frozenset({"too_large", "reducer_error", "journal_error", "internal"})
"""Skips that will likely repeat: the run backs off instead of holding others back."""

MAX_RETRY_WITHOUT_INTERVAL_S: Final = 1800.0
"""The back-off cap when the run's policy has no ``snapshot_interval_s``."""


def due_point(policy: Policy, base_seq: int, base_at: datetime) -> DuePoint:
    """When a run whose base is at ``base_seq`` (taken at ``base_at``) is next due."""
    threshold = policy.snapshot_threshold
    interval = policy.snapshot_interval_s
    return DuePoint(
        snap_seq=base_seq,
        due_seq=NEVER_SEQ if threshold is None else base_seq + threshold,
        due_at=base_at + timedelta(seconds=interval) if interval > 0 else None,
    )


def max_retry_s(policy: Policy) -> float:
    interval = policy.snapshot_interval_s
    return interval if interval > 0 else MAX_RETRY_WITHOUT_INTERVAL_S


async def record(journal: Journal, outcome: Outcome, now: datetime) -> None:
    """Persist what ``outcome`` teaches about the run's schedule; never raises
    (a failed write is logged: the next check or sweep writes it again)."""
    seen = outcome.seen
    if seen is None or not isinstance(journal, SchedulesSweeps):
        return
    try:
        if outcome.reason in FAILING_REASONS:
            await journal.record_failure(seen.run.run_id, now, max_retry_s(seen.policy))
        else:
            await _record_point(journal, seen)
    except NotFound:
        return
    except (SnapshotdError, OSError) as exc:
        _log.warning(
            "schedule_failed", run_id=seen.run.run_id, error=f"{type(exc).__name__}: {exc}"
        )


async def _record_point(journal: SchedulesSweeps, seen: Seen) -> None:
    point = due_point(seen.policy, seen.base_seq, seen.base_at)
    recorded = seen.run.due
    # A point recorded from an older base (a write whose set_due was lost) is
    # replaced too: left alone, it would keep the run due for every sweep.
    if seen.snapshotted or recorded is None or point.snap_seq > recorded.snap_seq:
        await journal.set_due(seen.run.run_id, point, snapshotted=seen.snapshotted)
