"""The actor overlaps attempts of different runs, under its bound, one per run at a time."""

from __future__ import annotations

import anyio
import pytest

from snapshotd.domain.model import Snapshot
from snapshotd.runtime.actor import actor_loop

from .support import FaultyJournal, append, make_instance, new_run, settle

pytestmark = pytest.mark.anyio


class _Tracked(FaultyJournal):
    """Counts writes in progress, overall and per run; ``gates`` hold a run's writes."""

    def __init__(self) -> None:
        super().__init__()
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.gates: dict[str, anyio.Event] = {}

    async def write_snapshot(self, snapshot: Snapshot, *, lease: str | None) -> None:
        run_id = snapshot.meta.run_id
        self.active[run_id] = self.active.get(run_id, 0) + 1
        self.peak[run_id] = max(self.peak.get(run_id, 0), self.active[run_id])
        self.peak_total = max(self.peak_total, sum(self.active.values()))
        try:
            gate = self.gates.get(run_id)
            if gate is not None:
                await gate.wait()
            await anyio.sleep(0.01)
            await super().write_snapshot(snapshot, lease=lease)
        finally:
            self.active[run_id] -= 1


async def test_attempts_of_different_runs_overlap_up_to_the_bound() -> None:
    journal = _Tracked()
    inst = make_instance(journal, snapshot_threshold=1)
    inst.max_in_flight = 4
    runs = [f"r{i}" for i in range(20)]
    for run_id in runs:
        await new_run(journal, run_id, 2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(actor_loop, inst)
        for run_id in runs:
            inst.request_snapshot(run_id, None)
        await settle(inst)
        inst.stop_intake()
    assert journal.peak_total == 4
    assert inst.status()["taken"] == 20 and inst.in_flight == {}


async def test_a_run_in_flight_waits_its_turn_without_holding_up_the_others() -> None:
    journal = _Tracked()
    inst = make_instance(journal, snapshot_threshold=1)
    for run_id in "abc":
        await new_run(journal, run_id, 2)
    journal.gates["a"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(actor_loop, inst)
        inst.request_snapshot("a", None)
        with anyio.fail_after(2):
            while journal.active.get("a", 0) == 0:
                await anyio.sleep(0.005)
        await append(journal, "a", 2)
        assert inst.request_snapshot("a", None) == "queued"
        inst.request_snapshot("b", None)
        inst.request_snapshot("c", None)
        with anyio.fail_after(2):
            while inst.status()["taken"] < 2:
                await anyio.sleep(0.005)
        # b and c went past the second request for a, which waits for the first.
        assert len(inst.mailbox) == 1 and list(inst.in_flight) == ["a"]
        assert inst.request_snapshot("a", None) == "coalesced"
        journal.gates["a"].set()
        await settle(inst)
        inst.stop_intake()
    assert journal.peak["a"] == 1
    assert [m.through_seq for m in await journal.list_snapshots("a")] == [4, 2]
    status = inst.status()
    assert status["taken"] == 4 and status["coalesced"] == 1
