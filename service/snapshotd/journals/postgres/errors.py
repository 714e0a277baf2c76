"""The adapter edge: asyncpg and network errors in, snapshotd errors out, once.

The SQLSTATEs the migrations' functions raise become NotFound/StaleLease/Conflict;
everything else from asyncpg or the network becomes Unavailable (or BadRequest /
TooLarge for data the server refused), so nothing above the adapter sees the driver.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from snapshotd.domain.errors import (
    BadRequest,
    Conflict,
    NotFound,
    SnapshotdError,
    StaleLease,
    TooLarge,
    Unavailable,
)

# The append function's SD409 carries the run's last seq as DETAIL "last_seq=5".
_LAST_SEQ = re.compile(r"last_seq=(\d+)")

# SQLSTATEs raised by the migrations' append function.
_SQLSTATE_ERRORS: dict[str, type[SnapshotdError]] = {
    "SD404": NotFound,
    "SD409": Conflict,
    "SD423": StaleLease,
}


@contextmanager
def wrap_errors(where: str) -> Iterator[None]:
    """Translate driver errors raised inside the block; ``where`` names journal and op."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        state = exc.sqlstate or ""
        mapped = _SQLSTATE_ERRORS.get(state)
        if mapped is not None:
            detail = getattr(exc, "detail", None) or ""
            seen = _LAST_SEQ.fullmatch(detail) if mapped is Conflict else None
            details = {"last_seq": int(seen[1])} if seen else {}
            raise mapped(str(exc), **details) from None
        # Bad data and exceeded limits are the request's fault: retrying cannot help.
        # Everything else (connections refused or ended, a database not accepting
        # connections, a schema being migrated) is treated as an outage.
        message = f"{where}: SQLSTATE {state}: {exc}"
        if state[:2] == "22":
            raise BadRequest(message) from None
        if state[:2] == "54":
            raise TooLarge(message) from None
        raise Unavailable(message) from None
    except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError) as exc:
        # InternalClientError: a connection killed mid-operation can leave asyncpg's
        # protocol state behind ("another operation is in progress"); a retry works.
        raise Unavailable(f"{where}: {type(exc).__name__}: {exc}") from None


def _connection_lost(sqlstate: str) -> bool:
    """Errors after which a statement may or may not have committed: the connection
    or the server went away (class 08, shutdowns of class 57, 58, XX)."""
    return sqlstate[:2] in ("08", "58", "XX") or sqlstate in ("57P01", "57P02", "57P03")


@contextmanager
def commit_errors(where: str) -> Iterator[None]:
    """``wrap_errors`` for a statement that commits as it ends (an append), once sent.

    A connection lost while it runs may have lost the reply of a commit that went
    through, so that Unavailable carries ``outcome="unknown"``: the caller retries
    with ``expected_seq`` (SPEC section 2).
    """
    try:
        yield
    except asyncpg.PostgresError as exc:
        if not _connection_lost(exc.sqlstate or ""):
            with wrap_errors(where):
                raise
        raise _unknown(where, exc) from None
    except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError) as exc:
        raise _unknown(where, exc) from None


def _unknown(where: str, exc: BaseException) -> Unavailable:
    return Unavailable(
        f"{where}: the connection was lost while committing, the append may or may not "
        f"have been written ({type(exc).__name__}: {exc}); retry with expected_seq",
        outcome="unknown",
    )
