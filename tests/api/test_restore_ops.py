"""The restore-point and run-listing ops through their handlers: labels, ``load`` by
``snapshot_id``, ``list_runs`` paging, and every bad input answered as ``bad_request``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest

from snapshotd.api.ops import OPS
from snapshotd.config import Config, InstanceConfig, SocketConfig
from snapshotd.domain.errors import BadRequest, Corrupt, NotFound
from snapshotd.domain.policies import Policy
from snapshotd.journals.memory import MemoryJournal
from snapshotd.runtime import Daemon, open_daemon

pytestmark = pytest.mark.anyio


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    instance = InstanceConfig("default", "memory:", Policy(snapshot_threshold=None), 100)
    cfg = Config(SocketConfig(), {"default": instance}, {})
    async with open_daemon(cfg, journals={"default": MemoryJournal()}, drain_timeout_s=1) as d:
        yield d


async def op(daemon: Daemon, name: str, **fields: Any) -> Any:
    result = await OPS[name](daemon, {"op": name, "instance": "default", **fields})
    return orjson.loads(orjson.dumps(result))


async def run_with_events(daemon: Daemon, run: str, count: int, workflow: str = "wf") -> None:
    await op(daemon, "create_run", run=run, workflow=workflow, version="v1")
    if count:
        events = [{"type": "step", "data": {"n": i}} for i in range(count)]
        await op(daemon, "append", run=run, events=events)


async def test_label_is_kept_and_listed_with_stored_bytes(daemon: Daemon) -> None:
    await run_with_events(daemon, "r", 3)
    taken = await op(daemon, "snapshot_now", run="r", kind="safety", label="before-migration-42")
    await op(daemon, "append", run="r", events=[{"type": "step", "data": 1}])
    plain = await op(daemon, "snapshot_now", run="r", force=True)
    listed = (await op(daemon, "list_snapshots", run="r"))["snapshots"]
    assert [(s["snapshot_id"], s["label"]) for s in listed] == [
        (plain["snapshot_id"], None),
        (taken["snapshot_id"], "before-migration-42"),
    ]
    # the newer `steps` snapshot is stored as a delta on the older one
    assert 0 < listed[0]["stored_bytes"] < listed[0]["size_bytes"]
    assert listed[1]["stored_bytes"] == listed[1]["size_bytes"] > 0
    audit = (await op(daemon, "audit"))["events"]
    labels = [e.get("label") for e in audit if e["kind"] == "snapshot_taken"]
    assert labels == ["before-migration-42", None]


@pytest.mark.parametrize("label", ["", "x" * 129, 5, ["a"], "line\nbreak", "nul\x00"])
async def test_bad_labels_are_bad_requests(daemon: Daemon, label: object) -> None:
    await run_with_events(daemon, "r", 1)
    with pytest.raises(BadRequest, match="label"):
        await op(daemon, "snapshot_now", run="r", force=True, label=label)
    assert (await op(daemon, "list_snapshots", run="r"))["snapshots"] == []


async def test_a_label_may_be_128_characters(daemon: Daemon) -> None:
    await run_with_events(daemon, "r", 1)
    await op(daemon, "snapshot_now", run="r", force=True, label="é" * 128)
    (listed,) = (await op(daemon, "list_snapshots", run="r"))["snapshots"]
    assert listed["label"] == "é" * 128


async def test_load_by_snapshot_id_and_its_errors(daemon: Daemon) -> None:
    await run_with_events(daemon, "r", 3)
    first = await op(daemon, "snapshot_now", run="r", force=True)
    await op(daemon, "append", run="r", events=[{"type": "step", "data": 3}] * 4)
    await op(daemon, "snapshot_now", run="r", force=True)
    loaded = await op(daemon, "load", run="r", snapshot_id=first["snapshot_id"], limit=3)
    assert loaded["snapshot"]["snapshot_id"] == first["snapshot_id"]
    assert [e["seq"] for e in loaded["events"]] == [4, 5, 6]
    assert (loaded["next_after"], loaded["has_more"]) == (6, True)
    rest = await op(daemon, "load", run="r", after_seq=loaded["next_after"])
    assert ([e["seq"] for e in rest["events"]], rest["snapshot"]) == ([7], None)

    with pytest.raises(BadRequest, match="after_seq"):
        await op(daemon, "load", run="r", snapshot_id=first["snapshot_id"], after_seq=0)
    for bad in ("", 7, ["x"], "x" * 129):
        with pytest.raises(BadRequest, match="snapshot_id"):
            await op(daemon, "load", run="r", snapshot_id=bad)
    with pytest.raises(NotFound):
        await op(daemon, "load", run="r", snapshot_id="no-such-snapshot")
    await run_with_events(daemon, "other", 1)
    with pytest.raises(NotFound):
        await op(daemon, "load", run="other", snapshot_id=first["snapshot_id"])


async def test_load_by_id_of_a_damaged_snapshot_is_corrupt(daemon: Daemon) -> None:
    await run_with_events(daemon, "r", 2)
    taken = await op(daemon, "snapshot_now", run="r", force=True)
    journal = daemon.instance("default").journal
    assert isinstance(journal, MemoryJournal)
    stored = await journal.read_snapshot("r", taken["snapshot_id"])
    await journal.delete_snapshots("r", [taken["snapshot_id"]])
    await journal.write_snapshot(replace(stored, payload=b'{"steps":{}} '), lease=None)
    with pytest.raises(Corrupt, match="checksum"):
        await op(daemon, "load", run="r", snapshot_id=taken["snapshot_id"])
    # No fallback when asked for by id; without one, load falls back to full history.
    assert (await op(daemon, "load", run="r"))["snapshot"] is None
    (listed,) = (await op(daemon, "list_runs"))["runs"]
    assert listed["snapshot_through_seq"] is None


async def test_list_runs_pages_with_defaults(daemon: Daemon) -> None:
    ids = [f"run-{i:03d}" for i in range(101)]
    for index, run in enumerate(ids):
        await run_with_events(daemon, run, index % 3, workflow="even" if index % 2 == 0 else "odd")
    first = await op(daemon, "list_runs")
    assert [r["run_id"] for r in first["runs"]] == ids[:100]
    assert (first["next_after"], first["has_more"]) == ("run-099", True)
    last = await op(daemon, "list_runs", after=first["next_after"])
    assert last == {
        "runs": [
            {
                "run_id": "run-100",
                "workflow": "even",
                "version": "v1",
                "last_seq": 1,
                "snapshot_through_seq": None,
            }
        ],
        "next_after": "run-100",
        "has_more": False,
    }
    assert await op(daemon, "list_runs", after="run-100") == {
        "runs": [],
        "next_after": None,
        "has_more": False,
    }
    odd = await op(daemon, "list_runs", workflow="odd", limit=1000)
    assert [r["run_id"] for r in odd["runs"]] == ids[1::2]
    await op(daemon, "snapshot_now", run="run-005", force=True)
    (row,) = (await op(daemon, "list_runs", after="run-004", limit=1))["runs"]
    assert (row["run_id"], row["last_seq"], row["snapshot_through_seq"]) == ("run-005", 2, 2)


@pytest.mark.parametrize(
    "fields",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "5"},
        {"limit": True},
        {"limit": 2.0},
        {"after": ""},
        {"after": 5},
        {"after": "bad\nid"},
        {"workflow": ""},
        {"workflow": 3},
        {"workflow": "w" * 129},
    ],
)
async def test_list_runs_bad_inputs(daemon: Daemon, fields: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match=next(iter(fields))):
        await op(daemon, "list_runs", **fields)
