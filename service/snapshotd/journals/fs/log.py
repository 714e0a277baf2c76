"""The numbered JSONL logs of the ``fs:`` journal (a run's events, the audit log).

Everything here blocks and is called from worker threads by the adapter. OSError
propagates unchanged (the adapter translates it once); damaged data raises Corrupt
with a message naming the file and line.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import orjson

from snapshotd.domain.errors import Corrupt
from snapshotd.journals.fs.files import write_all

_CHUNK = 1 << 20
_TAIL_CHUNK = 1 << 16
_MAX_MARKS = 64


def _rfind_newline(fd: int, before: int) -> int:
    """Offset of the last ``\\n`` strictly before ``before``, or -1."""
    pos = before
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        chunk = os.pread(fd, pos - start, start)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return start + found
        pos = start
    return -1


def _count_newlines(fd: int, end: int) -> int:
    count = 0
    pos = 0
    while pos < end:
        chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
        if not chunk:
            break
        count += chunk.count(b"\n")
        pos += len(chunk)
    return count


_NOTHING_CHECKED = (0, 0, 0)
"""``check`` of an empty log: nothing to trust yet, but appends may be trusted."""


def _identity(fd: int) -> tuple[int, int, int]:
    """What tells whether a file changed: inode, size and modification time."""
    st = os.fstat(fd)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class JsonlLog:
    """An append-only file of JSON objects, one per line, numbered 1, 2, 3 ... by ``key``.

    Line N holds the record whose ``key`` is N, so a position is found by counting
    newlines (memchr speed) and only the lines returned are parsed. ``tip`` is
    ``(last number, byte offset just past its newline)``: bytes beyond it are a torn
    last line (or the remains of a failed write) that readers ignore and the next
    append cuts off. Appends must be serialised by the caller; reads may run
    concurrently with an append and see the tip they were given.
    """

    def __init__(self, path: str, key: str) -> None:
        self.path = path
        self.key = key
        self.tip: tuple[int, int] = (0, 0)
        self._dirty = False
        self._marks: dict[int, int] = {}
        self._marks_lock = threading.Lock()
        self._checked: tuple[int, int, int] | None = None

    # loading ----------------------------------------------------------------

    def load(self) -> None:
        """Find the tip from the end of the file without reading the rest of it.

        The last line is torn when it lacks its newline or does not parse; a torn
        line is dropped. A bad line before it is damage, reported as Corrupt.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.tip, self._dirty = (0, 0), False
            return
        try:
            size = os.fstat(fd).st_size
            end = _rfind_newline(fd, size) + 1
            torn = end < size
            number = self._last_number(fd, end)
            if number is None and not torn:
                end = _rfind_newline(fd, end - 1) + 1
                torn = True
                number = self._last_number(fd, end)
            if number is None:
                raise self._corrupt_at(fd, end, "not a valid record")
            if end > 0:
                start = _rfind_newline(fd, end - 1) + 1
                previous = self._last_number(fd, start)
                if previous is None:
                    raise self._corrupt_at(fd, start, "not a valid record")
                if number != previous + 1:
                    raise self._corrupt_at(fd, end, f"expected {self.key} {previous + 1}")
        finally:
            os.close(fd)
        self.tip = (number, end)
        self._dirty = torn
        with self._marks_lock:
            self._marks.clear()

    def check(self, fields: tuple[str, ...] = ()) -> None:
        """Parse every line up to the tip: Corrupt naming the first bad one.

        ``load`` reads only the end of the file, so damage further up would surface
        only when a read reaches it; this one pass (after ``load``) finds it first.
        A line is bad when it is not a JSON object numbered in sequence or lacks one
        of ``fields``. Bytes beyond the tip (a torn last line) are not looked at.
        """
        last, end = self.tip
        if end == 0:
            self._checked = _NOTHING_CHECKED
            return
        expected = 1
        offset = 0
        pending = b""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            identity = _identity(fd)
            while offset < end:
                chunk = os.pread(fd, min(_CHUNK, end - offset), offset)
                if not chunk:
                    break
                offset += len(chunk)
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                self._validate(lines, expected, fields)
                expected += len(lines)
        finally:
            os.close(fd)
        if pending or expected != last + 1:
            raise Corrupt(f"{self.path}: line {expected}: missing or truncated")
        self._checked = identity

    def _last_number(self, fd: int, end: int) -> int | None:
        """Number of the complete line ending at ``end`` (0 for an empty file), None if bad."""
        if end == 0:
            return 0
        start = _rfind_newline(fd, end - 1) + 1
        try:
            record = orjson.loads(os.pread(fd, end - 1 - start, start))
        except orjson.JSONDecodeError:
            return None
        number = record.get(self.key) if isinstance(record, dict) else None
        return number if type(number) is int and number > 0 else None

    def _corrupt_at(self, fd: int, end: int, why: str) -> Corrupt:
        """Corrupt naming the line that ends at ``end`` (counts newlines: error path only)."""
        line = _count_newlines(fd, end)
        return Corrupt(f"{self.path}: line {line}: {why}")

    # appending --------------------------------------------------------------

    def append(self, payload: bytes, count: int) -> int:
        """Write ``count`` complete lines at the tip with one write and one fsync.

        On failure the file is cut back to the tip (best effort) so no partial
        batch can surface later; the next append cuts again if that failed too.
        """
        last, end = self.tip
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                if self._dirty:
                    os.ftruncate(fd, end)
                checked = self._checked
                self._checked = None
                write_all(fd, payload, end)
                os.fsync(fd)
                if checked is not None and checked[1] == end:
                    self._checked = _identity(fd)
            except BaseException:
                self._dirty = True
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                    os.fsync(fd)
                raise
        finally:
            os.close(fd)
        self._dirty = False
        self.tip = (last + count, end + len(payload))
        self._mark(last, end)
        return last + count

    # reading ----------------------------------------------------------------

    def read(
        self, after: int, limit: int, tip: tuple[int, int], *, parse: bool = True
    ) -> tuple[list[bytes], list[dict[str, Any]]]:
        """Lines numbered ``after+1 ..`` (at most ``limit``, up to ``tip``) and their objects.

        Each line is returned as stored (without its newline). With ``parse`` each is
        also decoded and checked (a line that does not parse or carries the wrong
        number raises Corrupt naming the line). Without it (lines passed through to
        a client) they are parsed only when the file changed since ``check`` other
        than by this process's appends (size or mtime differ: someone else wrote);
        otherwise only the first and last line's numbers are checked, which catches
        a misplaced read. Returns no objects then.
        """
        last, end = tip
        after = max(after, 0)
        if after >= last or limit <= 0:
            return [], []
        want = min(limit, last - after)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            parse = parse or self._checked is None or _identity(fd) != self._checked
            start = self._locate(fd, after, tip)
            raws = self._collect(fd, start, end, want, after)
        finally:
            os.close(fd)
        if parse:
            objects = self._validate(raws, after + 1)
        else:
            objects = []
            if raws:
                self._check_numbers(raws, after + 1)
        self._mark(after + len(raws), start + sum(map(len, raws)) + len(raws))
        return raws, objects

    def _check_numbers(self, raws: list[bytes], first: int) -> None:
        for index in (0, len(raws) - 1):
            expected = first + index
            prefix = b'{"%s":%d,' % (self.key.encode(), expected)
            if not raws[index].startswith(prefix):
                self._validate(raws[index : index + 1], expected)

    def _locate(self, fd: int, after: int, tip: tuple[int, int]) -> int:
        """Byte offset where line ``after+1`` starts, from the nearest known position."""
        last, end = tip
        with self._marks_lock:
            base = max((n for n in self._marks if n <= after), default=0)
            base_offset = self._marks.get(base, 0)
        if last - after < after - base:
            return self._offset_from_end(fd, end, last - after)
        return self._skip_lines(fd, base_offset, after - base, end)

    def _offset_from_end(self, fd: int, end: int, lines: int) -> int:
        """Start of the last ``lines`` lines before ``end``, scanning backwards in chunks."""
        remaining = lines + 1
        pos = end
        size = _TAIL_CHUNK
        while pos > 0:
            start = max(0, pos - size)
            chunk = os.pread(fd, pos - start, start)
            found = chunk.count(b"\n")
            if found >= remaining:
                idx = len(chunk)
                for _ in range(remaining):
                    idx = chunk.rfind(b"\n", 0, idx)
                return start + idx + 1
            remaining -= found
            pos = start
            size = min(size * 2, _CHUNK)
        raise Corrupt(f"{self.path}: fewer lines than records")

    def _skip_lines(self, fd: int, offset: int, lines: int, end: int) -> int:
        while lines > 0:
            chunk = os.pread(fd, min(_CHUNK, end - offset), offset)
            if not chunk:
                raise Corrupt(f"{self.path}: fewer lines than records")
            found = chunk.count(b"\n")
            if found < lines:
                lines -= found
                offset += len(chunk)
                continue
            pos = -1
            for _ in range(lines):
                pos = chunk.find(b"\n", pos + 1)
            return offset + pos + 1
        return offset

    def _collect(self, fd: int, offset: int, end: int, want: int, after: int) -> list[bytes]:
        raws: list[bytes] = []
        pending = b""
        chunk_size = min(_CHUNK, max(_TAIL_CHUNK, want * 256))
        while len(raws) < want and offset < end:
            chunk = os.pread(fd, min(chunk_size, end - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            raws.extend(lines[: want - len(raws)])
        if len(raws) < want:
            raise Corrupt(f"{self.path}: line {after + len(raws) + 1}: missing or truncated")
        return raws

    def _validate(
        self, raws: list[bytes], first: int, fields: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Parse lines numbered from ``first``: Corrupt naming the first that is not a
        JSON object with the right number and every one of ``fields``."""
        key = self.key
        objects: list[dict[str, Any]] = []
        append = objects.append
        expected = first
        loads = orjson.loads
        for raw in raws:
            try:
                record = loads(raw)
            except orjson.JSONDecodeError:
                raise Corrupt(f"{self.path}: line {expected}: not valid JSON") from None
            if type(record) is not dict or record.get(key) != expected:
                raise Corrupt(f"{self.path}: line {expected}: expected {key} {expected}")
            for name in fields:
                if name not in record:
                    raise Corrupt(f"{self.path}: line {expected}: no {name!r}")
            append(record)
            expected += 1
        return objects

    def _mark(self, number: int, offset: int) -> None:
        """Remember where line ``number+1`` starts (a small FIFO of recent positions)."""
        if number <= 0:
            return
        with self._marks_lock:
            self._marks[number] = offset
            if len(self._marks) > _MAX_MARKS:
                del self._marks[next(iter(self._marks))]
