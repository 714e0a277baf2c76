"""Snapshots as delta chains in a journal: reading them whole, building on them, retention.

Journals that store links (``StoresLinks``) get `steps` snapshots as deltas
(domain.chains); the others keep every snapshot whole and go through the same
code with one-link chains. Links whose chain this process has read and verified
(or written) may serve as a base again without being read: an attempt on a long
`steps` run then reads only its tail and the few small links it merges.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from snapshotd.domain import chains
from snapshotd.domain.errors import Corrupt, NotFound
from snapshotd.domain.ids import uuid7
from snapshotd.domain.model import (
    FORMAT_VERSION,
    Event,
    Run,
    Snapshot,
    SnapshotKind,
    SnapshotMeta,
)
from snapshotd.journals.base import Journal, StoresLinks
from snapshotd.runtime.recovery import CorruptionReporter

_MAX_REMEMBERED = 100_000


class BrokenLink(Corrupt):
    """A link of a chain fails its check: every snapshot that needs it is unusable."""

    def __init__(self, link_id: str, message: str) -> None:
        super().__init__(message)
        self.link_id = link_id


@dataclass(frozen=True, slots=True)
class Base:
    """A verified base: its chain (top first) and its whole state when it was read."""

    meta: SnapshotMeta
    chain: list[SnapshotMeta]
    payload: bytes | None

    def snapshot(self) -> Snapshot:
        assert self.payload is not None
        return Snapshot(self.meta, self.payload)


class _Bounded:
    """A dict that forgets its oldest entries beyond a bound."""

    def __init__(self, capacity: int) -> None:
        self._items: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._capacity = capacity

    def get(self, key: tuple[str, str]) -> object | None:
        return self._items.get(key)

    def put(self, key: tuple[str, str], value: object) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def pop(self, key: tuple[str, str]) -> None:
        self._items.pop(key, None)


class Chains:
    """One instance's view of its journal's snapshots as chains of links."""

    def __init__(self, journal: Journal, reporter: CorruptionReporter) -> None:
        self._journal = journal
        self._links = journal if isinstance(journal, StoresLinks) else None
        self._reporter = reporter
        self._verified = _Bounded(_MAX_REMEMBERED)
        """(run, link) -> checksum, for links whose whole chain verified here."""
        self._grown = _Bounded(_MAX_REMEMBERED)
        """(run, "steps") -> (through_seq, size): a `steps` state only ever grows."""

    @property
    def stores_links(self) -> bool:
        return self._links is not None

    async def links(self, run_id: str) -> dict[str, SnapshotMeta]:
        """Every link of the run by id, retired ones included ({} without links)."""
        if self._links is None:
            return {}
        return {m.snapshot_id: m for m in await self._links.list_links(run_id)}

    # --- reading -----------------------------------------------------------------

    async def newest_valid(
        self, run: Run, candidates: Sequence[SnapshotMeta], *, whole: bool
    ) -> Base | None:
        """The first of ``candidates`` (newest first) whose chain is intact, else None.

        With ``whole`` False a chain verified earlier in this process is not read
        again (``payload`` None). A damaged link is reported, and so is every
        candidate that needs it; a snapshot deleted meanwhile is passed over.
        """
        links = await self.links(run.run_id) if self.stores_links else {}
        for meta in candidates:
            try:
                chain = chains.chain_of(meta, links) if meta.base_id else [meta]
                damaged = next(
                    (m for m in chain if self._reporter.known(run.run_id, m.snapshot_id)), None
                )
                if damaged is not None:
                    raise Corrupt(
                        f"snapshot {meta.snapshot_id}: needs damaged link {damaged.snapshot_id}"
                    )
                if not whole and self._is_verified(run.run_id, chain):
                    return Base(meta, chain, None)
                payload = await self._read_whole(run.run_id, chain)
            except NotFound:
                continue
            except Corrupt as exc:
                await self._report(run.run_id, meta, exc)
                continue
            return Base(meta, chain, payload)
        return None

    async def read_whole(self, run_id: str, meta: SnapshotMeta) -> Snapshot:
        """``meta``'s snapshot with its whole state, every link verified.

        Raises Corrupt (reported) when a link is missing or damaged, NotFound when
        the snapshot itself is gone.
        """
        try:
            chain = chains.chain_of(meta, await self.links(run_id)) if meta.base_id else [meta]
            return Snapshot(meta, await self._read_whole(run_id, chain))
        except Corrupt as exc:
            await self._report(run_id, meta, exc)
            raise

    async def _read_whole(self, run_id: str, chain: list[SnapshotMeta]) -> bytes:
        bottom_up = list(reversed(chain))
        if self._links is None:
            stored = [await self._journal.read_snapshot(run_id, chain[0].snapshot_id)]
        else:
            stored = await self._links.read_links(run_id, [m.snapshot_id for m in bottom_up])
        payloads: list[bytes] = []
        below: SnapshotMeta | None = None
        for meta, link in zip(bottom_up, stored, strict=True):
            self._check(meta, link, below)
            payloads.append(link.payload)
            below = link.meta
        top = chain[0]
        try:
            whole = chains.assemble(top.reducer, payloads)
        except Corrupt as exc:
            raise BrokenLink(top.snapshot_id, f"snapshot {top.snapshot_id}: {exc}") from None
        if len(whole) != top.size_bytes:
            raise BrokenLink(top.snapshot_id, f"snapshot {top.snapshot_id}: size mismatch")
        self._mark_verified(run_id, chain)
        return whole

    async def _read_link(
        self, run_id: str, meta: SnapshotMeta, below: SnapshotMeta | None
    ) -> Snapshot:
        assert self._links is not None
        link = await self._links.read_link(run_id, meta.snapshot_id)
        self._check(meta, link, below)
        return link

    @staticmethod
    def _check(meta: SnapshotMeta, link: Snapshot, below: SnapshotMeta | None) -> None:
        try:
            if link.meta.checksum != meta.checksum:
                raise Corrupt(f"snapshot {meta.snapshot_id}: changed while being read")
            chains.verify_link(link.meta, link.payload, below)
        except Corrupt as exc:
            raise BrokenLink(meta.snapshot_id, str(exc)) from None

    def _is_verified(self, run_id: str, chain: Sequence[SnapshotMeta]) -> bool:
        return all(self._verified.get((run_id, m.snapshot_id)) == m.checksum for m in chain)

    def _mark_verified(self, run_id: str, chain: Sequence[SnapshotMeta]) -> None:
        for meta in reversed(chain):
            self._verified.put((run_id, meta.snapshot_id), meta.checksum)

    async def _report(self, run_id: str, meta: SnapshotMeta, exc: Corrupt) -> None:
        if isinstance(exc, BrokenLink) and exc.link_id != meta.snapshot_id:
            self._verified.pop((run_id, exc.link_id))
            await self._reporter.report(run_id, exc.link_id, exc)
        self._verified.pop((run_id, meta.snapshot_id))
        await self._reporter.report(run_id, meta.snapshot_id, exc)

    # --- `steps` sizes -------------------------------------------------------------

    def known_size(self, run_id: str, reducer: str) -> int | None:
        """A lower bound of the run's state size known without reading anything:
        a `steps` state only grows, so the last size seen here bounds it."""
        if reducer != "steps":
            return None
        known = self._grown.get((run_id, reducer))
        return known[1] if isinstance(known, tuple) else None

    def grew(self, run_id: str, reducer: str, through_seq: int, size_bytes: int) -> None:
        """Remember the size of the run's state through ``through_seq``."""
        if reducer == "steps":
            self._grown.put((run_id, reducer), (through_seq, size_bytes))

    # --- writing -------------------------------------------------------------------

    async def extend(
        self,
        base: Base,
        tail: Sequence[Event],
        delta: bytes,
        size_bytes: int,
        *,
        kind: SnapshotKind,
        now: datetime,
        safety_ttl_s: float,
    ) -> Snapshot:
        """The snapshot of ``base`` + ``tail`` (``delta``), stored as the plan says:
        a delta on a link of the base chain, with the links above it merged in, or
        whole once it outgrows the chain's whole bottom (domain.chains.plan)."""
        codec = chains.codec_for(base.meta.reducer)
        assert codec is not None
        run_id = base.meta.run_id
        plan = chains.plan(base.chain, len(delta))
        if plan.base is None and base.payload is not None:
            whole = codec.apply(base.payload, [delta])
        else:
            for index, link in enumerate(plan.merged):
                stored = await self._read_link(run_id, link, base.chain[index + 1])
                delta = codec.merge(stored.payload, delta)
        if plan.base is None:
            if base.payload is None:
                bottom = await self._read_link(run_id, base.chain[-1], None)
                whole = codec.apply(bottom.payload, [delta])
            payload, base_id, checksum = whole, None, chains.link_checksum(None, whole)
        else:
            payload, base_id = delta, plan.base.snapshot_id
            checksum = chains.link_checksum(plan.base.checksum, delta)
        if base_id is None and len(payload) != size_bytes:
            raise BrokenLink(base.meta.snapshot_id, f"snapshot {base.meta.snapshot_id}: size")
        meta = SnapshotMeta(
            snapshot_id=uuid7(now),
            run_id=run_id,
            through_seq=tail[-1].seq if tail else base.meta.through_seq,
            version=base.meta.version,
            reducer=base.meta.reducer,
            format_version=FORMAT_VERSION,
            size_bytes=size_bytes,
            checksum=checksum,
            kind=kind,
            pinned=False,
            created_at=now,
            expires_at=now + timedelta(seconds=safety_ttl_s) if kind == "safety" else None,
            base_id=base_id,
            stored_bytes=None if base_id is None else len(payload),
        )
        return Snapshot(meta, payload)

    def written(self, snapshot: Snapshot, base: Base | None) -> None:
        """Remember a snapshot this process wrote as verified, with its chain."""
        meta = snapshot.meta
        chain = [meta]
        if meta.base_id is not None and base is not None:
            ids = [m.snapshot_id for m in base.chain]
            chain += base.chain[ids.index(meta.base_id) :]
        self._mark_verified(meta.run_id, chain)
        self.grew(meta.run_id, meta.reducer, meta.through_seq, meta.size_bytes)

    # --- retention -----------------------------------------------------------------

    async def retain(
        self, run_id: str, visible: Sequence[SnapshotMeta], doomed: Sequence[SnapshotMeta]
    ) -> None:
        """Apply retention's ``doomed``: retire or delete each.

        A doomed snapshot a kept one needs as a link is retired, not deleted, and a
        retired link no kept snapshot needs any longer is deleted. Retiring comes
        first: a crash in between leaves only unneeded links, removed next time.
        """
        if self._links is None:
            await self._journal.delete_snapshots(run_id, [m.snapshot_id for m in doomed])
            return
        links = await self.links(run_id)
        doomed_ids = {m.snapshot_id for m in doomed}
        needed: set[str] = set()
        for meta in visible:
            if meta.snapshot_id in doomed_ids:
                continue
            link: SnapshotMeta | None = meta
            while link is not None and link.snapshot_id not in needed:
                needed.add(link.snapshot_id)
                link = links.get(link.base_id) if link.base_id else None
        retire = [sid for sid in doomed_ids if sid in needed]
        delete = [sid for sid in doomed_ids if sid not in needed]
        delete += [sid for sid, m in links.items() if m.retired and sid not in needed]
        if retire:
            await self._links.retire_snapshots(run_id, sorted(retire))
        if delete:
            await self._journal.delete_snapshots(run_id, sorted(delete))
