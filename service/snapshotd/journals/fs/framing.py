"""Batch framing of the ``fs:`` journal's JSONL logs (pure; no file access).

One append writes one *batch*: its records, one JSON object per line, numbered
consecutively. The batch's last line carries one more member, written last::

    {"seq":7,...,"recorded_at":"..."}
    {"seq":8,...,"recorded_at":"...","crc":"1c291ca3"}

``crc`` is the CRC-32 (8 lowercase hex digits) of every byte of the batch before
those digits (its lines, their newlines, and the last line up to ``"crc":"``),
seeded with the batch's first number, so it also pins the batch to its place in
the file. The ``crc`` member is the batch's commit record: a batch whose last
line lacks it, or whose bytes do not match it, was torn by a crash before its
fsync (a crash cannot tear an earlier batch: appends are serialised and each is
fsynced before the next starts), so readers drop it whole and the next append
overwrites it. Anywhere else a mismatch is damage. Every line is still a JSON
object; served events leave the member out.
"""

from __future__ import annotations

import re
import zlib
from typing import Final

import orjson

from snapshotd.domain.errors import Corrupt

MARK: Final = b',"crc":"'
_DIGITS = 8
_HEX = b"0123456789abcdef"
_TAIL: Final = len(MARK) + _DIGITS + 2
"""Length of ``,"crc":"<8 hex>"}`` at the end of a batch's last line."""


def frame(lines: list[bytes], first: int) -> bytes:
    """The bytes one append writes: ``lines`` (JSON objects numbered from ``first``)
    with the commit member on the last one, newline-terminated."""
    body = b"\n".join(lines)[:-1] + MARK
    return body + b'%08x"}\n' % zlib.crc32(body, first & 0xFFFFFFFF)


def is_last(raw: bytes) -> bool:
    """Whether ``raw`` (one line, no newline) ends a batch."""
    return raw[-_TAIL : -_TAIL + len(MARK)] == MARK


_LAST_LINE_END = re.compile(rb',"crc":"[0-9a-f]{8}"}\n')
"""How a batch's last line ends. No other line can end so: an event line ends with
its ``recorded_at`` string, an audit line with its ``fields`` object, and JSON
holds no raw newline."""


def last_lines(data: bytes) -> list[int]:
    """Indexes of the lines of ``data`` (newline-terminated) that end a batch, found
    at C speed (no per-line Python work)."""
    ends: list[int] = []
    line = pos = 0
    for match in _LAST_LINE_END.finditer(data):
        line += data.count(b"\n", pos, match.end() - 1)
        ends.append(line)
        line += 1
        pos = match.end()
    return ends


def unframe(raw: bytes) -> bytes:
    """A batch's last line without its commit member."""
    return raw[:-_TAIL] + b"}"


def batch_ok(raws: list[bytes], first: int) -> bool:
    """Whether ``raws`` (whole lines, the last one ending the batch) are the batch
    numbered from ``first`` exactly as written."""
    blob = b"\n".join(raws)
    digits = blob[-_DIGITS - 2 : -2]
    if len(digits) != _DIGITS or digits.strip(_HEX) or blob[-2:] != b'"}' or not is_last(raws[-1]):
        return False
    return zlib.crc32(memoryview(blob)[: -_DIGITS - 2], first & 0xFFFFFFFF) == int(digits, 16)


def verify(
    raws: list[bytes], first: int, path: str, key: str, ends: list[int] | None = None
) -> list[int]:
    """Check whole batches ``raws`` numbered (by ``key``) from ``first``, whose last
    lines are at ``ends`` (found here when not given); returns ``ends``.

    Raises Corrupt naming the first line of a batch that does not match its commit
    member (or the line in it that is plainly not its record), or of trailing lines
    that no commit member covers.
    """
    if ends is None:
        ends = [index for index, raw in enumerate(raws) if is_last(raw)]
    start = 0
    for end in ends:
        if not batch_ok(raws[start : end + 1], first + start):
            bad = _first_wrong(raws[start : end + 1], first + start, key)
            raise Corrupt(
                f"{path}: line {bad}: not as written (batch of lines {first + start}-"
                f"{first + end} does not match its checksum)"
            )
        start = end + 1
    if start < len(raws):
        raise Corrupt(f"{path}: line {first + start}: not covered by a batch checksum")
    return ends


def _first_wrong(raws: list[bytes], first: int, key: str) -> int:
    """The first line of a damaged batch that is not a JSON object with its number
    (error path only); the batch's first line when each looks right."""
    for offset, raw in enumerate(raws):
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return first + offset
        if type(record) is not dict or record.get(key) != first + offset:
            return first + offset
    return first
