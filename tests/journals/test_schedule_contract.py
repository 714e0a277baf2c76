"""The SchedulesSweeps contract (journals/base.py), run against every adapter that keeps
due points: what a sweep finds, in which order, and how back-offs and resets work."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from snapshotd.domain.errors import NotFound
from snapshotd.domain.model import NEVER_SEQ, DuePoint, NewEvent, utcnow
from snapshotd.journals.base import DueRun, Journal, SchedulesSweeps
from snapshotd.journals.fs import FsJournal
from snapshotd.journals.memory import MemoryJournal

pytestmark = pytest.mark.anyio

LATER = timedelta(days=1)


class Scheduled(Journal, SchedulesSweeps):
    """A journal that keeps due points (for typing the fixture)."""


@pytest.fixture(params=["memory", "fs", pytest.param("postgres", marks=pytest.mark.postgres)])
async def sched(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Scheduled]:
    if request.param == "memory":
        journal: Journal = MemoryJournal()
    elif request.param == "fs":
        journal = FsJournal(tmp_path / "journal")
    else:
        from snapshotd.journals.postgres import PostgresJournal

        dsn: str = request.getfixturevalue("pg_dsn")
        journal = PostgresJournal(f"{dsn}?schema=t_{secrets.token_hex(6)}")
    assert isinstance(journal, SchedulesSweeps)
    await journal.open()
    try:
        yield journal  # type: ignore[misc]  # a Journal that is also SchedulesSweeps
    finally:
        await journal.aclose()


async def add(journal: Journal, run_id: str, count: int, at: datetime | None = None) -> int:
    events = [NewEvent("step", i) for i in range(count)]
    return await journal.append(run_id, events, expected_seq=None, lease=None, now=at or utcnow())


async def due_ids(journal: SchedulesSweeps, now: datetime | None = None) -> list[str]:
    return [d.run_id for d in await journal.sweep_due(now or utcnow(), 100, None)]


async def test_unseen_run_is_due_once_it_has_events(sched: Scheduled) -> None:
    await sched.create_run("r", "wf", "v1", None, utcnow())
    assert await due_ids(sched) == []
    await add(sched, "r", 1)
    assert await due_ids(sched) == ["r"]
    run = await sched.get_run("r")
    assert run is not None and run.due is None


async def test_due_by_count_oldest_due_first_and_paged(sched: Scheduled) -> None:
    t = utcnow() - timedelta(hours=1)
    for n, run_id in enumerate(["c", "a", "b"]):
        await sched.create_run(run_id, "wf", "v1", None, t)
        await sched.set_due(run_id, DuePoint(0, 3, None), snapshotted=False)
        await add(sched, run_id, 2, t)
        assert run_id not in await due_ids(sched)
        await add(sched, run_id, 1, t + timedelta(seconds=n))
    assert await due_ids(sched) == ["c", "a", "b"]
    first = await sched.sweep_due(utcnow(), 2, None)
    assert [d.run_id for d in first] == ["c", "a"]
    rest = await sched.sweep_due(utcnow(), 2, first[-1])
    assert [d.run_id for d in rest] == ["b"]
    assert rest[0] > first[-1]
    run = await sched.get_run("a")
    assert run is not None and run.due == DuePoint(0, 3, None)


async def test_a_new_point_recomputes_whether_the_run_is_due(sched: Scheduled) -> None:
    await sched.create_run("r", "wf", "v1", None, utcnow())
    await add(sched, "r", 5)
    await sched.set_due("r", DuePoint(5, 15, None), snapshotted=True)
    assert await due_ids(sched) == []
    await add(sched, "r", 9)
    assert await due_ids(sched) == []
    await add(sched, "r", 1)
    assert await due_ids(sched) == ["r"]
    await sched.set_due("r", DuePoint(15, NEVER_SEQ, None), snapshotted=True)
    await add(sched, "r", 1000)
    assert await due_ids(sched, utcnow() + LATER) == []


async def test_due_by_time_needs_an_event_after_the_base(sched: Scheduled) -> None:
    now = utcnow()
    await sched.create_run("r", "wf", "v1", None, now)
    await add(sched, "r", 4)
    await sched.set_due("r", DuePoint(4, 104, now + timedelta(minutes=5)), snapshotted=True)
    assert await due_ids(sched, now + LATER) == []
    await add(sched, "r", 1)
    assert await due_ids(sched, now) == []
    found = await sched.sweep_due(now + LATER, 10, None)
    assert found == [DueRun(now + timedelta(minutes=5), "r")]


async def test_due_points_never_go_backwards(sched: Scheduled) -> None:
    await sched.create_run("r", "wf", "v1", None, utcnow())
    await sched.set_due("r", DuePoint(10, 20, None), snapshotted=True)
    await sched.set_due("r", DuePoint(5, 15, None), snapshotted=True)
    await sched.set_due("r", DuePoint(10, 60, None), snapshotted=False)
    run = await sched.get_run("r")
    assert run is not None and run.due == DuePoint(10, 20, None)
    await sched.set_due("r", DuePoint(10, 30, None), snapshotted=True)
    await sched.set_due("r", DuePoint(12, 40, None), snapshotted=False)
    run = await sched.get_run("r")
    assert run is not None and run.due == DuePoint(12, 40, None)
    with pytest.raises(NotFound):
        await sched.set_due("missing", DuePoint(0, 1, None), snapshotted=True)


async def test_failures_back_off_doubling_up_to_the_cap(sched: Scheduled) -> None:
    now = utcnow()
    await sched.create_run("r", "wf", "v1", None, now)
    await add(sched, "r", 1)
    delays = []
    for _ in range(5):
        await sched.record_failure("r", now, 5.0)
        (due,) = await sched.sweep_due(now + LATER, 10, None)
        delays.append(round((due.due_at - now).total_seconds(), 3))
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert await due_ids(sched, now + timedelta(seconds=4)) == []
    with pytest.raises(NotFound):
        await sched.record_failure("missing", now, 5.0)


@pytest.mark.parametrize("reset", ["snapshot", "version", "lease"])
async def test_back_off_ends_with_a_success_a_version_or_a_restart(
    sched: Scheduled, reset: str
) -> None:
    now = utcnow()
    await sched.create_run("r", "wf", "v1", None, now)
    await add(sched, "r", 3)
    for _ in range(4):
        await sched.record_failure("r", now, 60.0)
    assert await due_ids(sched, now + timedelta(seconds=7)) == []
    if reset == "snapshot":
        await sched.set_due("r", DuePoint(1, 2, None), snapshotted=True)
    elif reset == "version":
        await sched.set_version("r", "v2")
        run = await sched.get_run("r")
        assert run is not None and run.due is None
    else:
        await sched.set_lease("r", "new-owner")
    assert await due_ids(sched, utcnow() + timedelta(seconds=1)) == ["r"]
    await sched.record_failure("r", utcnow(), 60.0)
    assert await due_ids(sched, utcnow() + timedelta(seconds=0.5)) == []
