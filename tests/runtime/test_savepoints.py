"""The savepoint service over real journals: a stateful model test with restarts, and bounds.

The state machine drives random interleavings of saves, acks and resumes across
1-4 entities (including undeclared ones and steps backwards) and compares what
the service stores and loads with ``ReferenceModel`` after every step. Its
``restart`` rule drops the service and reopens the journal from storage, as a
daemon restart would.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from snapshotd.domain import savepoints
from snapshotd.domain.errors import BadRequest, Conflict, NotFound
from snapshotd.domain.model import utcnow
from snapshotd.domain.policies import Policy
from snapshotd.journals.base import Journal
from snapshotd.journals.memory import MemoryJournal
from snapshotd.runtime.savepoints import NAMESPACE, SavepointService
from tests.domain.test_savepoints import ReferenceModel

T = TypeVar("T")
Storage = Callable[[], Journal]
"""Opens (a new adapter object on) one storage location: calling it again is a restart."""

_counter = itertools.count()


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as running:
        yield running


def memory_storage(_tmp: Path) -> Storage:
    journal = MemoryJournal()
    return lambda: journal


def fs_storage(tmp: Path) -> Storage:
    from snapshotd.journals.fs import FsJournal

    path = tmp / f"fs-{next(_counter)}"
    return lambda: FsJournal(path)


@pytest.fixture(params=["memory", "fs", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_factory(
    request: pytest.FixtureRequest, tmp_path: Path, portal: BlockingPortal
) -> Callable[[], Storage]:
    if request.param == "memory":
        return lambda: memory_storage(tmp_path)
    if request.param == "fs":
        return lambda: fs_storage(tmp_path)
    from snapshotd.journals.migrate import migrate
    from snapshotd.journals.postgres import PostgresJournal

    url = request.getfixturevalue("pg_dsn") + "?schema=savepoint_tests"
    portal.call(migrate, url)
    return lambda: lambda: PostgresJournal(url)


def keep_policy(keep: int) -> Callable[[str], Policy]:
    return lambda _workflow: Policy(keep_snapshots=keep)


class SavepointMachine(RuleBasedStateMachine):
    portal: BlockingPortal
    new_storage: Callable[[], Storage]

    def __init__(self) -> None:
        super().__init__()
        self.journal: Journal | None = None

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def run() -> T:
            return await fn()

        return self.portal.call(run)

    def open(self) -> None:
        self.journal = self.open_journal()
        self.call(self.journal.open)
        self.service = SavepointService(self.journal, keep_policy(self.model.keep))

    @initialize(
        count=st.integers(1, 4),
        start_ms=st.integers(-5, 5),
        interval_ms=st.integers(1, 4),
        keep=st.integers(2, 3),
    )
    def setup(self, count: int, start_ms: int, interval_ms: int, keep: int) -> None:
        initial = {f"e{i}": {"init": i} for i in range(count)}
        self.model = ReferenceModel(start_ms, interval_ms, initial, keep)
        self.run_id = f"run-{next(_counter)}-{utcnow().timestamp()}"
        self.open_journal = self.new_storage()
        self.open()
        journal = self.journal
        assert journal is not None
        self.call(lambda: journal.create_run(self.run_id, "wf", "v1", None, utcnow()))
        self.call(
            lambda: self.service.init(
                self.run_id, start_ms=start_ms, interval_ms=interval_ms, entities=initial
            )
        )
        self.states = itertools.count()

    @rule(which=st.integers(0, 4), delta=st.integers(-2, 7), saved=st.booleans())
    def report(self, which: int, delta: int, saved: bool) -> None:
        entity = f"e{which}"
        last = self.model.last_time(entity)
        t = (self.model.start_ms if last is None else last) + delta
        state = {"entity": entity, "n": next(self.states)}
        try:
            if saved:
                self.call(lambda: self.service.save(self.run_id, entity, t, state))
            else:
                self.call(lambda: self.service.ack(self.run_id, entity, t))
        except BadRequest:
            assert not self.model.accepts(entity, t)
            return
        assert self.model.record(entity, t, saved, state)

    @rule(upgraded=st.booleans())
    def resume(self, upgraded: bool) -> None:
        """The application restarts from the newest savepoint (states upgraded or not)."""
        marker = next(self.states)

        def upgrade(workflow: str, states: dict[str, Any]) -> dict[str, Any]:
            assert workflow == "wf"
            return {eid: {"upgraded": marker, "from": state} for eid, state in states.items()}

        loaded = self.call(lambda: self.service.resume(self.run_id, upgrade if upgraded else None))
        expected = self.model.resume((lambda states: upgrade("wf", states)) if upgraded else None)
        assert (loaded.savepoint.timestamp_ms, loaded.savepoint.entities) == expected

    @rule()
    def restart(self) -> None:
        journal = self.journal
        assert journal is not None
        self.call(journal.aclose)
        self.open()

    @rule()
    def reinit_conflicts(self) -> None:
        with pytest.raises(Conflict):
            self.call(
                lambda: self.service.init(
                    self.run_id, start_ms=0, interval_ms=1, entities={"x": None}
                )
            )

    @invariant()
    def matches_model(self) -> None:
        if self.journal is None:
            return
        journal = self.journal
        doc = self.call(lambda: journal.get_document(NAMESPACE, self.run_id))
        assert doc is not None
        stored = savepoints.decode(doc.body, "test")
        expected = self.model.kept()
        assert [(sp.timestamp_ms, sp.entities) for sp in stored.completed] == expected
        if expected:
            loaded = self.call(lambda: self.service.load(self.run_id))
            assert (loaded.savepoint.timestamp_ms, loaded.savepoint.entities) == expected[-1]
            assert loaded.workflow == "wf"
        else:
            with pytest.raises(NotFound):
                self.call(lambda: self.service.load(self.run_id))

    def teardown(self) -> None:
        if self.journal is not None:
            journal = self.journal
            self.call(journal.aclose)


def test_service_matches_reference_model(
    portal: BlockingPortal, storage_factory: Callable[[], Storage]
) -> None:
    machine = type(
        "Machine",
        (SavepointMachine,),
        {"portal": portal, "new_storage": staticmethod(storage_factory)},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.anyio
async def test_init_needs_a_run_and_ops_need_a_schedule() -> None:
    journal = MemoryJournal()
    service = SavepointService(journal)
    with pytest.raises(NotFound, match="not found"):
        await service.init("nope", start_ms=0, interval_ms=1, entities={"a": 1})
    await journal.create_run("r", "wf", "v1", None, utcnow())
    for call in (
        service.save("r", "a", 1, 1),
        service.ack("r", "a", 1),
        service.load("r"),
    ):
        with pytest.raises(NotFound, match="savepoint_init"):
            await call


class RacingJournal(MemoryJournal):
    """Lets another writer slip in before the service's first compare-and-swap."""

    def __init__(self) -> None:
        super().__init__()
        self.intruder: Callable[[], Awaitable[Any]] | None = None

    async def put_document(
        self, namespace: str, key: str, body: bytes, expected_version: int | None
    ) -> int:
        intruder, self.intruder = self.intruder, None
        if intruder is not None:
            await intruder()
        return await super().put_document(namespace, key, body, expected_version)


