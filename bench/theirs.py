"""The Python ``eventsourcing`` library on the same PostgreSQL and the same data.

An aggregate holds the ``last_by_key`` state of the workload; each workload event
is one domain event. Its snapshots are taken with ``Application.take_snapshot``
and its aggregates loaded with ``repository.get``, as its documentation shows.
Saving is done in batches of 500 events: eventsourcing 9.5.6's default PostgreSQL
recorder hung on this machine when one ``save`` carried about 2,000 events or more.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from bench.pg import connection_parts
from bench.stats import figure
from bench.workload import event_data

SAVE_BATCH = 500
APP_NAME = "BenchRegisters"


class Register(Aggregate):
    """The ``last_by_key`` state as an eventsourcing aggregate."""

    @event("Created")
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    @event("Set")
    def set(self, key: str, value: Any) -> None:
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value


class Registers(Application[Any]):
    name = APP_NAME


def _env(dsn: str, snapshotting: bool) -> dict[str, str]:
    parts = connection_parts(dsn)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts["dbname"],
        "POSTGRES_HOST": parts["host"],
        "POSTGRES_PORT": parts["port"],
        "POSTGRES_USER": parts["user"],
        "POSTGRES_PASSWORD": parts["password"],
        "IS_SNAPSHOTTING_ENABLED": "y" if snapshotting else "n",
    }


def _populate(app: Registers, events: int) -> Register:
    """A register with ``events`` events in all (its creation is the first)."""
    register = Register()
    for seq in range(1, events):
        data = event_data(seq)
        register.set(data["key"], data["value"])
        if seq % SAVE_BATCH == 0:
            app.save(register)
    app.save(register)
    return register


def bench_eventsourcing(dsn: str, size: int, tail: int, repeats: int) -> dict[str, Any]:
    """Figures for a register of ``size`` events on a fresh database ``dsn``.

    Loading uses a snapshot ``tail`` events before the end (like ours); snapshot
    cost is measured both with no earlier snapshot (its replay of the whole history)
    and ``tail`` events past an earlier one (it starts from that snapshot).
    """
    snapshots = Registers(env=_env(dsn, snapshotting=True))
    plain = Registers(env=_env(dsn, snapshotting=False))
    register = _populate(snapshots, size)
    register_id = register.id
    head = register.version
    table = f"{APP_NAME.lower()}_snapshots"

    def clear_snapshots() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {table}")

    full_snapshot: list[float] = []
    for _ in range(repeats):
        clear_snapshots()
        start = time.perf_counter()
        snapshots.take_snapshot(register_id)
        full_snapshot.append(time.perf_counter() - start)

    incremental: list[float] = []
    for _ in range(repeats):
        clear_snapshots()
        snapshots.take_snapshot(register_id, version=head - tail)
        start = time.perf_counter()
        snapshots.take_snapshot(register_id)
        incremental.append(time.perf_counter() - start)

    clear_snapshots()
    snapshots.take_snapshot(register_id, version=head - tail)
    with_snapshot: list[float] = []
    without: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        loaded: Register = snapshots.repository.get(register_id)
        with_snapshot.append(time.perf_counter() - start)
        start = time.perf_counter()
        replayed: Register = plain.repository.get(register_id)
        without.append(time.perf_counter() - start)
        if loaded.values != replayed.values or loaded.version != head:
            raise RuntimeError("eventsourcing: snapshot and replay disagree")
    snapshots.close()
    plain.close()
    what = f"eventsourcing, {size:,} events"
    return {
        "es.snapshot_full": figure(
            f"take_snapshot, no earlier snapshot ({what})", "s", full_snapshot
        ),
        "es.snapshot_incremental": figure(
            f"take_snapshot {tail} events past a snapshot ({what})", "s", incremental
        ),
        "es.load_snapshot": figure(
            f"repository.get, snapshot + {tail} events ({what})", "s", with_snapshot
        ),
        "es.load_full": figure(f"repository.get, full replay ({what})", "s", without),
    }
