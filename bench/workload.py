"""The benchmark's event data and its client-side fold, shared by both libraries.

Events are ``last_by_key`` events over a bounded key space, so a run's state
stops growing after the first few thousand events (~100 KB) however long its
history gets: the shape where snapshots pay off.
"""

from __future__ import annotations

from typing import Any

KEYS = 1000
VALUE_PAD = "x" * 70


def key(seq: int) -> str:
    return f"k{seq % KEYS:04d}"


def value(seq: int) -> str:
    return f"{seq:012d}{VALUE_PAD}"


def event_data(seq: int) -> dict[str, Any]:
    """The ``data`` of event ``seq`` (1-based): set one of the KEYS keys."""
    return {"key": key(seq), "value": value(seq)}


def fold_events(state: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply loaded events the way an application recovering its state would."""
    for event in events:
        data = event["data"]
        if data["value"] is None:
            state.pop(data["key"], None)
        else:
            state[data["key"]] = data["value"]
    return state
