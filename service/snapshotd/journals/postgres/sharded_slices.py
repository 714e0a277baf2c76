"""Slice leases of a sharded journal: each slice's lease lives in its own shard.

Daemons beat on every shard; a slice is claimed, released and hinted in the shard
that holds it, so a daemon owns a slice wherever it lives and the keeper
(runtime/slices.py) sees one union of members and leases. A shard that does not
answer is left out of that view until it does: its slices are neither claimed nor
swept meanwhile, while the other shards' leases go on being kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TypeVar

import anyio
import structlog

from snapshotd.domain.errors import SnapshotdError, Unavailable
from snapshotd.domain.slices import run_slice, slice_shard
from snapshotd.journals.base import SliceStore, SliceView

_log = structlog.get_logger("snapshotd.slices")
_T = TypeVar("_T")


class ShardedSliceStore:
    """``SliceStore`` over one store per shard, in shard order."""

    def __init__(self, stores: Sequence[SliceStore]) -> None:
        self._stores = list(stores)

    def _by_shard(self, slices: Sequence[int]) -> dict[int, list[int]]:
        grouped: dict[int, list[int]] = {}
        for s in slices:
            grouped.setdefault(slice_shard(s, len(self._stores)), []).append(s)
        return grouped

    async def _each(
        self, calls: Mapping[int, Callable[[], Awaitable[_T]]], timeout_s: float
    ) -> tuple[dict[int, _T], list[str]]:
        """Run the calls at once; their results by shard, and what failed."""
        results: dict[int, _T] = {}
        failed: list[str] = []

        async def one(index: int, call: Callable[[], Awaitable[_T]]) -> None:
            try:
                with anyio.fail_after(timeout_s):
                    results[index] = await call()
            except (SnapshotdError, OSError, TimeoutError) as exc:
                failed.append(f"shard {index}: {type(exc).__name__}: {exc}")

        async with anyio.create_task_group() as tg:
            for index, call in calls.items():
                tg.start_soon(one, index, call)
        return results, failed

    async def beat(self, member: str, lease_s: float) -> SliceView:
        """Unavailable only when no shard answered."""
        calls = {i: partial(store.beat, member, lease_s) for i, store in enumerate(self._stores)}
        views, failed = await self._each(calls, lease_s / 4)
        if not views:
            raise Unavailable("; ".join(failed))
        if failed:
            _log.warning("slices_shard_heartbeat_failed", errors=failed)
        members: dict[str, None] = {}
        leases: dict[int, str] = {}
        for index, view in views.items():
            members.update(dict.fromkeys(view.members))
            leases.update(
                (s, holder)
                for s, holder in view.leases.items()
                if slice_shard(s, len(self._stores)) == index
            )
        return SliceView(list(members), leases)

    async def claim(self, member: str, slices: Sequence[int], lease_s: float) -> list[int]:
        """The slices taken in the shards that answered."""
        calls = {
            i: partial(self._stores[i].claim, member, part, lease_s)
            for i, part in self._by_shard(slices).items()
        }
        taken, _failed = await self._each(calls, lease_s / 4)
        return sorted(s for part in taken.values() for s in part)

    async def release(self, member: str, slices: Sequence[int]) -> None:
        """Best effort: a lease a shard did not hear about expires by itself."""
        calls = {
            i: partial(self._stores[i].release, member, part)
            for i, part in self._by_shard(slices).items()
        }
        await self._each(calls, 5.0)

    async def leave(self, member: str) -> None:
        calls = {i: partial(store.leave, member) for i, store in enumerate(self._stores)}
        await self._each(calls, 5.0)

    async def forward(self, run_ids: Sequence[str]) -> None:
        grouped: dict[int, list[str]] = {}
        for run_id in run_ids:
            grouped.setdefault(slice_shard(run_slice(run_id), len(self._stores)), []).append(run_id)
        calls = {i: partial(self._stores[i].forward, part) for i, part in grouped.items()}
        _done, failed = await self._each(calls, 5.0)
        if failed:
            raise Unavailable("; ".join(failed))
