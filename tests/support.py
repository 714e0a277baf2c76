"""Helpers shared by several test packages: building snapshots and polling for a condition.

Snapshots are built with the real ``compaction.compact``, so journal and runtime
tests store exactly what the daemon would store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from snapshotd.domain import compaction
from snapshotd.domain.model import Event, Snapshot, SnapshotKind
from snapshotd.domain.reducers import BUILTIN

T = TypeVar("T")

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_snapshot(
    run_id: str,
    tail: Sequence[Event],
    *,
    base: Snapshot | None = None,
    kind: SnapshotKind = "auto",
    version: str = "v1",
    reducer: str = "steps",
    now: datetime = T0,
    safety_ttl_s: float = 60,
    label: str | None = None,
) -> Snapshot:
    """A snapshot of ``tail`` folded onto ``base`` by the built-in ``reducer``."""
    return compaction.compact(
        run_id=run_id,
        version=version,
        reducer_name=reducer,
        reducer=BUILTIN[reducer],
        base=base,
        tail=tail,
        kind=kind,
        now=now,
        safety_ttl_s=safety_ttl_s,
        label=label,
    ).snapshot


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    The predicate may raise to fail at once (say, when the process it waits on died).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s (last: {value!r})")
        time.sleep(interval)
