"""``run_summaries`` on the fs journal: damaged runs left out, and what a page reads."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshotd.domain.errors import Corrupt
from snapshotd.journals.fs import FsJournal, entry_name
from tests.journals.test_contract_restore import events
from tests.support import T0

pytestmark = pytest.mark.anyio


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "journal"


async def opened(root: Path) -> FsJournal:
    journal = FsJournal(root)
    await journal.open()
    return journal


@pytest.fixture
async def fs(root: Path) -> AsyncIterator[FsJournal]:
    journal = await opened(root)
    for index in range(6):
        await journal.create_run(f"r{index}", "wf" if index % 3 == 0 else "other", "v1", None, T0)
        await events(journal, f"r{index}", 2)
    await journal.aclose()
    journal = await opened(root)  # caches empty again
    try:
        yield journal
    finally:
        await journal.aclose()


def _cached(fs: FsJournal) -> set[str]:
    return {f"r{index}" for index in range(6) if fs._runs.get(f"r{index}") is not None}


async def test_a_page_fills_the_caches_of_the_runs_it_lists_only(fs: FsJournal) -> None:
    page = await fs.run_summaries("r0", 2, None)
    assert [s.run_id for s in page] == ["r1", "r2"]
    assert _cached(fs) == {"r1", "r2"}


async def test_a_workflow_filter_passes_over_other_runs_by_their_record(fs: FsJournal) -> None:
    page = await fs.run_summaries(None, 10, "wf")
    assert [(s.run_id, s.last_seq) for s in page] == [("r0", 2), ("r3", 2)]
    assert _cached(fs) == {"r0", "r3"}


async def test_damaged_runs_are_left_out(fs: FsJournal, root: Path) -> None:
    events_path = root / entry_name("r1") / "events.jsonl"
    lines = events_path.read_bytes().splitlines(keepends=True)
    events_path.write_bytes(b"not json\n" + lines[1])
    (root / entry_name("r4") / "run.json").write_bytes(b"{")
    page = await fs.run_summaries(None, 3, None)
    assert [s.run_id for s in page] == ["r0", "r2", "r3"]
    assert [s.run_id for s in await fs.run_summaries("r3", 10, "other")] == ["r5"]
    with pytest.raises(Corrupt):
        await fs.get_run("r1")


run_ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=80).filter(
    lambda text: len(text.encode()) <= 200
)


@settings(max_examples=15, deadline=None)
@given(ids=st.sets(run_ids, min_size=1, max_size=12), size=st.integers(1, 5))
def test_pages_concatenate_to_byte_order(ids: set[str], size: int) -> None:
    """Hex and hashed directory names alike: pages follow the bytes of the ids."""

    async def scenario(root: Path) -> list[str]:
        journal = await opened(root)
        for run_id in ids:
            await journal.create_run(run_id, "wf", "v1", None, T0)
        await journal.aclose()
        journal = await opened(root)  # the order must survive a restart (a fresh scan)
        seen: list[str] = []
        after: str | None = None
        while page := await journal.run_summaries(after, size, None):
            seen += [s.run_id for s in page]
            after = page[-1].run_id
        await journal.aclose()
        return seen

    with tempfile.TemporaryDirectory() as tmp:
        seen = anyio.run(scenario, Path(tmp) / "journal")
    assert seen == sorted(ids, key=lambda run_id: run_id.encode())


@pytest.mark.parametrize("batch", [1, 2, 4])
async def test_filtered_pages_span_batches(
    fs: FsJournal, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("snapshotd.journals.fs.adapter.LISTING_BATCH", batch)
    await fs.get_run("r2")  # one cached run among uncached ones
    for workflow, expected in (("other", ["r1", "r2", "r4", "r5"]), ("wf", ["r0", "r3"])):
        seen: list[str] = []
        after: str | None = None
        while page := await fs.run_summaries(after, 1, workflow):
            seen += [s.run_id for s in page]
            after = page[-1].run_id
        assert seen == expected
