"""The fs journal's batch framing (pure): what one append writes, and that any
change to its bytes is caught."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshotd.domain.errors import Corrupt
from snapshotd.journals.fs.framing import frame, last_lines, unframe, verify

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def batch_lines(first: int, data: list[object]) -> list[bytes]:
    return [
        orjson.dumps(
            {"seq": first + i, "type": "t", "data": d, "recorded_at": "2026-12-01T00:00:00Z"}
        )
        for i, d in enumerate(data)
    ]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2**40), st.lists(json_values, min_size=1, max_size=6))
def test_a_framed_batch_verifies_and_serves_its_lines_unchanged(
    first: int, data: list[object]
) -> None:
    lines = batch_lines(first, data)
    written = frame(lines, first)
    assert written.endswith(b"\n") and written.count(b"\n") == len(lines)
    raws = written[:-1].split(b"\n")
    assert last_lines(written) == [len(lines) - 1]
    assert verify(raws, first, "p", "seq") == [len(lines) - 1]
    served = [*raws[:-1], unframe(raws[-1])]
    assert served == lines
    assert all(isinstance(orjson.loads(raw), dict) for raw in raws)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 1000),
    st.lists(json_values, min_size=1, max_size=4),
    st.data(),
)
def test_any_changed_byte_is_caught(first: int, data: list[object], draw: st.DataObject) -> None:
    written = bytearray(frame(batch_lines(first, data), first))
    at = draw.draw(st.integers(0, len(written) - 2))
    written[at] = draw.draw(st.integers(0, 255).filter(lambda b: b != written[at]))
    with pytest.raises(Corrupt):
        verify(bytes(written[:-1]).split(b"\n"), first, "p", "seq")


def test_a_batch_in_the_wrong_place_is_caught() -> None:
    written = frame(batch_lines(5, [1, 2]), 5)
    with pytest.raises(Corrupt, match="line 6: not as written"):
        verify(written[:-1].split(b"\n"), 6, "p", "seq")
