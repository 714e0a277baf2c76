"""Savepoint logic (SPEC section 7) against a naive reference model that keeps every input.

``ReferenceModel`` is deliberately simple-minded: it never prunes, and recomputes
each savepoint from the full input log; the runtime's stateful test reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshotd.domain import savepoints
from snapshotd.domain.errors import BadRequest, Corrupt
from snapshotd.domain.savepoints import Progress, Schedule


@dataclass
class ReferenceModel:
    """Savepoints computed from scratch over every input accepted since the last resume.

    A resume freezes the savepoints kept so far and starts a new epoch from the
    resume point: its states become the bases, every entity has reached its time
    (nothing, when no savepoint was complete), and only later savepoints are
    computed from the epoch's inputs.
    """

    start_ms: int
    interval_ms: int
    initial: dict[str, Any]
    keep: int
    inputs: list[tuple[str, int, bool, Any]] = field(default_factory=list)
    base_k: int = 0
    base: dict[str, Any] = field(default_factory=dict)
    frozen: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base = dict(self.initial)

    def last_time(self, entity: str) -> int | None:
        """The newest time ``entity`` reported in this epoch (None: nothing yet)."""
        times = [t for e, t, _, _ in self.inputs if e == entity]
        if times:
            return times[-1]
        return self.time_of(self.base_k) if self.base_k else None

    def accepts(self, entity: str, timestamp_ms: int) -> bool:
        if entity not in self.initial:
            return False
        last = self.last_time(entity)
        return last is None or timestamp_ms >= last

    def record(self, entity: str, timestamp_ms: int, saved: bool, state: Any = None) -> bool:
        """Apply one save (``saved``) or ack; False when the daemon must reject it."""
        if not self.accepts(entity, timestamp_ms):
            return False
        self.inputs.append((entity, timestamp_ms, saved, state))
        return True

    def resume(self, upgrade: Any = None) -> tuple[int, dict[str, Any]]:
        """Restart from the newest complete savepoint (or the start); what load answers."""
        kept = self.kept()
        if kept:
            at, states = kept[-1]
            k = (at - self.start_ms) // self.interval_ms
        else:
            at, states, k = self.start_ms, self.base, 0
        states = dict(states) if upgrade is None else upgrade(states)
        self.frozen, self.base_k, self.base, self.inputs = kept, k, dict(states), []
        return at, states

    def time_of(self, k: int) -> int:
        return self.start_ms + k * self.interval_ms

    def complete_k(self, prefix: int) -> int:
        """The newest complete savepoint after the first ``prefix`` inputs, by search."""
        reached = {e: self.time_of(self.base_k) for e in self.initial} if self.base_k else {}
        reached.update({entity: t for entity, t, _, _ in self.inputs[:prefix]})
        if len(reached) < len(self.initial):
            return self.base_k
        k = self.base_k
        while self.time_of(k + 1) <= min(reached.values()):
            k += 1
        return k

    def savepoint(self, k: int) -> dict[str, Any]:
        """Savepoint k as it was when it completed (its content is fixed from then on)."""
        prefix = next(n for n in range(len(self.inputs) + 1) if self.complete_k(n) >= k)
        saved_by_then = {
            entity: state
            for entity, t, saved, state in self.inputs[:prefix]
            if saved and t <= self.time_of(k)
        }
        return {**self.base, **saved_by_then}

    def kept(self) -> list[tuple[int, dict[str, Any]]]:
        newest = self.complete_k(len(self.inputs))
        first = max(self.base_k + 1, newest - self.keep + 1)
        fresh = [(self.time_of(k), self.savepoint(k)) for k in range(first, newest + 1)]
        return (self.frozen + fresh)[-self.keep :] if newest else []


def as_pairs(schedule: Schedule) -> list[tuple[int, dict[str, Any]]]:
    return [(sp.timestamp_ms, sp.entities) for sp in schedule.completed]


def fresh(entities: int = 2, start_ms: int = 0, interval_ms: int = 10) -> Schedule:
    return savepoints.init(
        "wf", start_ms, interval_ms, {f"e{i}": f"init{i}" for i in range(entities)}
    )


def test_nothing_completes_until_every_entity_reports() -> None:
    schedule, progress = savepoints.save(fresh(), "e0", 100, "a", keep=2)
    assert progress == Progress()
    assert savepoints.latest(schedule) is None


def test_savepoint_uses_last_state_at_or_before_its_time() -> None:
    schedule = fresh()
    schedule, _ = savepoints.save(schedule, "e0", 5, "a5", keep=2)
    schedule, _ = savepoints.save(schedule, "e0", 10, "a10", keep=2)
    schedule, _ = savepoints.save(schedule, "e0", 11, "a11", keep=2)
    schedule, progress = savepoints.ack(schedule, "e1", 19, keep=2)
    assert progress == Progress(completed=1, pruned=0, latest_ms=10)
    latest = savepoints.latest(schedule)
    assert latest is not None
    assert (latest.timestamp_ms, latest.entities) == (10, {"e0": "a10", "e1": "init1"})


def test_jump_completes_many_but_materialises_only_keep() -> None:
    schedule = fresh(interval_ms=1)
    schedule, _ = savepoints.save(schedule, "e0", 3, "x", keep=3)
    schedule, progress = savepoints.ack(schedule, "e1", 10**12, keep=3)
    assert progress == Progress(completed=3, pruned=0, latest_ms=3)
    schedule, progress = savepoints.ack(schedule, "e0", 10**12, keep=3)
    assert progress.completed == 10**12 - 3
    assert progress.pruned == 10**12 - 3
    assert [sp.timestamp_ms for sp in schedule.completed] == [10**12 - 2, 10**12 - 1, 10**12]
    assert all(sp.entities == {"e0": "x", "e1": "init1"} for sp in schedule.completed)


def test_going_backwards_and_unknown_entities_are_bad_requests() -> None:
    schedule, _ = savepoints.ack(fresh(), "e0", 7, keep=2)
    with pytest.raises(BadRequest, match="backwards"):
        savepoints.save(schedule, "e0", 6, "x", keep=2)
    with pytest.raises(BadRequest, match="backwards"):
        savepoints.ack(schedule, "e0", 6, keep=2)
    with pytest.raises(BadRequest, match="not declared"):
        savepoints.ack(schedule, "zz", 8, keep=2)
    same, progress = savepoints.ack(schedule, "e0", 7, keep=2)
    assert same is schedule
    assert progress == Progress()


def test_init_rejects_empty_entities_and_bad_interval() -> None:
    with pytest.raises(BadRequest, match="entities"):
        savepoints.init("wf", 0, 10, {})
    with pytest.raises(BadRequest, match="interval_ms"):
        savepoints.init("wf", 0, 0, {"a": 1})


def test_a_save_after_completion_at_the_same_time_applies_to_later_savepoints() -> None:
    schedule = fresh()
    schedule, _ = savepoints.save(schedule, "e0", 10, "first", keep=2)
    schedule, _ = savepoints.ack(schedule, "e1", 10, keep=2)
    schedule, _ = savepoints.save(schedule, "e0", 10, "second", keep=2)
    schedule, _ = savepoints.ack(schedule, "e0", 20, keep=2)
    schedule, _ = savepoints.ack(schedule, "e1", 20, keep=2)
    assert as_pairs(schedule) == [
        (10, {"e0": "first", "e1": "init1"}),
        (20, {"e0": "second", "e1": "init1"}),
    ]


def test_pending_states_collapse_to_one_per_interval() -> None:
    schedule = fresh(interval_ms=10)
    for t in range(1, 1000):
        schedule, _ = savepoints.save(schedule, "e0", t, t, keep=2)
    assert len(schedule.entities["e0"].history) == 101
    schedule, _ = savepoints.ack(schedule, "e1", 995, keep=2)
    assert [b for b, _ in schedule.entities["e0"].history] == [99, 100]
    assert as_pairs(schedule) == [
        (980, {"e0": 980, "e1": "init1"}),
        (990, {"e0": 990, "e1": "init1"}),
    ]


def test_encode_decode_round_trip_and_corruption() -> None:
    schedule = fresh(3, start_ms=-7, interval_ms=3)
    schedule, _ = savepoints.save(schedule, "e0", 4, {"n": [1, 2]}, keep=2)
    schedule, _ = savepoints.ack(schedule, "e1", 9, keep=2)
    schedule, _ = savepoints.ack(schedule, "e2", 9, keep=2)
    assert savepoints.decode(savepoints.encode(schedule), "here") == schedule
    with pytest.raises(Corrupt, match="here"):
        savepoints.decode(b"{not json", "here")
    with pytest.raises(Corrupt, match="format"):
        savepoints.decode(orjson.dumps({"format": 99}), "here")


RESUME = "<resume>"
"""A scenario step that resumes from the newest complete savepoint (states upgraded)."""


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ReferenceModel, list[tuple[str, int, bool]]]:
    count = draw(st.integers(1, 4))
    model = ReferenceModel(
        start_ms=draw(st.integers(-5, 5)),
        interval_ms=draw(st.integers(1, 4)),
        initial={f"e{i}": f"init{i}" for i in range(count)},
        keep=draw(st.integers(2, 4)),
    )
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from([*model.initial, "ghost", RESUME]),
                st.integers(-6, 40),
                st.booleans(),
            ),
            max_size=40,
        )
    )
    return model, steps


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_domain_matches_reference_model(
    scenario: tuple[ReferenceModel, list[tuple[str, int, bool]]],
) -> None:
    model, steps = scenario
    schedule = savepoints.init("wf", model.start_ms, model.interval_ms, model.initial)
    completed = pruned = 0
    for index, (entity, t, saved) in enumerate(steps):
        state = f"s{index}"
        if entity == RESUME:
            point = savepoints.resume_point(schedule)
            upgraded = {eid: [index, value] for eid, value in point.entities.items()}
            schedule = savepoints.resume(schedule, upgraded)
            expected = model.resume(lambda states, i=index: {e: [i, v] for e, v in states.items()})
            assert (point.timestamp_ms, upgraded) == expected
            assert as_pairs(schedule) == model.kept()
            continue
        try:
            if saved:
                schedule, progress = savepoints.save(schedule, entity, t, state, keep=model.keep)
            else:
                schedule, progress = savepoints.ack(schedule, entity, t, keep=model.keep)
        except BadRequest:
            assert not model.accepts(entity, t)
            continue
        assert model.record(entity, t, saved, state)
        completed += progress.completed
        pruned += progress.pruned
        assert as_pairs(schedule) == model.kept()
    assert len(schedule.completed) == len(model.kept())
    if RESUME not in [entity for entity, _, _ in steps]:
        assert completed == model.complete_k(len(model.inputs))
        assert completed - pruned == len(schedule.completed)


def test_resume_sets_every_entity_back_to_the_newest_savepoint() -> None:
    schedule = fresh()
    schedule, _ = savepoints.save(schedule, "e0", 10, "a10", keep=2)
    schedule, _ = savepoints.save(schedule, "e0", 25, "a25", keep=2)
    schedule, _ = savepoints.ack(schedule, "e1", 12, keep=2)
    point = savepoints.resume_point(schedule)
    assert (point.timestamp_ms, point.entities) == (10, {"e0": "a10", "e1": "init1"})
    schedule = savepoints.resume(schedule, {"e0": "A10", "e1": "INIT1"})
    # e0 reported 25 before the resume: 11 is accepted again, 9 is before the savepoint.
    with pytest.raises(BadRequest, match="backwards"):
        savepoints.ack(schedule, "e0", 9, keep=2)
    schedule, _ = savepoints.save(schedule, "e0", 11, "b11", keep=2)
    schedule, progress = savepoints.ack(schedule, "e1", 20, keep=2)
    assert progress == Progress(completed=0, pruned=0, latest_ms=None)
    schedule, progress = savepoints.ack(schedule, "e0", 20, keep=2)
    assert progress.completed == 1
    assert as_pairs(schedule) == [
        (10, {"e0": "a10", "e1": "init1"}),
        (20, {"e0": "b11", "e1": "INIT1"}),
    ]


def test_resume_without_a_complete_savepoint_starts_over() -> None:
    schedule, _ = savepoints.save(fresh(start_ms=5), "e0", 30, "late", keep=2)
    point = savepoints.resume_point(schedule)
    assert (point.timestamp_ms, point.entities) == (5, {"e0": "init0", "e1": "init1"})
    schedule = savepoints.resume(schedule, point.entities)
    assert schedule == fresh(start_ms=5)
    with pytest.raises(ValueError, match="declared entities"):
        savepoints.resume(schedule, {"e0": 1})
