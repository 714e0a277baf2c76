"""Coordinated savepoints (SPEC section 7) as one plain value and pure transitions.

A run's savepoint state (``Schedule``) holds the schedule (savepoint k is at
``start_ms + k * interval_ms``, k >= 1), each entity's progress and the newest
complete savepoints. The runtime stores it as one document and replaces it
atomically, so a save or ack and every savepoint it completes land together.

Storage stays bounded without changing any answer:

- Savepoint times are discrete, so of several saves between two savepoint times
  only the last can ever be used: an entity keeps at most one state per interval
  ("bucket" k holds the last save with ``T(k-1) < t <= T(k)``).
- Once savepoint K is complete, every entity's states older than its newest one
  at or before ``T(K)`` are dropped (that one stays as the base for later ones).
- Only the newest ``keep`` complete savepoints are materialised and kept; when
  many complete at once, the intermediate ones are counted arithmetically.

A savepoint's content is fixed when it completes: a later save at exactly its
time (allowed, times are non-decreasing) applies to later savepoints only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from snapshotd.domain.errors import BadRequest, Corrupt

FORMAT = 1
"""Version of the encoded document; a different one is reported as corrupt."""


@dataclass(frozen=True, slots=True)
class Savepoint:
    """A complete savepoint: every entity's state as of ``timestamp_ms``."""

    timestamp_ms: int
    entities: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Entity:
    """One entity's progress.

    ``reached`` is the newest time it saved or acked (None: nothing yet).
    ``history`` holds ``(bucket, state)`` pairs in ascending bucket order; the
    first is the base (bucket 0 is the initial state) and every savepoint not yet
    complete finds its state there.
    """

    reached: int | None
    history: tuple[tuple[int, Any], ...]

    def state_at(self, k: int) -> Any:
        """The state for savepoint k: the last one saved in a bucket <= k."""
        found = self.history[0][1]
        for bucket, state in self.history:
            if bucket > k:
                break
            found = state
        return found


