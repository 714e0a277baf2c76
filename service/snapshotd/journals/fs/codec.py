"""Names and record encodings of the ``fs:`` journal's layout (pure; no file access)."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any, Final

import orjson

from snapshotd.domain.errors import BadRequest, Corrupt
from snapshotd.domain.model import DuePoint, Event, Run, SnapshotMeta
from snapshotd.journals import records

FORMAT: Final = "snapshotd-fs"
SCHEMA_VERSION: Final = 3
"""3: logs written in checksummed batches, temporaries in ``staging/``, ``due.jsonl``."""
_LAYOUT: Final = (
    "{id-<hex utf-8>|h-<sha256>}/{run.json(+due),events.jsonl,snapshots/<uuid>.snap};"
    "documents/<name>/<name>.doc;audit.jsonl;staging/;due.jsonl=[id,since,ready];"
    "event line=records.event_json;batch=last line +crc member;"
    "snapshot=meta json line+state;document=header line+body"
)
FINGERPRINT: Final = "sha256:" + hashlib.sha256(_LAYOUT.encode()).hexdigest()
"""Hash of the layout rules, so a build that changes them refuses older data."""

_MAX_NAME = 240
SNAPSHOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SNAP_SUFFIX = ".snap"
DOC_SUFFIX = ".doc"
LOCK_NAME = "lock"
FOREIGN_OK = {"lost+found", LOCK_NAME}
RUN_PREFIXES = ("id-", "h-")


def entry_name(text: str) -> str:
    """The file-system name of a run id, namespace or key (never a path)."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{text!r} is not valid Unicode") from None
    name = "id-" + raw.hex()
    return name if len(name) <= _MAX_NAME else "h-" + hashlib.sha256(raw).hexdigest()


def run_json(run: Run) -> bytes:
    return records.dumps(
        {
            "run_id": run.run_id,
            "workflow": run.workflow,
            "version": run.version,
            "lease": run.lease,
            "created_at": run.created_at,
            "due": None
            if run.due is None
            else {
                "snap_seq": run.due.snap_seq,
                "due_seq": run.due.due_seq,
                "due_at": run.due.due_at,
            },
        }
    )


def parse_run(path: str, raw: bytes, run_id: str) -> Run:
    try:
        obj = orjson.loads(raw)
        run = Run(
            obj["run_id"],
            obj["workflow"],
            obj["version"],
            obj["lease"],
            0,
            records.parse_time(obj["created_at"]),
            _parse_due(obj.get("due")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise Corrupt(f"{path}: not a valid run record ({exc})") from None
    if run.run_id != run_id:
        raise Corrupt(f"{path}: holds run {run.run_id!r}, expected {run_id!r}")
    return run


def _parse_due(obj: dict[str, Any] | None) -> DuePoint | None:
    if obj is None:
        return None
    due_at = obj["due_at"]
    point = DuePoint(
        obj["snap_seq"], obj["due_seq"], None if due_at is None else records.parse_time(due_at)
    )
    if type(point.snap_seq) is not int or type(point.due_seq) is not int:
        raise TypeError("due point sequence numbers must be integers")
    return point


def parse_meta(path: str, line: bytes, run_id: str, snapshot_id: str) -> SnapshotMeta:
    try:
        meta = records.meta_from_json(orjson.loads(line))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise Corrupt(f"{path}: snapshot metadata does not decode ({exc})") from None
    if meta.snapshot_id != snapshot_id or meta.run_id != run_id:
        raise Corrupt(f"{path}: metadata names another snapshot or run")
    return meta


def decode_events(path: str, objects: list[dict[str, Any]]) -> list[Event]:
    """Decode validated event lines; one append shares one time, so times are parsed once."""
    times: dict[str, datetime] = {}
    events: list[Event] = []
    for obj in objects:
        try:
            stamp = obj["recorded_at"]
            recorded_at = times.get(stamp)
            if recorded_at is None:
                recorded_at = times[stamp] = records.parse_time(stamp)
            events.append(Event(obj["seq"], obj["type"], obj["data"], recorded_at))
        except (KeyError, TypeError, ValueError):
            raise Corrupt(f"{path}: line {obj.get('seq')}: not an event record") from None
    return events
