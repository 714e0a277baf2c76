"""The daemon's task tree: actors, counting, restarts with backoff, sweeps, watcher, drain."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from snapshotd.config import load_config
from snapshotd.domain.errors import ConfigError, Unavailable, UnknownInstance
from snapshotd.runtime import open_daemon
from snapshotd.runtime.actor import supervise
from snapshotd.runtime.instance import MAX_IN_FLIGHT, Instance
from snapshotd.runtime.mailbox import Job

from .support import FaultyJournal, append, counted, make_config, make_instance, new_run, settle

pytestmark = pytest.mark.anyio


async def test_requests_are_snapshotted_and_status_reports_them() -> None:
    journal = FaultyJournal()
    async with open_daemon(make_config(snapshot_threshold=3), journals={"default": journal}) as d:
        inst = d.instance("default")
        await new_run(journal, "r", 5)
        assert inst.request_snapshot("r", None) == "queued"
        await settle(inst)
        status = d.status()
        assert set(status) == {"version", "uptime_s", "instances"}
        assert status["instances"]["default"]["taken"] == 1
        assert status["instances"]["default"]["journal"] == "memory:"
        with pytest.raises(UnknownInstance):
            d.instance("nope")
    audit = await journal.read_audit(0, 10)
    assert audit[0].kind == "config_loaded"


async def test_every_request_is_counted_exactly_once() -> None:
    journal = FaultyJournal()
    rng = random.Random(7)
    config = make_config(capacity=8, snapshot_threshold=3, snapshot_interval_s=0)
    async with open_daemon(config, journals={"default": journal}) as d:
        inst = d.instance("default")
        runs = [f"r{i}" for i in range(20)]
        for run_id in runs[:15]:
            await new_run(
                journal, run_id, rng.randint(0, 6), lease="L" if rng.random() < 0.3 else None
            )
        sent = 0
        for round_ in range(30):
            for _ in range(rng.randint(1, 20)):
                inst.request_snapshot(rng.choice(runs), rng.choice([None, "L", "other"]))
                sent += 1
            if round_ == 10:
                journal.faults["list_snapshots"] = Unavailable("db down")
            if round_ == 15:
                journal.faults.clear()
            if rng.random() < 0.5:
                await append(journal, rng.choice(runs[:15]), 2, lease="L")
            await anyio.sleep(0)
        await settle(inst)
        status = inst.status()
    assert counted(status) == sent
    assert status["dropped"] and status["coalesced"] and status["taken"]
    assert status["skipped"]["no_run"] and status["skipped"]["journal_error"]


async def test_crashed_actor_restarts_with_backoff_and_keeps_serving() -> None:
    journal = FaultyJournal()
    async with open_daemon(make_config(snapshot_threshold=1), journals={"default": journal}) as d:
        inst = d.instance("default")
        await new_run(journal, "a", 2)
        await new_run(journal, "b", 2)
        real = inst.handle
        crashes: list[str] = []

        async def crash_once(job: Job) -> None:
            if not crashes:
                crashes.append(job.run_id)
                raise RuntimeError("bug in the loop")
            await real(job)

        inst.handle = crash_once  # type: ignore[method-assign]
        inst.request_snapshot("a", None)
        inst.request_snapshot("b", None)
        await settle(inst)
        status = inst.status()
    assert status["restarts"] == 1
    # The crashed request counts as internal; the sweep (unseen runs are due at once)
    # may still snapshot its run afterwards.
    assert status["skipped"]["internal"] == 1 and status["taken"] >= 1
    kinds = [e.kind for e in await journal.read_audit(0, 100)]
    assert "actor_restarted" in kinds


async def test_backoff_doubles_up_to_the_cap() -> None:
    inst = _bare_instance()
    calls: list[float] = []

    async def body(_: Instance) -> None:
        calls.append(anyio.current_time())
        if len(calls) < 5:
            raise RuntimeError("again")

    await supervise(inst, "actor", body, initial_s=0.01, max_s=0.04)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert inst.restarts == 4
    for gap, expected in zip(gaps, [0.01, 0.02, 0.04, 0.04], strict=True):
        assert expected <= gap < expected + 0.05


async def test_supervisor_stops_waiting_when_the_mailbox_closes() -> None:
    inst = _bare_instance()

    async def body(_: Instance) -> None:
        raise RuntimeError("always")

    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: supervise(inst, "actor", body, initial_s=30, max_s=30))
            await anyio.wait_all_tasks_blocked()
            inst.stop_intake()
    assert inst.restarts == 1


def _bare_instance() -> Instance:
    return make_instance()


async def test_sweep_takes_interval_snapshots() -> None:
    journal = FaultyJournal()
    config = make_config(snapshot_threshold=1000, snapshot_interval_s=0.05)
    await new_run(journal, "old", 3)
    await new_run(journal, "idle")
    async with open_daemon(config, journals={"default": journal}) as d:
        inst = d.instance("default")
        with anyio.fail_after(3):
            while not await journal.list_snapshots("old"):
                await anyio.sleep(0.01)
        await append(journal, "old", 1)
        with anyio.fail_after(3):
            while (await journal.list_snapshots("old"))[0].through_seq < 4:
                await anyio.sleep(0.01)
        assert await journal.list_snapshots("idle") == []
        status = inst.status()
    assert status["taken"] >= 2
    assert status["skipped"]["below_threshold"] == 0


async def test_workflow_interval_drives_the_sweep_period() -> None:
    journal = FaultyJournal()
    config = make_config(
        snapshot_threshold=1000,
        snapshot_interval_s=0,
        workflows={"fast": {"snapshot_interval_s": 0.05}},
    )
    await new_run(journal, "slow", 3)
    await new_run(journal, "quick", 3, workflow="fast")
    async with open_daemon(config, journals={"default": journal}):
        with anyio.fail_after(3):
            while not await journal.list_snapshots("quick"):
                await anyio.sleep(0.01)
        assert await journal.list_snapshots("slow") == []


class WatchingJournal(FaultyJournal):
    """Simulates LISTEN/NOTIFY: the test pushes run ids; a gap asks for a sweep."""

    def __init__(self) -> None:
        super().__init__()
        self.on_append: Callable[[str], None] | None = None
        self.on_gap: Callable[[], None] | None = None

    async def watch_appends(
        self,
        on_append: Callable[[str], None],
        on_gap: Callable[[], None],
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        self.on_append, self.on_gap = on_append, on_gap
        task_status.started()
        await anyio.sleep_forever()


async def test_append_notifications_and_gaps_trigger_checks() -> None:
    journal = WatchingJournal()
    config = make_config(snapshot_threshold=3, snapshot_interval_s=0)
    async with open_daemon(config, journals={"default": journal}) as d:
        inst = d.instance("default")
        await new_run(journal, "a", 1)
        await new_run(journal, "b", 5)
        with anyio.fail_after(2):
            while journal.on_append is None:
                await anyio.sleep(0.01)
        assert journal.on_gap is not None
        journal.on_append("a")
        journal.on_append("b")
        await settle(inst)
        assert [len(await journal.list_snapshots(r)) for r in "ab"] == [0, 1]
        await append(journal, "a", 3)
        journal.on_gap()
        with anyio.fail_after(2):
            while not await journal.list_snapshots("a"):
                await anyio.sleep(0.01)
        status = inst.status()
    assert status["taken"] == 2 and sum(status["skipped"].values()) == 0


async def test_drain_finishes_the_attempts_in_flight_and_discards_the_rest() -> None:
    journal = FaultyJournal()
    journal.delays["write_snapshot"] = 0.2
    runs = [f"r{i:02d}" for i in range(MAX_IN_FLIGHT + 3)]
    async with open_daemon(make_config(snapshot_threshold=1), journals={"default": journal}) as d:
        inst = d.instance("default")
        for run_id in runs:
            await new_run(journal, run_id, 2)
            inst.request_snapshot(run_id, None)
        with anyio.fail_after(2):
            while journal.calls.get("write_snapshot", 0) < MAX_IN_FLIGHT:
                await anyio.sleep(0.005)
        started = anyio.current_time()
    assert anyio.current_time() - started < 1
    counts = [len(await journal.list_snapshots(r)) for r in runs]
    assert counts == [1] * MAX_IN_FLIGHT + [0] * 3
    assert inst.request_snapshot(runs[0], None) == "dropped"


async def test_drain_is_bounded_when_an_attempt_hangs() -> None:
    journal = FaultyJournal()
    journal.delays["write_snapshot"] = 60
    config = make_config(snapshot_threshold=1)
    async with open_daemon(config, journals={"default": journal}, drain_timeout_s=0.2) as d:
        await new_run(journal, "a", 2)
        d.instance("default").request_snapshot("a", None)
        with anyio.fail_after(2):
            while journal.calls.get("write_snapshot", 0) == 0:
                await anyio.sleep(0.005)
        started = anyio.current_time()
    assert anyio.current_time() - started < 1


async def test_one_instance_in_trouble_does_not_stall_another() -> None:
    slow, fast = FaultyJournal(), FaultyJournal()
    slow.delays["get_run"] = 30
    env = {
        "SNAPSHOTD_INSTANCES__SLOW__JOURNAL": "memory:",
        "SNAPSHOTD_INSTANCES__FAST__JOURNAL": "memory:",
        "SNAPSHOTD_INSTANCES__FAST__SNAPSHOT_THRESHOLD": "1",
    }
    config = load_config(None, env)
    async with open_daemon(config, journals={"slow": slow, "fast": fast}, drain_timeout_s=0.1) as d:
        await new_run(fast, "r", 1)
        d.instance("slow").request_snapshot("r", None)
        d.instance("fast").request_snapshot("r", None)
        await settle(d.instance("fast"))
        assert d.instance("fast").status()["taken"] == 1


async def test_unresolvable_reducer_fails_start_up_naming_the_key(tmp_path: Any) -> None:
    env = {
        "SNAPSHOTD_INSTANCES__DEFAULT__JOURNAL": "memory:",
        "SNAPSHOTD_WORKFLOWS__ORDER__REDUCER": "no_such_module_xyz:fold",
    }
    with pytest.raises(ConfigError, match=r"^workflows\.order\.reducer: "):
        async with open_daemon(load_config(None, env)):
            pass
    env = {
        "SNAPSHOTD_INSTANCES__DEFAULT__JOURNAL": "memory:",
        "SNAPSHOTD_INSTANCES__DEFAULT__SAVEPOINT_UPGRADE": "json:no_such_function",
    }
    with pytest.raises(ConfigError, match=r"^instances\.default\.savepoint_upgrade: "):
        async with open_daemon(load_config(None, env)):
            pass


async def test_savepoint_upgrade_is_resolved_per_workflow() -> None:
    env = {
        "SNAPSHOTD_INSTANCES__DEFAULT__JOURNAL": "memory:",
        "SNAPSHOTD_WORKFLOWS__ORDER__SAVEPOINT_UPGRADE": "copy:deepcopy",
    }
    async with open_daemon(load_config(None, env)) as d:
        inst = d.instance("default")
        upgrade = inst.savepoint_upgrade_for("order")
        assert upgrade is not None and upgrade({"e": 1}) == {"e": 1}
        assert inst.savepoint_upgrade_for("other") is None
