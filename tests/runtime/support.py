"""Helpers for runtime tests: a journal with injectable faults and quick builders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from snapshotd.config import Config, InstanceConfig, SocketConfig, WorkflowConfig
from snapshotd.domain.model import NewEvent, utcnow
from snapshotd.domain.policies import Policy
from snapshotd.domain.reducers import BUILTIN
from snapshotd.journals.base import Journal
from snapshotd.journals.memory import MemoryJournal
from snapshotd.runtime.instance import Instance

_FAULTABLE = (
    "append",
    "get_run",
    "list_snapshots",
    "read_snapshot",
    "list_links",
    "read_link",
    "retire_snapshots",
    "read_events",
    "read_event_page",
    "write_snapshot",
    "delete_snapshots",
    "due_runs",
    "append_audit",
    "read_audit",
)


class FaultyJournal(MemoryJournal):
    """A MemoryJournal whose chosen methods raise, or wait, before doing their work.

    ``faults[name] = exc`` makes every call of ``name`` raise ``exc``;
    ``delays[name] = seconds`` makes it sleep first (drain tests).
    """

    def __init__(self) -> None:
        super().__init__()
        self.faults: dict[str, BaseException] = {}
        self.delays: dict[str, float] = {}
        self.calls: dict[str, int] = {}


def _faulty(name: str) -> Any:
    original = getattr(MemoryJournal, name)

    async def method(self: FaultyJournal, *args: Any, **kwargs: Any) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.delays:
            await anyio.sleep(self.delays[name])
        if name in self.faults:
            raise self.faults[name]
        return await original(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in _FAULTABLE:
    setattr(FaultyJournal, _name, _faulty(_name))


def make_instance(
    journal: Journal | None = None,
    *,
    capacity: int = 100,
    workflows: dict[str, dict[str, Any]] | None = None,
    **policy: Any,
) -> Instance:
    config = InstanceConfig("default", "memory:", Policy(**policy), capacity)
    wf = {name: WorkflowConfig(name, overrides) for name, overrides in (workflows or {}).items()}
    return Instance(config, journal or MemoryJournal(), wf, BUILTIN, {})


def make_config(
    *, capacity: int = 100, workflows: dict[str, dict[str, Any]] | None = None, **policy: Any
) -> Config:
    instance = InstanceConfig("default", "memory:", Policy(**policy), capacity)
    wf = {name: WorkflowConfig(name, overrides) for name, overrides in (workflows or {}).items()}
    return Config(SocketConfig(), {"default": instance}, wf)


async def new_run(
    journal: MemoryJournal,
    run_id: str,
    events: int = 0,
    *,
    workflow: str = "wf",
    version: str = "v1",
    lease: str | None = None,
) -> None:
    await journal.create_run(run_id, workflow, version, lease, utcnow())
    if events:
        await append(journal, run_id, events, lease=lease)


async def append(
    journal: MemoryJournal,
    run_id: str,
    count: int,
    *,
    lease: str | None = None,
    data: Sequence[Any] | None = None,
) -> int:
    payloads = list(data) if data is not None else [{"n": i} for i in range(count)]
    return await journal.append(
        run_id,
        [NewEvent("step", d) for d in payloads],
        expected_seq=None,
        lease=lease,
        now=utcnow(),
    )


async def settle(instance: Instance, timeout: float = 5.0) -> None:
    """Wait until the instance's mailbox is empty and no Job is in flight."""
    with anyio.fail_after(timeout):
        while len(instance.mailbox) or instance.in_flight:
            await anyio.sleep(0.005)


def counted(status: dict[str, Any]) -> int:
    """dropped + coalesced + taken + every skip: what the counting invariant sums."""
    return (
        status["dropped"] + status["coalesced"] + status["taken"] + sum(status["skipped"].values())
    )
