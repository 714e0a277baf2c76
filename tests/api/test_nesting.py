"""The nesting limit (64 levels, the request object being level 1) and reading the id of
lines orjson cannot parse: pure codec tests, no sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshotd.api import codec
from snapshotd.domain.validation import MAX_DEPTH


def nested(levels: int, leaf: bytes = b"1") -> bytes:
    """A JSON value ``levels`` arrays deep (0: the leaf itself)."""
    return b"[" * levels + leaf + b"]" * levels


def depth(value: Any) -> int:
    """Levels of arrays and objects in ``value`` (0 for a scalar), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def field_line(levels: int, request_id: int = 5) -> bytes:
    """An append whose extra field ``x`` makes the request ``levels`` deep."""
    return (
        b'{"op":"append","run":"r","events":[{"type":"t","data":1}],"x":'
        + nested(levels - 1)
        + b',"id":%d}' % request_id
    )


def data_line(levels: int) -> bytes:
    """An append whose event data makes the request ``levels`` deep (data sits at level 4)."""
    return (
        b'{"op":"append","id":7,"run":"r","events":[{"type":"t","data":'
        + nested(levels - 3)
        + b"}]}"
    )


@pytest.mark.parametrize("make", [field_line, data_line])
def test_sixty_four_levels_are_accepted(make: Any) -> None:
    assert depth(codec.parse(make(MAX_DEPTH))) == MAX_DEPTH


# 252-254: what orjson could still encode; 990+: what recursion broke; 1025+: what
# orjson cannot even parse.
@pytest.mark.parametrize("levels", [65, 66, 252, 253, 254, 300, 990, 1020, 1024, 1025, 5000])
@pytest.mark.parametrize(("make", "request_id"), [(field_line, 5), (data_line, 7)])
def test_deeper_is_bad_request_answered_with_the_id(
    make: Any, request_id: int, levels: int
) -> None:
    with pytest.raises(codec.FrameError, match=f"nested deeper than {MAX_DEPTH} levels") as info:
        codec.parse(make(levels))
    assert info.value.code == "bad_request"
    assert info.value.request_id == request_id
    assert info.value.answer


def test_deep_fire_and_forget_is_not_answered() -> None:
    line = b'{"op":"snapshot","run":"r","x":' + nested(3000) + b"}"
    with pytest.raises(codec.FrameError) as info:
        codec.parse(line)
    assert not info.value.answer
    assert info.value.instance == "default"


def test_brackets_inside_strings_do_not_count() -> None:
    text = "[{" * 200 + "\\\\" + "]" * 100
    line = orjson.dumps({"op": "append", "id": 1, "events": [{"type": "t", "data": text}]})
    assert codec.parse(line)["events"][0]["data"] == text
    assert not codec.too_deep(b'{"x":"' + b"[" * 500 + b'"}')


def test_savepoint_states_are_bounded_too() -> None:
    line = b'{"op":"savepoint_save","id":3,"run":"r","entity":"e","timestamp_ms":1,"state":'
    with pytest.raises(codec.FrameError, match="state is nested deeper") as info:
        codec.parse(line + nested(270) + b"}")
    assert info.value.request_id == 3
    assert codec.parse(line + nested(MAX_DEPTH - 1) + b"}")["state"]


@pytest.mark.parametrize(
    ("line", "request_id"),
    [
        (b'{"op":"append","id":5,"x":1e400}', 5),
        (b'{"op":"append","x":-1e999,"id":"a"}', "a"),
        (b'{"op":"append","id":6,"x":' + b"9" * 400 + b"}", 6),
        (b'{"id":9,"d":' + b"[1," * 3000 + b"1" + b"]" * 3000 + b"}", 9),
        (b'{"id":10,"d":[' + b'"]",{"a":[' * 2000 + b"0" + b"]}" * 2000 + b"]}", 10),
    ],
)
def test_lines_orjson_refuses_keep_their_id(line: bytes, request_id: object) -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.parse(line)
    assert info.value.request_id == request_id
    assert info.value.answer


@pytest.mark.parametrize(
    "line", [b'{"op": "ping"} x', b"{", b"[" * 2000, b'{"id":1}' + b"]" * 300, b"}" * 200]
)
def test_lines_that_are_no_object_get_a_null_id(line: bytes) -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.parse(line)
    assert info.value.request_id is None
    assert info.value.answer


def test_the_top_level_scan_is_bounded() -> None:
    # Past the token budget the id is not searched for: a null id, quickly.
    line = b'{"d":[' + b"[1]," * 30_000 + nested(2000) + b'],"id":4}'
    with pytest.raises(codec.FrameError) as info:
        codec.parse(line)
    assert info.value.request_id is None


json_leaves = st.none() | st.integers(-5, 5) | st.sampled_from(["a]", "[{", '"}', "\\"])


@st.composite
def spines(draw: st.DrawFn) -> Any:
    """A value with one chain of up to 90 containers and side branches (few draws: fast)."""
    value: Any = draw(json_leaves)
    levels = draw(st.integers(0, 90))
    arrays = draw(st.integers(0, 2**levels))
    sided = draw(st.integers(0, 2**levels))
    side = draw(st.lists(json_leaves | st.just([]) | st.just({"[": []}), max_size=2))
    for level in range(levels):
        branch = side if sided >> level & 1 else []
        value = [*branch, value] if arrays >> level & 1 else {"k]": value, "s": branch}
    return value


@settings(max_examples=200, deadline=None, derandomize=True)
@given(spines())
def test_too_deep_matches_the_parsed_depth(value: Any) -> None:
    line = orjson.dumps({"op": "append", "v": value})
    assert codec.too_deep(line) == (1 + depth(value) > MAX_DEPTH)
