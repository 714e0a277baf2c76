"""Snapshot policies (SPEC section 1) as plain data and pure decisions.

An instance has a Policy; a workflow may override any field of it. The actor asks
``decide`` whether to snapshot and ``prune`` which snapshots retention removes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from snapshotd.domain.model import SnapshotMeta
from snapshotd.domain.reducers import DEFAULT_REDUCER

SkipReason = Literal[
    "disabled",
    "below_threshold",
    "no_run",
    "no_events",
    "too_large",
    "stale_lease",
    "busy",
    "reducer_error",
    "journal_error",
    "internal",
]
SKIP_REASONS: tuple[SkipReason, ...] = (
    "disabled",
    "below_threshold",
    "no_run",
    "no_events",
    "too_large",
    "stale_lease",
    "busy",
    "reducer_error",
    "journal_error",
    "internal",
)


@dataclass(frozen=True, slots=True)
class Policy:
    """Effective policy for one run; ``snapshot_threshold=None`` means ``"infinity"``."""

    snapshot_threshold: int | None = 100
    snapshot_interval_s: float = 1800
    max_snapshot_bytes: int = 1_000_000
    keep_snapshots: int = 2
    safety_ttl_s: float = 1_209_600
    reducer: str = DEFAULT_REDUCER
    savepoint_upgrade: str | None = None

    def with_overrides(self, overrides: dict[str, Any]) -> Policy:
        return replace(self, **overrides)

    def sweep_period_s(self) -> float | None:
        """How often the per-instance sweep looks for runs due by interval."""
        if self.snapshot_interval_s <= 0:
            return None
        return min(60.0, self.snapshot_interval_s)


def decide(
    policy: Policy,
    *,
    tail_count: int,
    last_snapshot_at: datetime,
    now: datetime,
    force: bool,
) -> SkipReason | None:
    """Why not to snapshot now (None: take one), in the SPEC's skip precedence.

    ``last_snapshot_at`` is the latest compatible snapshot's time or, without one,
    the run's creation time.
    """
    if policy.snapshot_threshold is None and not force:
        return "disabled"
    if tail_count == 0:
        return "no_events"
    if force:
        return None
    if policy.snapshot_threshold is not None and tail_count >= policy.snapshot_threshold:
        return None
    if interval_due(policy, last_snapshot_at=last_snapshot_at, now=now):
        return None
    return "below_threshold"


def interval_due(policy: Policy, *, last_snapshot_at: datetime, now: datetime) -> bool:
    if policy.snapshot_interval_s <= 0:
        return False
    return now - last_snapshot_at >= timedelta(seconds=policy.snapshot_interval_s)


def fits(policy: Policy, size_bytes: int) -> bool:
    return size_bytes <= policy.max_snapshot_bytes


def _newest_first(metas: Iterable[SnapshotMeta]) -> list[SnapshotMeta]:
    return sorted(metas, key=SnapshotMeta.order_key, reverse=True)


def retained(meta: SnapshotMeta, now: datetime) -> bool:
    """Pinned and unexpired safety snapshots survive every count-based rule."""
    if meta.pinned:
        return True
    return meta.kind == "safety" and (meta.expires_at is None or meta.expires_at > now)


def prune(
    snapshots: Sequence[SnapshotMeta], *, current_version: str, keep: int, now: datetime
) -> list[SnapshotMeta]:
    """Snapshots that retention deletes.

    Keeps the newest ``keep`` auto/manual snapshots of the current version, every
    pinned one and every unexpired safety one. Snapshots of older versions go once
    the current version has a snapshot; until then each older version keeps its
    newest ``keep``, so a run never loses its last usable base by accident.
    """
    doomed: list[SnapshotMeta] = []
    by_version: dict[str, list[SnapshotMeta]] = {}
    for meta in snapshots:
        if retained(meta, now):
            continue
        if meta.kind == "safety":
            doomed.append(meta)
            continue
        by_version.setdefault(meta.version, []).append(meta)
    current_has_one = any(m.version == current_version for m in snapshots)
    for version, group in by_version.items():
        ordered = _newest_first(group)
        if version != current_version and current_has_one:
            doomed.extend(ordered)
        else:
            doomed.extend(ordered[keep:])
    return doomed


def newest_first(snapshots: Iterable[SnapshotMeta]) -> list[SnapshotMeta]:
    """Order used by ``list_snapshots`` and base selection."""
    return _newest_first(snapshots)
