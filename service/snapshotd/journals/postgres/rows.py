"""Decoding of the adapter's rows: snapshot metadata and stored event bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import orjson

from snapshotd.domain.errors import Corrupt
from snapshotd.domain.model import Event, RunSummary, SnapshotMeta

_DECODE_ERRORS = (orjson.JSONDecodeError, KeyError, TypeError, ValueError)


def meta(row: asyncpg.Record) -> SnapshotMeta:
    return SnapshotMeta(
        snapshot_id=row["snapshot_id"],
        run_id=row["run_id"],
        through_seq=row["through_seq"],
        version=row["version"],
        reducer=row["reducer"],
        format_version=row["format_version"],
        size_bytes=row["size_bytes"],
        checksum=row["checksum"],
        kind=row["kind"],
        pinned=row["pinned"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        label=row["label"],
    )


def summary(row: asyncpg.Record) -> RunSummary:
    return RunSummary(
        row["run_id"],
        row["workflow"],
        row["version"],
        row["last_seq"],
        row["snapshot_id"],
        row["through_seq"],
    )


def _event(obj: Any) -> Event:
    return Event(obj["seq"], obj["type"], obj["data"], datetime.fromisoformat(obj["recorded_at"]))


def decode_events(run_id: str, bodies: list[bytes], after_seq: int) -> list[Event]:
    """One orjson call for the whole page; on failure find the damaged row for the message."""
    try:
        objs = orjson.loads(b"[" + b",".join(bodies) + b"]")
        if len(objs) == len(bodies):
            fromiso = datetime.fromisoformat
            return [Event(o["seq"], o["type"], o["data"], fromiso(o["recorded_at"])) for o in objs]
    except _DECODE_ERRORS:
        pass
    for offset, body in enumerate(bodies, start=1):
        try:
            _event(orjson.loads(body))
        except _DECODE_ERRORS as exc:
            raise Corrupt(
                f"events row (run_id={run_id!r}, seq={after_seq + offset}) does not decode: {exc}"
            ) from None
    raise Corrupt(f"events of run {run_id!r} after seq {after_seq} do not decode as events")
