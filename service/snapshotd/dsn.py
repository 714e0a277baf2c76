"""Checks of ``postgresql://`` DSNs before anything connects (SPEC section 4).

A DSN that the driver would reject at connect time (or, worse, half-accept)
fails start-up with one message instead: ports out of range or not numbers,
host syntax such as an unclosed ``[::1``, unknown ``sslmode`` or
``target_session_attrs`` values. Messages never repeat the DSN: it may hold a
password.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES = ("postgresql", "postgres")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,55}")
_HOST = re.compile(r"[A-Za-z0-9._%-]*")
_BOOLEANS = ("true", "false", "on", "off", "yes", "no", "1", "0")


class InvalidDsn(ValueError):
    """What is wrong with a DSN, in words that never include its password."""


def check_dsn(text: str) -> None:
    """Raise InvalidDsn when ``text`` is not a usable ``postgresql://`` DSN."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise InvalidDsn("must start with postgresql://")
    if any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise InvalidDsn("must not contain spaces or control characters")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    hosts = netloc.rpartition("@")[2]
    if hosts:
        for entry in hosts.split(","):
            _check_host_port(entry)
    try:
        query = urlsplit(text).query
    except ValueError as exc:
        raise InvalidDsn(f"cannot be read: {exc}") from None
    for key, value in parse_qsl(query, keep_blank_values=True):
        _check_param(key, value)


def _check_host_port(entry: str) -> None:
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            raise InvalidDsn(f"host {entry[:60]!r} has no closing ']'")
        host, port = entry[1:end], entry[end + 1 :]
        if not host or not re.fullmatch(r"[0-9A-Fa-f:.%a-z]+", host):
            raise InvalidDsn(f"host {entry[:60]!r} is not an IPv6 address")
        if port and not port.startswith(":"):
            raise InvalidDsn(f"host {entry[:60]!r}: expected ':PORT' after ']'")
        port = port[1:]
    else:
        host, _, port = entry.partition(":")
        if "[" in host or "]" in host or not _HOST.fullmatch(host):
            raise InvalidDsn(f"host {host[:60]!r} is not a host name or address")
    if port or entry.endswith(":"):
        _check_port(port)


def _check_port(port: str) -> None:
    if not port.isdigit() or not port.isascii():
        raise InvalidDsn(f"port {port[:20]!r} is not a number")
    if not 1 <= int(port) <= 65535:
        raise InvalidDsn(f"port {int(port)} is out of range (1-65535)")


def _check_param(key: str, value: str) -> None:
    if key == "sslmode" and value not in SSLMODES:
        raise InvalidDsn(f"sslmode {value[:40]!r} is not one of {', '.join(SSLMODES)}")
    if key == "target_session_attrs" and value not in SESSION_ATTRS:
        raise InvalidDsn(
            f"target_session_attrs {value[:40]!r} is not one of {', '.join(SESSION_ATTRS)}"
        )
    if key == "port":
        for port in value.split(","):
            _check_port(port)
    if key == "schema" and not _SCHEMA.fullmatch(value):
        raise InvalidDsn(
            f"schema {value[:60]!r} must be a lower-case identifier"
            " ([a-z_][a-z0-9_]*, at most 56 characters)"
        )
    if key == "prepared_statements" and value.lower() not in _BOOLEANS:
        raise InvalidDsn(f"prepared_statements {value[:20]!r} must be true or false")
    if key == "host" and not unquote(value).strip():
        raise InvalidDsn("host= must not be empty")