@dataclass(frozen=True, slots=True)
class Schedule:
    """The whole savepoint state of one run; ``complete_k`` is the newest complete k (0: none)."""

    workflow: str
    start_ms: int
    interval_ms: int
    entities: dict[str, Entity]
    complete_k: int
    completed: tuple[Savepoint, ...]

    def time_of(self, k: int) -> int:
        return self.start_ms + k * self.interval_ms

    def bucket(self, timestamp_ms: int) -> int:
        """The first savepoint whose time is >= ``timestamp_ms``."""
        return max(1, -((self.start_ms - timestamp_ms) // self.interval_ms))

    def reached_k(self, timestamp_ms: int) -> int:
        """The newest savepoint whose time is <= ``timestamp_ms`` (0: none)."""
        return max(0, (timestamp_ms - self.start_ms) // self.interval_ms)


@dataclass(frozen=True, slots=True)
class Progress:
    """What one save or ack did: savepoints that became complete, complete ones dropped."""

    completed: int = 0
    pruned: int = 0
    latest_ms: int | None = None


NOTHING = Progress()


def init(workflow: str, start_ms: int, interval_ms: int, entities: Mapping[str, Any]) -> Schedule:
    """A fresh schedule; every entity starts from its given initial state."""
    if interval_ms <= 0:
        raise BadRequest("interval_ms must be > 0")
    if not entities:
        raise BadRequest("entities must declare at least one entity")
    return Schedule(
        workflow=workflow,
        start_ms=start_ms,
        interval_ms=interval_ms,
        entities={name: Entity(None, ((0, state),)) for name, state in entities.items()},
        complete_k=0,
        completed=(),
    )


def _entity(schedule: Schedule, entity: str, timestamp_ms: int) -> Entity:
    try:
        current = schedule.entities[entity]
    except KeyError:
        raise BadRequest(f"entity {entity!r} was not declared at savepoint_init") from None
    if current.reached is not None and timestamp_ms < current.reached:
        raise BadRequest(
            f"entity {entity!r} already reported timestamp_ms {current.reached}; "
            f"{timestamp_ms} would go backwards"
        )
    return current


def save(
    schedule: Schedule, entity: str, timestamp_ms: int, state: Any, *, keep: int
) -> tuple[Schedule, Progress]:
    """``entity`` has ``state`` from ``timestamp_ms`` on (and has reached that time).

    Raises BadRequest for an undeclared entity or a time before its last report.
    """
    current = _entity(schedule, entity, timestamp_ms)
    bucket = schedule.bucket(timestamp_ms)
    history = current.history
    if history[-1][0] == bucket:
        history = history[:-1]
    updated = Entity(timestamp_ms, (*history, (bucket, state)))
    return _advance(schedule, entity, updated, keep)


def ack(
    schedule: Schedule, entity: str, timestamp_ms: int, *, keep: int
) -> tuple[Schedule, Progress]:
    """``entity`` processed everything up to ``timestamp_ms`` without changing state.

    Returns ``schedule`` itself when nothing changed (a repeated ack), so the
    caller can skip the write. Raises like ``save``.
    """
    current = _entity(schedule, entity, timestamp_ms)
    if current.reached == timestamp_ms:
        return schedule, NOTHING
    return _advance(schedule, entity, replace(current, reached=timestamp_ms), keep)


def _advance(
    schedule: Schedule, name: str, updated: Entity, keep: int
) -> tuple[Schedule, Progress]:
    """Install ``updated``, complete what can be completed, prune what is no longer needed."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    entities = {**schedule.entities, name: updated}
    reached = [e.reached for e in entities.values()]
    newest = 0 if None in reached else schedule.reached_k(min(r for r in reached if r is not None))
    if newest <= schedule.complete_k:
        return replace(schedule, entities=entities), NOTHING
    # Only the newest `keep` of the newly complete savepoints can survive retention.
    first = max(schedule.complete_k + 1, newest - keep + 1)
    fresh = tuple(
        Savepoint(
            schedule.time_of(k), {eid: entity.state_at(k) for eid, entity in entities.items()}
        )
        for k in range(first, newest + 1)
    )
    every = schedule.completed + fresh
    kept = every[-keep:]
    newly = newest - schedule.complete_k
    pruned = len(schedule.completed) + newly - len(kept)
    entities = {eid: _prune(entity, newest) for eid, entity in entities.items()}
    advanced = replace(schedule, entities=entities, complete_k=newest, completed=kept)
    return advanced, Progress(newly, pruned, schedule.time_of(newest))


def _prune(entity: Entity, k: int) -> Entity:
    """Drop states older than the newest one a savepoint after k could still use."""
    base = 0
    for index, (bucket, _state) in enumerate(entity.history):
        if bucket > k:
            break
        base = index
    if base == 0:
        return entity
    return replace(entity, history=entity.history[base:])


def resume_point(schedule: Schedule) -> Savepoint:
    """Where ``resume`` restarts: the newest complete savepoint, else the initial states
    at ``start_ms`` (before any savepoint completes, each history starts with bucket 0)."""
    newest = latest(schedule)
    if newest is not None:
        return newest
    return Savepoint(
        schedule.start_ms, {eid: entity.history[0][1] for eid, entity in schedule.entities.items()}
    )


def resume(schedule: Schedule, states: Mapping[str, Any]) -> Schedule:
    """The application restarts from ``resume_point``: every entity's progress goes back.

    ``states`` are the resume point's states as the application gets them (upgraded);
    they become each entity's base, and what was saved or acked after the resume point
    is forgotten. After a complete savepoint K every entity has reached ``T(K)``, so
    reports at times >= ``T(K)`` are accepted and savepoints after K complete as usual
    (K itself and older ones stay as they were). Without one, every entity is as
    ``init`` left it. Raises ValueError when ``states`` does not name exactly the
    declared entities.
    """
    if set(states) != set(schedule.entities):
        raise ValueError("resumed states must name exactly the declared entities")
    if schedule.complete_k == 0:
        entities = {eid: Entity(None, ((0, states[eid]),)) for eid in schedule.entities}
    else:
        at = schedule.time_of(schedule.complete_k)
        entities = {
            eid: Entity(at, ((schedule.complete_k, states[eid]),)) for eid in schedule.entities
        }
    return replace(schedule, entities=entities)


def latest(schedule: Schedule) -> Savepoint | None:
    """The newest complete savepoint, if any."""
    return schedule.completed[-1] if schedule.completed else None


def encode(schedule: Schedule) -> bytes:
    return orjson.dumps(
        {
            "format": FORMAT,
            "workflow": schedule.workflow,
            "start_ms": schedule.start_ms,
            "interval_ms": schedule.interval_ms,
            "complete_k": schedule.complete_k,
            "entities": [
                [name, entity.reached, [list(item) for item in entity.history]]
                for name, entity in schedule.entities.items()
            ],
            "completed": [[sp.timestamp_ms, sp.entities] for sp in schedule.completed],
        }
    )


def decode(body: bytes, where: str) -> Schedule:
    """The schedule encoded in ``body``; Corrupt (naming ``where``) when it does not decode."""
    try:
        doc = orjson.loads(body)
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        schedule = Schedule(
            workflow=doc["workflow"],
            start_ms=doc["start_ms"],
            interval_ms=doc["interval_ms"],
            entities={
                name: Entity(reached, tuple((bucket, state) for bucket, state in history))
                for name, reached, history in doc["entities"]
            },
            complete_k=doc["complete_k"],
            completed=tuple(Savepoint(ts, states) for ts, states in doc["completed"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise Corrupt(f"{where}: savepoint document does not decode: {exc}") from None
    if (
        schedule.interval_ms <= 0
        or not schedule.entities
        or any(not e.history for e in schedule.entities.values())
    ):
        raise Corrupt(f"{where}: savepoint document is inconsistent")
    return schedule
