"""Typed methods for every op of SPEC sections 2 and 7, shared by both clients.

Each method sends one request with an id and returns the op's ``result`` object
as docs/protocol.md shows it (``AsyncClient``: an awaitable of it); an error
response, or no daemon to answer, raises ``ClientError`` with the protocol error
code. Optional arguments left at ``OMITTED`` are not sent, so the daemon's
defaults apply (None is a value for the ops that take null, e.g. ``set_lease``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Final, Generic, Literal, TypeVar

R = TypeVar("R")
Result = dict[str, Any]


class _Omitted:
    def __repr__(self) -> str:
        return "OMITTED"


OMITTED: Final = _Omitted()
"""An optional argument not given (distinct from None)."""


class OpMethods(ABC, Generic[R]):
    """One method per op; ``R`` is the result (``Client``) or an awaitable of it."""

    @abstractmethod
    def _op(self, op: str, fields: dict[str, Any]) -> R:
        """Send ``op`` with ``fields`` as a request with an id; its result."""

    def _send(self, op: str, **fields: Any) -> R:
        return self._op(op, {k: v for k, v in fields.items() if v is not OMITTED})

    def ping(self) -> R:
        return self._send("ping")

    def status(self) -> R:
        return self._send("status")

    def create_run(
        self,
        run: str,
        workflow: str,
        version: str,
        *,
        lease: str | _Omitted | None = OMITTED,
        instance: str | _Omitted = OMITTED,
    ) -> R:
        """``{"created": bool}``; ``conflict`` when the run exists with another workflow."""
        return self._send(
            "create_run",
            run=run,
            workflow=workflow,
            version=version,
            lease=lease,
            instance=instance,
        )

    def set_version(self, run: str, version: str, *, instance: str | _Omitted = OMITTED) -> R:
        return self._send("set_version", run=run, version=version, instance=instance)

    def set_lease(
        self,
        run: str,
        lease: str | None,
        *,
        expected: str | _Omitted | None = OMITTED,
        instance: str | _Omitted = OMITTED,
    ) -> R:
        """Set (or, with None, clear) the lease; ``expected`` checks the current one."""
        return self._send("set_lease", run=run, lease=lease, expected=expected, instance=instance)

    def append(
        self,
        run: str,
        events: Sequence[Mapping[str, Any]],
        *,
        expected_seq: int | _Omitted = OMITTED,
        lease: str | _Omitted = OMITTED,
        instance: str | _Omitted = OMITTED,
    ) -> R:
        """``{"last_seq": N}``; each event is ``{"type": T, "data": D}``."""
        return self._send(
            "append",
            run=run,
            events=list(events),
            expected_seq=expected_seq,
            lease=lease,
            instance=instance,
        )

    def snapshot(
        self,
        run: str,
        *,
        lease: str | _Omitted = OMITTED,
        instance: str | _Omitted = OMITTED,
    ) -> R:
        """``{"status": "queued" | "coalesced" | "dropped"}`` (``send`` skips the reply)."""
        return self._send("snapshot", run=run, lease=lease, instance=instance)

    def snapshot_now(
        self,
        run: str,
        *,
        force: bool | _Omitted = OMITTED,
        kind: Literal["manual", "safety"] | _Omitted = OMITTED,
        label: str | _Omitted = OMITTED,
        lease: str | _Omitted = OMITTED,
        instance: str | _Omitted = OMITTED,
    ) -> R:
        """``{"status": "taken", "snapshot_id", ...}`` or ``{"status": "skipped", "reason"}``."""
        return self._send(
            "snapshot_now",
            run=run,
            force=force,
            kind=kind,
            label=label,
            lease=lease,
            instance=instance,
        )

    def load(
        self,
        run: str,
        *,
        snapshot_id: str | _Omitted = OMITTED,
        after_seq: int | _Omitted = OMITTED,
        limit: int | _Omitted = OMITTED,
        instance: str | _Omitted = OMITTED,
    ) -> R:
        """The newest compatible snapshot (or ``snapshot_id``'s) and a page of events."""
        return self._send(
            "load",
            run=run,
            snapshot_id=snapshot_id,
            after_seq=after_seq,
            limit=limit,
            instance=instance,
        )

    def list_snapshots(self, run: str, *, instance: str | _Omitted = OMITTED) -> R:
        return self._send("list_snapshots", run=run, instance=instance)

    def list_runs(
        self,
        *,
        after: str | _Omitted = OMITTED,
        limit: int | _Omitted = OMITTED,
        workflow: str | _Omitted = OMITTED,
        instance: str | _Omitted = OMITTED,
    ) -> R:
        """``{"runs": [...], "next_after", "has_more"}``: pass ``next_after`` as ``after``."""
        return self._send(
            "list_runs", after=after, limit=limit, workflow=workflow, instance=instance
        )

    def pin(self, run: str, snapshot_id: str, *, instance: str | _Omitted = OMITTED) -> R:
        return self._send("pin", run=run, snapshot_id=snapshot_id, instance=instance)

    def unpin(self, run: str, snapshot_id: str, *, instance: str | _Omitted = OMITTED) -> R:
        return self._send("unpin", run=run, snapshot_id=snapshot_id, instance=instance)

    def verify(self, run: str, *, instance: str | _Omitted = OMITTED) -> R:
        return self._send("verify", run=run, instance=instance)

    def audit(
        self,
        *,
        cursor: int | _Omitted = OMITTED,
        limit: int | _Omitted = OMITTED,
        instance: str | _Omitted = OMITTED,
    ) -> R:
        return self._send("audit", cursor=cursor, limit=limit, instance=instance)

    def savepoint_init(
        self,
        run: str,
        *,
        start_ms: int,
        interval_ms: int,
        entities: Mapping[str, Any],
        instance: str | _Omitted = OMITTED,
    ) -> R:
        return self._send(
            "savepoint_init",
            run=run,
            start_ms=start_ms,
            interval_ms=interval_ms,
            entities=dict(entities),
            instance=instance,
        )

    def savepoint_save(
        self,
        run: str,
        entity: str,
        timestamp_ms: int,
        state: Any,
        *,
        instance: str | _Omitted = OMITTED,
    ) -> R:
        return self._send(
            "savepoint_save",
            run=run,
            entity=entity,
            timestamp_ms=timestamp_ms,
            state=state,
            instance=instance,
        )

    def savepoint_ack(
        self, run: str, entity: str, timestamp_ms: int, *, instance: str | _Omitted = OMITTED
    ) -> R:
        return self._send(
            "savepoint_ack", run=run, entity=entity, timestamp_ms=timestamp_ms, instance=instance
        )

    def savepoint_load(
        self,
        run: str,
        *,
        resume: bool | _Omitted = OMITTED,
        instance: str | _Omitted = OMITTED,
    ) -> R:
        """``{"timestamp_ms", "entities"}``; ``resume=True`` restarts every entity from it."""
        return self._send("savepoint_load", run=run, resume=resume, instance=instance)
