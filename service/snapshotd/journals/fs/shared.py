"""What every ``fs:`` journal operation shares: worker-thread hops, the audit log
and documents (savepoint state) at the root."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import orjson

from snapshotd.domain.errors import Conflict, Corrupt, Unavailable
from snapshotd.domain.model import AuditEntry
from snapshotd.journals import records
from snapshotd.journals.base import Document
from snapshotd.journals.fs.codec import DOC_SUFFIX, entry_name
from snapshotd.journals.fs.files import Root
from snapshotd.journals.fs.log import JsonlLog
from snapshotd.journals.fs.runs import read_document, write_document

T = TypeVar("T")


class SharedFiles:
    """The root-level part of ``FsJournal``: set ``_root`` and ``_audit`` when open."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._given = os.fspath(path)
        self._root: Root | None = None
        self._audit: JsonlLog | None = None
        self._audit_lock = anyio.Lock()
        self._doc_lock = anyio.Lock()

    @property
    def description(self) -> str:
        return f"fs:{self._given}"

    def _shared(self) -> tuple[Root, JsonlLog]:
        if self._root is None or self._audit is None:
            raise Unavailable(f"journal {self.description} is not open")
        return self._root, self._audit

    async def _io(self, func: Callable[[], T]) -> T:
        """Run one whole blocking operation in a worker thread; OSError -> Unavailable."""
        self._shared()
        try:
            return await anyio.to_thread.run_sync(func)
        except OSError as exc:
            raise unavailable(exc) from exc

    # audit log ------------------------------------------------------------

    async def append_audit(self, kind: str, fields: dict[str, Any], now: datetime) -> int:
        _, log = self._shared()

        def write() -> int:
            cursor = log.tip[0] + 1
            return log.append(
                [records.dumps({"cursor": cursor, "at": now, "kind": kind, "fields": fields})]
            )

        async with self._audit_lock:
            return await self._io(write)

    async def read_audit(self, cursor: int, limit: int) -> list[AuditEntry]:
        _, log = self._shared()
        tip = log.tip

        def read() -> list[AuditEntry]:
            _, objects = log.read(cursor, limit, tip)
            try:
                return [
                    AuditEntry(o["cursor"], records.parse_time(o["at"]), o["kind"], o["fields"])
                    for o in objects
                ]
            except (KeyError, TypeError, ValueError):
                raise Corrupt(f"{log.path}: not an audit entry after cursor {cursor}") from None

        return await self._io(read)

    # documents ------------------------------------------------------------

    async def get_document(self, namespace: str, key: str) -> Document | None:
        root, _ = self._shared()
        parts = ("documents", entry_name(namespace), entry_name(key) + DOC_SUFFIX)
        return await self._io(partial(read_document, root, parts))

    async def put_document(
        self, namespace: str, key: str, body: bytes, expected_version: int | None
    ) -> int:
        root, _ = self._shared()
        parts = ("documents", entry_name(namespace), entry_name(key) + DOC_SUFFIX)

        def write() -> int:
            current = read_document(root, parts)
            current_version = None if current is None else current.version
            if current_version != expected_version:
                raise Conflict(f"document {namespace}/{key} changed concurrently")
            version = 1 if current_version is None else current_version + 1
            header = orjson.dumps({"namespace": namespace, "key": key, "version": version})
            write_document(root, parts, header + b"\n" + bytes(body))
            return version

        async with self._doc_lock:
            return await self._io(write)


def unavailable(exc: OSError) -> Unavailable:
    where = f" ({exc.filename})" if exc.filename else ""
    return Unavailable(f"fs journal: {exc.strerror or exc}{where}")
