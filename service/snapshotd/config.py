"""Configuration (SPEC section 4): a TOML file plus ``SNAPSHOTD_*`` environment overrides.

Every value is checked here, once, so the runtime can trust it; an invalid value
fails start-up with one ConfigError naming the key as a dotted path. Reducer and
``savepoint_upgrade`` names are only checked for shape here: importing them is the
daemon's start-up job (``snapshotd.runtime.daemon``), which names the key too.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from snapshotd.domain.errors import ConfigError
from snapshotd.domain.policies import Policy
from snapshotd.dsn import InvalidDsn, check_dsn

DEFAULT_INSTANCE = "default"
DEFAULT_JOURNAL = "fs:./data"
DEFAULT_SOCKET_PATH = "./snapshotd.sock"
DEFAULT_QUEUE_CAPACITY = 10_000
DEFAULT_AUDIT_RETENTION_S = 2_592_000.0
DEFAULT_SLICE_LEASE_S = 10.0


@dataclass(frozen=True, slots=True)
class SocketConfig:
    path: str = DEFAULT_SOCKET_PATH
    mode: int = 0o600
    max_frame_bytes: int = 1_048_576
    allowed_uids: tuple[int, ...] | None = None
    max_connections: int = 1024
    idle_timeout_s: float = 300.0
    """0 disables: connections may then stay idle forever."""
    max_buffered_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    name: str
    journal: str
    policy: Policy
    queue_capacity: int = DEFAULT_QUEUE_CAPACITY
    audit_retention_s: float = DEFAULT_AUDIT_RETENTION_S
    """0 keeps audit entries forever."""
    slice_lease_s: float = DEFAULT_SLICE_LEASE_S
    listen_dsn: str | None = None
    """PostgreSQL: a direct DSN for LISTEN when ``journal`` goes through a pooler."""


@dataclass(frozen=True, slots=True)
class WorkflowConfig:
    """Per-workflow policy overrides (keys are Policy field names), for every instance.

    ``queue_capacity`` is accepted because SPEC section 1 lists it among the policies a
    workflow may override, but the request queue belongs to the instance and holds
    requests before their run's workflow is known: a workflow's value is validated
    and kept, while the instance's ``queue_capacity`` alone bounds the queue.
    """

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    queue_capacity: int | None = None


@dataclass(frozen=True, slots=True)
class Config:
    socket: SocketConfig
    instances: dict[str, InstanceConfig]
    workflows: dict[str, WorkflowConfig]


class _Invalid(Exception):
    """A value check failed; the caller adds the key's name to the message."""


# --- value checks: each takes the TOML-typed value and returns the stored one -----------


def _integer(value: Any, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Invalid(f"must be {what}")
    return value


def _positive_int(value: Any) -> int:
    return _integer(value, 1, "a positive integer")


def _threshold(value: Any) -> int | None:
    if value == "infinity":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid('must be a positive integer or "infinity"')
    return value


def _seconds(value: Any, *, allow_zero: bool) -> float:
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if bad or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise _Invalid("must be a number of seconds " + (">= 0" if allow_zero else "> 0"))
    return float(value)


def _interval(value: Any) -> float:
    seconds = _seconds(value, allow_zero=True)
    if 0 < seconds < 1:
        raise _Invalid("must be 0 (disabled) or a number of seconds >= 1")
    return seconds


def _seconds_or_zero(value: Any) -> float:
    return _seconds(value, allow_zero=True)


def _ttl(value: Any) -> float:
    return _seconds(value, allow_zero=False)


def _keep(value: Any) -> int:
    return _integer(value, 2, "an integer >= 2")


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("must be a non-empty string")
    return value


def _callable_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\w.]+:[\w.]+", value):
        raise _Invalid('must be "MODULE:FUNCTION"')
    return value


