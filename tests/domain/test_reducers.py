"""Built-in reducers, reducer lookup and ``fold`` (SPEC section 1, RFC 7396 section 3)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from snapshotd.domain.errors import ConfigError, ReducerError
from snapshotd.domain.model import Event
from snapshotd.domain.reducers import (
    BUILTIN,
    apply_merge_patch,
    fold,
    last_by_key,
    merge_patch,
    resolve,
    steps,
)

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def events(*data: Any, type_: str = "t") -> list[Event]:
    return [Event(i + 1, type_, d, T0) for i, d in enumerate(data)]


def test_steps_keeps_every_event_by_seq() -> None:
    state = fold(steps, None, events({"a": 1}, [2], None))
    assert state == {
        "steps": {
            "1": {"type": "t", "data": {"a": 1}},
            "2": {"type": "t", "data": [2]},
            "3": {"type": "t", "data": None},
        }
    }


def test_last_by_key_sets_and_deletes() -> None:
    state = fold(
        last_by_key,
        None,
        events(
            {"key": "a", "value": 1},
            {"key": "b", "value": {"x": [1]}},
            {"key": "a", "value": 2},
            {"key": "b", "value": None},
            {"key": "c"},
        ),
    )
    assert state == {"a": 2}


@pytest.mark.parametrize(
    "data",
    [{"value": 1}, {"key": 7, "value": 1}, {"key": None}, "key", ["key", "v"], None],
    ids=["missing", "int", "null", "string", "list", "none"],
)
def test_last_by_key_without_string_key_is_a_reducer_error(data: Any) -> None:
    with pytest.raises(ReducerError, match="event 2"):
        fold(last_by_key, None, events({"key": "ok", "value": 1}, data))


# RFC 7396 section 3, "Example Test Cases": (original, patch, result).
RFC7396_CASES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC7396_CASES)
def test_merge_patch_rfc7396_examples(original: Any, patch: Any, result: Any) -> None:
    frozen_patch = copy.deepcopy(patch)
    assert apply_merge_patch(copy.deepcopy(original), patch) == result
    assert patch == frozen_patch
    assert merge_patch(copy.deepcopy(original), Event(1, "p", patch, T0)) == result


def test_merge_patch_starts_from_an_empty_object() -> None:
    assert fold(merge_patch, None, events({"a": {"b": 1}}, {"a": {"c": 2}})) == {
        "a": {"b": 1, "c": 2}
    }
    assert fold(merge_patch, None, events({"a": None})) == {}


def test_fold_wraps_any_reducer_failure() -> None:
    def broken(state: Any, event: Event) -> Any:
        raise ValueError("boom")

    with pytest.raises(ReducerError, match="ValueError: boom"):
        fold(broken, None, events(1))


def test_resolve_builtin_and_module_function() -> None:
    for name, reducer in BUILTIN.items():
        assert resolve(name) is reducer
    assert resolve("snapshotd.domain.reducers:steps") is steps


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "not built in"),
        ("no_such_module_xyz:f", "cannot import"),
        ("snapshotd.domain.reducers:missing", "no attribute"),
        ("snapshotd.domain.reducers:DEFAULT_REDUCER", "not callable"),
    ],
)
def test_resolve_failures_are_config_errors(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(name)
