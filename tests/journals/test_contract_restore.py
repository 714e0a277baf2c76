"""The Journal contract for restore points and run listing, run against every adapter.

Part of the contract suite (same parametrised ``journal`` fixture as
test_contract.py): snapshot labels, restoring a chosen snapshot by id, and
``run_summaries`` paging in byte order of UTF-8 run ids, whatever the
database's collation, with ids long enough for the fs journal to hash them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from snapshotd.domain.errors import NotFound, SnapshotCorrupt
from snapshotd.domain.model import NewEvent, RunSummary
from snapshotd.journals.base import Journal
from tests.runtime.support import make_instance
from tests.support import T0, make_snapshot

pytestmark = pytest.mark.anyio

# Byte order of UTF-8 differs from locale collations (case, punctuation) and from
# UTF-16 order (U+FFFD sorts before an astral character in bytes, after it in UTF-16).
AWKWARD_IDS = [
    "B",
    "a",
    "a-b",
    "ab",
    "é",
    "\ufffd",
    "\U0001f600",
    "x" * 199 + "1",
    "x" * 199 + "2",
    "é" * 100,  # 200 bytes: too long for a hex directory name
    "中" * 66,
]


def byte_order(ids: list[str]) -> list[str]:
    return sorted(ids, key=lambda run_id: run_id.encode())


async def events(journal: Journal, run_id: str, count: int) -> None:
    batch = [NewEvent("step", {"n": i}) for i in range(count)]
    await journal.append(run_id, batch, expected_seq=None, lease=None, now=T0)


async def test_labels_are_stored_listed_and_read(journal: Journal) -> None:
    await journal.create_run("r", "wf", "v1", None, T0)
    await events(journal, "r", 2)
    tail = await journal.read_events("r", 0)
    labelled = make_snapshot("r", tail[:1], kind="manual", label="before-migration-42 ✓")
    plain = make_snapshot("r", tail, base=labelled)
    await journal.write_snapshot(labelled, lease=None)
    await journal.write_snapshot(plain, lease=None)
    listed = await journal.list_snapshots("r")
    assert [(m.snapshot_id, m.label) for m in listed] == [
        (plain.meta.snapshot_id, None),
        (labelled.meta.snapshot_id, "before-migration-42 ✓"),
    ]
    assert listed[1] == labelled.meta
    read = await journal.read_snapshot("r", labelled.meta.snapshot_id)
    assert read.meta.label == "before-migration-42 ✓"
    assert read.payload == labelled.payload


async def test_restore_by_id_any_version_and_no_fallback(journal: Journal) -> None:
    inst = make_instance(journal)
    await journal.create_run("r", "wf", "v1", None, T0)
    await events(journal, "r", 3)
    safety = make_snapshot("r", await journal.read_events("r", 0, 2), kind="safety", label="s")
    await journal.write_snapshot(safety, lease=None)
    await journal.set_version("r", "v2")
    await events(journal, "r", 2)

    newest = await inst.load("r", after_seq=None, limit=100)
    assert newest["snapshot"] is None  # the v1 snapshot is not compatible with v2
    chosen = as_json(
        await inst.load("r", after_seq=None, limit=2, snapshot_id=safety.meta.snapshot_id)
    )
    assert chosen["snapshot"]["snapshot_id"] == safety.meta.snapshot_id
    assert (chosen["snapshot"]["through_seq"], chosen["snapshot"]["version"]) == (2, "v1")
    assert chosen["snapshot"]["state"] == orjson.loads(safety.payload)
    assert [e["seq"] for e in chosen["events"]] == [3, 4]
    assert (chosen["next_after"], chosen["has_more"]) == (4, True)

    with pytest.raises(NotFound):
        await inst.load("r", after_seq=None, limit=10, snapshot_id="0190a0a0-0000-7000-8000-0")
    with pytest.raises(NotFound):
        await inst.load("missing", after_seq=None, limit=10, snapshot_id=safety.meta.snapshot_id)

    damaged = make_snapshot("r", await journal.read_events("r", 0), version="v2")
    await journal.write_snapshot(replace(damaged, payload=damaged.payload[:-1] + b" "), lease=None)
    with pytest.raises(SnapshotCorrupt, match="checksum"):
        await inst.load("r", after_seq=None, limit=10, snapshot_id=damaged.meta.snapshot_id)
    audit = await journal.read_audit(0, 100)
    assert [(e.kind, e.fields["snapshot_id"]) for e in audit] == [
        ("snapshot_corrupt", damaged.meta.snapshot_id)
    ]
    # Without an id, load falls back past the damaged one (to full history here).
    assert (await inst.load("r", after_seq=None, limit=10))["snapshot"] is None


def as_json(result: dict[str, Any]) -> Any:
    """An op result as a client sees it (stored JSON fragments spliced in)."""
    return orjson.loads(orjson.dumps(result))


async def test_run_summaries_page_in_byte_order(journal: Journal) -> None:
    for index, run_id in enumerate(AWKWARD_IDS):
        await journal.create_run(run_id, "even" if index % 2 == 0 else "odd", "v1", None, T0)
    expected = byte_order(AWKWARD_IDS)
    seen: list[str] = []
    after: str | None = None
    while True:
        page = await journal.run_summaries(after, 3, None)
        seen += [s.run_id for s in page]
        if len(page) < 3:
            break
        after = page[-1].run_id
    assert seen == expected
    assert [s.run_id for s in await journal.run_summaries(None, 100, None)] == expected
    assert await journal.run_summaries(expected[-1], 10, None) == []
    between = await journal.run_summaries("ab", 2, None)
    assert [s.run_id for s in between] == expected[expected.index("ab") + 1 :][:2]
    # A cursor need not be a stored run id.
    assert [s.run_id for s in await journal.run_summaries("aa", 1, None)] == ["ab"]

    odd = [run_id for index, run_id in enumerate(AWKWARD_IDS) if index % 2]
    page = await journal.run_summaries(None, 2, "odd")
    assert [s.run_id for s in page] == byte_order(odd)[:2]
    rest = await journal.run_summaries(page[-1].run_id, 100, "odd")
    assert [s.run_id for s in page + rest] == byte_order(odd)
    assert await journal.run_summaries(None, 10, "no-such-workflow") == []


async def test_run_summaries_name_the_newest_compatible_snapshot(journal: Journal) -> None:
    await journal.create_run("none", "wf", "v1", None, T0)
    await journal.create_run("snap", "wf", "v1", None, T0)
    await events(journal, "snap", 5)
    tail = await journal.read_events("snap", 0)
    older = make_snapshot("snap", tail[:2])
    newer = make_snapshot("snap", tail[2:4], base=older)
    await journal.write_snapshot(older, lease=None)
    await journal.write_snapshot(newer, lease=None)
    await journal.write_snapshot(make_snapshot("snap", tail, version="v0"), lease=None)

    none, snap = await journal.run_summaries(None, 10, None)
    assert none == RunSummary("none", "wf", "v1", 0, None, None)
    assert snap == RunSummary("snap", "wf", "v1", 5, newer.meta.snapshot_id, 4)
    await journal.set_version("snap", "v0")
    (moved,) = await journal.run_summaries("none", 10, None)
    assert (moved.version, moved.snapshot_through_seq) == ("v0", 5)
    await journal.set_version("snap", "v9")
    (bare,) = await journal.run_summaries("none", 10, "wf")
    assert (bare.snapshot_id, bare.snapshot_through_seq) == (None, None)
