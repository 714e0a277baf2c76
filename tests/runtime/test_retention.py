"""Audit retention (`audit_retention_s`): expired entries go in small batches; cursors
keep increasing; a cursor older than the kept entries continues from the oldest."""

from __future__ import annotations

from datetime import timedelta

import pytest

from snapshotd.config import InstanceConfig
from snapshotd.domain.errors import Unavailable
from snapshotd.domain.model import utcnow
from snapshotd.domain.policies import Policy
from snapshotd.domain.reducers import BUILTIN
from snapshotd.journals.memory import MemoryJournal
from snapshotd.runtime import actor
from snapshotd.runtime.actor import prune_expired_audit
from snapshotd.runtime.instance import Instance

pytestmark = pytest.mark.anyio


def instance(journal: MemoryJournal, retention_s: float) -> Instance:
    config = InstanceConfig("default", "memory:", Policy(), 10, audit_retention_s=retention_s)
    return Instance(config, journal, {}, BUILTIN, {})


async def test_expired_entries_are_deleted_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = MemoryJournal()
    now = utcnow()
    for i in range(25):
        await journal.append_audit("old", {"i": i}, now - timedelta(hours=2))
    await journal.append_audit("new", {}, now)
    calls: list[int] = []
    prune = journal.prune_audit

    async def counting(cutoff: object, limit: int) -> int:
        deleted = await prune(cutoff, limit)  # type: ignore[arg-type]
        calls.append(deleted)
        return deleted

    monkeypatch.setattr(journal, "prune_audit", counting)
    monkeypatch.setattr(actor, "RETENTION_BATCH", 10)
    assert await prune_expired_audit(instance(journal, 3600), journal) == 25
    assert calls == [10, 10, 5]
    (kept,) = await journal.read_audit(0, 10)
    assert (kept.kind, kept.cursor) == ("new", 26)
    assert await journal.append_audit("next", {}, now) == 27


async def test_a_failing_journal_stops_the_round(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = MemoryJournal()

    async def down(cutoff: object, limit: int) -> int:
        raise Unavailable("db down")

    monkeypatch.setattr(journal, "prune_audit", down)
    assert await prune_expired_audit(instance(journal, 60), journal) == 0
