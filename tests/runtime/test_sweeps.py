"""Fair sweeps (SPEC section 1): oldest due first, failing runs backed off, due points
recorded only when they change — on every journal that keeps due points."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from snapshotd.domain.model import DuePoint, utcnow
from snapshotd.domain.slices import run_slice
from snapshotd.journals.base import DueRun, Journal, SchedulesSweeps
from snapshotd.journals.fs import FsJournal
from snapshotd.journals.memory import MemoryJournal
from snapshotd.runtime.actor import sweep_due
from snapshotd.runtime.instance import Instance

from .support import append, make_instance, new_run

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "fs", pytest.param("postgres", marks=pytest.mark.postgres)])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        opened: Journal = MemoryJournal()
    elif request.param == "fs":
        opened = FsJournal(tmp_path / "journal")
    else:
        from snapshotd.journals.postgres import PostgresJournal

        dsn: str = request.getfixturevalue("pg_dsn")
        opened = PostgresJournal(f"{dsn}?schema=t_{secrets.token_hex(6)}")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


async def drain(instance: Instance) -> None:
    """Run every queued Job as the actor would, one after another."""
    while len(instance.mailbox):
        job = await instance.mailbox.get()
        await instance.handle(job)
        instance.mailbox.done(job.run_id)


async def hold_every_slice(instance: Instance) -> None:
    """A sole daemon on a shared journal: one heartbeat takes every slice."""
    if instance.slices is not None:
        await instance.slices.beat(anyio.current_time())
        assert instance.slices.owned_count() == 1024


async def test_failing_runs_sorted_first_do_not_starve_a_healthy_one(journal: Any) -> None:
    """Capacity 5, 8 runs whose snapshots are always too large, all due before the
    healthy one and sorted before it: the healthy run still gets its snapshot."""
    inst = make_instance(
        journal,
        capacity=5,
        snapshot_threshold=2,
        workflows={"huge": {"max_snapshot_bytes": 1}},
    )
    await hold_every_slice(inst)
    for i in range(8):
        await new_run(journal, f"a-{i}", 3, workflow="huge")
    await new_run(journal, "z-healthy", 3)
    cursor: DueRun | None = None
    for _ in range(3):
        cursor = await sweep_due(inst, journal, cursor)
        await drain(inst)
    assert [m.through_seq for m in await journal.list_snapshots("z-healthy")] == [3]
    assert inst.skipped["too_large"] == 8  # each failing run tried once, then backed off
    assert await journal.list_snapshots("a-0") == []
    assert [d.run_id for d in await journal.sweep_due(utcnow(), 10, None)] == []


async def test_points_are_recorded_when_first_seen_and_after_a_snapshot(journal: Any) -> None:
    inst = make_instance(journal, snapshot_threshold=5, snapshot_interval_s=0)
    await hold_every_slice(inst)
    await new_run(journal, "r", 2)
    await sweep_due(inst, journal, None)
    await drain(inst)
    run = await journal.get_run("r")
    assert run.due == DuePoint(0, 5, None)
    assert await journal.sweep_due(utcnow(), 10, None) == []
    await append(journal, "r", 3)
    assert [d.run_id for d in await journal.sweep_due(utcnow(), 10, None)] == ["r"]
    await sweep_due(inst, journal, None)
    await drain(inst)
    run = await journal.get_run("r")
    assert run.due == DuePoint(5, 10, None)
    assert await journal.sweep_due(utcnow(), 10, None) == []


async def test_a_full_mailbox_is_paged_oldest_due_first(journal: Any) -> None:
    inst = make_instance(journal, capacity=2, snapshot_threshold=100)
    await hold_every_slice(inst)
    for name in ["c", "b", "a"]:
        await new_run(journal, name, 1)
    cursor = await sweep_due(inst, journal, None)
    assert cursor is not None and cursor.run_id == "b"
    assert await sweep_due(inst, journal, cursor) == cursor  # no room: nothing read
    assert await inst.mailbox.get() is not None
    cursor = await sweep_due(inst, journal, cursor)  # room for one more: the next one
    assert cursor is not None and cursor.run_id == "a"
    queued = [(await inst.mailbox.get()).run_id for _ in range(2)]
    assert queued == ["b", "a"]


async def test_checks_of_a_known_run_write_nothing(journal: Any) -> None:
    inst = make_instance(journal, snapshot_threshold=5)
    await hold_every_slice(inst)
    await new_run(journal, "r", 1)
    inst.trigger("r")
    await drain(inst)
    calls = 0
    original = journal.set_due

    async def counting(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        await original(*args, **kwargs)

    journal.set_due = counting
    for _ in range(3):
        inst.trigger("r")
        await drain(inst)
    assert calls == 0
    assert isinstance(journal, SchedulesSweeps)


async def test_a_sweep_can_be_limited_to_some_slices(journal: Any) -> None:
    ids = [f"slice-{i}" for i in range(6)]
    for run_id in ids:
        await new_run(journal, run_id, 3)
    mine = {run_slice(ids[0]), run_slice(ids[1])}
    found = await journal.sweep_due(utcnow(), 100, None, sorted(mine))
    expected = sorted(r for r in ids if run_slice(r) in mine)
    assert sorted(d.run_id for d in found) == expected
    assert sorted(d.run_id for d in await journal.sweep_due(utcnow(), 100, None)) == ids
