"""The op handlers of SPEC section 2: validate fields, call the daemon, shape the result.

``OPS`` maps every op name to an async handler; ``SYNC_OPS`` holds the ops that
never await (``snapshot`` is the fire-and-forget hot path), which the server
calls inline without a task switch. Handlers raise ``SnapshotdError``s; the
server turns them into error responses. ``FIELDS`` names the fields each op
defines: the server answers any other field with ``bad_request`` before the
handler runs (a misspelt field must never silently change what a request means).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from snapshotd.api.savepoint_ops import SAVEPOINT_FIELDS, SAVEPOINT_OPS
from snapshotd.domain import validation
from snapshotd.domain.errors import BadRequest
from snapshotd.domain.model import NewEvent, SnapshotKind, utcnow
from snapshotd.journals.base import UNSET, _Unset

if TYPE_CHECKING:
    from snapshotd.runtime import Daemon, Instance

Request = dict[str, Any]
Result = dict[str, Any]
Handler = Callable[["Daemon", Request], Awaitable[Result]]
SyncHandler = Callable[["Daemon", Request], Result]

ENVELOPE = ("op", "id", "instance")
"""Fields every request may carry (SPEC section 2)."""
EVENT_FIELDS = frozenset(("type", "data"))
MAX_EVENTS = 10_000
LOAD_LIMIT_DEFAULT, LOAD_LIMIT_MAX = 10_000, 100_000
AUDIT_LIMIT_DEFAULT, AUDIT_LIMIT_MAX = 100, 1_000
RUNS_LIMIT_DEFAULT, RUNS_LIMIT_MAX = 100, 1_000


def _run(req: Request) -> str:
    value = req.get("run")
    # Fast accept for the common printable-ASCII id; anything else gets the full check.
    if type(value) is str and 0 < len(value) <= 200 and value.isascii() and value.isprintable():
        return value
    return validation.run_id(value, "run")


def _instance(daemon: Daemon, req: Request) -> Instance:
    return daemon.instance(req["instance"])


def _optional_int(req: Request, field: str, default: int, lo: int, hi: int | None = None) -> int:
    value = req.get(field)
    if value is None:
        return default
    return validation.integer(value, field, minimum=lo, maximum=hi)


def _optional_bool(req: Request, field: str) -> bool:
    value = req.get(field)
    if value is None:
        return False
    if type(value) is not bool:
        raise BadRequest(f"{field} must be a boolean")
    return value


def _snapshot_id(req: Request) -> str:
    return validation.name(req.get("snapshot_id"), "snapshot_id")


# sync ops ----------------------------------------------------------------------


def ping(daemon: Daemon, req: Request) -> Result:
    check_fields("ping", req)
    return {"pong": True}


def snapshot(daemon: Daemon, req: Request) -> Result:
    # The fire-and-forget hot path: _run and _instance inlined; parse guarantees op
    # and instance, so three fields with run among them need no further field check.
    if len(req) != 3 or "run" not in req:
        check_fields("snapshot", req)
    try:
        instance = daemon.instances[req["instance"]]
    except KeyError:
        instance = daemon.instance(req["instance"])
    run_id = req.get("run")
    if not (
        type(run_id) is str and 0 < len(run_id) <= 200 and run_id.isascii() and run_id.isprintable()
    ):
        run_id = validation.run_id(run_id, "run")
    lease = req.get("lease")
    if lease is not None:
        validation.lease(lease)
    return {"status": instance.request_snapshot(run_id, lease)}


def status(daemon: Daemon, req: Request) -> Result:
    check_fields("status", req)
    return daemon.status()


# async ops ---------------------------------------------------------------------


async def create_run(daemon: Daemon, req: Request) -> Result:
    instance = _instance(daemon, req)
    run_id = _run(req)
    workflow = validation.name(req.get("workflow"), "workflow")
    version = validation.name(req.get("version"), "version")
    lease = validation.optional_lease(req.get("lease"))
    created = await instance.journal.create_run(run_id, workflow, version, lease, utcnow())
    return {"created": created}


async def set_version(daemon: Daemon, req: Request) -> Result:
    instance = _instance(daemon, req)
    run_id = _run(req)
    version = validation.name(req.get("version"), "version")
    await instance.journal.set_version(run_id, version)
    return {}


async def set_lease(daemon: Daemon, req: Request) -> Result:
    instance = _instance(daemon, req)
    run_id = _run(req)
    if "lease" not in req:
        raise BadRequest("lease is required (a token, or null to clear)")
    lease = validation.optional_lease(req["lease"])
    expected: str | _Unset | None = UNSET
    if "expected" in req:
        expected = validation.optional_lease(req["expected"], "expected")
    await instance.journal.set_lease(run_id, lease, expected)
    return {}


def _events(value: object) -> list[NewEvent]:
    if type(value) is not list:
        raise BadRequest("events must be a list")
    if not 1 <= len(value) <= MAX_EVENTS:
        raise BadRequest(f"events must hold 1-{MAX_EVENTS} events")
    events: list[NewEvent] = []
    append = events.append
    for index, item in enumerate(value):
        if type(item) is not dict:
            raise BadRequest(f"events[{index}] must be an object with type and data")
        if len(item) != 2 or "data" not in item:
            _event_fields(item, index)
        type_ = item.get("type")
        if not (type(type_) is str and 0 < len(type_) <= 128 and type_.isprintable()):
            type_ = validation.name(type_, f"events[{index}].type")
        # data was checked by the codec (int64 range, no NUL) against the raw line.
        append(NewEvent(type_, item["data"]))
    return events


def _event_fields(item: dict[str, Any], index: int) -> None:
    for key in sorted(item):
        if key not in EVENT_FIELDS:
            raise BadRequest(
                f"events[{index}]: unknown field {key[:100]!r} (an event has type and data)"
            )
    if "data" not in item:
        raise BadRequest(f"events[{index}].data is required")


async def append(daemon: Daemon, req: Request) -> Result:
    instance = _instance(daemon, req)
    run_id = _run(req)
    events = _events(req.get("events"))
    expected = req.get("expected_seq")
    if expected is not None:
        validation.integer(expected, "expected_seq", minimum=0)
    lease = validation.optional_lease(req.get("lease"))
    last_seq = await instance.append(run_id, events, expected_seq=expected, lease=lease)
    return {"last_seq": last_seq}


async def snapshot_now(daemon: Daemon, req: Request) -> Result:
    instance = _instance(daemon, req)
    run_id = _run(req)
    lease = validation.optional_lease(req.get("lease"))
    force = _optional_bool(req, "force")
    kind: SnapshotKind = "manual"
    given = req.get("kind")
    if given == "safety":
        kind = "safety"
    elif given is not None and given != "manual":
        raise BadRequest('kind must be "manual" or "safety"')
    label = req.get("label")
    if label is not None:
        validation.label(label)
    return await instance.snapshot_now(run_id, lease=lease, force=force, kind=kind, label=label)


async def load(daemon: Daemon, req: Request) -> Result:
    instance = _instance(daemon, req)
    run_id = _run(req)
    after = req.get("after_seq")
    if after is not None:
        validation.integer(after, "after_seq", minimum=0)
    limit = _optional_int(req, "limit", LOAD_LIMIT_DEFAULT, 1, LOAD_LIMIT_MAX)
    snapshot_id = None
    if req.get("snapshot_id") is not None:
        if after is not None:
            raise BadRequest("snapshot_id and after_seq cannot be combined: page on with after_seq")
        snapshot_id = _snapshot_id(req)
    return await instance.load(run_id, after_seq=after, limit=limit, snapshot_id=snapshot_id)


async def list_snapshots(daemon: Daemon, req: Request) -> Result:
    instance = _instance(daemon, req)
    run_id = _run(req)
    metas = await instance.journal.list_snapshots(run_id)
    return {"snapshots": [meta.listing() for meta in metas]}


async def list_runs(daemon: Daemon, req: Request) -> Result:
    instance = _instance(daemon, req)
    after = req.get("after")
    if after is not None:
        validation.run_id(after, "after")
    workflow = req.get("workflow")
    if workflow is not None:
        validation.name(workflow, "workflow")
    limit = _optional_int(req, "limit", RUNS_LIMIT_DEFAULT, 1, RUNS_LIMIT_MAX)
    return await instance.list_runs(after=after, limit=limit, workflow=workflow)


async def _set_pinned(daemon: Daemon, req: Request, pinned: bool) -> Result:
    instance = _instance(daemon, req)
    run_id = _run(req)
    snapshot_id = _snapshot_id(req)
    await instance.journal.set_pinned(run_id, snapshot_id, pinned)
    await instance.record_audit(
        "snapshot_pinned" if pinned else "snapshot_unpinned",
        run_id=run_id,
        snapshot_id=snapshot_id,
    )
    return {}


async def pin(daemon: Daemon, req: Request) -> Result:
    return await _set_pinned(daemon, req, True)


async def unpin(daemon: Daemon, req: Request) -> Result:
    return await _set_pinned(daemon, req, False)


async def verify(daemon: Daemon, req: Request) -> Result:
    instance = _instance(daemon, req)
    return await instance.verify(_run(req))


async def audit(daemon: Daemon, req: Request) -> Result:
    instance = _instance(daemon, req)
    cursor = _optional_int(req, "cursor", 0, 0)
    limit = _optional_int(req, "limit", AUDIT_LIMIT_DEFAULT, 1, AUDIT_LIMIT_MAX)
    return await instance.audit(cursor, limit)


# registry ----------------------------------------------------------------------

_OP_FIELDS: dict[str, str] = {
    "ping": "",
    "status": "",
    "snapshot": "run lease",
    "create_run": "run workflow version lease",
    "set_version": "run version",
    "set_lease": "run lease expected",
    "append": "run events expected_seq lease",
    "snapshot_now": "run lease force kind label",
    "load": "run after_seq limit snapshot_id",
    "list_snapshots": "run",
    "list_runs": "after limit workflow",
    "pin": "run snapshot_id",
    "unpin": "run snapshot_id",
    "verify": "run",
    "audit": "cursor limit",
    **SAVEPOINT_FIELDS,
}
FIELDS: dict[str, frozenset[str]] = {
    op: frozenset((*ENVELOPE, *names.split())) for op, names in _OP_FIELDS.items()
}
"""Every field an op defines, the envelope included (SPEC section 2)."""


def check_fields(op: str, req: Request) -> None:
    """BadRequest naming a field of ``req`` that ``op`` does not define, if any."""
    allowed = FIELDS[op]
    if not allowed.issuperset(req):
        name = min(key for key in req if key not in allowed)
        expected = ", ".join(sorted(allowed.difference(ENVELOPE))) or "none"
        raise BadRequest(f"unknown field {name[:100]!r} for op {op} (its fields: {expected})")


SYNC_OPS: dict[str, SyncHandler] = {"ping": ping, "snapshot": snapshot, "status": status}


def _as_async(handler: SyncHandler) -> Handler:
    async def run(daemon: Daemon, req: Request) -> Result:
        return handler(daemon, req)

    return run


OPS: dict[str, Handler] = {name: _as_async(handler) for name, handler in SYNC_OPS.items()}
OPS.update(
    create_run=create_run,
    set_version=set_version,
    set_lease=set_lease,
    append=append,
    snapshot_now=snapshot_now,
    load=load,
    list_snapshots=list_snapshots,
    list_runs=list_runs,
    pin=pin,
    unpin=unpin,
    verify=verify,
    audit=audit,
)
OPS.update(SAVEPOINT_OPS)  # SPEC section 7
