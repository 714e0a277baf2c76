"""Delta chains: a snapshot stored as a delta on an earlier snapshot (pure, no I/O).

A stored snapshot is a *link*: whole (``base_id`` None, the payload is the encoded
state, checksum ``sha256(payload)``) or a delta on its base link (checksum chained:
``sha256(base checksum, payload)``), so one bad byte anywhere below a snapshot makes
its chain fail. Assembling a chain never decodes JSON: a `steps` delta is the new
entries of the step log as encoded bytes, spliced into the base's document, and the
whole state's size follows from the base's size and the delta's length.

Consolidation is size-tiered, like an LSM tree's merges: a new delta absorbs the
links on top of its base chain while their deltas are no bigger than itself, and
becomes a whole snapshot once it outgrows the chain's whole bottom. The deltas on one
whole grow geometrically downwards (at most ~log2(history / tail) links), each byte
is rewritten O(log) times before the whole bottom doubles, so a snapshot costs
O(tail) amortised and a load reads at most about twice the state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from snapshotd.domain.errors import Corrupt
from snapshotd.domain.model import FORMAT_VERSION, Event, SnapshotMeta

MAX_LINKS = 48
"""A chain never grows deeper than this (the size tiers keep it far shallower)."""

MERGE_RATIO = 2
"""A new delta absorbs the link below it while that link is at most this many times
its size: each tier is then more than twice the one above it (depth O(log)), and
deltas of nearly equal size (seq numbers grow by a digit now and then) still merge."""


class DeltaCodec(Protocol):
    """How one reducer's state is stored as deltas."""

    def delta(self, tail: Sequence[Event]) -> bytes:
        """The delta that folding ``tail`` adds to any state (b"" for no change)."""
        ...

    def merge(self, older: bytes, newer: bytes) -> bytes:
        """One delta with the effect of ``older`` then ``newer``."""
        ...

    def apply(self, whole: bytes, deltas: Sequence[bytes]) -> bytes:
        """The encoded state after ``deltas`` (oldest first) on the encoded ``whole``.

        Raises Corrupt when ``whole`` is not a state of this reducer.
        """
        ...

    def size(self, base_size: int, delta_size: int) -> int:
        """The encoded size of the state after a delta, from the sizes alone."""
        ...


class StepsCodec:
    """``steps``: a delta is the new ``"<seq>": {"type", "data"}`` members, encoded.

    orjson writes a dict's members in insertion order and folding inserts steps in
    seq order, so splicing members in yields exactly the bytes encoding the folded
    state would.
    """

    _PREFIX = b'{"steps":{'
    _SUFFIX = b"}}"
    _EMPTY = b'{"steps":{}}'
    _NULL = b"null"

    def delta(self, tail: Sequence[Event]) -> bytes:
        if not tail:
            return b""
        members = {str(e.seq): {"type": e.type, "data": e.data} for e in tail}
        return orjson.dumps(members)[1:-1]

    def merge(self, older: bytes, newer: bytes) -> bytes:
        if not older or not newer:
            return older or newer
        return older + b"," + newer

    def apply(self, whole: bytes, deltas: Sequence[bytes]) -> bytes:
        parts = [d for d in deltas if d]
        if not parts:
            return whole
        if whole in (self._NULL, self._EMPTY):
            pieces: list[bytes | memoryview] = [self._PREFIX, parts[0]]
            rest = parts[1:]
        elif whole.startswith(self._PREFIX) and whole.endswith(self._SUFFIX):
            pieces = [memoryview(whole)[: -len(self._SUFFIX)]]
            rest = parts
        else:
            raise Corrupt("the base of a steps delta is not a steps state")
        for part in rest:
            pieces += (b",", part)
        pieces.append(self._SUFFIX)
        return b"".join(pieces)  # one copy of the state, however long the chain

    def size(self, base_size: int, delta_size: int) -> int:
        if delta_size == 0:
            return base_size
        if base_size <= len(self._EMPTY):  # null or no steps yet
            return len(self._EMPTY) + delta_size
        return base_size + 1 + delta_size


