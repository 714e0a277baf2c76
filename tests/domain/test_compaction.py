"""Compaction and the integrity check of snapshots."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from snapshotd.domain import compaction
from snapshotd.domain.errors import Corrupt, ReducerError
from snapshotd.domain.model import Event, Snapshot, SnapshotKind
from snapshotd.domain.reducers import fold, last_by_key

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def kv(start: int, *pairs: tuple[str, int | None]) -> list[Event]:
    return [Event(start + i, "set", {"key": k, "value": v}, T0) for i, (k, v) in enumerate(pairs)]


def compact(
    base: Snapshot | None, tail: list[Event], kind: SnapshotKind = "auto"
) -> compaction.Compacted:
    return compaction.compact(
        run_id="r",
        version="v1",
        reducer_name="last_by_key",
        reducer=last_by_key,
        base=base,
        tail=tail,
        kind=kind,
        now=T0,
        safety_ttl_s=60,
    )


def test_compact_from_scratch_and_from_a_base() -> None:
    first_events = kv(1, ("a", 1), ("b", 2))
    first = compact(None, first_events)
    assert (first.snapshot.meta.through_seq, first.events_folded) == (2, 2)
    assert compaction.decode_state(first.snapshot) == {"a": 1, "b": 2}
    tail = kv(3, ("a", None), ("c", 3))
    second = compact(first.snapshot, tail)
    assert second.snapshot.meta.through_seq == 4
    assert compaction.decode_state(second.snapshot) == fold(last_by_key, None, first_events + tail)
    meta = second.snapshot.meta
    assert meta.size_bytes == len(second.snapshot.payload)
    assert meta.checksum == compaction.checksum(second.snapshot.payload)
    assert (meta.kind, meta.expires_at, meta.pinned) == ("auto", None, False)


def test_empty_tail_keeps_the_base_position() -> None:
    base = compact(None, kv(1, ("a", 1))).snapshot
    assert compact(base, []).snapshot.meta.through_seq == 1
    assert compact(None, []).snapshot.meta.through_seq == 0


def test_safety_snapshots_expire() -> None:
    meta = compact(None, kv(1, ("a", 1)), kind="safety").snapshot.meta
    assert meta.expires_at == T0 + timedelta(seconds=60)


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: replace(s, payload=s.payload.replace(b"1", b"2")),
        lambda s: replace(s, payload=s.payload + b" "),
        lambda s: replace(s, meta=replace(s.meta, checksum="sha256:" + "0" * 64)),
        lambda s: replace(s, meta=replace(s.meta, format_version=99)),
    ],
    ids=["payload", "size", "checksum", "format"],
)
def test_damaged_snapshots_are_corrupt(damage: object) -> None:
    good = compact(None, kv(1, ("a", 1))).snapshot
    compaction.verify(good)
    bad = damage(good)  # type: ignore[operator]
    with pytest.raises(Corrupt, match=good.meta.snapshot_id):
        compaction.verify(bad)
    with pytest.raises(Corrupt):
        compaction.decode_state(bad)
    with pytest.raises(Corrupt):
        compact(bad, kv(2, ("b", 2)))


def test_undecodable_state_with_matching_checksum_is_corrupt() -> None:
    good = compact(None, kv(1, ("a", 1))).snapshot
    payload = b"{not json"
    bad = replace(
        good,
        payload=payload,
        meta=replace(good.meta, size_bytes=len(payload), checksum=compaction.checksum(payload)),
    )
    compaction.verify(bad)
    with pytest.raises(Corrupt, match="does not decode"):
        compaction.decode_state(bad)


def test_reducer_errors_propagate() -> None:
    with pytest.raises(ReducerError):
        compact(None, [Event(1, "set", {"no": "key"}, T0)])
