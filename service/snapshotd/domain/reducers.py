"""Reducers fold events into state: ``fold(state, event) -> state``, state starting as None.

Built-in reducers may update the state they are given in place: compaction always
folds into a freshly decoded copy, so no caller ever sees a shared state change.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

from snapshotd.domain.errors import ConfigError, ReducerError
from snapshotd.domain.model import Event

Reducer = Callable[[Any, Event], Any]

ENTRY_POINT_GROUP = "snapshotd.reducers"
DEFAULT_REDUCER = "steps"


def steps(state: Any, event: Event) -> Any:
    """Keep every event by seq: the memoised step log of a durable workflow."""
    if state is None:
        state = {"steps": {}}
    state["steps"][str(event.seq)] = {"type": event.type, "data": event.data}
    return state


def last_by_key(state: Any, event: Event) -> Any:
    """``{"key": K, "value": V}`` events build ``{K: V}``; ``V == null`` deletes ``K``."""
    data = event.data
    if not isinstance(data, dict) or not isinstance(data.get("key"), str):
        raise ReducerError(f"last_by_key: event {event.seq} has no string 'key'")
    if state is None:
        state = {}
    value = data.get("value")
    if value is None:
        state.pop(data["key"], None)
    else:
        state[data["key"]] = value
    return state


def merge_patch(state: Any, event: Event) -> Any:
    """Apply the event's data as an RFC 7396 JSON merge patch."""
    return apply_merge_patch({} if state is None else state, event.data)


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 MergePatch(target, patch); updates ``target`` in place when it is an object."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = apply_merge_patch(target.get(key), value)
    return target


BUILTIN: dict[str, Reducer] = {
    "steps": steps,
    "last_by_key": last_by_key,
    "merge_patch": merge_patch,
}


def resolve(name: str) -> Reducer:
    """Find a reducer by name: built-in, ``MODULE:FUNCTION``, or entry point.

    Called at start-up so that a missing reducer fails fast with ConfigError.
    """
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" in name:
        return _import_callable(name, "reducer")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            loaded = ep.load()
            if not callable(loaded):
                raise ConfigError(f"reducer {name!r}: entry point is not callable")
            return loaded  # type: ignore[no-any-return]
    raise ConfigError(
        f"reducer {name!r} is not built in ({', '.join(BUILTIN)}), not MODULE:FUNCTION, "
        f"and not registered in the entry-point group {ENTRY_POINT_GROUP!r}"
    )


def _import_callable(spec: str, what: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name!r}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{what} {spec!r}: {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ConfigError(f"{what} {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNCTION`` for config hooks such as ``savepoint_upgrade``."""
    if ":" not in spec:
        raise ConfigError(f"{what} {spec!r} must be MODULE:FUNCTION")
    return _import_callable(spec, what)


def fold(reducer: Reducer, state: Any, events: Iterable[Event]) -> Any:
    """Fold ``events`` into ``state``; any reducer failure becomes ReducerError."""
    try:
        for event in events:
            state = reducer(state, event)
    except ReducerError:
        raise
    except Exception as exc:
        raise ReducerError(f"reducer failed: {type(exc).__name__}: {exc}") from exc
    return state
