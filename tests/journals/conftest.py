"""The ``journal`` fixture: one opened journal of every kind, for the contract suite.

Each kind is a factory in ``JOURNAL_FACTORIES``; the contract tests run once per
entry, so a new adapter joins the suite by adding one line there.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from snapshotd.journals.base import Journal
from snapshotd.journals.fs import FsJournal
from snapshotd.journals.memory import MemoryJournal

JournalFactory = Callable[[pytest.FixtureRequest, Path], Journal]


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    return MemoryJournal()


def _fs(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    return FsJournal(tmp_path / "journal")


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    from snapshotd.journals.postgres import PostgresJournal

    pg_dsn: str = request.getfixturevalue("pg_dsn")
    return PostgresJournal(f"{pg_dsn}?schema=t_{secrets.token_hex(6)}")


JOURNAL_FACTORIES = [
    pytest.param(_memory, id="memory"),
    pytest.param(_fs, id="fs"),
    pytest.param(_postgres, id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=JOURNAL_FACTORIES)
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    factory: JournalFactory = request.param
    opened = factory(request, tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()