@pytest.mark.anyio
async def test_a_concurrent_writer_is_never_overwritten() -> None:
    journal = RacingJournal()
    await journal.create_run("r", "wf", "v1", None, utcnow())
    ours, theirs = SavepointService(journal), SavepointService(journal)
    await ours.init("r", start_ms=0, interval_ms=10, entities={"a": 0, "b": 0})
    journal.intruder = lambda: theirs.save("r", "b", 25, "b25")
    await ours.save("r", "a", 30, "a30")
    loaded = await ours.load("r")
    assert (loaded.savepoint.timestamp_ms, loaded.savepoint.entities) == (20, {"a": 0, "b": 0})
    await ours.ack("r", "b", 30)
    loaded = await ours.load("r")
    assert (loaded.savepoint.timestamp_ms, loaded.savepoint.entities) == (
        30,
        {"a": "a30", "b": "b25"},
    )


@pytest.mark.anyio
async def test_concurrent_requests_for_one_run_all_land() -> None:
    journal = MemoryJournal()
    await journal.create_run("r", "wf", "v1", None, utcnow())
    service = SavepointService(journal)
    entities = {f"e{i}": None for i in range(20)}
    await service.init("r", start_ms=0, interval_ms=5, entities=entities)
    async with anyio.create_task_group() as tg:
        for name in entities:
            tg.start_soon(service.save, "r", name, 5, name)
    loaded = await service.load("r")
    assert loaded.savepoint.entities == {name: name for name in entities}


@pytest.mark.anyio
@pytest.mark.parametrize(("backend", "stride"), [("memory", 1), ("fs", 20)])
async def test_storage_stays_bounded_over_10000_intervals(
    backend: str, stride: int, tmp_path: Path
) -> None:
    """Steady progress over 10,000 savepoint intervals (fs: ``stride`` intervals per step)."""
    journal: Journal = MemoryJournal() if backend == "memory" else fs_storage(tmp_path)()
    await journal.open()
    await journal.create_run("r", "wf", "v1", None, utcnow())
    service = SavepointService(journal, keep_policy(3))
    await service.init("r", start_ms=0, interval_ms=10, entities={"a": 0, "b": 0, "c": 0})
    sizes: list[int] = []
    completed = pruned = 0
    interval = 10 * stride
    for t in range(interval, 100_001, interval):
        # "a" runs one step ahead, "b" saves twice per step, "c" only acks.
        await service.save("r", "a", t + interval, {"a": t + interval})
        await service.save("r", "b", t - 5, {"b": t - 5, "pad": "x" * 50})
        await service.save("r", "b", t, {"b": t, "pad": "x" * 50})
        progress = await service.ack("r", "c", t)
        completed += progress.completed
        pruned += progress.pruned
        if t % 10_000 == 0:
            doc = await journal.get_document(NAMESPACE, "r")
            assert doc is not None
            sizes.append(len(doc.body))
    loaded = await service.load("r")
    await journal.aclose()
    assert (completed, pruned) == (10_000, 9_997)
    assert loaded.savepoint.timestamp_ms == 100_000
    assert loaded.savepoint.entities == {
        "a": {"a": 100_000},
        "b": {"b": 100_000, "pad": "x" * 50},
        "c": 0,
    }
    assert len(sizes) == 10
    assert max(sizes) < 2_000
    assert max(sizes) - min(sizes) < 100
