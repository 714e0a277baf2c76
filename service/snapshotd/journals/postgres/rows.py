"""Decoding of the adapter's rows: snapshot metadata and stored event bodies."""

from __future__ import annotations

from datetime import datetime
from hashlib import md5
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
        base_id=row["base_id"],
        stored_bytes=row["stored_bytes"],
        retired=row["retired"],
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


def checked_bodies(where: str, run_id: str, after_seq: int, rows: list[Any]) -> list[bytes]:
    """The bodies of (body, body_md5) rows when every one matches its checksum;
    Corrupt naming the first that does not (its seq: a run's seqs are contiguous)."""
    bodies: list[bytes] = [row[0] for row in rows]
    sums = [md5(body, usedforsecurity=False).digest() for body in bodies]
    if sums != [row[1] for row in rows]:
        bad = next(i for i, row in enumerate(rows) if sums[i] != row[1])
        raise Corrupt(
            f"events row (run_id={run_id!r}, seq={max(after_seq, 0) + bad + 1}) of "
            f"{where} does not match its checksum"
        )
    return bodies
