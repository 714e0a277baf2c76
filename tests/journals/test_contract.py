"""The Journal contract (journals/base.py docstrings), run against every adapter.

Every test takes the parametrised ``journal`` fixture, so each adapter passes
exactly the same suite: runs, leases, appends, paging, snapshots, due runs, the
audit log, documents and exact round-trips of awkward JSON.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

import anyio
import orjson
import pytest

from snapshotd.domain import compaction
from snapshotd.domain.errors import Conflict, NotFound, StaleLease, Superseded
from snapshotd.domain.model import Event, NewEvent
from snapshotd.domain.reducers import fold, steps
from snapshotd.journals.base import Journal
from tests.support import T0, make_snapshot

pytestmark = pytest.mark.anyio


def ev(n: int, prefix: str = "e") -> list[NewEvent]:
    return [NewEvent("step", {"n": i, "tag": f"{prefix}{i}"}) for i in range(n)]


async def make_run(
    journal: Journal, run_id: str = "run-1", *, events: int = 0, lease: str | None = None
) -> None:
    assert await journal.create_run(run_id, "wf", "v1", lease, T0)
    if events:
        await journal.append(run_id, ev(events), expected_seq=0, lease=lease, now=T0)


# runs -----------------------------------------------------------------------


async def test_create_run_created_exists_conflict(journal: Journal) -> None:
    assert await journal.create_run("r", "wf", "v1", None, T0) is True
    assert await journal.create_run("r", "wf", "v2", "other", T0) is False
    with pytest.raises(Conflict):
        await journal.create_run("r", "another-wf", "v1", None, T0)
    run = await journal.get_run("r")
    assert run is not None
    assert (run.version, run.lease) == ("v1", None)


async def test_get_run(journal: Journal) -> None:
    assert await journal.get_run("missing") is None
    await journal.create_run("r", "wf", "v1", "lease-a", T0)
    run = await journal.get_run("r")
    assert run is not None
    assert (run.run_id, run.workflow, run.version, run.lease, run.last_seq) == (
        "r",
        "wf",
        "v1",
        "lease-a",
        0,
    )
    assert run.created_at == T0
    await journal.append("r", ev(3), expected_seq=None, lease="lease-a", now=T0)
    run = await journal.get_run("r")
    assert run is not None
    assert run.last_seq == 3


async def test_set_version(journal: Journal) -> None:
    await make_run(journal, events=2)
    await journal.set_version("run-1", "v2")
    run = await journal.get_run("run-1")
    assert run is not None
    assert (run.version, run.last_seq, run.workflow) == ("v2", 2, "wf")
    with pytest.raises(NotFound):
        await journal.set_version("missing", "v2")


async def test_set_lease_without_and_with_expected(journal: Journal) -> None:
    await make_run(journal)
    await journal.set_lease("run-1", "a")
    await journal.set_lease("run-1", "b", expected="a")
    with pytest.raises(Conflict):
        await journal.set_lease("run-1", "c", expected="a")
    with pytest.raises(Conflict):
        await journal.set_lease("run-1", "c", expected=None)
    run = await journal.get_run("run-1")
    assert run is not None
    assert run.lease == "b"
    await journal.set_lease("run-1", None, expected="b")
    await journal.set_lease("run-1", "d", expected=None)
    run = await journal.get_run("run-1")
    assert run is not None
    assert run.lease == "d"
    with pytest.raises(NotFound):
        await journal.set_lease("missing", "x")


async def test_list_runs_ascending_with_cursor(journal: Journal) -> None:
    for run_id in ["b", "a", "c", "ab"]:
        await journal.create_run(run_id, "wf", "v1", None, T0)
    assert await journal.list_runs(None, 10) == ["a", "ab", "b", "c"]
    assert await journal.list_runs("a", 2) == ["ab", "b"]
    assert await journal.list_runs("c", 10) == []


# events ---------------------------------------------------------------------


async def test_append_contiguous_seqs(journal: Journal) -> None:
    await make_run(journal)
    assert await journal.append("run-1", ev(3), expected_seq=0, lease=None, now=T0) == 3
    assert await journal.append("run-1", ev(2), expected_seq=None, lease=None, now=T0) == 5
    events = await journal.read_events("run-1", 0)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[3].data == {"n": 0, "tag": "e0"}
    assert all(e.type == "step" and e.recorded_at == T0 for e in events)


async def test_append_expected_seq_conflict_writes_nothing(journal: Journal) -> None:
    await make_run(journal, events=2)
    with pytest.raises(Conflict) as raised:
        await journal.append("run-1", ev(1), expected_seq=1, lease=None, now=T0)
    assert raised.value.details == {"last_seq": 2}
    assert len(await journal.read_events("run-1", 0)) == 2


async def test_append_stale_lease_checked_before_expected_seq(journal: Journal) -> None:
    await make_run(journal, events=1, lease="owner")
    with pytest.raises(StaleLease):
        await journal.append("run-1", ev(1), expected_seq=99, lease="thief", now=T0)
    with pytest.raises(StaleLease):
        await journal.append("run-1", ev(1), expected_seq=1, lease=None, now=T0)
    with pytest.raises(Conflict):
        await journal.append("run-1", ev(1), expected_seq=99, lease="owner", now=T0)
    assert await journal.append("run-1", ev(1), expected_seq=1, lease="owner", now=T0) == 2


async def test_append_without_lease_accepts_any(journal: Journal) -> None:
    await make_run(journal)
    assert await journal.append("run-1", ev(1), expected_seq=None, lease="anything", now=T0) == 1


async def test_append_unknown_run(journal: Journal) -> None:
    with pytest.raises(NotFound):
        await journal.append("missing", ev(1), expected_seq=None, lease=None, now=T0)


async def test_read_events_after_and_limit(journal: Journal) -> None:
    await make_run(journal, events=10)
    assert [e.seq for e in await journal.read_events("run-1", 4, 3)] == [5, 6, 7]
    assert [e.seq for e in await journal.read_events("run-1", 8)] == [9, 10]
    assert await journal.read_events("run-1", 10) == []
    assert await journal.read_events("run-1", 50, 5) == []
    with pytest.raises(NotFound):
        await journal.read_events("missing", 0)


async def test_read_event_page_paging(journal: Journal) -> None:
    await make_run(journal, events=7)
    expected = await journal.read_events("run-1", 0)
    seen: list[Any] = []
    after, pages = 0, 0
    while True:
        page = await journal.read_event_page("run-1", after, 3)
        pages += 1
        seen.extend(orjson.loads(raw) for raw in page.events)
        assert page.last_seq == after + len(page.events)
        after = page.last_seq
        if not page.has_more:
            break
    assert pages == 3
    assert after == 7
    assert [(o["seq"], o["type"], o["data"]) for o in seen] == [
        (e.seq, e.type, e.data) for e in expected
    ]
    assert {datetime.fromisoformat(o["recorded_at"]) for o in seen} == {T0}
    assert {frozenset(o) for o in seen} == {frozenset({"seq", "type", "data", "recorded_at"})}


async def test_read_event_page_edges(journal: Journal) -> None:
    await make_run(journal, events=3)
    full = await journal.read_event_page("run-1", 0, 3)
    assert (len(full.events), full.last_seq, full.has_more) == (3, 3, False)
    empty = await journal.read_event_page("run-1", 3, 10)
    assert (empty.events, empty.last_seq, empty.has_more) == ([], 3, False)
    beyond = await journal.read_event_page("run-1", 9, 10)
    assert (beyond.events, beyond.last_seq, beyond.has_more) == ([], 9, False)
    with pytest.raises(NotFound):
        await journal.read_event_page("missing", 0, 10)


# snapshots ------------------------------------------------------------------


async def test_snapshot_write_list_read(journal: Journal) -> None:
    await make_run(journal, events=6)
    events = await journal.read_events("run-1", 0)
    first = make_snapshot("run-1", events[:2], now=T0)
    second = make_snapshot("run-1", events[:5], now=T0 + timedelta(seconds=1), kind="manual")
    await journal.write_snapshot(first, lease=None)
    await journal.write_snapshot(second, lease=None)
    metas = await journal.list_snapshots("run-1")
    assert [m.snapshot_id for m in metas] == [second.meta.snapshot_id, first.meta.snapshot_id]
    assert metas[0] == second.meta
    stored = await journal.read_snapshot("run-1", second.meta.snapshot_id)
    assert stored == second
    compaction.verify(stored)
    assert compaction.decode_state(stored)["steps"]["5"] == {"type": "step", "data": events[4].data}
    with pytest.raises(NotFound):
        await journal.read_snapshot("run-1", "0190d7a0-0000-7000-8000-000000000000")
    with pytest.raises(NotFound):
        await journal.list_snapshots("missing")


async def test_snapshot_newest_first_orders_by_through_seq_then_created_at(
    journal: Journal,
) -> None:
    await make_run(journal, events=4)
    events = await journal.read_events("run-1", 0)
    late_low = make_snapshot("run-1", events[:3], now=T0 + timedelta(hours=1))
    high = make_snapshot("run-1", events[:4], version="v2", now=T0)
    safety = make_snapshot("run-1", events[:3], kind="safety", now=T0 + timedelta(hours=2))
    for s in (late_low, high, safety):
        await journal.write_snapshot(s, lease=None)
    ids = [m.snapshot_id for m in await journal.list_snapshots("run-1")]
    assert ids == [high.meta.snapshot_id, safety.meta.snapshot_id, late_low.meta.snapshot_id]


async def test_snapshot_superseded(journal: Journal) -> None:
    await make_run(journal, events=5)
    events = await journal.read_events("run-1", 0)
    await journal.write_snapshot(make_snapshot("run-1", events[:4]), lease=None)
    for tail in (events[:4], events[:2]):
        with pytest.raises(Superseded):
            await journal.write_snapshot(make_snapshot("run-1", tail, kind="manual"), lease=None)
    await journal.write_snapshot(make_snapshot("run-1", events[:2], version="v2"), lease=None)
    await journal.write_snapshot(make_snapshot("run-1", events[:5]), lease=None)
    assert [m.through_seq for m in await journal.list_snapshots("run-1")] == [5, 4, 2]


async def test_safety_snapshots_neither_supersede_nor_are_superseded(journal: Journal) -> None:
    await make_run(journal, events=5)
    events = await journal.read_events("run-1", 0)
    await journal.write_snapshot(make_snapshot("run-1", events[:4]), lease=None)
    low_safety = make_snapshot("run-1", events[:2], kind="safety", safety_ttl_s=3600)
    await journal.write_snapshot(low_safety, lease=None)
    await journal.write_snapshot(make_snapshot("run-1", events[:5], kind="safety"), lease=None)
    await journal.write_snapshot(make_snapshot("run-1", events[:5]), lease=None)
    stored = await journal.read_snapshot("run-1", low_safety.meta.snapshot_id)
    assert stored.meta.expires_at == T0 + timedelta(seconds=3600)
    assert len(await journal.list_snapshots("run-1")) == 4


async def test_snapshot_lease_checks(journal: Journal) -> None:
    await make_run(journal, events=3, lease="owner")
    events = await journal.read_events("run-1", 0)
    with pytest.raises(StaleLease):
        await journal.write_snapshot(make_snapshot("run-1", events[:1]), lease="thief")
    await journal.write_snapshot(make_snapshot("run-1", events[:2]), lease="owner")
    await journal.write_snapshot(make_snapshot("run-1", events[:3]), lease=None)
    assert len(await journal.list_snapshots("run-1")) == 2


async def test_a_run_without_lease_accepts_any_snapshot_lease(journal: Journal) -> None:
    await make_run(journal, events=2)
    events = await journal.read_events("run-1", 0)
    await journal.write_snapshot(make_snapshot("run-1", events[:1]), lease="anyone")
    await journal.set_lease("run-1", "owner")
    await journal.set_lease("run-1", None)
    await journal.write_snapshot(make_snapshot("run-1", events[:2]), lease="someone-else")
    assert len(await journal.list_snapshots("run-1")) == 2


async def test_snapshot_of_unknown_run(journal: Journal) -> None:
    event = Event(1, "step", {}, T0)
    with pytest.raises(NotFound):
        await journal.write_snapshot(make_snapshot("missing", [event]), lease=None)


async def test_delete_snapshots(journal: Journal) -> None:
    await make_run(journal, events=3)
    events = await journal.read_events("run-1", 0)
    written = [make_snapshot("run-1", events[: i + 1]) for i in range(3)]
    for s in written:
        await journal.write_snapshot(s, lease=None)
    gone = await journal.delete_snapshots(
        "run-1",
        [written[0].meta.snapshot_id, "0190d7a0-0000-7000-8000-000000000000"],
    )
    assert gone == 1
    assert await journal.delete_snapshots("run-1", [written[0].meta.snapshot_id]) == 0
    remaining = [m.snapshot_id for m in await journal.list_snapshots("run-1")]
    assert remaining == [written[2].meta.snapshot_id, written[1].meta.snapshot_id]
    with pytest.raises(NotFound):
        await journal.read_snapshot("run-1", written[0].meta.snapshot_id)


async def test_pin_and_unpin(journal: Journal) -> None:
    await make_run(journal, events=2)
    events = await journal.read_events("run-1", 0)
    s = make_snapshot("run-1", events)
    await journal.write_snapshot(s, lease=None)
    await journal.set_pinned("run-1", s.meta.snapshot_id, True)
    (meta,) = await journal.list_snapshots("run-1")
    assert meta.pinned is True
    stored = await journal.read_snapshot("run-1", s.meta.snapshot_id)
    assert stored.payload == s.payload
    assert stored.meta.pinned is True
    compaction.verify(stored)
    await journal.set_pinned("run-1", s.meta.snapshot_id, False)
    (meta,) = await journal.list_snapshots("run-1")
    assert meta.pinned is False
    with pytest.raises(NotFound):
        await journal.set_pinned("run-1", "0190d7a0-0000-7000-8000-000000000000", True)


# due runs -------------------------------------------------------------------


async def test_due_runs(journal: Journal) -> None:
    cutoff = T0 + timedelta(minutes=30)
    await make_run(journal, "no-events")
    await make_run(journal, "fresh-events", events=2)
    await make_run(journal, "covered", events=2)
    await make_run(journal, "tail-after-old", events=3)
    await make_run(journal, "tail-after-new", events=3)
    covered = await journal.read_events("covered", 0)
    await journal.write_snapshot(make_snapshot("covered", covered), lease=None)
    old = await journal.read_events("tail-after-old", 0)
    await journal.write_snapshot(make_snapshot("tail-after-old", old[:2]), lease=None)
    new = await journal.read_events("tail-after-new", 0)
    await journal.write_snapshot(
        make_snapshot("tail-after-new", new[:2], now=T0 + timedelta(hours=1)), lease=None
    )
    assert await journal.due_runs(cutoff, 10) == ["fresh-events", "tail-after-old"]
    assert await journal.due_runs(cutoff, 1) == ["fresh-events"]
    assert await journal.due_runs(T0, 10) == []


async def test_due_runs_ignores_snapshots_of_other_versions(journal: Journal) -> None:
    await make_run(journal, "r", events=2)
    events = await journal.read_events("r", 0)
    await journal.write_snapshot(make_snapshot("r", events), lease=None)
    cutoff = T0 + timedelta(minutes=30)
    assert await journal.due_runs(cutoff, 10) == []
    await journal.set_version("r", "v2")
    assert await journal.due_runs(cutoff, 10) == ["r"]


# audit log ------------------------------------------------------------------


async def test_audit_append_and_read_with_cursors(journal: Journal) -> None:
    assert await journal.read_audit(0, 10) == []
    cursors = [
        await journal.append_audit(
            "snapshot.taken", {"run_id": f"r{i}", "n": i}, T0 + timedelta(seconds=i)
        )
        for i in range(5)
    ]
    assert cursors == [1, 2, 3, 4, 5]
    first = await journal.read_audit(0, 2)
    assert [(e.cursor, e.kind, e.fields) for e in first] == [
        (1, "snapshot.taken", {"run_id": "r0", "n": 0}),
        (2, "snapshot.taken", {"run_id": "r1", "n": 1}),
    ]
    assert first[1].at == T0 + timedelta(seconds=1)
    rest = await journal.read_audit(first[-1].cursor, 10)
    assert [e.cursor for e in rest] == [3, 4, 5]
    assert await journal.read_audit(5, 10) == []


# documents ------------------------------------------------------------------


async def test_documents_compare_and_swap(journal: Journal) -> None:
    assert await journal.get_document("savepoints", "run-1") is None
    with pytest.raises(Conflict):
        await journal.put_document("savepoints", "run-1", b"{}", 1)
    assert await journal.put_document("savepoints", "run-1", b'{"a":1}', None) == 1
    with pytest.raises(Conflict):
        await journal.put_document("savepoints", "run-1", b"{}", None)
    assert await journal.put_document("savepoints", "run-1", b'{"a":2}\n', 1) == 2
    with pytest.raises(Conflict):
        await journal.put_document("savepoints", "run-1", b"{}", 1)
    doc = await journal.get_document("savepoints", "run-1")
    assert doc is not None
    assert (doc.body, doc.version) == (b'{"a":2}\n', 2)
    assert await journal.get_document("savepoints", "run-2") is None
    assert await journal.get_document("other", "run-1") is None


# data round-trip ------------------------------------------------------------

TRICKY: list[Any] = [
    None,
    True,
    0,
    -(2**63),
    2**63 - 1,
    0.1,
    -1.5e300,
    1e-300,
    "",
    "ünïcødé ✓ 漢字 🎉 e\u0301",
    'quotes " and \\ backslash\nnewline\ttab \u2028 \u007f',
    [],
    {},
    [1, [2, [3, [4, {"deep": [None, {"x": "y"}]}]]]],
    {"a": {"b": {"c": {"d": [1.25, -0.5, "z"]}}}, "": "empty key", "ключ": "значение"},
]


async def test_tricky_json_round_trips(journal: Journal) -> None:
    await make_run(journal)
    await journal.append(
        "run-1",
        [NewEvent(f"t{i}", value) for i, value in enumerate(TRICKY)],
        expected_seq=0,
        lease=None,
        now=T0,
    )
    events = await journal.read_events("run-1", 0)
    assert [e.data for e in events] == TRICKY
    for event, value in zip(events, TRICKY, strict=True):
        assert type(event.data) is type(value)
    page = await journal.read_event_page("run-1", 0, 100)
    assert [orjson.loads(raw)["data"] for raw in page.events] == TRICKY
    s = make_snapshot("run-1", events)
    await journal.write_snapshot(s, lease=None)
    state = compaction.decode_state(await journal.read_snapshot("run-1", s.meta.snapshot_id))
    assert [state["steps"][str(i + 1)]["data"] for i in range(len(TRICKY))] == TRICKY


async def test_unicode_run_ids_and_leases(journal: Journal) -> None:
    run_id = "заказ/№42 🎉 ../x"
    assert await journal.create_run(run_id, "wf", "v1", "lease ✓", T0)
    await journal.append(run_id, ev(1), expected_seq=0, lease="lease ✓", now=T0)
    run = await journal.get_run(run_id)
    assert run is not None
    assert (run.run_id, run.lease, run.last_seq) == (run_id, "lease ✓", 1)
    assert await journal.list_runs(None, 10) == [run_id]


# concurrency ----------------------------------------------------------------


async def test_concurrent_appends_and_snapshots_are_serialised(journal: Journal) -> None:
    await make_run(journal)
    returned: list[int] = []

    async def writer(n: int) -> None:
        for _ in range(5):
            returned.append(
                await journal.append(
                    "run-1", ev(3, f"w{n}-"), expected_seq=None, lease=None, now=T0
                )
            )
            page = await journal.read_event_page("run-1", 0, 1000)
            assert [orjson.loads(raw)["seq"] for raw in page.events] == list(
                range(1, page.last_seq + 1)
            )

    async def snapshotter() -> None:
        for _ in range(5):
            events = await journal.read_events("run-1", 0)
            if events:
                with contextlib.suppress(Superseded):
                    await journal.write_snapshot(make_snapshot("run-1", events), lease=None)
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(writer, n)
        tg.start_soon(snapshotter)
    assert sorted(returned) == list(range(3, 121, 3))
    events = await journal.read_events("run-1", 0)
    assert [e.seq for e in events] == list(range(1, 121))
    for meta in await journal.list_snapshots("run-1"):
        state = compaction.decode_state(await journal.read_snapshot("run-1", meta.snapshot_id))
        assert state == fold(steps, None, events[: meta.through_seq])
