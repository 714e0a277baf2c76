"""Slices: the run -> slice function, and a model of daemons dividing the slices.

The state machine plays several daemons against a model of the lease table with
the rules the PostgreSQL store and the runtime keeper follow: a heartbeat sent at
``t`` renews the daemon's leases until ``t + LEASE`` on the store's clock (which
is never earlier than the daemon's), the daemon trusts them only until
``t + LEASE`` on its own clock, a claim takes only free or expired slices, and
``plan`` decides what to claim and release. Daemons join, leave cleanly, die and
pause (a SIGSTOP: no heartbeat while time passes).
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from snapshotd.domain.slices import SLICES, Plan, plan, run_slice, share

LEASE = 3.0
BEAT = LEASE / 3


def test_run_slice_is_the_first_two_bytes_of_sha256_masked() -> None:
    assert run_slice("") == ((0xE3 << 8) | 0xB0) & 1023  # sha256("") = e3b0...
    digest = hashlib.sha256("zürich-🚀".encode()).digest()
    assert run_slice("zürich-🚀") == ((digest[0] << 8) | digest[1]) & 1023


@given(st.text(min_size=1, max_size=200))
def test_run_slice_is_in_range(run_id: str) -> None:
    assert 0 <= run_slice(run_id) < SLICES


def test_share_rounds_up_and_survives_no_members() -> None:
    assert [share(n) for n in (0, 1, 3, 1024, 2000)] == [1024, 1024, 342, 1, 1]


def test_plan_claims_free_slices_up_to_the_share_and_sheds_the_excess() -> None:
    leases = dict.fromkeys(range(600), "a")
    grow = plan("b", ["a", "b"], leases)
    assert grow.release == () and len(grow.claim) == 424
    assert not set(grow.claim) & set(leases)
    shed = plan("a", ["a", "b"], leases)
    assert shed.claim == () and len(shed.release) == 600 - 512
    assert plan("a", ["a"], dict.fromkeys(range(SLICES), "a")) == Plan((), ())


def test_newcomers_prefer_different_slices() -> None:
    first = set(plan("a", ["a", "b"], {}).claim)
    second = set(plan("b", ["a", "b"], {}).claim)
    assert len(first & second) < 400


class _Daemon:
    def __init__(self, name: str) -> None:
        self.name = name
        self.owned: set[int] = set()
        self.valid_until = -1.0
        self.next_beat = 0.0
        self.paused = False

    def serving(self, now: float) -> set[int]:
        return self.owned if now < self.valid_until and not self.paused else set()


class SliceOwnership(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.members: dict[str, float] = {}
        self.leases: dict[int, tuple[str, float]] = {}
        self.daemons: dict[str, _Daemon] = {}
        self.dead: set[str] = set()
        self.count = 0

    def _live(self) -> list[_Daemon]:
        return [d for d in self.daemons.values() if d.name not in self.dead]

    def _beat(self, d: _Daemon, store_delay: float) -> None:
        sent = self.now
        stamped = sent + store_delay
        self.members[d.name] = stamped + LEASE
        for s, (holder, _) in list(self.leases.items()):
            if holder == d.name:
                self.leases[s] = (holder, stamped + LEASE)
        live_members = [m for m, until in self.members.items() if until > stamped]
        live_leases = {s: h for s, (h, until) in self.leases.items() if until > stamped}
        decided = plan(d.name, live_members, live_leases)
        mine = {s for s, h in live_leases.items() if h == d.name}
        mine -= set(decided.release)
        d.owned = set(mine)
        for s in decided.release:
            del self.leases[s]
        for s in decided.claim:
            current = self.leases.get(s)
            if current is None or current[1] <= stamped or current[0] == d.name:
                self.leases[s] = (d.name, stamped + LEASE)
                mine.add(s)
        d.owned = mine
        d.valid_until = sent + LEASE
        d.next_beat = sent + BEAT

    @rule()
    def join(self) -> None:
        self.count += 1
        name = f"d{self.count}"
        self.daemons[name] = _Daemon(name)

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self._live()))
        d.owned = set()
        self.leases = {s: v for s, v in self.leases.items() if v[0] != d.name}
        self.members.pop(d.name, None)
        self.dead.add(d.name)

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data())
    def die(self, data: st.DataObject) -> None:
        self.dead.add(data.draw(st.sampled_from(self._live())).name)

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data())
    def pause_or_resume(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self._live()))
        d.paused = not d.paused

    @rule(step=st.sampled_from([0.1, 0.5, BEAT, LEASE]), delay=st.sampled_from([0.0, 0.05, 0.3]))
    def advance(self, step: float, delay: float) -> None:
        """Time passes; every live, running daemon beats when its turn comes."""
        end = self.now + step
        while True:
            due = [d for d in self._live() if not d.paused and d.next_beat <= end]
            if not due:
                break
            d = min(due, key=lambda d: d.next_beat)
            self.now = max(self.now, d.next_beat)
            self._beat(d, delay)
        self.now = end

    @invariant()
    def no_slice_is_served_twice(self) -> None:
        seen: dict[int, str] = {}
        for d in self._live():
            for s in d.serving(self.now):
                assert s not in seen, f"slice {s} served by {seen[s]} and {d.name}"
                seen[s] = d.name

    def teardown(self) -> None:
        """Once every daemon runs again, a few lease periods give every slice an owner."""
        running = self._live()
        if not running:
            return
        for d in running:
            d.paused = False
        for _ in range(int(4 * LEASE / 0.5)):
            self.advance(0.5, 0.0)
            self.no_slice_is_served_twice()
        served = [d.serving(self.now) for d in running]
        assert set().union(*served) == set(range(SLICES))
        assert max(map(len, served)) <= share(len(running))


SliceOwnership.TestCase.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)
test_slice_ownership = SliceOwnership.TestCase
