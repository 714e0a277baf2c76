"""The Journal contract for delta chains (``StoresLinks``), run against every adapter:
links round-trip, retired snapshots are hidden yet readable as links, writes on a
missing base and deletes that would break a chain are refused, and snapshots taken
by the runtime on the adapter load whole, equal to the full replay."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from snapshotd.domain import chains
from snapshotd.domain.errors import NotFound, Superseded
from snapshotd.domain.model import NewEvent, Snapshot
from snapshotd.domain.reducers import fold, steps
from snapshotd.journals.base import Journal, StoresLinks
from tests.runtime.support import make_instance
from tests.support import T0, make_snapshot

pytestmark = pytest.mark.anyio


async def _whole_and_delta(journal: Journal) -> tuple[Snapshot, Snapshot]:
    assert isinstance(journal, StoresLinks)
    await journal.create_run("r", "wf", "v1", None, T0)
    batch = [NewEvent("step", {"n": i}) for i in range(6)]
    await journal.append("r", batch, expected_seq=0, lease=None, now=T0)
    events = await journal.read_events("r", 0)
    whole = make_snapshot("r", events[:3])
    delta = chains.StepsCodec().delta(events[3:])
    meta = replace(
        make_snapshot("r", events).meta,
        base_id=whole.meta.snapshot_id,
        stored_bytes=len(delta),
        checksum=chains.link_checksum(whole.meta.checksum, delta),
    )
    await journal.write_snapshot(whole, lease=None)
    linked = Snapshot(meta, delta)
    await journal.write_snapshot(linked, lease=None)
    return whole, linked


async def test_links_round_trip(journal: Journal) -> None:
    whole, linked = await _whole_and_delta(journal)
    assert isinstance(journal, StoresLinks)
    listed = await journal.list_snapshots("r")
    assert [m.snapshot_id for m in listed] == [linked.meta.snapshot_id, whole.meta.snapshot_id]
    assert listed[0].base_id == whole.meta.snapshot_id
    assert listed[0].stored_size == len(linked.payload) < listed[0].size_bytes
    assert listed[1].stored_size == listed[1].size_bytes
    assert await journal.list_links("r") == listed
    read = await journal.read_link("r", linked.meta.snapshot_id)
    assert read.payload == linked.payload
    assert (read.meta.base_id, read.meta.stored_bytes) == (
        linked.meta.base_id,
        linked.meta.stored_bytes,
    )
    chains.verify_link(read.meta, read.payload, listed[1])


async def test_retired_snapshots_are_links_only(journal: Journal) -> None:
    whole, linked = await _whole_and_delta(journal)
    assert isinstance(journal, StoresLinks)
    await journal.set_pinned("r", whole.meta.snapshot_id, True)
    sid = whole.meta.snapshot_id
    assert await journal.retire_snapshots("r", [sid, "missing"]) == 1
    assert await journal.retire_snapshots("r", [sid]) == 0
    assert [m.snapshot_id for m in await journal.list_snapshots("r")] == [linked.meta.snapshot_id]
    links = await journal.list_links("r")
    assert [(m.snapshot_id, m.retired, m.pinned) for m in links][1] == (sid, True, False)
    with pytest.raises(NotFound):
        await journal.read_snapshot("r", sid)
    with pytest.raises(NotFound):
        await journal.set_pinned("r", sid, True)
    assert (await journal.read_link("r", sid)).payload == whole.payload
    # a new snapshot may still be stored on a retired link
    events = await journal.read_events("r", 0)
    more = make_snapshot("r", events[:4])
    tail = chains.StepsCodec().delta(events[3:4])
    on_retired = replace(
        more.meta,
        through_seq=7,
        base_id=sid,
        stored_bytes=len(tail),
        checksum=chains.link_checksum(whole.meta.checksum, tail),
        kind="safety",
    )
    await journal.write_snapshot(Snapshot(on_retired, tail), lease=None)


async def test_a_write_on_a_missing_base_is_refused(journal: Journal) -> None:
    _, linked = await _whole_and_delta(journal)
    orphan = replace(
        linked.meta,
        snapshot_id="01900000-0000-7000-8000-000000000001",
        through_seq=6,
        kind="safety",
        base_id="01900000-0000-7000-8000-000000000002",
    )
    with pytest.raises(Superseded):
        await journal.write_snapshot(Snapshot(orphan, linked.payload), lease=None)
    assert len(await journal.list_snapshots("r")) == 2


async def test_deleting_never_breaks_a_chain(journal: Journal) -> None:
    whole, linked = await _whole_and_delta(journal)
    assert await journal.delete_snapshots("r", [whole.meta.snapshot_id]) == 0
    assert len(await journal.list_snapshots("r")) == 2
    ids = [linked.meta.snapshot_id, whole.meta.snapshot_id]
    assert await journal.delete_snapshots("r", ids) == 2
    assert await journal.list_snapshots("r") == []


async def test_runtime_chains_on_the_journal_load_whole(journal: Journal) -> None:
    """Snapshots the daemon takes on this journal: deltas, merges, retirements and a
    consolidation, each one loading whole and equal to the fold of its events."""
    inst = make_instance(journal, snapshot_threshold=3)
    await journal.create_run("r", "wf", "v1", None, T0)
    for n in range(24):
        batch = [NewEvent("step", {"n": n, "i": i}) for i in range(3)]
        await journal.append("r", batch, expected_seq=None, lease=None, now=T0)
        assert (await inst.snapshot_now("r", lease=None, force=False, kind="auto"))["status"] == (
            "taken"
        )
        events = await journal.read_events("r", 0)
        for meta in await journal.list_snapshots("r"):
            whole = await inst.chains.read_whole("r", meta)
            assert orjson.loads(whole.payload) == fold(steps, None, events[: meta.through_seq])
    assert isinstance(journal, StoresLinks)
    links = await journal.list_links("r")
    assert any(m.base_id for m in links)
    assert any(m.retired for m in links)
    fresh = make_instance(journal, snapshot_threshold=3)
    loaded = await fresh.load("r", after_seq=None, limit=10)
    state = orjson.loads(orjson.dumps(loaded["snapshot"]["state"]))
    assert state == fold(steps, None, await journal.read_events("r", 0))
    assert (await fresh.verify("r")) == {"checked": 2, "corrupt": [], "drift": []}


async def test_a_damaged_link_makes_every_snapshot_above_it_unusable(journal: Journal) -> None:
    await journal.create_run("r", "wf", "v1", None, T0)
    batch = [NewEvent("step", {"n": i}) for i in range(6)]
    await journal.append("r", batch, expected_seq=0, lease=None, now=T0)
    events = await journal.read_events("r", 0)
    good = make_snapshot("r", events[:2])
    stored = make_snapshot("r", events[:3])
    damaged = Snapshot(stored.meta, stored.payload.replace(b'"n":1', b'"n":7'))
    delta = chains.StepsCodec().delta(events[3:])
    above = Snapshot(
        replace(
            make_snapshot("r", events).meta,
            base_id=stored.meta.snapshot_id,
            stored_bytes=len(delta),
            checksum=chains.link_checksum(stored.meta.checksum, delta),
        ),
        delta,
    )
    for snapshot in (good, damaged, above):
        await journal.write_snapshot(snapshot, lease=None)
    inst = make_instance(journal, snapshot_threshold=100)
    loaded = await inst.load("r", after_seq=None, limit=10)
    assert loaded["snapshot"]["snapshot_id"] == good.meta.snapshot_id
    assert len(loaded["events"]) == 4
    verified = await inst.verify("r")
    assert sorted(verified["corrupt"]) == sorted([damaged.meta.snapshot_id, above.meta.snapshot_id])
    taken = await inst.snapshot_now("r", lease=None, force=True, kind="safety")
    assert taken["status"] == "taken"
    fresh = make_instance(journal, snapshot_threshold=100)
    newest = (await journal.list_snapshots("r"))[0]
    assert newest.snapshot_id == taken["snapshot_id"]
    whole = await fresh.chains.read_whole("r", newest)
    assert orjson.loads(whole.payload) == fold(steps, None, events)
