"""Errors that cross layers, each carrying the protocol error code of SPEC section 2.

Adapters translate driver and OS errors into these once, at their edge, so the
runtime and the API never import a driver.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SnapshotdError(Exception):
    """Base of every error the API reports with a protocol error code.

    ``details`` holds the extra fields SPEC section 2 puts beside ``code`` and
    ``message`` in the error object (``last_seq`` of an append conflict, the
    ``outcome`` of an append whose commit was interrupted).
    """

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(SnapshotdError):
    code = "bad_request"


class UnknownOp(SnapshotdError):
    code = "unknown_op"


class UnknownInstance(SnapshotdError):
    code = "unknown_instance"


class NotFound(SnapshotdError):
    code = "not_found"


class Conflict(SnapshotdError):
    code = "conflict"


class StaleLease(SnapshotdError):
    code = "stale_lease"


class TooLarge(SnapshotdError):
    code = "too_large"


class Unavailable(SnapshotdError):
    """The journal cannot be reached (database down, disk gone); retrying may help."""

    code = "unavailable"


class Corrupt(SnapshotdError):
    """A run's stored data is damaged; the message names the file or row and line."""

    code = "corrupt"


class SnapshotCorrupt(Corrupt):
    """One snapshot is damaged (not the run's own data): asked for by id, it is ``corrupt``."""


class Internal(SnapshotdError):
    code = "internal"


class Busy(SnapshotdError):
    """Another daemon holds the run's snapshot lock (skip reason ``busy``)."""

    code = "conflict"


class Superseded(SnapshotdError):
    """A stored snapshot already covers this ``through_seq``; writing would move it backwards."""

    code = "conflict"


class ReducerError(SnapshotdError):
    """The reducer raised or rejected an event; the snapshot attempt is skipped."""

    code = "internal"


class ConfigError(Exception):
    """Invalid configuration; the message names the offending key."""