CODECS: dict[str, DeltaCodec] = {"steps": StepsCodec()}
"""Reducers whose snapshots may be stored as deltas. ``last_by_key`` and
``merge_patch`` keep bounded states, whose snapshot already costs O(tail) plus
the state; custom reducers' states are opaque."""


def codec_for(reducer: str) -> DeltaCodec | None:
    return CODECS.get(reducer)


def link_checksum(base_checksum: str | None, payload: bytes) -> str:
    """A whole link's checksum is its payload's; a delta's chains its base's."""
    digest = hashlib.sha256()
    if base_checksum is not None:
        digest.update(base_checksum.encode())
        digest.update(b"\n")
    digest.update(payload)
    return "sha256:" + digest.hexdigest()


def verify_link(meta: SnapshotMeta, payload: bytes, base: SnapshotMeta | None) -> None:
    """Raise Corrupt unless ``payload`` is what ``meta`` says was stored on ``base``."""
    sid = meta.snapshot_id
    if meta.format_version != FORMAT_VERSION:
        raise Corrupt(f"snapshot {sid}: unknown format_version {meta.format_version}")
    if meta.base_id is None:
        if len(payload) != meta.size_bytes or link_checksum(None, payload) != meta.checksum:
            raise Corrupt(f"snapshot {sid}: checksum mismatch")
        return
    if base is None or base.snapshot_id != meta.base_id:
        raise Corrupt(f"snapshot {sid}: its base link {meta.base_id} is missing")
    if len(payload) != meta.stored_bytes or link_checksum(base.checksum, payload) != meta.checksum:
        raise Corrupt(f"snapshot {sid}: checksum mismatch")


def chain_of(top: SnapshotMeta, links: Mapping[str, SnapshotMeta]) -> list[SnapshotMeta]:
    """``top`` and the links below it down to a whole one, top first.

    Raises Corrupt when a link is missing or does not fit its descendant (another
    run, version or reducer, a later ``through_seq``, a cycle).
    """
    chain = [top]
    link = top
    while link.base_id is not None:
        base = links.get(link.base_id)
        if base is None:
            raise Corrupt(
                f"snapshot {top.snapshot_id}: its link {link.base_id} below "
                f"{link.snapshot_id} is missing"
            )
        if (
            (base.run_id, base.version, base.reducer) != (top.run_id, top.version, top.reducer)
            or base.through_seq > link.through_seq
            or len(chain) > MAX_LINKS
        ):
            raise Corrupt(f"snapshot {top.snapshot_id}: link {base.snapshot_id} does not fit")
        chain.append(base)
        link = base
    return chain


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a new delta goes: ``merged`` (top first) are the chain's upper links
    whose deltas it absorbs; it is stored on ``base`` or, when that is None, whole
    (the chain's whole bottom consolidated with everything above it)."""

    base: SnapshotMeta | None
    merged: list[SnapshotMeta]


def plan(chain: Sequence[SnapshotMeta], delta_size: int) -> Plan:
    """Choose how to store a delta of ``delta_size`` bytes on ``chain`` (top first).

    Links below the new delta absorb it while they are no more than MERGE_RATIO
    times its (growing) size; reaching the whole bottom with at least its size, the
    snapshot is stored whole.
    """
    size = delta_size
    merged: list[SnapshotMeta] = []
    for index, link in enumerate(chain):
        if link.base_id is None:
            if link.size_bytes <= size:
                return Plan(None, merged)
            return Plan(link, merged)
        depth_left = len(chain) - index
        if link.stored_size > MERGE_RATIO * size and depth_left < MAX_LINKS:
            return Plan(link, merged)
        merged.append(link)
        size += link.stored_size
    raise Corrupt("a chain must end in a whole snapshot")


def assemble(reducer: str, payloads: Sequence[bytes]) -> bytes:
    """The whole state from a chain's payloads, whole bottom first."""
    if len(payloads) == 1:
        return payloads[0]
    codec = codec_for(reducer)
    if codec is None:
        raise Corrupt(f"reducer {reducer!r} has no delta encoding, yet a delta is stored")
    return codec.apply(payloads[0], payloads[1:])
