"""The slice keeper on a real database: two instances share one schema, each serves only
its own slices, a hint for the other's slice is forwarded, and a lapsed heartbeat
stops a daemon serving anything."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import anyio
import pytest

from snapshotd.domain.model import utcnow
from snapshotd.domain.slices import SLICES, run_slice
from snapshotd.journals.postgres import PostgresJournal
from snapshotd.runtime.instance import Instance

from .support import make_instance

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

LEASE_S = 3.0


@pytest.fixture
async def pair(pg_dsn: str) -> AsyncIterator[tuple[Instance, Instance]]:
    url = f"{pg_dsn}?schema=ks_{secrets.token_hex(5)}"
    journals = [PostgresJournal(url), PostgresJournal(url)]
    for journal in journals:
        await journal.open()
    try:
        a, b = (make_instance(j, snapshot_threshold=1) for j in journals)
        for inst in (a, b):
            assert inst.slices is not None
            inst.slices.lease_s = LEASE_S
            inst.slices.running = True  # beats are driven by the tests themselves
        yield a, b
    finally:
        for journal in journals:
            await journal.aclose()


async def _beat(*instances: Instance) -> None:
    for inst in instances:
        assert inst.slices is not None
        await inst.slices.beat(anyio.current_time())


async def test_two_keepers_split_the_slices_and_forward_hints(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    assert a.slices is not None and b.slices is not None
    await _beat(a)
    assert a.status()["slices"] == {"owned": SLICES, "total": SLICES}
    assert a.status()["shards"] is None
    await _beat(b, a, b)  # b joins, a sheds half, b takes it
    owned = [a.slices.owned_count(), b.slices.owned_count()]
    assert owned == [SLICES // 2, SLICES // 2]
    assert not a.slices.owned & b.slices.owned

    run_of_a = next(f"r{i}" for i in range(1000) if run_slice(f"r{i}") in a.slices.owned)
    await a.journal.create_run(run_of_a, "wf", "v1", None, utcnow())
    seen: list[str] = []
    async with anyio.create_task_group() as tg:
        journal = a.journal
        assert isinstance(journal, PostgresJournal)
        await tg.start(journal.watch_appends, seen.append, lambda: None)
        assert b.request_snapshot(run_of_a, None) == "queued"
        assert len(b.mailbox) == 0  # not attempted by b...
        tg.start_soon(b.slices.run, lambda: None)
        with anyio.fail_after(5):
            while run_of_a not in seen:  # ...but passed to a through the database
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    a.notified(run_of_a)
    b.notified(run_of_a)
    assert (len(a.mailbox), len(b.mailbox)) == (1, 0)


async def test_a_lapsed_heartbeat_serves_nothing_and_forwards_nothing(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    assert a.slices is not None and b.slices is not None
    await _beat(a, b, a, b)
    stale = anyio.current_time() - 2 * LEASE_S  # as if a had been paused for two leases
    await a.slices.beat(stale)
    assert a.slices.owned and a.slices.owned_count() == 0
    run_id = next(f"r{i}" for i in range(1000) if run_slice(f"r{i}") in a.slices.owned)
    assert not a.slices.owns(run_id)
    assert a.slices.sweep_slices() == []
    other = next(f"r{i}" for i in range(1000) if run_slice(f"r{i}") in b.slices.owned)
    assert a.request_snapshot(other, None) == "queued"
    assert len(a.mailbox) == 1  # no trusted view of the holders: attempted here


async def test_a_keeper_that_is_not_running_restricts_nothing(
    pair: tuple[Instance, Instance],
) -> None:
    a, _ = pair
    assert a.slices is not None
    a.slices.running = False
    assert a.slices.owns("any-run") and a.slices.sweep_slices() is None
    a.notified("any-run")
    assert len(a.mailbox) == 1
