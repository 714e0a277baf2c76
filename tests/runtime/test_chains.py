"""Snapshots stored as delta chains, through an Instance on the memory journal.

The property test drives random histories (appends, snapshots with random
thresholds and kinds, version changes, pins, retention) and checks after every
step that each listed snapshot loads whole and equals the fold of the events up
to its ``through_seq``, and that ``load`` plus the tail is the full replay.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshotd.domain.model import NewEvent, Snapshot
from snapshotd.domain.reducers import BUILTIN, fold
from snapshotd.journals.memory import MemoryJournal
from snapshotd.runtime.instance import Instance
from tests.domain.test_invariant import DATA

from .support import make_instance

pytestmark = pytest.mark.anyio

_ops = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 12)),
    st.tuples(st.just("snapshot"), st.sampled_from(["auto", "manual", "safety", "force"])),
    st.tuples(st.just("version"), st.sampled_from(["v1", "v2"])),
    st.tuples(st.just("pin"), st.integers(0, 5)),
    st.tuples(st.just("unpin"), st.integers(0, 5)),
)


async def check_every_snapshot(inst: Instance, run: str, reducer: str) -> None:
    journal = inst.journal
    events = await journal.read_events(run, 0)
    for meta in await journal.list_snapshots(run):
        whole = await inst.chains.read_whole(run, meta)
        expected = fold(BUILTIN[reducer], None, events[: meta.through_seq])
        assert orjson.loads(whole.payload) == orjson.loads(orjson.dumps(expected))
        assert meta.size_bytes == len(whole.payload)
    loaded = orjson.loads(orjson.dumps(await inst.load(run, after_seq=None, limit=100_000)))
    state = None if loaded["snapshot"] is None else loaded["snapshot"]["state"]
    tail = [e for e in events if e.seq > (loaded["snapshot"] or {"through_seq": 0})["through_seq"]]
    replayed = fold(BUILTIN[reducer], state, tail)
    assert orjson.dumps(replayed) == orjson.dumps(fold(BUILTIN[reducer], None, events))
    assert (await inst.verify(run))["corrupt"] == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reducer=st.sampled_from(["steps", "last_by_key"]),
    threshold=st.integers(1, 6),
    keep=st.integers(2, 4),
    data=st.data(),
)
def test_every_snapshot_in_every_chain_is_the_full_replay(
    reducer: str, threshold: int, keep: int, data: Any
) -> None:
    ops = data.draw(st.lists(_ops, min_size=1, max_size=30))

    async def scenario() -> None:
        journal = MemoryJournal()
        inst = make_instance(
            journal,
            snapshot_threshold=threshold,
            keep_snapshots=keep,
            workflows={"wf": {"reducer": reducer}},
        )
        await journal.create_run("r", "wf", "v1", None, _now())
        for op, arg in ops:
            if op == "append":
                batch = [NewEvent("e", data.draw(DATA[reducer])) for _ in range(arg)]
                await journal.append("r", batch, expected_seq=None, lease=None, now=_now())
            elif op == "snapshot":
                kind = "manual" if arg == "force" else arg
                await inst.snapshot_now("r", lease=None, force=arg == "force", kind=kind)
            elif op == "version":
                await journal.set_version("r", arg)
            else:
                listed = await journal.list_snapshots("r")
                if listed:
                    await journal.set_pinned(
                        "r", listed[arg % len(listed)].snapshot_id, op == "pin"
                    )
            await check_every_snapshot(inst, "r", reducer)
        links = await journal.list_links("r")
        listed = await journal.list_snapshots("r")
        assert len(links) <= 2 * len(listed) + 48  # retired links are collected

    anyio.run(scenario)


def _now() -> Any:
    from snapshotd.domain.model import utcnow

    return utcnow()


async def _steps_run(journal: MemoryJournal, inst: Instance, snapshots: int) -> None:
    await journal.create_run("r", "wf", "v1", None, _now())
    for n in range(snapshots):
        batch = [NewEvent("step", {"n": n, "i": i}) for i in range(5)]
        await journal.append("r", batch, expected_seq=None, lease=None, now=_now())
        await inst.snapshot_now("r", lease=None, force=False, kind="auto")


async def test_long_steps_runs_are_stored_as_short_chains_of_deltas() -> None:
    journal = MemoryJournal()
    inst = make_instance(journal, snapshot_threshold=5)
    await _steps_run(journal, inst, 64)
    links = await journal.list_links("r")
    listed = await journal.list_snapshots("r")
    assert len(listed) == 2
    newest = listed[0]
    assert newest.base_id is not None
    assert newest.stored_size < newest.size_bytes
    depth = 1
    by_id = {m.snapshot_id: m for m in links}
    link = newest
    while link.base_id is not None:
        link = by_id[link.base_id]
        depth += 1
    assert depth <= 8
    stored = sum(m.stored_size for m in links)
    assert stored < 3 * newest.size_bytes  # not a whole copy per kept snapshot
    assert [m.listing()["stored_bytes"] for m in listed] == [m.stored_size for m in listed]
    await check_every_snapshot(inst, "r", "steps")


async def test_a_corrupt_link_makes_every_snapshot_above_it_unusable() -> None:
    journal = MemoryJournal()
    inst = make_instance(journal, snapshot_threshold=5)
    await _steps_run(journal, inst, 6)
    newest, older = await journal.list_snapshots("r")
    assert newest.base_id is not None
    by_id = {m.snapshot_id: m for m in await journal.list_links("r")}
    bottom = newest
    while bottom.base_id is not None:
        bottom = by_id[bottom.base_id]
    stored = journal._runs["r"].snapshots[bottom.snapshot_id]
    journal._runs["r"].snapshots[bottom.snapshot_id] = Snapshot(
        stored.meta, stored.payload.replace(b'"step"', b'"stop"', 1)
    )
    fresh = make_instance(journal, snapshot_threshold=5)
    loaded = await fresh.load("r", after_seq=None, limit=1000)
    needs_bottom = {m.snapshot_id for m in (newest, older) if _needs(m, bottom, by_id)}
    if loaded["snapshot"] is not None:
        assert loaded["snapshot"]["snapshot_id"] not in needs_bottom
    verified = await fresh.verify("r")
    assert set(verified["corrupt"]) == needs_bottom
    await check_every_snapshot_but(fresh, "r", needs_bottom)
    # the next attempt rebuilds from history instead of building on the damage
    await journal.append("r", [NewEvent("step", {})] * 5, expected_seq=None, lease=None, now=_now())
    taken = await fresh.snapshot_now("r", lease=None, force=False, kind="auto")
    assert taken["status"] == "taken"
    whole = await fresh.chains.read_whole("r", (await journal.list_snapshots("r"))[0])
    assert len(orjson.loads(whole.payload)["steps"]) == 35


def _needs(meta: Any, link: Any, by_id: dict[str, Any]) -> bool:
    while meta is not None:
        if meta.snapshot_id == link.snapshot_id:
            return True
        meta = by_id.get(meta.base_id) if meta.base_id else None
    return False


async def check_every_snapshot_but(inst: Instance, run: str, damaged: set[str]) -> None:
    loaded = orjson.loads(orjson.dumps(await inst.load(run, after_seq=None, limit=100_000)))
    events = await inst.journal.read_events(run, 0)
    base = loaded["snapshot"]
    state = None if base is None else base["state"]
    tail = events[(0 if base is None else base["through_seq"]) :]
    assert fold(BUILTIN["steps"], state, tail) == fold(BUILTIN["steps"], None, events)
    assert base is None or base["snapshot_id"] not in damaged


async def test_a_missing_link_is_corrupt_and_retention_never_deletes_a_needed_one() -> None:
    journal = MemoryJournal()
    inst = make_instance(journal, snapshot_threshold=5)
    await _steps_run(journal, inst, 12)
    listed = await journal.list_snapshots("r")
    links = await journal.list_links("r")
    retired = [m for m in links if m.retired]
    assert retired  # pruned snapshots whose links the kept ones still need
    for meta in listed:
        await inst.chains.read_whole("r", meta)
    del journal._runs["r"].snapshots[retired[0].snapshot_id]
    fresh = make_instance(journal, snapshot_threshold=5)
    assert set((await fresh.verify("r"))["corrupt"]) <= {m.snapshot_id for m in listed}
    assert (await fresh.verify("r"))["corrupt"]


async def test_too_large_steps_runs_are_not_refolded_again_and_again() -> None:
    journal = MemoryJournal()
    await _steps_run(journal, make_instance(journal, snapshot_threshold=5), 3)
    await journal.append(
        "r", [NewEvent("step", {})] * 50, expected_seq=None, lease=None, now=_now()
    )
    inst = make_instance(journal, snapshot_threshold=5, max_snapshot_bytes=1000)
    reads = 0
    original = journal.read_events

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await original(*args, **kwargs)

    journal.read_events = counting  # type: ignore[method-assign]
    for _ in range(3):
        skipped = await inst.snapshot_now("r", lease=None, force=False, kind="auto")
        assert skipped == {"status": "skipped", "reason": "too_large"}
    assert reads == 1  # the size is remembered: a `steps` state only grows
    assert len(await journal.list_snapshots("r")) == 2


async def test_a_journal_without_links_stores_every_snapshot_whole() -> None:
    class WholeOnly:
        """A memory journal hiding its link methods."""

        def __init__(self) -> None:
            self._inner = MemoryJournal()

        def __getattr__(self, name: str) -> Any:
            if name in {"list_links", "read_link", "retire_snapshots"}:
                raise AttributeError(name)
            return getattr(self._inner, name)

    journal = WholeOnly()
    inst = make_instance(journal, snapshot_threshold=5)  # type: ignore[arg-type]
    assert not inst.chains.stores_links
    await _steps_run(journal, inst, 6)  # type: ignore[arg-type]
    listed = await journal.list_snapshots("r")
    assert [m.base_id for m in listed] == [None, None]
    assert [replace(m).stored_size for m in listed] == [m.size_bytes for m in listed]
    await check_every_snapshot(inst, "r", "steps")
