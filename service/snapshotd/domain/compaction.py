"""Compaction: base snapshot + tail events -> a new snapshot, and its integrity check.

Snapshots store their state as orjson bytes with a sha256 checksum, so a damaged
snapshot is recognised before it is served or used as a base.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from snapshotd.domain.errors import Corrupt
from snapshotd.domain.ids import uuid7
from snapshotd.domain.model import FORMAT_VERSION, Event, Snapshot, SnapshotKind, SnapshotMeta
from snapshotd.domain.reducers import Reducer, fold


def encode_state(state: Any) -> bytes:
    return orjson.dumps(state)


def checksum(payload: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def verify(snapshot: Snapshot) -> None:
    """Raise Corrupt when the payload does not match its checksum, size or format.

    A snapshot stored as a delta (``meta.base_id``) has a checksum chained over its
    links, which ``runtime.chains`` checks while assembling it: here its payload
    must be the assembled whole state, so only its size can be checked.
    """
    meta = snapshot.meta
    if meta.format_version != FORMAT_VERSION:
        raise Corrupt(f"snapshot {meta.snapshot_id}: unknown format_version {meta.format_version}")
    if len(snapshot.payload) != meta.size_bytes or (
        meta.base_id is None and checksum(snapshot.payload) != meta.checksum
    ):
        raise Corrupt(f"snapshot {meta.snapshot_id}: checksum mismatch")


def decode_state(snapshot: Snapshot) -> Any:
    """Verify and decode a snapshot's state (a fresh object the caller may mutate)."""
    verify(snapshot)
    try:
        return orjson.loads(snapshot.payload)
    except orjson.JSONDecodeError as exc:
        raise Corrupt(
            f"snapshot {snapshot.meta.snapshot_id}: state does not decode: {exc}"
        ) from None


@dataclass(frozen=True, slots=True)
class Compacted:
    snapshot: Snapshot
    events_folded: int


def compact(
    *,
    run_id: str,
    version: str,
    reducer_name: str,
    reducer: Reducer,
    base: Snapshot | None,
    tail: Sequence[Event],
    kind: SnapshotKind,
    now: datetime,
    safety_ttl_s: float,
    label: str | None = None,
) -> Compacted:
    """Fold ``tail`` onto ``base`` (None: from the empty state) into a new snapshot.

    Raises ReducerError when the reducer fails and Corrupt when the base is damaged.
    The caller checks the size cap against ``snapshot.meta.size_bytes``.
    """
    state = None if base is None else decode_state(base)
    state = fold(reducer, state, tail)
    payload = encode_state(state)
    through_seq = tail[-1].seq if tail else 0 if base is None else base.meta.through_seq
    meta = SnapshotMeta(
        snapshot_id=uuid7(now),
        run_id=run_id,
        through_seq=through_seq,
        version=version,
        reducer=reducer_name,
        format_version=FORMAT_VERSION,
        size_bytes=len(payload),
        checksum=checksum(payload),
        kind=kind,
        pinned=False,
        created_at=now,
        expires_at=now + timedelta(seconds=safety_ttl_s) if kind == "safety" else None,
        label=label,
    )
    return Compacted(Snapshot(meta, payload), len(tail))
