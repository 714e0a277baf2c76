"""Checks on identifiers and event payloads (SPEC section 1), shared by every entry point.

Every check raises BadRequest with a message naming the field, so a client sees
exactly what was wrong and the journal never stores an altered value.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from snapshotd.domain.errors import BadRequest

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects in a request, the request object being level 1
(SPEC section 2): far below what any parser or encoder in the path refuses."""
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_FLOAT_INT_LIMIT = float(2**63)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def run_id(value: object, field: str = "run") -> str:
    """A run id: 1-200 bytes of UTF-8, no NUL, no control characters."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"{field} is not valid Unicode") from None
    if not 1 <= size <= 200:
        raise BadRequest(f"{field} must be 1-200 bytes of UTF-8")
    if _has_control(value):
        raise BadRequest(f"{field} must not contain NUL or control characters")
    return value


def name(value: object, field: str) -> str:
    """A workflow, version or event type: 1-128 characters, no NUL."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    if not 1 <= len(value) <= 128:
        raise BadRequest(f"{field} must be 1-128 characters")
    if "\x00" in value:
        raise BadRequest(f"{field} must not contain NUL")
    _check_unicode(value, field)
    return value


def label(value: object, field: str = "label") -> str:
    """A snapshot label: 1-128 characters, no NUL or control characters (shown in tables)."""
    text = name(value, field)
    if _has_control(text):
        raise BadRequest(f"{field} must not contain control characters")
    return text


def lease(value: object, field: str = "lease") -> str:
    """A lease token: 1-200 bytes of UTF-8 without NUL."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"{field} is not valid Unicode") from None
    if not 1 <= size <= 200 or "\x00" in value:
        raise BadRequest(f"{field} must be 1-200 bytes of UTF-8 without NUL")
    return value


def optional_lease(value: object, field: str = "lease") -> str | None:
    return None if value is None else lease(value, field)


def integer(
    value: object, field: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer field (never a bool, never a float) within optional bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field} must be an integer")
    if minimum is not None and value < minimum:
        raise BadRequest(f"{field} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise BadRequest(f"{field} must be <= {maximum}")
    return value


def _check_unicode(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{field} is not valid Unicode") from None


def json_value(value: Any, field: str = "data", level: int = 2) -> bool:
    """Reject values the journal could not store exactly, or nested too deep.

    Integers must fit in signed 64 bits, strings must be valid Unicode without NUL,
    and arrays and objects may nest to MAX_DEPTH, ``level`` being the level ``value``
    sits at (a request's field: 2, the request object being 1). Returns True when
    the value holds a float of integer magnitude >= 2**63: orjson turns
    out-of-range integer literals into such floats, so the caller must re-check the
    raw text (see ``exact_integers``). Walks level by level, never recursively.
    """
    suspicious = False
    current = [value]
    while current:
        below: list[Any] = []
        for item in current:
            if isinstance(item, str):
                if "\x00" in item:
                    raise BadRequest(f"{field} contains a string with NUL")
                if not item.isascii():
                    _check_unicode(item, field)
            elif isinstance(item, dict):
                for key, sub in item.items():
                    if "\x00" in key:
                        raise BadRequest(f"{field} contains a key with NUL")
                    if not key.isascii():
                        _check_unicode(key, field)
                    below.append(sub)
            elif isinstance(item, list):
                below.extend(item)
            elif isinstance(item, bool) or item is None:
                continue
            elif isinstance(item, int):
                if not INT64_MIN <= item <= INT64_MAX:
                    raise BadRequest(f"{field} contains an integer outside signed 64 bits")
            elif isinstance(item, float):
                if abs(item) >= _FLOAT_INT_LIMIT and item.is_integer():
                    suspicious = True
            else:
                raise BadRequest(f"{field} contains a value that is not JSON")
        if below and level >= MAX_DEPTH:
            # ``below`` holds the children of containers at ``level``: a container
            # among them would sit deeper than MAX_DEPTH.
            for item in below:
                if isinstance(item, dict | list):
                    raise BadRequest(f"{field} is nested deeper than {MAX_DEPTH} levels")
        current = below
        level += 1
    return suspicious


def exact_integers(raw: bytes | str, field: str = "request") -> None:
    """Slow path: parse ``raw`` with exact integers and reject any outside int64."""

    def parse_int(text: str) -> int:
        number = int(text)
        if not INT64_MIN <= number <= INT64_MAX:
            raise BadRequest(f"{field} contains an integer outside signed 64 bits")
        return number

    try:
        json.loads(raw, parse_int=parse_int)
    except ValueError as exc:
        raise BadRequest(f"{field} is not valid JSON: {exc}") from None
