"""The numbered, batch-framed JSONL logs of the ``fs:`` journal (a run's events, the audit log).

Everything here blocks and is called from worker threads by the adapter. OSError
propagates unchanged (the adapter translates it once); damaged data raises Corrupt
with a message naming the file and line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

import orjson

from snapshotd.domain.errors import Corrupt
from snapshotd.journals.fs.files import Root, write_all
from snapshotd.journals.fs.framing import frame, is_last, last_lines, unframe, verify

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
    """An append-only file of JSON objects, one per line, numbered 1, 2, 3 ... by ``key``,
    written in checksummed batches (see ``framing``).

    Line N holds the record whose ``key`` is N, so a position is found by counting
    newlines (memchr speed). Every read checks the batches it touches against their
    checksums, so nothing served differs from what was written. ``tip`` is ``(last
    number, byte offset just past its newline)``, always at the end of a batch:
    bytes beyond it are a torn batch (or the remains of a failed write) that readers
    ignore and the next append cuts off. Appends must be serialised by the caller;
    reads may run concurrently with an append and see the tip they were given.

    When the file changes other than by this process's appends (its inode, size or
    modification time differ from what this object last saw), the next read checks
    the whole file before answering, so damage anywhere is reported at once.
    """

    def __init__(self, root: Root, parts: tuple[str, ...], key: str) -> None:
        self.root = root
        self.parts = parts
        self.path = root.join(*parts)
        self.key = key
        self.tip: tuple[int, int] = (0, 0)
        self._dirty = False
        self._marks: dict[int, int] = {}
        self._marks_lock = threading.Lock()
        self._checked: tuple[int, int, int] | None = None

    def _open(self, flags: int) -> int:
        return self.root.open(self.parts, flags)

    # loading ----------------------------------------------------------------

    def load(self) -> None:
        """Find the tip from the end of the file without reading the rest of it.

        Bytes after the last complete line, and a last batch cut short by a crash,
        are a torn batch: dropped. Any other bad batch is damage, reported as Corrupt.
        """
        try:
            fd = self._open(os.O_RDONLY)
        except FileNotFoundError:
            self.tip, self._dirty = (0, 0), False
            return
        try:
            size = os.fstat(fd).st_size
            end = _rfind_newline(fd, size) + 1
            torn = end < size
            number, start = self._last_batch(fd, end, torn_ok=True)
            if number is None:
                torn, end = True, start
                number, _ = self._last_batch(fd, end, torn_ok=False)
        finally:
            os.close(fd)
        self.tip = (number or 0, end)
        self._dirty = torn
        with self._marks_lock:
            self._marks.clear()

    def _last_batch(self, fd: int, end: int, *, torn_ok: bool) -> tuple[int | None, int]:
        """The batch whose last line ends at ``end``: its last number (0 at the file's
        start) and its start offset.

        When its bytes do not match: (None, start) if ``torn_ok`` and the batch looks
        cut short by a crash (its last line lacks the commit member, or it holds NUL
        bytes: pages a power loss never wrote), else Corrupt. A committed batch whose
        bytes changed is damage, not a tear: acknowledged events never vanish quietly.
        """
        if end == 0:
            return 0, 0
        start, _ = _batch_start(fd, _rfind_newline(fd, end - 1) + 1)
        blob = os.pread(fd, end - 1 - start, start)
        raws = blob.split(b"\n")
        try:
            record = orjson.loads(raws[-1])
        except orjson.JSONDecodeError:
            record = None
        number = record.get(self.key) if isinstance(record, dict) else None
        try:
            if type(number) is not int or number < len(raws):
                raise self._corrupt_at(fd, start, "not a batch numbered in sequence")
            verify(raws, number - len(raws) + 1, self.path, self.key)
        except Corrupt:
            if torn_ok and (not is_last(raws[-1]) or b"\0" in blob):
                return None, start
            raise
        return number, start

    def check(self) -> None:
        """Check every batch up to the tip: Corrupt naming the first bad line.

        ``load`` reads only the end of the file, so damage further up would surface
        only when a read reaches it; this one pass (after ``load``) finds it first.
        """
        fd = self._open(os.O_RDONLY)
        try:
            self._check_fd(fd)
        finally:
            os.close(fd)

    def _check_fd(self, fd: int) -> None:
        last, end = self.tip
        identity = _identity(fd)
        expected = 1
        offset = 0
        pending = b""
        batch: list[bytes] = []
        while offset < end:
            chunk = os.pread(fd, min(_CHUNK, end - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            pending = data[cut:]
            ends = [len(batch) + index for index in last_lines(data[:cut])]
            batch.extend(data[: cut - 1].split(b"\n") if cut else ())
            done = ends[-1] + 1 if ends else 0
            verify(batch[:done], expected, self.path, self.key, ends)
            expected += done
            del batch[:done]
        if pending or batch or expected != last + 1:
            raise Corrupt(f"{self.path}: line {expected}: missing or truncated")
        self._checked = identity

    def _corrupt_at(self, fd: int, end: int, why: str) -> Corrupt:
        """Corrupt naming the line after ``end`` (counts newlines: error path only)."""
        line = _count_newlines(fd, end) + 1
        return Corrupt(f"{self.path}: line {line}: {why}")

    # appending --------------------------------------------------------------

    def append(self, lines: list[bytes]) -> int:
        """Write ``lines`` (JSON objects numbered from the tip on) as one batch with
        one write and one fsync; returns the new last number.

        On failure the file is cut back to the tip (best effort) so no partial
        batch can surface later; the next append cuts again if that failed too.
        Were the cut lost too (a crash), the batch lacks its commit and is torn.
        """
        last, end = self.tip
        payload = frame(lines, last + 1)
        fd = self._open(os.O_WRONLY | os.O_CREAT)
        try:
            try:
                if self._dirty:
                    os.ftruncate(fd, end)
                checked = self._checked
                self._checked = None
                _fault(fd, payload, end)
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
        self.tip = (last + len(lines), end + len(payload))
        self._mark(last, end)
        return last + len(lines)

    # reading ----------------------------------------------------------------

    def read(
        self, after: int, limit: int, tip: tuple[int, int], *, parse: bool = True
    ) -> tuple[list[bytes], list[dict[str, Any]]]:
        """Lines numbered ``after+1 ..`` (at most ``limit``, up to ``tip``) and their objects.

        Each line is returned as written minus the commit member (so as served),
        after the batches holding it were checked; with ``parse`` each is also
        decoded. Raises Corrupt naming the line when a batch does not match.
        """
        last, end = tip
        after = max(after, 0)
        try:
            fd = self._open(os.O_RDONLY)
        except FileNotFoundError:
            if last == 0:
                return [], []
            raise
        try:
            if self._checked is not None and _identity(fd) != self._checked:
                self._check_fd(fd)
            if after >= last or limit <= 0:
                return [], []
            want = min(limit, last - after)
            start = self._locate(fd, after, tip)
            batch_start, back = _batch_start(fd, start)
            raws, ends, stop = self._collect(fd, batch_start, end, back + want, after - back)
        finally:
            os.close(fd)
        verify(raws, after - back + 1, self.path, self.key, ends)
        served = raws[back : back + want]
        for index in ends:
            if back <= index < back + want:
                served[index - back] = unframe(raws[index])
        rest = raws[back + want :]  # the end of the last batch, past the lines wanted
        self._mark(after + want, stop - sum(map(len, rest)) - len(rest))
        return served, list(map(orjson.loads, served)) if parse else []

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

    def _collect(
        self, fd: int, offset: int, end: int, want: int, before: int
    ) -> tuple[list[bytes], list[int], int]:
        """At least ``want`` lines from ``offset`` (numbered from ``before + 1``), and
        the rest of the batch holding the last of them; with the indexes of the
        batches' last lines and the offset just past them."""
        raws: list[bytes] = []
        ends: list[int] = []
        pending = b""
        chunk_size = min(_CHUNK, max(_TAIL_CHUNK, want * 256))
        while offset < end:
            chunk = os.pread(fd, min(chunk_size, end - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            pending = data[cut:]
            ends.extend(len(raws) + index for index in last_lines(data[:cut]))
            raws.extend(data[: cut - 1].split(b"\n") if cut else ())
            if ends and ends[-1] >= want - 1:
                last = next(index for index in ends if index >= want - 1)
                dropped = raws[last + 1 :]
                del raws[last + 1 :]
                stop = offset - len(pending) - sum(map(len, dropped)) - len(dropped)
                return raws, [index for index in ends if index <= last], stop
        raise Corrupt(f"{self.path}: line {before + len(raws) + 1}: missing or truncated")

    def _mark(self, number: int, offset: int) -> None:
        """Remember where line ``number+1`` starts (a small FIFO of recent positions)."""
        if number <= 0:
            return
        with self._marks_lock:
            self._marks[number] = offset
            if len(self._marks) > _MAX_MARKS:
                del self._marks[next(iter(self._marks))]


def _batch_start(fd: int, pos: int) -> tuple[int, int]:
    """Where the batch holding the line that starts at ``pos`` begins, and how many
    lines lie between (scanning back to the previous batch's last line)."""
    size = 4096
    while True:
        low = max(0, pos - size)
        lines = os.pread(fd, pos - low, low).split(b"\n")
        lines.pop()
        complete = lines if low == 0 else lines[1:]
        for back, raw in enumerate(reversed(complete)):
            if is_last(raw):
                return pos - sum(len(x) + 1 for x in complete[len(complete) - back :]), back
        if low == 0:
            return 0, len(complete)
        size *= 4


_FAULT = os.environ.get("FAULT_INJECT_FS")
"""``torn-append`` (tests only): an append writes its batch's lines but the last,
then the process kills itself, as a crash before the write completed or a power
loss before the fsync could leave the file."""


def _fault(fd: int, payload: bytes, offset: int) -> None:
    if _FAULT == "torn-append" and payload.count(b"\n") > 1:
        write_all(fd, payload[: payload.rindex(b"\n", 0, len(payload) - 1) + 1], offset)
        os.kill(os.getpid(), signal.SIGKILL)
