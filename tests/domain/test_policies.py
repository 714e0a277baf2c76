"""Snapshot decisions and retention (SPEC section 1, Policies)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from snapshotd.domain.model import SnapshotKind, SnapshotMeta
from snapshotd.domain.policies import Policy, decide, interval_due, newest_first, prune

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RECENT = NOW - timedelta(seconds=10)
LONG_AGO = NOW - timedelta(days=1)


@pytest.mark.parametrize(
    ("policy", "tail", "since", "force", "expected"),
    [
        (Policy(snapshot_threshold=None), 500, LONG_AGO, False, "disabled"),
        (Policy(snapshot_threshold=None), 0, LONG_AGO, False, "disabled"),
        (Policy(snapshot_threshold=None), 0, LONG_AGO, True, "no_events"),
        (Policy(snapshot_threshold=None), 1, RECENT, True, None),
        (Policy(), 0, LONG_AGO, False, "no_events"),
        (Policy(), 0, LONG_AGO, True, "no_events"),
        (Policy(), 1, RECENT, True, None),
        (Policy(snapshot_threshold=100), 99, RECENT, False, "below_threshold"),
        (Policy(snapshot_threshold=100), 100, RECENT, False, None),
        (Policy(snapshot_interval_s=60), 1, NOW - timedelta(seconds=60), False, None),
        (Policy(snapshot_interval_s=60), 1, NOW - timedelta(seconds=59), False, "below_threshold"),
        (Policy(snapshot_interval_s=0), 1, LONG_AGO, False, "below_threshold"),
    ],
)
def test_decide_precedence(
    policy: Policy, tail: int, since: datetime, force: bool, expected: str | None
) -> None:
    assert decide(policy, tail_count=tail, last_snapshot_at=since, now=NOW, force=force) == expected


def test_interval() -> None:
    policy = Policy(snapshot_interval_s=1800)
    assert interval_due(policy, last_snapshot_at=NOW - timedelta(seconds=1800), now=NOW)
    assert not interval_due(policy, last_snapshot_at=NOW - timedelta(seconds=1799), now=NOW)
    assert not interval_due(Policy(snapshot_interval_s=0), last_snapshot_at=LONG_AGO, now=NOW)
    assert policy.sweep_period_s() == 60
    assert Policy(snapshot_interval_s=5).sweep_period_s() == 5
    assert Policy(snapshot_interval_s=0).sweep_period_s() is None


def meta(
    name: str,
    through: int,
    *,
    version: str = "v2",
    kind: SnapshotKind = "auto",
    pinned: bool = False,
    created: datetime = LONG_AGO,
    expires: datetime | None = None,
) -> SnapshotMeta:
    return SnapshotMeta(
        snapshot_id=name,
        run_id="r",
        through_seq=through,
        version=version,
        reducer="steps",
        format_version=1,
        size_bytes=2,
        checksum="sha256:x",
        kind=kind,
        pinned=pinned,
        created_at=created,
        expires_at=expires,
    )


def doomed(snapshots: list[SnapshotMeta], keep: int = 2) -> set[str]:
    return {m.snapshot_id for m in prune(snapshots, current_version="v2", keep=keep, now=NOW)}


def test_prune_keeps_newest_auto_and_manual_of_current_version() -> None:
    snapshots = [
        meta("a10", 10),
        meta("m20", 20, kind="manual"),
        meta("a30", 30),
        meta("a30-later", 30, created=RECENT),
    ]
    assert doomed(snapshots) == {"a10", "m20"}
    assert doomed(snapshots, keep=3) == {"a10"}


def test_prune_keeps_pinned_and_unexpired_safety_in_addition() -> None:
    snapshots = [
        meta("pinned", 1, pinned=True),
        meta("safe", 2, kind="safety", expires=NOW + timedelta(hours=1)),
        meta("expired", 3, kind="safety", expires=NOW - timedelta(seconds=1)),
        meta("a4", 4),
        meta("a5", 5),
        meta("a6", 6),
    ]
    assert doomed(snapshots) == {"expired", "a4"}


def test_prune_deletes_old_versions_once_current_has_one() -> None:
    old = [
        meta("old1", 10, version="v1"),
        meta("old2", 20, version="v1"),
        meta("old3", 30, version="v1"),
        meta("old-pinned", 5, version="v1", pinned=True),
        meta("old-safe", 6, version="v1", kind="safety", expires=NOW + timedelta(days=1)),
    ]
    assert doomed(old) == {"old1"}
    assert doomed([*old, meta("new", 31)]) == {"old1", "old2", "old3"}


def test_newest_first_by_through_seq_then_created_at() -> None:
    snapshots = [meta("b", 5, created=RECENT), meta("c", 7), meta("a", 5)]
    assert [m.snapshot_id for m in newest_first(snapshots)] == ["c", "b", "a"]
