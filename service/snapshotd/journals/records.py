"""Encoding of stored records shared by the adapters (events, snapshot metadata, audit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from snapshotd.domain.model import Event, SnapshotKind, SnapshotMeta

_OPTS = orjson.OPT_UTC_Z


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTS)


def event_json(seq: int, type_: str, data: Any, recorded_at: datetime) -> bytes:
    """The stored and served form of an event: ``{"seq","type","data","recorded_at"}``."""
    return orjson.dumps(
        {"seq": seq, "type": type_, "data": data, "recorded_at": recorded_at}, option=_OPTS
    )


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def event_from_json(raw: bytes | str) -> Event:
    """Decode one stored event; raises ValueError/KeyError/TypeError when malformed."""
    obj = orjson.loads(raw)
    seq = obj["seq"]
    type_ = obj["type"]
    if not isinstance(seq, int) or not isinstance(type_, str) or "data" not in obj:
        raise ValueError("not an event record")
    return Event(seq, type_, obj["data"], parse_time(obj["recorded_at"]))


def meta_from_json(obj: dict[str, Any]) -> SnapshotMeta:
    kind: SnapshotKind = obj["kind"]
    expires = obj.get("expires_at")
    return SnapshotMeta(
        snapshot_id=obj["snapshot_id"],
        run_id=obj["run_id"],
        through_seq=int(obj["through_seq"]),
        version=obj["version"],
        reducer=obj["reducer"],
        format_version=int(obj["format_version"]),
        size_bytes=int(obj["size_bytes"]),
        checksum=obj["checksum"],
        kind=kind,
        pinned=bool(obj["pinned"]),
        created_at=parse_time(obj["created_at"]),
        expires_at=None if expires is None else parse_time(expires),
        label=obj.get("label"),
        base_id=obj.get("base_id"),
        stored_bytes=None if obj.get("stored_bytes") is None else int(obj["stored_bytes"]),
        retired=bool(obj.get("retired", False)),
    )


def meta_record(meta: SnapshotMeta) -> dict[str, Any]:
    """The stored form of snapshot metadata: ``to_json`` plus, for a link of a delta
    chain, ``base_id``/``stored_bytes``, and ``retired`` once retention retired it
    (whole snapshots are stored exactly as before chains existed)."""
    record = meta.to_json()
    if meta.base_id is not None:
        record["base_id"] = meta.base_id
        record["stored_bytes"] = meta.stored_bytes
    if meta.retired:
        record["retired"] = True
    return record
