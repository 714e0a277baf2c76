"""The daemon's task tree: every instance's journal opened, one supervised actor each.

``open_daemon`` resolves everything named in the config (reducers, savepoint
upgrades, journals) before serving, so a bad name fails start-up with a message
naming its key. Exit drains: intake stops, attempts in flight finish (bounded by
``drain_timeout_s``), queued requests are discarded, journals are closed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import structlog

from snapshotd import __version__
from snapshotd.config import Config
from snapshotd.domain.errors import ConfigError, SnapshotdError, UnknownInstance
from snapshotd.domain.reducers import Reducer, import_callable, resolve
from snapshotd.journals.base import Journal
from snapshotd.journals.factory import journal_from_url
from snapshotd.runtime.actor import run_instance
from snapshotd.runtime.instance import Instance, UpgradeFn

_log = structlog.get_logger("snapshotd.daemon")

DRAIN_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 2.0


class Daemon:
    """The running instances, by name."""

    def __init__(self, instances: dict[str, Instance]) -> None:
        self.instances = instances
        self.started_at = time.monotonic()

    def instance(self, name: str) -> Instance:
        """The named instance; raises UnknownInstance."""
        try:
            return self.instances[name]
        except KeyError:
            raise UnknownInstance(f"unknown instance {name[:128]!r}") from None

    def status(self) -> dict[str, Any]:
        """The ``status`` op result."""
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "instances": {name: inst.status() for name, inst in self.instances.items()},
        }


def _resolve_names(config: Config) -> tuple[dict[str, Reducer], dict[str, UpgradeFn]]:
    """Import every reducer and savepoint_upgrade the config names, naming the key on error."""
    reducers: dict[str, Reducer] = {}
    upgrades: dict[str, UpgradeFn] = {}
    named: list[tuple[str, str, str | None]] = []
    for name, inst in config.instances.items():
        named.append((f"instances.{name}.reducer", "reducer", inst.policy.reducer))
        named.append(
            (f"instances.{name}.savepoint_upgrade", "upgrade", inst.policy.savepoint_upgrade)
        )
    for name, wf in config.workflows.items():
        named.append((f"workflows.{name}.reducer", "reducer", wf.overrides.get("reducer")))
        named.append(
            (
                f"workflows.{name}.savepoint_upgrade",
                "upgrade",
                wf.overrides.get("savepoint_upgrade"),
            )
        )
    for key, what, spec in named:
        if spec is None or spec in (reducers if what == "reducer" else upgrades):
            continue
        try:
            if what == "reducer":
                reducers[spec] = resolve(spec)
            else:
                upgrades[spec] = import_callable(spec, "savepoint_upgrade")
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return reducers, upgrades


@asynccontextmanager
async def open_daemon(
    config: Config,
    *,
    journals: Mapping[str, Journal] | None = None,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
) -> AsyncIterator[Daemon]:
    """Open every journal, start each instance's actor, sweep and watcher; drain on exit.

    ``journals`` replaces the configured journal of the named instances (tests).
    Raises ConfigError for an unresolvable name and what a journal's ``open`` raises.
    """
    reducers, upgrades = _resolve_names(config)
    async with AsyncExitStack() as stack:
        instances: dict[str, Instance] = {}
        for name, inst_config in config.instances.items():
            given = (journals or {}).get(name)
            try:
                journal = (
                    given
                    if given is not None
                    else journal_from_url(inst_config.journal, listen_dsn=inst_config.listen_dsn)
                )
            except ConfigError as exc:
                raise ConfigError(f"instances.{name}.journal: {exc}") from None
            await journal.open()
            stack.push_async_callback(_close_journal, name, journal)
            instance = Instance(inst_config, journal, config.workflows, reducers, upgrades)
            stack.callback(instance.telemetry.forget)
            stack.callback(instance.health.forget)
            instances[name] = instance
        daemon = Daemon(instances)
        for instance in instances.values():
            await instance.record_config(config.workflows)
        async with anyio.create_task_group() as tg:
            done: list[anyio.Event] = []
            for instance in instances.values():
                finished = anyio.Event()
                done.append(finished)
                await tg.start(_serve_instance, instance, finished)
            try:
                yield daemon
            finally:
                with anyio.CancelScope(shield=True):
                    for instance in instances.values():
                        instance.stop_intake()
                    with anyio.move_on_after(drain_timeout_s) as waited:
                        for finished in done:
                            await finished.wait()
                    if waited.cancelled_caught:
                        _log.warning("drain_timeout", timeout_s=drain_timeout_s)
                    tg.cancel_scope.cancel()


async def _serve_instance(
    instance: Instance, finished: anyio.Event, *, task_status: Any = anyio.TASK_STATUS_IGNORED
) -> None:
    try:
        await run_instance(instance, task_status=task_status)
    finally:
        finished.set()


async def _close_journal(name: str, journal: Journal) -> None:
    with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True) as scope:
        try:
            await journal.aclose()
        except (SnapshotdError, OSError) as exc:
            _log.warning(
                "journal_close_failed", instance=name, error=f"{type(exc).__name__}: {exc}"
            )
    if scope.cancelled_caught:
        _log.warning("journal_close_timeout", instance=name, timeout_s=CLOSE_TIMEOUT_S)
