"""The records snapshotd works with: runs, events, snapshots and audit entries.

Timestamps are timezone-aware UTC datetimes. Event payloads travel two ways: as
decoded values (``Event.data``) for folding, and as stored JSON bytes for `load`,
which passes them through without decoding (see journals.base.EventPage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

SnapshotKind = Literal["auto", "manual", "safety"]
SNAPSHOT_KINDS: tuple[SnapshotKind, ...] = ("auto", "manual", "safety")

FORMAT_VERSION = 1
"""Version of the snapshot encoding (orjson state bytes + sha256 checksum)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


NEVER_SEQ = 2**63 - 1
"""``DuePoint.due_seq`` of a run never due by count (threshold ``"infinity"``)."""


@dataclass(frozen=True, slots=True)
class DuePoint:
    """When a run is next due, as a daemon recorded it in the journal (sweeps, NOTIFY).

    ``snap_seq`` is the ``through_seq`` of the base it was computed from (0: none);
    the run is due by count once ``last_seq >= due_seq``, and by time from
    ``due_at`` on (None: no interval) once an event follows ``snap_seq``.
    """

    snap_seq: int
    due_seq: int
    due_at: datetime | None


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    workflow: str
    version: str
    lease: str | None
    last_seq: int
    created_at: datetime
    due: DuePoint | None = None
    """The recorded due point (None: no daemon has recorded one, or the journal keeps none)."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event as an application submits it; the journal assigns seq and time."""

    type: str
    data: Any


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event. Custom reducers receive this object (``seq``, ``type``, ``data``)."""

    seq: int
    type: str
    data: Any
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Everything about a snapshot except its state."""

    snapshot_id: str
    run_id: str
    through_seq: int
    version: str
    reducer: str
    format_version: int
    size_bytes: int
    checksum: str
    kind: SnapshotKind
    pinned: bool
    created_at: datetime
    expires_at: datetime | None
    label: str | None = None
    base_id: str | None = None
    """The link this snapshot is stored as a delta on (domain.chains); None: stored whole."""
    stored_bytes: int | None = None
    """Bytes of the stored payload when it is a delta (None: ``size_bytes``, stored whole)."""
    retired: bool = False
    """Removed by retention but still a link a kept snapshot needs: never listed or served."""

    @property
    def stored_size(self) -> int:
        """What storing this snapshot cost: its delta's size, or the whole state's."""
        return self.size_bytes if self.stored_bytes is None else self.stored_bytes

    def order_key(self) -> tuple[int, datetime, str]:
        """Newest-first ordering of SPEC section 1: by through_seq, then created_at."""
        return (self.through_seq, self.created_at, self.snapshot_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "run_id": self.run_id,
            "through_seq": self.through_seq,
            "version": self.version,
            "reducer": self.reducer,
            "format_version": self.format_version,
            "size_bytes": self.size_bytes,
            "checksum": self.checksum,
            "kind": self.kind,
            "pinned": self.pinned,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "label": self.label,
        }

    def listing(self) -> dict[str, Any]:
        """What ``list_snapshots`` shows: the metadata plus ``stored_bytes``, what
        storing the snapshot cost (a delta's size when it is stored as one)."""
        return {**self.to_json(), "stored_bytes": self.stored_size}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot with its encoded state (orjson bytes, as stored and checksummed).

    Read from a journal, ``payload`` is what is stored: the whole state, or a delta
    when ``meta.base_id`` is set. ``runtime.chains`` assembles a delta's chain into
    a Snapshot with the whole state as ``payload`` (its links verified on the way).
    """

    meta: SnapshotMeta
    payload: bytes


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One row of ``list_runs``: a run and its newest compatible snapshot, if any.

    The journal fills ``snapshot_id``/``snapshot_through_seq`` from metadata alone;
    the runtime replaces a snapshot it knows to be damaged by the next older one.
    """

    run_id: str
    workflow: str
    version: str
    last_seq: int
    snapshot_id: str | None
    snapshot_through_seq: int | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    cursor: int
    at: datetime
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.fields, "cursor": self.cursor, "at": self.at, "kind": self.kind}
