"""Delta chains in the domain: the `steps` codec, checksums chained link to link, plans."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshotd.domain import chains, compaction
from snapshotd.domain.errors import Corrupt
from snapshotd.domain.model import Event, SnapshotMeta
from snapshotd.domain.reducers import fold, steps
from tests.domain.test_invariant import DATA

T0 = datetime(2024, 5, 1, tzinfo=UTC)
CODEC = chains.StepsCodec()


def events(data: list[object], start: int = 1) -> list[Event]:
    return [Event(start + i, f"t{i % 3}", d, T0) for i, d in enumerate(data)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(DATA["steps"], max_size=4), max_size=6))
def test_steps_deltas_splice_into_the_bytes_of_the_folded_state(
    batches: list[list[object]],
) -> None:
    """Any split of the history into deltas, merged in any grouping, gives exactly
    the encoded fold, and the size is known from the sizes alone."""
    whole = compaction.encode_state(None)
    seq = 1
    folded: list[Event] = []
    deltas: list[bytes] = []
    size = len(whole)
    for batch in batches:
        tail = events(batch, seq)
        seq += len(tail)
        folded += tail
        delta = CODEC.delta(tail)
        size = CODEC.size(size, len(delta))
        deltas.append(delta)
        expected = compaction.encode_state(fold(steps, None, folded))
        assert CODEC.apply(whole, deltas) == expected
        assert size == len(expected)
    merged = b""
    for delta in deltas:
        merged = CODEC.merge(merged, delta)
    assert CODEC.apply(whole, [merged]) == compaction.encode_state(fold(steps, None, folded))


def test_steps_delta_on_something_else_is_corrupt() -> None:
    with pytest.raises(Corrupt):
        CODEC.apply(b'{"a":1}', [CODEC.delta(events([1]))])
    assert CODEC.apply(b'{"a":1}', [b""]) == b'{"a":1}'


def meta(
    sid: str,
    *,
    base: SnapshotMeta | None = None,
    payload: bytes = b"{}",
    size: int | None = None,
    through: int = 1,
) -> SnapshotMeta:
    return SnapshotMeta(
        snapshot_id=sid,
        run_id="r",
        through_seq=through,
        version="v1",
        reducer="steps",
        format_version=1,
        size_bytes=len(payload) if size is None else size,
        checksum=chains.link_checksum(None if base is None else base.checksum, payload),
        kind="auto",
        pinned=False,
        created_at=T0,
        expires_at=None,
        base_id=None if base is None else base.snapshot_id,
        stored_bytes=None if base is None else len(payload),
    )


def test_checksums_chain_link_to_link() -> None:
    whole = meta("a", payload=b"x" * 100)
    delta = meta("b", base=whole, payload=b"yy", size=103, through=2)
    chains.verify_link(whole, b"x" * 100, None)
    chains.verify_link(delta, b"yy", whole)
    with pytest.raises(Corrupt, match="checksum"):
        chains.verify_link(delta, b"yz", whole)
    other = replace(whole, checksum=chains.link_checksum(None, b"z" * 100))
    with pytest.raises(Corrupt, match="checksum"):  # the base changed under the delta
        chains.verify_link(delta, b"yy", replace(other, snapshot_id="a"))
    with pytest.raises(Corrupt, match="missing"):
        chains.verify_link(delta, b"yy", None)
    with pytest.raises(Corrupt, match="format_version"):
        chains.verify_link(replace(whole, format_version=9), b"x" * 100, None)


def test_chain_of_walks_down_to_the_whole_link_and_rejects_bad_ones() -> None:
    a = meta("a", payload=b"x" * 100)
    b = meta("b", base=a, payload=b"yy", through=2)
    c = meta("c", base=b, payload=b"z", through=3)
    links = {m.snapshot_id: m for m in (a, b, c)}
    assert [m.snapshot_id for m in chains.chain_of(c, links)] == ["c", "b", "a"]
    with pytest.raises(Corrupt, match="missing"):
        chains.chain_of(c, {"c": c, "a": a})
    with pytest.raises(Corrupt, match="does not fit"):
        chains.chain_of(c, {**links, "b": replace(b, version="v0")})
    with pytest.raises(Corrupt, match="does not fit"):
        chains.chain_of(c, {**links, "b": replace(b, through_seq=9)})
    loop = replace(a, base_id="c", stored_bytes=1)
    with pytest.raises(Corrupt, match="does not fit"):
        chains.chain_of(c, {**links, "a": loop})


def test_plan_keeps_chains_logarithmic_and_consolidates_when_outgrown() -> None:
    """Tails of nearly equal size: the chain above the whole bottom stays O(log n)
    deep, each delta byte is rewritten O(log n) times, and the bottom is rewritten
    only once the deltas add up to its size."""
    whole = meta("w", payload=b"x" * 100_000)
    chain = [whole]
    rewritten = 0
    for n in range(1, 600):
        tail = 10 + n % 3
        planned = chains.plan(chain, tail)
        assert planned.base is not None
        rewritten += sum(m.stored_size for m in planned.merged)
        new_size = tail + sum(m.stored_size + 1 for m in planned.merged)
        new = meta(f"d{n}", base=planned.base, payload=b"d" * new_size, through=n + 1)
        chain = [new, *chain[chain.index(planned.base) :]]
        assert len(chain) - 1 <= 2 * n.bit_length()
    assert rewritten < 12 * 600 * 10
    assert chains.plan(chain, 100_000).base is None  # as big as the bottom: whole again
    assert chains.plan([whole], 100_000).merged == []


def test_plan_caps_the_depth() -> None:
    chain = [meta("w", payload=b"x" * 10**9)]
    for n in range(chains.MAX_LINKS + 5):
        planned = chains.plan(chain, 1)
        assert planned.base is not None
        chain = [
            meta(f"d{n}", base=planned.base, payload=b"d" * (10**6 - n), through=n + 2),
            *chain[chain.index(planned.base) :],
        ]
        assert len(chain) <= chains.MAX_LINKS + 1


def test_assemble() -> None:
    whole = compaction.encode_state(fold(steps, None, events([1, 2])))
    delta = CODEC.delta(events([3], start=3))
    assert orjson.loads(chains.assemble("steps", [whole, delta]))["steps"]["3"]["data"] == 3
    assert chains.assemble("merge_patch", [b"{}"]) == b"{}"
    with pytest.raises(Corrupt, match="no delta encoding"):
        chains.assemble("merge_patch", [b"{}", b"{}"])
