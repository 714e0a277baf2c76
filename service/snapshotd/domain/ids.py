"""UUIDv7 snapshot ids: time-ordered, so ids sort roughly by creation."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import datetime

_lock = threading.Lock()
_last = (0, 0)


def uuid7(now: datetime) -> str:
    """A UUIDv7 (RFC 9562) for ``now``, monotonic within this process."""
    global _last
    ms = int(now.timestamp() * 1000)
    with _lock:
        last_ms, last_seq = _last
        if ms <= last_ms:
            ms, seq = last_ms, last_seq + 1
        else:
            seq = int.from_bytes(os.urandom(2), "big") & 0x3FF
        if seq > 0xFFF:
            ms, seq = ms + 1, 0
        _last = (ms, seq)
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))
