"""The journal contract suite (test_contract.py) against a journal of three shards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from snapshotd.journals.base import Journal
from snapshotd.journals.postgres.sharded import ShardedJournal
from tests.conftest import sharded_dsns
from tests.journals.pg_cluster import Cluster
from tests.journals.test_contract import *  # noqa: F403

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def journal(pg_shards: list[Cluster]) -> AsyncIterator[Journal]:
    opened = ShardedJournal(sharded_dsns(pg_shards))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()
