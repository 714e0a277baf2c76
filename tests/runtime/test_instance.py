"""Instance ops: load paging, audit paging, per-run serialisation, and the mailbox model."""

from __future__ import annotations

from collections import deque

import anyio
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshotd.domain.errors import NotFound
from snapshotd.runtime.mailbox import Mailbox

from .support import FaultyJournal, append, make_instance, new_run

pytestmark = pytest.mark.anyio


def decoded(value: object) -> object:
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_UTC_Z))


async def test_load_pages_after_the_snapshot_and_after_seq() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=1)
    await new_run(journal, "r", 4, lease="L")
    await inst.snapshot_now("r", lease=None, force=False, kind="manual")
    await append(journal, "r", 5, lease="L")

    first = decoded(await inst.load("r", after_seq=None, limit=2))
    assert first["run"]["lease"] == "L" and first["run"]["last_seq"] == 9
    assert first["run"]["created_at"].endswith("Z")
    assert first["snapshot"]["through_seq"] == 4
    assert first["snapshot"]["state"]["steps"]["4"] == {"type": "step", "data": {"n": 3}}
    assert [e["seq"] for e in first["events"]] == [5, 6]
    assert (first["next_after"], first["has_more"]) == (6, True)

    rest = decoded(await inst.load("r", after_seq=6, limit=10))
    assert rest["snapshot"] is None
    assert [e["seq"] for e in rest["events"]] == [7, 8, 9]
    assert (rest["next_after"], rest["has_more"]) == (9, False)
    empty = decoded(await inst.load("r", after_seq=9, limit=10))
    assert (empty["events"], empty["next_after"], empty["has_more"]) == ([], 9, False)

    await new_run(journal, "fresh")
    none = decoded(await inst.load("fresh", after_seq=None, limit=10))
    assert (none["snapshot"], none["next_after"], none["has_more"]) == (None, 0, False)
    with pytest.raises(NotFound):
        await inst.load("missing", after_seq=None, limit=10)
    with pytest.raises(NotFound):
        await inst.verify("missing")


async def test_audit_pages_with_a_cursor() -> None:
    inst = make_instance()
    for i in range(5):
        await inst.record_audit("note", i=i)
    page = await inst.audit(0, 2)
    assert [e["i"] for e in page["events"]] == [0, 1]
    assert (page["next_cursor"], page["has_more"]) == (2, True)
    page = await inst.audit(page["next_cursor"], 10)
    assert [e["i"] for e in page["events"]] == [2, 3, 4]
    assert page["has_more"] is False
    end = await inst.audit(page["next_cursor"], 10)
    assert end == {"events": [], "next_cursor": page["next_cursor"], "has_more": False}


async def test_attempts_for_one_run_never_overlap() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=1)
    await new_run(journal, "r", 3)
    await new_run(journal, "s", 3)
    journal.delays["read_events"] = 0.02
    active: dict[str, int] = {}
    peak: dict[str, int] = {}
    real = journal.read_events

    async def tracked(run_id: str, after_seq: int, limit: int | None = None) -> object:
        active[run_id] = active.get(run_id, 0) + 1
        peak[run_id] = max(peak.get(run_id, 0), active[run_id])
        try:
            return await real(run_id, after_seq, limit)
        finally:
            active[run_id] -= 1

    journal.read_events = tracked  # type: ignore[method-assign]
    results: list[str] = []

    async def shoot(run_id: str) -> None:
        result = await inst.snapshot_now(run_id, lease=None, force=True, kind="manual")
        results.append(result["status"])

    async with anyio.create_task_group() as tg:
        for run_id in ("r", "r", "r", "s", "s"):
            tg.start_soon(shoot, run_id)
    assert peak == {"r": 1, "s": 1}
    assert sorted(results) == ["skipped"] * 3 + ["taken"] * 2
    assert inst.locks._locks == {}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just("offer"), st.sampled_from("abcde"), st.sampled_from([None, "x", "y"])
            ),
            st.tuples(st.just("internal"), st.sampled_from("abcde"), st.none()),
            st.tuples(st.just("get"), st.none(), st.none()),
            st.tuples(st.just("done"), st.sampled_from("abcde"), st.none()),
        ),
        max_size=60,
    )
)
def test_mailbox_matches_a_reference_model(ops: list[tuple[str, str | None, str | None]]) -> None:
    """Including runs in flight: a Job of one is parked until ``done`` puts it first."""

    async def scenario() -> None:
        box = Mailbox(3)
        order: deque[str] = deque()
        parked: set[str] = set()
        running: set[str] = set()
        requested: dict[str, bool] = {}
        for op, run_id, lease in ops:
            if op == "get":
                if all(r in running for r in order):
                    continue
                job = await box.get()
                while order[0] in running:
                    parked.add(order.popleft())
                expected = order.popleft()
                running.add(expected)
                assert (job.run_id, job.requested) == (expected, requested.pop(expected))
            elif op == "done":
                assert run_id is not None
                if run_id not in running:
                    continue
                box.done(run_id)
                running.discard(run_id)
                if run_id in parked:
                    parked.discard(run_id)
                    order.appendleft(run_id)
            elif op == "internal":
                assert run_id is not None
                accepted = box.offer_internal(run_id)
                if run_id not in requested and len(requested) < 3:
                    order.append(run_id)
                    requested[run_id] = False
                assert accepted == (run_id in requested)
            else:
                assert run_id is not None
                status = box.offer(run_id, lease)
                if run_id in requested:
                    assert status == ("coalesced" if requested[run_id] else "queued")
                    requested[run_id] = True
                elif len(requested) < 3:
                    assert status == "queued"
                    order.append(run_id)
                    requested[run_id] = True
                else:
                    assert status == "dropped"
            assert len(box) == len(order) + len(parked) == len(requested)

    anyio.run(scenario)


async def test_a_sweep_requested_while_no_one_waits_is_not_lost() -> None:
    inst = make_instance()
    inst.request_sweep()  # e.g. a reconnect while the previous sweep still runs
    with anyio.fail_after(1):
        assert await inst.wait_sweep_request(float("inf")) is True
    assert await inst.wait_sweep_request(0.01) is False
