"""The mailbox: bounded FIFO, coalescing by run, lease merging, internal triggers, close."""

from __future__ import annotations

import anyio
import pytest

from snapshotd.runtime.mailbox import Mailbox, MailboxClosed


@pytest.mark.anyio
async def test_fifo_coalescing_and_capacity_are_exact() -> None:
    box = Mailbox(3)
    assert [box.offer(r, None) for r in ("a", "b", "a", "c", "d", "b")] == [
        "queued",
        "queued",
        "coalesced",
        "queued",
        "dropped",
        "coalesced",
    ]
    assert len(box) == 3
    assert [(await box.get()).run_id for _ in range(3)] == ["a", "b", "c"]
    assert len(box) == 0
    assert box.offer("a", None) == "queued"


@pytest.mark.anyio
async def test_newest_lease_wins_unless_one_request_had_none() -> None:
    box = Mailbox(10)
    box.offer("a", "l1")
    box.offer("a", "l2")
    box.offer("b", "l1")
    box.offer("b", None)
    box.offer("b", "l3")
    a, b = await box.get(), await box.get()
    assert (a.lease, a.unchecked) == ("l2", False)
    assert b.unchecked


@pytest.mark.anyio
async def test_internal_trigger_is_taken_over_by_a_request() -> None:
    box = Mailbox(2)
    assert box.offer_internal("a")
    assert box.offer_internal("a")
    assert len(box) == 1
    assert box.offer("a", "l") == "queued"
    assert box.offer_internal("b")
    assert not box.offer_internal("c")
    job = await box.get()
    assert (job.run_id, job.requested, job.lease, job.unchecked) == ("a", True, "l", False)
    assert not (await box.get()).requested


@pytest.mark.anyio
async def test_get_waits_for_an_offer() -> None:
    box = Mailbox(1)
    got: list[str] = []

    async def take() -> None:
        got.append((await box.get()).run_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        box.offer("x", None)
    assert got == ["x"]


@pytest.mark.anyio
async def test_close_discards_and_wakes_the_reader() -> None:
    box = Mailbox(5)
    box.offer("a", None)
    box.offer("b", None)
    assert [job.run_id for job in box.close()] == ["a", "b"]
    assert box.offer("c", None) == "dropped"
    assert not box.offer_internal("c")
    with pytest.raises(MailboxClosed):
        await box.get()
    await box.wait_closed()

    other = Mailbox(1)
    outcome: list[str] = []

    async def reader() -> None:
        try:
            await other.get()
        except MailboxClosed:
            outcome.append("closed")

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(other.wait_closed)
        await anyio.wait_all_tasks_blocked()
        other.close()
    assert outcome == ["closed"]