def _journal(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("must be a string")
    if value == "memory:":
        return value
    if value.startswith(("postgresql://", "postgres://")):
        return _dsn(value)
    if value.startswith("fs:") and len(value) > 3:
        return value
    raise _Invalid("must be 'memory:', 'fs:PATH' or 'postgresql://...'")


def _dsn(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("must be a postgresql:// DSN")
    try:
        check_dsn(value)
    except InvalidDsn as exc:
        raise _Invalid(f"invalid PostgreSQL DSN: {exc}") from None
    return value


def _mode(value: Any) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
        raise _Invalid('must be an octal permission string like "0600"')
    return int(value, 8)


def _uids(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid("must be a non-empty list of user ids")
    return tuple(_integer(uid, 0, "a list of user ids (integers >= 0)") for uid in value)


# --- environment values are strings: turn them into what TOML would have given ---------


def _env_int(text: str) -> Any:
    try:
        return int(text.strip())
    except ValueError:
        return text


def _env_number(text: str) -> Any:
    try:
        return int(text.strip())
    except ValueError:
        try:
            return float(text.strip())
        except ValueError:
            return text


def _env_str(text: str) -> Any:
    return text


def _env_uids(text: str) -> Any:
    parts = [p for p in re.split(r"[\s,\[\]]+", text) if p]
    return [_env_int(p) for p in parts]


@dataclass(frozen=True, slots=True)
class _Key:
    check: Callable[[Any], Any]
    from_env: Callable[[str], Any]


_POLICY_KEYS: dict[str, _Key] = {
    "reducer": _Key(_name, _env_str),
    "snapshot_threshold": _Key(_threshold, _env_int),
    "snapshot_interval_s": _Key(_interval, _env_number),
    "max_snapshot_bytes": _Key(_positive_int, _env_int),
    "keep_snapshots": _Key(_keep, _env_int),
    "safety_ttl_s": _Key(_ttl, _env_number),
    "savepoint_upgrade": _Key(_callable_name, _env_str),
}
_QUEUE_CAPACITY = _Key(_positive_int, _env_int)
_INSTANCE_KEYS: dict[str, _Key] = {
    **_POLICY_KEYS,
    "journal": _Key(_journal, _env_str),
    "queue_capacity": _QUEUE_CAPACITY,
    "audit_retention_s": _Key(_seconds_or_zero, _env_number),
    "slice_lease_s": _Key(_ttl, _env_number),
    "listen_dsn": _Key(_dsn, _env_str),
}
_WORKFLOW_KEYS: dict[str, _Key] = {**_POLICY_KEYS, "queue_capacity": _QUEUE_CAPACITY}
_SOCKET_KEYS: dict[str, _Key] = {
    "path": _Key(_name, _env_str),
    "mode": _Key(_mode, _env_str),
    "max_frame_bytes": _Key(_positive_int, _env_int),
    "allowed_uids": _Key(_uids, _env_uids),
    "max_connections": _Key(_positive_int, _env_int),
    "idle_timeout_s": _Key(_seconds_or_zero, _env_number),
    "max_buffered_bytes": _Key(_positive_int, _env_int),
}
_TABLE_KEYS = {"instances": _INSTANCE_KEYS, "workflows": _WORKFLOW_KEYS}


def load_config(path: str | None, env: Mapping[str, str] = os.environ) -> Config:
    """Read ``path`` (None: no file), apply ``SNAPSHOTD_*`` overrides, validate everything.

    Raises ConfigError with one message naming the offending key. With neither a
    file nor overrides: instance ``default`` on ``fs:./data``, socket ``./snapshotd.sock``.
    """
    raw = _read_file(path) if path is not None else {}
    for key in raw:
        if key not in ("socket", "instances", "workflows"):
            raise ConfigError(f"{key}: unknown key (expected socket, instances, workflows)")
    socket_raw = _table(raw.get("socket", {}), "socket")
    tables = {
        kind: {
            name: dict(_table(body, f"{kind}.{name}"))
            for name, body in _table(raw.get(kind, {}), kind).items()
        }
        for kind in ("instances", "workflows")
    }
    checked: dict[str, dict[str, Any]] = {}
    socket = {k: _check(_SOCKET_KEYS, "socket", k, v) for k, v in socket_raw.items()}
    for kind, named in tables.items():
        for name, body in named.items():
            for key, value in body.items():
                checked.setdefault(f"{kind}.{name}", {})
                checked[f"{kind}.{name}"][key] = _check(
                    _TABLE_KEYS[kind], f"{kind}.{name}", key, value
                )
    _apply_env(env, socket, tables, checked)
    return _build(socket, tables, checked)


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table")
    return value


def _check(keys: Mapping[str, _Key], where: str, key: str, value: Any, source: str = "") -> Any:
    spec = keys.get(key)
    if spec is None:
        raise ConfigError(f"{where}.{key}{source}: unknown key (expected {', '.join(keys)})")
    try:
        return spec.check(value)
    except _Invalid as exc:
        raise ConfigError(f"{where}.{key}{source}: {exc}") from None


NON_CONFIG_ENV = frozenset({"SNAPSHOTD_MIGRATIONS", "SNAPSHOTD_DSN"})
"""``SNAPSHOTD_*`` variables that are not configuration keys (see docs/operations.md)."""
_SERVICE_LINKS = re.compile(r"SNAPSHOTD_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\w+)?)")
"""What Kubernetes injects into every pod of a namespace with a Service named snapshotd."""


def _ignored(upper: str) -> bool:
    return upper in NON_CONFIG_ENV or _SERVICE_LINKS.fullmatch(upper) is not None


def _apply_env(
    env: Mapping[str, str],
    socket: dict[str, Any],
    tables: dict[str, dict[str, dict[str, Any]]],
    checked: dict[str, dict[str, Any]],
) -> None:
    for var in sorted(env):
        upper = var.upper()
        if upper.startswith("SNAPSHOTD_SOCKET_"):
            key = upper.removeprefix("SNAPSHOTD_SOCKET_").lower()
            spec = _SOCKET_KEYS.get(key)
            value = spec.from_env(env[var]) if spec is not None else env[var]
            socket[key] = _check(_SOCKET_KEYS, "socket", key, value, f" (from {var})")
            continue
        if not upper.startswith(("SNAPSHOTD_INSTANCES", "SNAPSHOTD_WORKFLOWS")):
            if upper.startswith("SNAPSHOTD_") and not _ignored(upper):
                raise ConfigError(
                    f"{var}: unknown setting (expected SNAPSHOTD_SOCKET_<KEY>, "
                    "SNAPSHOTD_INSTANCES__<NAME>__<KEY> or SNAPSHOTD_WORKFLOWS__<NAME>__<KEY>)"
                )
            continue
        for kind in ("instances", "workflows"):
            prefix = f"SNAPSHOTD_{kind.upper()}"
            if not upper.startswith(prefix):
                continue
            parts = var[len(prefix) :].split("__")
            if len(parts) != 3 or parts[0] != "" or not parts[1] or not parts[2]:
                raise ConfigError(f"{var}: expected SNAPSHOTD_{kind.upper()}__<NAME>__<KEY>")
            name = _match_name(tables[kind], parts[1])
            key = parts[2].lower()
            where = f"{kind}.{name}"
            spec = _TABLE_KEYS[kind].get(key)
            value = spec.from_env(env[var]) if spec is not None else env[var]
            result = _check(_TABLE_KEYS[kind], where, key, value, f" (from {var})")
            tables[kind].setdefault(name, {})[key] = value
            checked.setdefault(where, {})[key] = result


def _match_name(named: Mapping[str, Any], wanted: str) -> str:
    """The file's table name matching ``wanted`` case-insensitively, else ``wanted`` lower-cased."""
    if wanted in named:
        return wanted
    for name in named:
        if name.lower() == wanted.lower():
            return name
    return wanted.lower()


def _build(
    socket: dict[str, Any],
    tables: dict[str, dict[str, dict[str, Any]]],
    checked: dict[str, dict[str, Any]],
) -> Config:
    instance_names = list(tables["instances"]) or [DEFAULT_INSTANCE]
    instances: dict[str, InstanceConfig] = {}
    for name in instance_names:
        values = checked.get(f"instances.{name}", {})
        journal = values.get("journal")
        if journal is None:
            if name != DEFAULT_INSTANCE:
                raise ConfigError(f"instances.{name}.journal: missing (required)")
            journal = DEFAULT_JOURNAL
        overrides = {k: v for k, v in values.items() if k in _POLICY_KEYS}
        instances[name] = InstanceConfig(
            name=name,
            journal=journal,
            policy=Policy().with_overrides(overrides),
            queue_capacity=values.get("queue_capacity", DEFAULT_QUEUE_CAPACITY),
            audit_retention_s=values.get("audit_retention_s", DEFAULT_AUDIT_RETENTION_S),
            slice_lease_s=values.get("slice_lease_s", DEFAULT_SLICE_LEASE_S),
            listen_dsn=values.get("listen_dsn"),
        )
    workflows: dict[str, WorkflowConfig] = {}
    for name in tables["workflows"]:
        values = checked.get(f"workflows.{name}", {})
        overrides = {k: v for k, v in values.items() if k in _POLICY_KEYS}
        workflows[name] = WorkflowConfig(name, overrides, values.get("queue_capacity"))
    return Config(SocketConfig(**socket), instances, workflows)
