"""One snapshot attempt: every skip reason in precedence order, and what gets written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from snapshotd.domain.errors import Busy, Corrupt, StaleLease, Superseded, Unavailable
from snapshotd.domain.model import NewEvent, Snapshot, utcnow
from snapshotd.journals.base import Journal
from snapshotd.runtime.mailbox import Job
from tests.support import make_snapshot

from .support import FaultyJournal, append, make_instance, new_run

pytestmark = pytest.mark.anyio


async def now(inst: Any, run: str, **kw: Any) -> dict[str, Any]:
    kw.setdefault("lease", None)
    kw.setdefault("force", False)
    kw.setdefault("kind", "manual")
    return await inst.snapshot_now(run, **kw)


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


async def test_taken_result_and_snapshot_contents() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=3)
    await new_run(journal, "r", 5)
    result = await now(inst, "r")
    assert result["status"] == "taken"
    assert result["through_seq"] == 5
    (meta,) = await journal.list_snapshots("r")
    assert (meta.snapshot_id, meta.size_bytes, meta.kind) == (
        result["snapshot_id"],
        result["size_bytes"],
        "manual",
    )
    assert inst.status()["taken"] == 1


async def test_skip_reasons_in_precedence_order() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=10, snapshot_interval_s=0)
    assert await now(inst, "missing") == skipped("no_run")

    await new_run(journal, "leased", 20, lease="owner")
    journal.faults["write_snapshot"] = Busy("held elsewhere")
    assert await now(inst, "leased", lease="old-owner", force=True) == skipped("stale_lease")
    assert await now(inst, "leased", lease="owner", force=True) == skipped("busy")
    assert await now(inst, "leased", force=True) == skipped("busy")
    journal.faults.clear()

    disabled = make_instance(journal, snapshot_threshold=None)
    assert await now(disabled, "leased") == skipped("disabled")
    assert (await now(disabled, "leased", force=True))["status"] == "taken"
    assert await now(disabled, "leased", force=True) == skipped("no_events")
    assert await now(inst, "leased") == skipped("no_events")

    await append(journal, "leased", 3, lease="owner")
    assert await now(inst, "leased") == skipped("below_threshold")

    await new_run(journal, "bad", 12, workflow="kv")
    kv = make_instance(journal, snapshot_threshold=10, workflows={"kv": {"reducer": "last_by_key"}})
    assert await now(kv, "bad") == skipped("reducer_error")

    tiny = make_instance(journal, snapshot_threshold=1, max_snapshot_bytes=10)
    assert await now(tiny, "leased") == skipped("too_large")
    assert await journal.list_snapshots("bad") == []

    counts = {**inst.status()["skipped"]}
    assert counts["no_run"] == counts["stale_lease"] == counts["no_events"] == 1
    assert counts["busy"] == 2 and counts["below_threshold"] == 1


@pytest.mark.parametrize(
    ("method", "error", "reason"),
    [
        ("get_run", Unavailable("db down"), "journal_error"),
        ("list_snapshots", OSError(5, "EIO"), "journal_error"),
        ("read_events", Corrupt("events.jsonl line 3"), "journal_error"),
        ("list_links", Unavailable("db down"), "journal_error"),
        ("write_snapshot", StaleLease("lost"), "stale_lease"),
        ("write_snapshot", Superseded("newer exists"), "no_events"),
        ("read_events", RuntimeError("bug"), "internal"),
        ("write_snapshot", KeyError("bug"), "internal"),
    ],
)
async def test_every_failure_becomes_a_skip_reason(
    method: str, error: BaseException, reason: str
) -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=2)
    await new_run(journal, "r", 3)
    await now(inst, "r")
    await append(journal, "r", 3)
    journal.faults[method] = error
    with capture_logs() as logs:
        assert await now(inst, "r") == skipped(reason)
    assert [log["reason"] for log in logs if log["event"] == "snapshot_skipped"] == [reason]
    journal.faults.clear()
    assert (await now(inst, "r"))["status"] == "taken"
    if reason != "no_events":
        audit = (await inst.audit(0, 100))["events"]
        assert any(e["kind"] == "snapshot_skipped" and e["reason"] == reason for e in audit)


async def test_prune_failure_keeps_the_snapshot_taken() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=1)
    await new_run(journal, "r", 1)
    for _ in range(3):
        await now(inst, "r")
        await append(journal, "r", 1)
    journal.faults["delete_snapshots"] = Unavailable("db down")
    assert (await now(inst, "r"))["status"] == "taken"
    assert len(await journal.list_snapshots("r")) == 3


async def test_audit_failure_never_fails_the_attempt() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=1)
    await new_run(journal, "r", 2)
    journal.faults["append_audit"] = Unavailable("db down")
    with capture_logs() as logs:
        assert (await now(inst, "r"))["status"] == "taken"
    assert any(log["event"] == "audit_failed" for log in logs)


async def test_internal_trigger_checks_are_silent_but_other_outcomes_count() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=5, snapshot_interval_s=0)
    await new_run(journal, "r", 2)
    with capture_logs() as logs:
        await inst.handle(Job("r", None, requested=False, unchecked=True))
        await inst.handle(Job("missing", None, requested=False, unchecked=True))
    status = inst.status()
    assert status["skipped"]["below_threshold"] == 0
    assert status["skipped"]["no_run"] == 1
    assert [log["reason"] for log in logs if log["event"] == "snapshot_skipped"] == ["no_run"]

    await append(journal, "r", 5)
    await inst.handle(Job("r", None, requested=False, unchecked=True))
    assert inst.status()["taken"] == 1
    await inst.handle(Job("r", None, requested=True, unchecked=True))
    assert inst.status()["skipped"]["no_events"] == 1


async def test_safety_snapshot_always_records_one() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=None, safety_ttl_s=60)
    await new_run(journal, "empty")
    taken = await now(inst, "empty", kind="safety")
    assert (taken["status"], taken["through_seq"]) == ("taken", 0)

    await new_run(journal, "r", 4)
    assert (await now(inst, "r", force=True))["through_seq"] == 4
    assert await now(inst, "r", force=True) == skipped("no_events")
    again = await now(inst, "r", kind="safety")
    assert (again["status"], again["through_seq"]) == ("taken", 4)
    metas = {m.snapshot_id: m for m in await journal.list_snapshots("r")}
    safety = metas[again["snapshot_id"]]
    assert safety.kind == "safety" and safety.expires_at is not None
    assert (safety.expires_at - safety.created_at).total_seconds() == 60


async def test_retention_keeps_newest_pinned_and_safety() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=1, keep_snapshots=2)
    await new_run(journal, "r", 1)
    first = await now(inst, "r")
    await journal.set_pinned("r", first["snapshot_id"], True)
    ids = [first["snapshot_id"]]
    for _ in range(4):
        await append(journal, "r", 1)
        ids.append((await now(inst, "r"))["snapshot_id"])
    safety = (await now(inst, "r", kind="safety"))["snapshot_id"]
    remaining = {m.snapshot_id for m in await journal.list_snapshots("r")}
    assert remaining == {ids[0], ids[-2], ids[-1], safety}
    audit = (await inst.audit(0, 100))["events"]
    pruned = [sid for e in audit if e["kind"] == "snapshot_pruned" for sid in e["snapshot_ids"]]
    assert sorted(pruned) == sorted(ids[1:3])


async def test_version_switch_rebuilds_from_full_history() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=3)
    await new_run(journal, "r", 4)
    old = await now(inst, "r")
    await journal.set_version("r", "v2")
    await append(journal, "r", 1)
    loaded = await inst.load("r", after_seq=None, limit=100)
    assert loaded["snapshot"] is None and len(loaded["events"]) == 5

    journal.calls.clear()
    new = await now(inst, "r")
    assert journal.calls.get("read_snapshot", 0) == 0
    assert new["through_seq"] == 5
    (meta,) = await journal.list_snapshots("r")
    assert (meta.snapshot_id, meta.version) == (new["snapshot_id"], "v2")
    assert meta.snapshot_id != old["snapshot_id"]
    loaded = await inst.load("r", after_seq=None, limit=100)
    assert loaded["snapshot"]["snapshot_id"] == new["snapshot_id"]


async def test_corrupt_newest_snapshot_falls_back_and_is_reported_once() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=2, keep_snapshots=5, reducer="last_by_key")
    data = [{"key": f"k{i}", "value": i} for i in range(12)]
    await new_run(journal, "r")
    await append(journal, "r", 3, data=data[:3])
    older = await now(inst, "r")
    await append(journal, "r", 3, data=data[3:6])
    newer = await now(inst, "r")
    snap = journal._runs["r"].snapshots[newer["snapshot_id"]]
    journal._runs["r"].snapshots[newer["snapshot_id"]] = Snapshot(
        snap.meta, snap.payload[:-2] + b"!}"
    )

    with capture_logs() as logs:
        loaded = await inst.load("r", after_seq=None, limit=100)
        assert loaded["snapshot"]["snapshot_id"] == older["snapshot_id"]
        assert loaded["next_after"] == 6 and len(loaded["events"]) == 3
        await append(journal, "r", 1, data=data[6:7])
        rebuilt = await now(inst, "r")
    assert rebuilt["through_seq"] == 7
    assert sum(log["event"] == "snapshot_corrupt" for log in logs) == 1
    audit = (await inst.audit(0, 100))["events"]
    assert [e["snapshot_id"] for e in audit if e["kind"] == "snapshot_corrupt"] == [
        newer["snapshot_id"]
    ]
    fresh = await inst.load("r", after_seq=None, limit=100)
    state = fresh["snapshot"]["state"]
    assert orjson.loads(orjson.dumps(state)) == {f"k{i}": i for i in range(7)}
    report = await inst.verify("r")
    assert report["corrupt"] == [newer["snapshot_id"]] and report["drift"] == []
    assert report["checked"] == 3


async def test_verify_reports_drift_after_a_reducer_change() -> None:
    journal = FaultyJournal()
    steps = make_instance(journal, snapshot_threshold=1)
    await new_run(journal, "r", 3)
    taken = await now(steps, "r")
    assert await steps.verify("r") == {"checked": 1, "corrupt": [], "drift": []}
    patched = make_instance(
        journal, snapshot_threshold=1, workflows={"wf": {"reducer": "merge_patch"}}
    )
    assert await patched.verify("r") == {
        "checked": 1,
        "corrupt": [],
        "drift": [taken["snapshot_id"]],
    }


async def test_lag_and_base_use_the_newest_valid_snapshot() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=4)
    await new_run(journal, "r", 4)
    await now(inst, "r")
    await append(journal, "r", 4)
    journal.calls.clear()
    result = await now(inst, "r")
    assert result["through_seq"] == 8
    assert journal.calls.get("read_link", 0) == 0  # written by this process: trusted
    fresh = make_instance(journal, snapshot_threshold=4)
    await append(journal, "r", 4)
    journal.calls.clear()
    assert (await now(fresh, "r"))["through_seq"] == 12
    assert journal.calls["read_link"] >= 2  # a new process verifies the base chain once


async def test_snapshot_of_another_version_is_never_served() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=1)
    await new_run(journal, "r", 2)
    taken = await now(inst, "r")
    snap = journal._runs["r"].snapshots[taken["snapshot_id"]]
    journal._runs["r"].snapshots[taken["snapshot_id"]] = replace(
        snap, meta=replace(snap.meta, version="other")
    )
    assert (await inst.load("r", after_seq=None, limit=10))["snapshot"] is None


async def _corrupt_snapshot_at_the_tip(journal: Journal, run_id: str) -> str:
    """Run with a good snapshot through 2 and a corrupt one (checksum) through 3."""
    now_ = utcnow()
    await journal.create_run(run_id, "wf", "v1", None, now_)
    steps_ = [NewEvent("step", {"n": i}) for i in range(3)]
    await journal.append(run_id, steps_[:2], expected_seq=0, lease=None, now=now_)
    inst = make_instance(journal)
    assert (await now(inst, run_id, force=True))["through_seq"] == 2
    await journal.append(run_id, steps_[2:], expected_seq=2, lease=None, now=now_)
    good = make_snapshot(run_id, await journal.read_events(run_id, 0), now=utcnow())
    bad = Snapshot(good.meta, good.payload.replace(b'"step"', b'"stop"'))
    assert bad.payload != good.payload
    await journal.write_snapshot(bad, lease=None)
    return bad.meta.snapshot_id


async def test_corrupt_newest_snapshot_does_not_block_a_rebuild_at_its_seq(
    journal: Journal,
) -> None:
    bad = await _corrupt_snapshot_at_the_tip(journal, "r")
    inst = make_instance(journal)
    rebuilt = await now(inst, "r", force=True)
    assert (rebuilt["status"], rebuilt["through_seq"]) == ("taken", 3)
    listed = [m.snapshot_id for m in await journal.list_snapshots("r")]
    assert bad not in listed and rebuilt["snapshot_id"] == listed[0] and len(listed) == 2
    loaded = await inst.load("r", after_seq=None, limit=100)
    assert loaded["snapshot"]["snapshot_id"] == rebuilt["snapshot_id"]
    assert loaded["events"] == []
    audit = (await inst.audit(0, 100))["events"]
    kinds = [e["kind"] for e in audit]
    assert kinds == ["snapshot_taken", "snapshot_corrupt", "snapshot_pruned", "snapshot_taken"]
    assert audit[2]["snapshot_ids"] == [bad] and audit[2]["reason"] == "corrupt"
    assert await now(inst, "r", force=True) == skipped("no_events")


async def test_a_pinned_corrupt_snapshot_is_kept_and_still_blocks(journal: Journal) -> None:
    bad = await _corrupt_snapshot_at_the_tip(journal, "r")
    await journal.set_pinned("r", bad, True)
    inst = make_instance(journal)
    assert await now(inst, "r", force=True) == skipped("no_events")
    assert bad in [m.snapshot_id for m in await journal.list_snapshots("r")]
    loaded = await inst.load("r", after_seq=None, limit=100)
    assert loaded["snapshot"]["through_seq"] == 2
    audit = (await inst.audit(0, 100))["events"]
    assert "snapshot_pruned" not in [e["kind"] for e in audit]


async def test_a_corrupt_run_is_reported_once_by_whichever_op_meets_it() -> None:
    journal = FaultyJournal()
    inst = make_instance(journal, snapshot_threshold=2)
    await new_run(journal, "bad", 3)
    await new_run(journal, "good", 3)
    damage = Corrupt("/data/id-626164/events.jsonl: line 2: not valid JSON")
    for method in ("get_run", "append", "read_events", "read_event_page"):
        journal.faults[method] = damage
    with capture_logs() as logs:
        assert await now(inst, "bad", force=True) == skipped("journal_error")
        with pytest.raises(Corrupt):
            await inst.load("bad", after_seq=None, limit=10)
        with pytest.raises(Corrupt):
            await inst.verify("bad")
        with pytest.raises(Corrupt):
            await inst.append("bad", [NewEvent("step", {})], expected_seq=None, lease=None)
        await inst.handle(Job("bad", None, requested=True, unchecked=True))
    assert [log["run_id"] for log in logs if log["event"] == "run_corrupt"] == ["bad"]
    audit = (await inst.audit(0, 100))["events"]
    reported = [e for e in audit if e["kind"] == "run_corrupt"]
    assert len(reported) == 1
    assert (reported[0]["run_id"], reported[0]["error"]) == ("bad", damage.message)
    assert inst.status()["skipped"]["journal_error"] == 2
    journal.faults.clear()
    assert (await now(inst, "good"))["status"] == "taken"


@pytest.mark.parametrize("op", ["load", "verify", "append"])
async def test_each_op_reports_a_corrupt_run_it_meets_first(op: str) -> None:
    journal = FaultyJournal()
    inst = make_instance(journal)
    await new_run(journal, "bad", 3)
    journal.faults["get_run"] = journal.faults["append"] = Corrupt("line 2")
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "load": lambda: inst.load("bad", after_seq=None, limit=10),
        "verify": lambda: inst.verify("bad"),
        "append": lambda: inst.append("bad", [], expected_seq=None, lease=None),
    }
    with pytest.raises(Corrupt):
        await calls[op]()
    audit = (await inst.audit(0, 100))["events"]
    assert [(e["kind"], e["run_id"]) for e in audit] == [("run_corrupt", "bad")]
