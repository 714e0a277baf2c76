"""The savepoint ops of SPEC section 7: ``savepoint_init``, ``_save``, ``_ack`` and ``_load``.

Each instance gets one ``SavepointService`` (created on first use, so the
runtime needs no savepoint wiring); its per-run locks then cover every
connection. ``savepoint_load`` applies the workflow's ``savepoint_upgrade``
callable; a failure in it is answered as ``internal`` with the callable's error,
and the daemon carries on. With ``resume`` it also sets every entity back to the
loaded savepoint (or to its initial state when none is complete yet).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from snapshotd.domain import validation
from snapshotd.domain.errors import BadRequest, Internal
from snapshotd.domain.savepoints import Progress
from snapshotd.runtime.savepoints import SavepointService

if TYPE_CHECKING:
    from snapshotd.runtime import Daemon, Instance

Request = dict[str, Any]
Result = dict[str, Any]

_services: weakref.WeakKeyDictionary[Instance, SavepointService] = weakref.WeakKeyDictionary()


def service_for(instance: Instance) -> SavepointService:
    service = _services.get(instance)
    if service is None:
        service = _services[instance] = SavepointService(
            instance.journal, instance.policy_for, instance.health.corruption_found
        )
    return service


def _target(daemon: Daemon, req: Request) -> tuple[Instance, str]:
    return daemon.instance(req["instance"]), validation.run_id(req.get("run"), "run")


def _entity_id(value: object, field: str) -> str:
    return validation.run_id(value, field)


def _time(req: Request, field: str) -> int:
    return validation.integer(
        req.get(field), field, minimum=validation.INT64_MIN, maximum=validation.INT64_MAX
    )


async def savepoint_init(daemon: Daemon, req: Request) -> Result:
    instance, run_id = _target(daemon, req)
    start_ms = _time(req, "start_ms")
    interval_ms = validation.integer(
        req.get("interval_ms"), "interval_ms", minimum=1, maximum=validation.INT64_MAX
    )
    entities = req.get("entities")
    if type(entities) is not dict or not entities:
        raise BadRequest("entities must be an object {ENTITY_ID: STATE} with at least one entity")
    for name in entities:
        _entity_id(name, "entities key")
    await service_for(instance).init(
        run_id, start_ms=start_ms, interval_ms=interval_ms, entities=entities
    )
    return {}


async def _reported(
    instance: Instance, run_id: str, update: Callable[[], Awaitable[Progress]]
) -> Result:
    progress = await update()
    if progress.completed:
        instance.telemetry.savepoints_completed(progress.completed)
        instance.telemetry.savepoints_pruned(progress.pruned)
        await instance.record_audit(
            "savepoint_completed",
            run_id=run_id,
            timestamp_ms=progress.latest_ms,
            completed=progress.completed,
            pruned=progress.pruned,
        )
    return {}


async def savepoint_save(daemon: Daemon, req: Request) -> Result:
    instance, run_id = _target(daemon, req)
    entity = _entity_id(req.get("entity"), "entity")
    timestamp_ms = _time(req, "timestamp_ms")
    if "state" not in req:
        raise BadRequest("state is required (any JSON value)")
    state = req["state"]
    service = service_for(instance)
    return await _reported(
        instance, run_id, lambda: service.save(run_id, entity, timestamp_ms, state)
    )


async def savepoint_ack(daemon: Daemon, req: Request) -> Result:
    instance, run_id = _target(daemon, req)
    entity = _entity_id(req.get("entity"), "entity")
    timestamp_ms = _time(req, "timestamp_ms")
    service = service_for(instance)
    return await _reported(instance, run_id, lambda: service.ack(run_id, entity, timestamp_ms))


def _check_upgraded(spec: str | None, entities: Any) -> None:
    """The callable's result must still be storable JSON of the form ``{ID: STATE}``."""
    if type(entities) is not dict or any(type(key) is not str for key in entities):
        raise Internal(f"savepoint_upgrade {spec!r} must return an object {{ID: STATE}}")
    try:
        validation.json_value(entities, "its result")
    except BadRequest as exc:
        raise Internal(f"savepoint_upgrade {spec!r}: {exc.message}") from None
    except TypeError:
        raise Internal(f"savepoint_upgrade {spec!r} returned a value that is not JSON") from None


def _upgraded(instance: Instance, workflow: str, entities: dict[str, Any]) -> Any:
    """``entities`` through the workflow's ``savepoint_upgrade`` (unchanged without one)."""
    upgrade = instance.savepoint_upgrade_for(workflow)
    if upgrade is None:
        return entities
    spec = instance.policy_for(workflow).savepoint_upgrade
    try:
        upgraded = upgrade(entities)
    except Exception as exc:  # user code: any failure is the caller's answer
        raise Internal(f"savepoint_upgrade {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    _check_upgraded(spec, upgraded)
    return upgraded


def _resumable(instance: Instance, workflow: str, entities: dict[str, Any]) -> dict[str, Any]:
    """Upgraded states that can become the entities' bases: the same entity ids."""
    upgraded: dict[str, Any] = _upgraded(instance, workflow, entities)
    if set(upgraded) != set(entities):
        spec = instance.policy_for(workflow).savepoint_upgrade
        raise Internal(f"savepoint_upgrade {spec!r} changed the entity ids; resume needs them kept")
    return upgraded


async def savepoint_load(daemon: Daemon, req: Request) -> Result:
    instance, run_id = _target(daemon, req)
    resume = req.get("resume", False)
    if type(resume) is not bool:
        raise BadRequest("resume must be a boolean")
    service = service_for(instance)
    if resume:
        loaded = await service.resume(
            run_id, lambda workflow, states: _resumable(instance, workflow, states)
        )
        entities = loaded.savepoint.entities
        await instance.record_audit(
            "savepoint_resumed", run_id=run_id, timestamp_ms=loaded.savepoint.timestamp_ms
        )
    else:
        loaded = await service.load(run_id)
        entities = _upgraded(instance, loaded.workflow, loaded.savepoint.entities)
    return {"timestamp_ms": loaded.savepoint.timestamp_ms, "entities": entities}


SAVEPOINT_FIELDS: dict[str, str] = {
    "savepoint_init": "run start_ms interval_ms entities",
    "savepoint_save": "run entity timestamp_ms state",
    "savepoint_ack": "run entity timestamp_ms",
    "savepoint_load": "run resume",
}
"""The fields of each savepoint op besides the envelope, space-separated."""

SAVEPOINT_OPS: dict[str, Callable[[Daemon, Request], Awaitable[Result]]] = {
    "savepoint_init": savepoint_init,
    "savepoint_save": savepoint_save,
    "savepoint_ack": savepoint_ack,
    "savepoint_load": savepoint_load,
}
