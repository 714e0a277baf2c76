"""The NDJSON protocol codec of SPEC section 2: bytes in, request dicts out, and back.

Pure functions with no I/O, so framing rules are tested without sockets. A
request stays the plain dict orjson produced (the hot path creates no other
object); ``parse`` only guarantees ``op`` is a string, ``id`` is a string, int or
None and ``instance`` is a string (default ``"default"``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from snapshotd.domain import validation
from snapshotd.domain.errors import BadRequest

RequestId = str | int | None

_ENCODE_OPTS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE

# Fields the codec itself interprets; every other top-level field may carry a
# payload the journal stores, so its JSON values are checked here, once.
_ENVELOPE = frozenset(("op", "id", "instance"))

# Ops whose fields are all identifiers and flags checked by the op itself: the
# payload walk is skipped for them (``snapshot`` is the fire-and-forget hot path).
_NO_PAYLOAD = frozenset(("snapshot", "ping", "status"))

MAX_DEPTH = validation.MAX_DEPTH
_SHORTEST_TOO_DEEP = 2 * (MAX_DEPTH + 1)
"""Nesting deeper than MAX_DEPTH takes at least this many brackets: shorter lines skip the check."""
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_RUNS = re.compile(rb"\[+|\]+")
_OPEN = ord("[")
_TOP_LEVEL_TOKENS = 20_000
_QUOTE = ord('"')
_HUGE_NUMBER = re.compile(rb"-?[0-9]{300,}[0-9.eE+-]*|-?[0-9][0-9.]*[eE][+-]?[0-9]{3,}")
# Strings, runs of opening brackets, runs of closing brackets, anything else.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]+|[\]}]+|[^"\[\]{}]+|"')


class FrameError(BadRequest):
    """A line that cannot be handled as a request.

    ``request_id`` is the id that could be read; ``answer`` is False only for a
    readable object without an id (fire-and-forget: no response is sent);
    ``instance`` is the request's instance when it could be read, else ``-``.
    """

    def __init__(
        self,
        message: str,
        request_id: RequestId = None,
        *,
        answer: bool = True,
        instance: str = "-",
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.answer = answer
        self.instance = instance


def parse(line: bytes) -> dict[str, Any]:
    """Decode one line (without its newline) into a request dict.

    Raises FrameError (code ``bad_request``) for anything that is not a valid
    request object: invalid JSON or UTF-8, not an object, a bad ``id``, ``op`` or
    ``instance``, nesting deeper than MAX_DEPTH, or a payload the journal could not
    store exactly (integers outside signed 64 bits, strings with NUL).
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        # Up to its own limit (1024 levels) orjson reads any depth and the payload
        # walk below bounds it; a deeper line is told apart from plain bad JSON here.
        if len(line) >= _SHORTEST_TOO_DEEP and too_deep(line):
            raise _unreadable(line, f"request nested deeper than {MAX_DEPTH} levels") from None
        raise _unreadable(line, f"not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise FrameError("a request must be a JSON object")
    request_id = obj.get("id")
    if request_id is not None and (type(request_id) is not str and type(request_id) is not int):
        raise FrameError("id must be a string, an integer or null")
    answer = request_id is not None
    op = obj.get("op")
    instance = obj.get("instance")
    if type(op) is not str:
        readable = instance if type(instance) is str else "default" if instance is None else "-"
        raise FrameError("op must be a string", request_id, answer=answer, instance=readable)
    if instance is None:
        obj["instance"] = "default"
    elif type(instance) is not str:
        raise FrameError("instance must be a string", request_id, answer=answer)
    if op not in _NO_PAYLOAD:
        try:
            _check_payload(obj, line)
        except BadRequest as exc:
            raise FrameError(
                exc.message, request_id, answer=answer, instance=obj["instance"]
            ) from None
    return obj


def too_deep(line: bytes) -> bool:
    """True when ``line`` nests arrays and objects deeper than MAX_DEPTH (strings aside).

    Runs on the raw bytes before any parser, so depth never reaches orjson's limits
    or a recursive check; paid only by lines with more than MAX_DEPTH opening
    brackets. Strings are cut out and every other byte but brackets dropped; passes
    that remove innermost pairs (one level each, C speed) shrink a wide shape, then a
    scan over runs of brackets stops at the first level past the limit.
    """
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False
    # Without backslashes no quote is escaped: every other piece between quotes is a string.
    outside = b"".join(line.split(b'"')[::2]) if b"\\" not in line else _STRING.sub(b"", line)
    shape = outside.translate(_ONE_KIND, _NOT_BRACKETS)
    levels = 0
    while levels < MAX_DEPTH:
        inner = shape.replace(b"[]", b"")
        if len(inner) * 4 > len(shape) * 3:
            break
        shape = inner
        levels += 1
    depth = levels
    for run in _RUNS.finditer(shape):
        if run[0][0] == _OPEN:
            depth += len(run[0])
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= len(run[0])
    return False


def _unreadable(line: bytes, message: str) -> FrameError:
    """The error for a line orjson cannot read, with the request's id when it can be found.

    Grammatical JSON that orjson refuses (nesting past 1024 levels, numbers past
    a double's range) still names its id: its top level is read with nested values
    and huge numbers cut out. Only a line that is no object at all gets a null id.
    """
    top = _top_level(line)
    try:
        obj = None if top is None else orjson.loads(top)
    except orjson.JSONDecodeError:
        obj = None
    if type(obj) is not dict:
        return FrameError(message)
    request_id = obj.get("id")
    if request_id is not None and type(request_id) is not str and type(request_id) is not int:
        return FrameError(message)
    instance = obj.get("instance", "default")
    return FrameError(
        message,
        request_id,
        answer=request_id is not None,
        instance=instance if type(instance) is str else "-",
    )


def _top_level(line: bytes) -> bytes | None:
    """``line`` with every value nested in the top-level object, and every number too
    long for a double at its top level, replaced by ``0``.

    A token scan in which a run of brackets is one token, so its cost follows the
    line's tokens, not its depth, and is bounded (``_TOP_LEVEL_TOKENS``, ~10 ms).
    None when the line is not shaped like an object or the scan would cost more.
    """
    out: list[bytes] = []
    depth = 0
    for count, match in enumerate(_TOKENS.finditer(line)):
        if count == _TOP_LEVEL_TOKENS:
            return None
        token = match[0]
        first = token[0]
        if first in b"[{":
            if depth == 0:
                if first != ord("{"):
                    return None
                out.append(b"{")
                depth = 1
                token = token[1:]
            if token:
                if depth == 1:
                    out.append(b"0")
                depth += len(token)
        elif first in b"]}":
            depth -= len(token)
            if depth < 0:
                return None
            if depth == 0:
                out.append(b"}")
        elif depth <= 1:
            out.append(_HUGE_NUMBER.sub(b"0", token) if first != _QUOTE else token)
    return b"".join(out)


def _check_payload(obj: dict[str, Any], line: bytes) -> None:
    suspicious: list[str] = []
    for key, value in obj.items():
        if key in _ENVELOPE:
            continue
        if key == "events" and type(value) is list:
            # Only ``data`` is stored as given; the op checks the other event fields.
            for index, event in enumerate(value):
                if type(event) is dict and validation.json_value(
                    event.get("data"), f"events[{index}].data", level=4
                ):
                    suspicious.append(f"events[{index}].data")
        elif validation.json_value(value, key):
            suspicious.append(key)
    if suspicious:
        # orjson turned an out-of-range integer literal into a float somewhere:
        # re-read the raw text with exact integers and reject, never alter.
        validation.exact_integers(line, suspicious[0] if len(suspicious) == 1 else "request")


def encode_result(request_id: RequestId, result: Any) -> bytes:
    """A success line; ``result`` may hold ``orjson.Fragment``s (stored JSON passed through)."""
    return orjson.dumps({"id": request_id, "ok": True, "result": result}, option=_ENCODE_OPTS)


def encode_error(
    request_id: RequestId, code: str, message: str, details: dict[str, Any] | None = None
) -> bytes:
    """An error line; ``details`` are extra fields of the error object (``last_seq``)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error.update(details)
    return orjson.dumps({"id": request_id, "ok": False, "error": error}, option=_ENCODE_OPTS)


def encode_request(op: str, request_id: RequestId = None, **fields: Any) -> bytes:
    """A request line for clients; without ``request_id`` it is fire-and-forget."""
    body: dict[str, Any] = {"op": op, **fields}
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body, option=_ENCODE_OPTS)


def decode_response(line: bytes) -> dict[str, Any]:
    """A response line as a dict; ValueError when it is not a response object."""
    obj = orjson.loads(line)
    if type(obj) is not dict or "ok" not in obj:
        raise ValueError(f"not a snapshotd response: {line[:200]!r}")
    return obj
