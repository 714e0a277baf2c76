"""Savepoint ops end to end: the op handlers on a running daemon, then a real daemon
process killed with SIGKILL in the middle of a sequence and restarted on the same files.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapshotd.api.client import Client, ClientError
from snapshotd.api.ops import OPS
from snapshotd.config import Config, InstanceConfig, SocketConfig, WorkflowConfig
from snapshotd.domain.errors import BadRequest, ConfigError, Conflict, Internal, NotFound
from snapshotd.domain.policies import Policy
from snapshotd.journals.memory import MemoryJournal
from snapshotd.runtime import Daemon, open_daemon
from tests.domain.test_savepoints import ReferenceModel

HERE = "tests.e2e.test_savepoints_e2e"


def rename_counter(entities: dict[str, Any]) -> dict[str, Any]:
    """A savepoint_upgrade: state ``{"n": N}`` becomes ``{"count": N}``."""
    return {name: {"count": state["n"]} for name, state in entities.items()}


def count_from_n(entities: dict[str, Any]) -> dict[str, Any]:
    """``rename_counter`` that also accepts states it has already upgraded."""
    return {name: {"count": state.get("n", state.get("count"))} for name, state in entities.items()}


def explode(entities: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("cannot migrate")


def config(**workflows: dict[str, Any]) -> Config:
    instance = InstanceConfig("default", "memory:", Policy(keep_snapshots=2), 100)
    flows = {name: WorkflowConfig(name, overrides) for name, overrides in workflows.items()}
    return Config(SocketConfig(), {"default": instance}, flows)


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    cfg = config(
        upgraded={"savepoint_upgrade": f"{HERE}:rename_counter"},
        broken={"savepoint_upgrade": f"{HERE}:explode"},
        migrated={"savepoint_upgrade": f"{HERE}:count_from_n"},
    )
    async with open_daemon(cfg, journals={"default": MemoryJournal()}, drain_timeout_s=1) as d:
        yield d


async def op(daemon: Daemon, name: str, **fields: Any) -> dict[str, Any]:
    return await OPS[name](daemon, {"op": name, "instance": "default", **fields})


async def started(daemon: Daemon, run: str, workflow: str = "plain") -> None:
    await op(daemon, "create_run", run=run, workflow=workflow, version="v1")
    await op(
        daemon,
        "savepoint_init",
        run=run,
        start_ms=1000,
        interval_ms=100,
        entities={"a": {"n": 0}, "b": {"n": 0}},
    )


@pytest.mark.anyio
async def test_ops_complete_load_and_audit(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    await started(daemon, "r1")
    counted: list[tuple[str, int]] = []
    telemetry = daemon.instance("default").telemetry
    monkeypatch.setattr(
        telemetry, "savepoints_completed", lambda n: counted.append(("completed", n))
    )
    monkeypatch.setattr(telemetry, "savepoints_pruned", lambda n: counted.append(("pruned", n)))
    with pytest.raises(NotFound):
        await op(daemon, "savepoint_load", run="r1")
    assert (
        await op(daemon, "savepoint_save", run="r1", entity="a", timestamp_ms=1150, state={"n": 1})
        == {}
    )
    await op(daemon, "savepoint_save", run="r1", entity="a", timestamp_ms=1420, state={"n": 2})
    await op(daemon, "savepoint_ack", run="r1", entity="b", timestamp_ms=1400)
    result = await op(daemon, "savepoint_load", run="r1")
    assert result == {"timestamp_ms": 1400, "entities": {"a": {"n": 1}, "b": {"n": 0}}}
    assert counted == [("completed", 4), ("pruned", 2)]
    audit = await daemon.instance("default").audit(0, 1000)
    completed = [e for e in audit["events"] if e["kind"] == "savepoint_completed"]
    assert completed[-1] | {"cursor": 0, "at": None} == {
        "cursor": 0,
        "at": None,
        "kind": "savepoint_completed",
        "run_id": "r1",
        "timestamp_ms": 1400,
        "completed": 4,
        "pruned": 2,
    }


@pytest.mark.anyio
async def test_ops_reject_what_the_contract_rejects(daemon: Daemon) -> None:
    with pytest.raises(NotFound):
        await op(
            daemon, "savepoint_init", run="ghost", start_ms=0, interval_ms=1, entities={"a": 1}
        )
    await op(daemon, "create_run", run="r2", workflow="plain", version="v1")
    with pytest.raises(NotFound, match="savepoint_init"):
        await op(daemon, "savepoint_ack", run="r2", entity="a", timestamp_ms=5)
    for bad in (
        {"start_ms": 0, "interval_ms": 0, "entities": {"a": 1}},
        {"start_ms": 0, "interval_ms": 1, "entities": {}},
        {"start_ms": "0", "interval_ms": 1, "entities": {"a": 1}},
        {"start_ms": 0, "interval_ms": 1, "entities": {"": 1}},
    ):
        with pytest.raises(BadRequest):
            await op(daemon, "savepoint_init", run="r2", **bad)
    await started(daemon, "r3")
    with pytest.raises(Conflict):
        await op(daemon, "savepoint_init", run="r3", start_ms=0, interval_ms=1, entities={"a": 1})
    await op(daemon, "savepoint_ack", run="r3", entity="a", timestamp_ms=1200)
    with pytest.raises(BadRequest, match="backwards"):
        await op(daemon, "savepoint_save", run="r3", entity="a", timestamp_ms=1199, state=1)
    with pytest.raises(BadRequest, match="not declared"):
        await op(daemon, "savepoint_ack", run="r3", entity="c", timestamp_ms=1300)
    with pytest.raises(BadRequest, match="state"):
        await op(daemon, "savepoint_save", run="r3", entity="a", timestamp_ms=1300)
    with pytest.raises(BadRequest, match="timestamp_ms"):
        await op(daemon, "savepoint_ack", run="r3", entity="a", timestamp_ms=1.5)


@pytest.mark.anyio
async def test_upgrade_is_applied_and_its_failure_is_a_clear_error(daemon: Daemon) -> None:
    for run, workflow in (("up", "upgraded"), ("bad", "broken")):
        await started(daemon, run, workflow)
        await op(daemon, "savepoint_save", run=run, entity="a", timestamp_ms=1100, state={"n": 7})
        await op(daemon, "savepoint_ack", run=run, entity="b", timestamp_ms=1100)
    result = await op(daemon, "savepoint_load", run="up")
    assert result["entities"] == {"a": {"count": 7}, "b": {"count": 0}}
    with pytest.raises(Internal, match=r"explode.*ValueError: cannot migrate"):
        await op(daemon, "savepoint_load", run="bad")
    assert await op(daemon, "ping") == {"pong": True}


@pytest.mark.anyio
async def test_resume_restarts_from_the_upgraded_savepoint(daemon: Daemon) -> None:
    await started(daemon, "rs", "migrated")
    resumed = await op(daemon, "savepoint_load", run="rs", resume=True)
    assert resumed == {"timestamp_ms": 1000, "entities": {"a": {"count": 0}, "b": {"count": 0}}}
    await op(daemon, "savepoint_save", run="rs", entity="a", timestamp_ms=1150, state={"n": 1})
    await op(daemon, "savepoint_save", run="rs", entity="a", timestamp_ms=1380, state={"n": 3})
    await op(daemon, "savepoint_ack", run="rs", entity="b", timestamp_ms=1200)
    resumed = await op(daemon, "savepoint_load", run="rs", resume=True)
    assert resumed == {"timestamp_ms": 1200, "entities": {"a": {"count": 1}, "b": {"count": 0}}}
    # a's report at 1380 is forgotten: it re-processes from 1200 with other results.
    await op(daemon, "savepoint_save", run="rs", entity="a", timestamp_ms=1250, state={"count": 9})
    await op(daemon, "savepoint_ack", run="rs", entity="a", timestamp_ms=1300)
    await op(daemon, "savepoint_ack", run="rs", entity="b", timestamp_ms=1300)
    plain = await op(daemon, "savepoint_load", run="rs")
    assert plain == {"timestamp_ms": 1300, "entities": {"a": {"count": 9}, "b": {"count": 0}}}
    with pytest.raises(BadRequest, match="backwards"):
        await op(daemon, "savepoint_ack", run="rs", entity="a", timestamp_ms=1299)
    audit = await daemon.instance("default").audit(0, 1000)
    assert [e["timestamp_ms"] for e in audit["events"] if e["kind"] == "savepoint_resumed"] == [
        1000,
        1200,
    ]


@pytest.mark.anyio
async def test_resume_rejects_bad_input_and_a_broken_upgrade(daemon: Daemon) -> None:
    await started(daemon, "rb", "broken")
    for bad in ("yes", 1, None):
        with pytest.raises(BadRequest, match="resume must be a boolean"):
            await op(daemon, "savepoint_load", run="rb", resume=bad)
    with pytest.raises(Internal, match="cannot migrate"):
        await op(daemon, "savepoint_load", run="rb", resume=True)
    await op(daemon, "create_run", run="none", workflow="plain", version="v1")
    with pytest.raises(NotFound, match="savepoint_init"):
        await op(daemon, "savepoint_load", run="none", resume=True)
    with pytest.raises(NotFound):
        await op(daemon, "savepoint_load", run="ghost", resume=True)


@pytest.mark.anyio
async def test_missing_upgrade_callable_fails_start_up() -> None:
    cfg = config(flow={"savepoint_upgrade": f"{HERE}:no_such_function"})
    with pytest.raises(ConfigError, match=r"workflows\.flow\.savepoint_upgrade"):
        async with open_daemon(cfg, journals={"default": MemoryJournal()}):
            pass


# a real daemon, killed -------------------------------------------------------------


class Daemon9:
    """``snapshotd serve`` in a subprocess, on an fs journal that outlives it."""

    def __init__(self, tmp: Path) -> None:
        self.socket = str(tmp / "s.sock")
        self.config = tmp / "snapshotd.toml"
        self.config.write_text(
            f'[socket]\npath = "{self.socket}"\n\n'
            f'[instances.default]\njournal = "fs:{tmp / "data"}"\nkeep_snapshots = 3\n'
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Client:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SNAPSHOTD_"))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "snapshotd", "serve", "--config", str(self.config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = Client(self.socket, timeout=10)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.call("ping")
                return client
            except ClientError:
                assert self.process.poll() is None, "daemon exited at start-up"
                assert time.monotonic() < deadline, "daemon did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


@pytest.fixture
def daemon9(tmp_path: Path) -> Iterator[Daemon9]:
    process = Daemon9(tmp_path)
    try:
        yield process
    finally:
        process.stop()


ENTITIES = {f"e{i}": {"init": i} for i in range(3)}
Step = tuple[str, int, bool]


def random_steps(seed: int, count: int) -> list[Step]:
    """Saves (60%) and acks in non-decreasing time per entity."""
    rng = random.Random(seed)
    clock = dict.fromkeys(ENTITIES, 0)
    steps: list[Step] = []
    for _ in range(count):
        name = rng.choice(list(ENTITIES))
        clock[name] += rng.randint(0, 12)
        steps.append((name, clock[name], rng.random() < 0.6))
    return steps


def send(client: Client, index: int, step: Step) -> None:
    name, t, saved = step
    if saved:
        client.call("savepoint_save", run="r", entity=name, timestamp_ms=t, state={"i": index})
    else:
        client.call("savepoint_ack", run="r", entity=name, timestamp_ms=t)


def latest(client: Client) -> tuple[int, dict[str, Any]] | None:
    try:
        loaded = client.call("savepoint_load", run="r")
    except ClientError as exc:
        assert exc.code == "not_found"
        return None
    return loaded["timestamp_ms"], loaded["entities"]


def model_after(steps: list[Step]) -> ReferenceModel:
    model = ReferenceModel(0, 10, ENTITIES, keep=3)
    for index, (name, t, saved) in enumerate(steps):
        assert model.record(name, t, saved, {"i": index})
    return model


def expected_latest(steps: list[Step]) -> tuple[int, dict[str, Any]] | None:
    kept = model_after(steps).kept()
    return kept[-1] if kept else None


def started_daemon(daemon9: Daemon9) -> Client:
    client = daemon9.start()
    client.call("create_run", run="r", workflow="wf", version="v1")
    client.call("savepoint_init", run="r", start_ms=0, interval_ms=10, entities=ENTITIES)
    return client


def test_kill_9_between_requests_changes_nothing(daemon9: Daemon9) -> None:
    steps = random_steps(7, 120)
    client = started_daemon(daemon9)
    for index, step in enumerate(steps):
        if index == len(steps) // 2:
            daemon9.kill()
            client.close()
            client = daemon9.start()
            with pytest.raises(ClientError) as again:
                client.call(
                    "savepoint_init", run="r", start_ms=0, interval_ms=10, entities=ENTITIES
                )
            assert again.value.code == "conflict"
        send(client, index, step)
        assert latest(client) == expected_latest(steps[: index + 1])
    assert expected_latest(steps) is not None, "the sequence should complete savepoints"
    client.close()


def test_resume_is_durable_across_kill_9(daemon9: Daemon9) -> None:
    client = started_daemon(daemon9)
    client.savepoint_save("r", "e0", 15, {"i": 1})
    client.savepoint_save("r", "e0", 47, {"i": 2})
    for name in ENTITIES:
        if name != "e0":
            client.savepoint_ack("r", name, 20)
    resumed = client.savepoint_load("r", resume=True)
    assert resumed == {"timestamp_ms": 20, "entities": {**ENTITIES, "e0": {"i": 1}}}
    daemon9.kill()
    client.close()
    client = daemon9.start()
    client.savepoint_ack("r", "e0", 21)  # before the resume, e0 had reached 47
    with pytest.raises(ClientError) as backwards:
        client.savepoint_ack("r", "e0", 19)
    assert backwards.value.code == "bad_request"
    client.close()


def test_kill_9_during_a_stream_loses_no_acknowledged_report(daemon9: Daemon9) -> None:
    """Killed at a random point while reports stream in: every acknowledged one survives,
    the one in flight is all or nothing, and resending it completes exactly the same."""
    steps = random_steps(11, 600)
    client = started_daemon(daemon9)
    acknowledged = 0

    def stream() -> None:
        nonlocal acknowledged
        with contextlib.suppress(OSError, ClientError):
            for index, step in enumerate(steps):
                send(client, index, step)
                acknowledged = index + 1

    sender = threading.Thread(target=stream)
    sender.start()
    time.sleep(random.uniform(0.15, 0.4))
    daemon9.kill()
    sender.join(timeout=10)
    client.close()
    done = acknowledged
    assert 0 < done < len(steps), "the kill should land mid-stream"
    client = daemon9.start()
    assert latest(client) in (expected_latest(steps[:done]), expected_latest(steps[: done + 1]))
    for index in range(done, len(steps)):
        send(client, index, steps[index])
    assert latest(client) == expected_latest(steps)
    client.close()
