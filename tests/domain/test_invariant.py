"""The snapshot invariant of SPEC section 1, property-tested for every built-in reducer:
for every snapshot S, ``fold(S.state, events after S.through_seq) == fold(null, all events)``.

Scenarios are random event sequences with snapshots taken at random points (each
folded onto the latest snapshot of the run's current version, as the daemon does)
and random switches between code versions. They run purely in the domain and
through the memory and fs journals, where the tail comes from ``read_events``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshotd.domain import compaction
from snapshotd.domain.model import Event, NewEvent, Snapshot
from snapshotd.domain.policies import newest_first
from snapshotd.domain.reducers import BUILTIN, fold
from snapshotd.domain.validation import INT64_MAX, INT64_MIN
from snapshotd.journals.base import Journal
from snapshotd.journals.fs import FsJournal
from snapshotd.journals.memory import MemoryJournal
from tests.support import make_snapshot

T0 = datetime(2024, 5, 1, tzinfo=UTC)
VERSIONS = ["v0", "v1", "v2"]

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_json = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_keys = st.sampled_from(["a", "b", "c", "ключ"])
_patch = st.recursive(
    st.none() | _leaves,
    lambda inner: st.dictionaries(_keys, inner, max_size=3),
    max_leaves=6,
)
DATA = {
    "steps": _json,
    "last_by_key": st.fixed_dictionaries({"key": _keys, "value": st.none() | _json}),
    "merge_patch": st.dictionaries(_keys, _patch, max_size=3) | _json,
}


@dataclass(frozen=True)
class Scenario:
    """Events, and after how many of them to switch version or take a snapshot."""

    reducer: str
    data: list[Any]
    switches: dict[int, str]
    snapshot_points: frozenset[int]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    reducer = draw(st.sampled_from(sorted(BUILTIN)))
    data = draw(st.lists(DATA[reducer], max_size=30))
    points = st.integers(0, len(data))
    return Scenario(
        reducer,
        data,
        draw(st.dictionaries(points, st.sampled_from(VERSIONS), max_size=3)),
        frozenset(draw(st.sets(points, max_size=6))),
    )


def take(
    scenario: Scenario, version: str, snapshots: list[Snapshot], events: list[Event]
) -> Snapshot | None:
    """A snapshot of ``events`` on the latest one of ``version`` (None: nothing new)."""
    compatible = newest_first(s.meta for s in snapshots if s.meta.version == version)
    base = next(s for s in snapshots if s.meta == compatible[0]) if compatible else None
    tail = events[base.meta.through_seq :] if base else events
    if not tail:
        return None
    return make_snapshot("run", tail, base=base, version=version, reducer=scenario.reducer)


def check_invariant(scenario: Scenario, snapshots: list[Snapshot], events: list[Event]) -> None:
    reducer = BUILTIN[scenario.reducer]
    full = fold(reducer, None, events)
    for snapshot in snapshots:
        state = compaction.decode_state(snapshot)
        assert fold(reducer, state, events[snapshot.meta.through_seq :]) == full


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_snapshot_plus_tail_equals_full_replay(scenario: Scenario) -> None:
    events = [Event(i + 1, "t", d, T0) for i, d in enumerate(scenario.data)]
    version = VERSIONS[0]
    snapshots: list[Snapshot] = []
    for point in range(len(events) + 1):
        version = scenario.switches.get(point, version)
        if point in scenario.snapshot_points:
            made = take(scenario, version, snapshots, events[:point])
            if made is not None:
                snapshots.append(made)
    check_invariant(scenario, snapshots, events)


async def replay_through(journal: Journal, scenario: Scenario) -> None:
    await journal.create_run("run", "wf", VERSIONS[0], None, T0)
    version = VERSIONS[0]
    appended = 0
    for point in range(len(scenario.data) + 1):
        if point > appended:
            batch = [NewEvent("t", d) for d in scenario.data[appended:point]]
            await journal.append("run", batch, expected_seq=appended, lease=None, now=T0)
            appended = point
        if point in scenario.switches:
            version = scenario.switches[point]
            await journal.set_version("run", version)
        if point in scenario.snapshot_points:
            stored = [
                await journal.read_snapshot("run", m.snapshot_id)
                for m in await journal.list_snapshots("run")
            ]
            events = await journal.read_events("run", 0)
            made = take(scenario, version, stored, events)
            if made is not None:
                await journal.write_snapshot(made, lease=None)
    events = await journal.read_events("run", 0)
    assert [e.data for e in events] == scenario.data
    snapshots = [
        await journal.read_snapshot("run", m.snapshot_id)
        for m in await journal.list_snapshots("run")
    ]
    check_invariant(scenario, snapshots, events)
    reducer = BUILTIN[scenario.reducer]
    latest = newest_first(s.meta for s in snapshots if s.meta.version == version)
    if latest:
        base = await journal.read_snapshot("run", latest[0].snapshot_id)
        tail = await journal.read_events("run", base.meta.through_seq)
        rebuilt = fold(reducer, compaction.decode_state(base), tail)
        assert rebuilt == fold(reducer, None, events)


@pytest.mark.anyio
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
async def test_snapshot_plus_tail_through_journals(scenario: Scenario) -> None:
    memory = MemoryJournal()
    await memory.open()
    await replay_through(memory, scenario)
    await memory.aclose()
    with tempfile.TemporaryDirectory() as root:
        fs = FsJournal(root)
        await fs.open()
        try:
            await replay_through(fs, scenario)
        finally:
            await fs.aclose()
