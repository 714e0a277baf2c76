"""The journal-health metrics: journal up, reconnects, corruption found, slices owned."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import Metric

from snapshotd.domain.errors import Corrupt, Unavailable
from snapshotd.domain.model import Snapshot
from snapshotd.journals.memory import MemoryJournal
from snapshotd.runtime.savepoints import NAMESPACE, SavepointService
from snapshotd.telemetry.health import CORRUPT_OBJECTS, JournalHealth
from tests.runtime.support import FaultyJournal, make_instance, new_run
from tests.telemetry.conftest import Captured
from tests.telemetry.test_instruments import values

Key = tuple[tuple[str, Any], ...]


def of(otel_values: dict[Key, Any], instance: str, **extra: str) -> Any:
    return otel_values.get(tuple(sorted({"snapshotd.instance": instance, **extra}.items())))


def values_of(found: dict[str, Metric], name: str) -> dict[Key, Any]:
    """A metric's points; none at all when no source reported (the SDK then omits it)."""
    return values(found[name]) if name in found else {}


def test_gauges_read_their_sources_and_none_exports_nothing(otel: Captured) -> None:
    health = JournalHealth("h1")
    up = {"value": True}
    slices: dict[str, int | None] = {"value": None}
    health.watch_up(lambda: up["value"])
    health.watch_slices(lambda: slices["value"])
    found = otel.metrics()
    assert of(values(found["snapshotd.journal.up"]), "h1") == 1
    assert of(values_of(found, "snapshotd.slices.owned"), "h1") is None
    up["value"], slices["value"] = False, 16
    found = otel.metrics()
    assert of(values(found["snapshotd.journal.up"]), "h1") == 0
    assert of(values(found["snapshotd.slices.owned"]), "h1") == 16
    health.forget()
    assert of(values_of(otel.metrics(), "snapshotd.journal.up"), "h1") is None


def test_counters_start_at_zero_and_count(otel: Captured) -> None:
    health = JournalHealth("h2")
    found = otel.metrics()
    assert of(values(found["snapshotd.journal.reconnects"]), "h2") == 0
    corruption = values(found["snapshotd.corruption.found"])
    assert {obj: of(corruption, "h2", object=obj) for obj in CORRUPT_OBJECTS} == dict.fromkeys(
        CORRUPT_OBJECTS, 0
    )
    health.reconnected()
    health.reconnected()
    health.corruption_found("event")
    found = otel.metrics()
    assert of(values(found["snapshotd.journal.reconnects"]), "h2") == 2
    assert of(values(found["snapshotd.corruption.found"]), "h2", object="event") == 1


def test_an_unknown_corruption_object_is_refused(otel: Captured) -> None:
    with pytest.raises(ValueError, match="one of"):
        JournalHealth("h3").corruption_found("table")
    assert of(values(otel.metrics()["snapshotd.corruption.found"]), "h3", object="table") is None


@pytest.mark.anyio
async def test_journal_up_follows_the_attempts(otel: Captured) -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=1)
    await new_run(journal, "r", 3)
    journal.faults["get_run"] = Unavailable("connection refused")
    outcome = await inst.snapshot_now("r", lease=None, force=True, kind="manual")
    assert outcome["reason"] == "journal_error"
    assert of(values(otel.metrics()["snapshotd.journal.up"]), "default") == 0
    journal.faults.clear()
    assert (await inst.snapshot_now("r", lease=None, force=True, kind="manual"))["status"] == (
        "taken"
    )
    assert of(values(otel.metrics()["snapshotd.journal.up"]), "default") == 1
    # A damaged run is an answer: the journal is up, the data is not.
    journal.faults["get_run"] = Corrupt("line 2")
    await inst.snapshot_now("r", lease=None, force=True, kind="manual")
    found = otel.metrics()
    assert of(values(found["snapshotd.journal.up"]), "default") == 1
    assert of(values(found["snapshotd.corruption.found"]), "default", object="run") == 1


@pytest.mark.anyio
async def test_a_damaged_snapshot_is_counted_once(otel: Captured) -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=1)
    await new_run(journal, "r", 3)
    taken = await inst.snapshot_now("r", lease=None, force=True, kind="manual")
    snap = journal._runs["r"].snapshots[taken["snapshot_id"]]
    journal._runs["r"].snapshots[taken["snapshot_id"]] = Snapshot(snap.meta, b'{"broken"')
    for _ in range(3):
        assert (await inst.load("r", after_seq=None, limit=10))["snapshot"] is None
    corruption = values(otel.metrics()["snapshotd.corruption.found"])
    assert of(corruption, "default", object="snapshot") == 1
    assert of(corruption, "default", object="run") == 0


@pytest.mark.anyio
async def test_a_damaged_savepoint_document_is_counted_once(otel: Captured) -> None:
    journal = MemoryJournal()
    health = JournalHealth("h4")
    service = SavepointService(journal, found_corrupt=health.corruption_found)
    await journal.put_document(NAMESPACE, "r", b"not a schedule", None)
    for _ in range(2):
        with pytest.raises(Corrupt, match="savepoint document"):
            await service.load("r")
    corruption = values(otel.metrics()["snapshotd.corruption.found"])
    assert of(corruption, "h4", object="document") == 1
