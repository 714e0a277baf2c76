"""The PostgreSQL adapter's error edge: which SQLSTATEs a client may retry."""

from __future__ import annotations

import asyncpg
import pytest

from snapshotd.domain.errors import (
    BadRequest,
    Conflict,
    NotFound,
    SnapshotdError,
    StaleLease,
    TooLarge,
    Unavailable,
)
from snapshotd.journals.postgres.errors import commit_errors
from snapshotd.journals.postgres.errors import wrap_errors as _wrap_errors


class _Raised(asyncpg.PostgresError):
    """An error with an arbitrary SQLSTATE, as the append function raises them."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__("raised")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "mapped"),
    [
        (asyncpg.exceptions.AdminShutdownError("m"), Unavailable),
        (asyncpg.exceptions.SerializationError("m"), Unavailable),
        (asyncpg.exceptions.CannotConnectNowError("m"), Unavailable),
        (asyncpg.exceptions.NumericValueOutOfRangeError("m"), BadRequest),
        (asyncpg.exceptions.ProgramLimitExceededError("m"), TooLarge),
        (asyncpg.exceptions.ObjectNotInPrerequisiteStateError("m"), Unavailable),
        (_Raised("SD404"), NotFound),
        (_Raised("SD409"), Conflict),
        (_Raised("SD423"), StaleLease),
        (asyncpg.exceptions.InterfaceError("m"), Unavailable),
        (ConnectionRefusedError(), Unavailable),
    ],
)
def test_driver_errors_map_to_protocol_errors(
    error: Exception, mapped: type[SnapshotdError]
) -> None:
    with pytest.raises(mapped), _wrap_errors("postgresql test"):
        raise error


@pytest.mark.parametrize(
    ("error", "mapped", "unknown"),
    [
        (asyncpg.exceptions.AdminShutdownError("m"), Unavailable, True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("m"), Unavailable, True),
        (asyncpg.exceptions.InterfaceError("m"), Unavailable, True),
        (ConnectionResetError(), Unavailable, True),
        (TimeoutError(), Unavailable, True),
        (asyncpg.exceptions.SerializationError("m"), Unavailable, False),
        (asyncpg.exceptions.QueryCanceledError("m"), Unavailable, False),
        (asyncpg.exceptions.InvalidParameterValueError("m"), BadRequest, False),
        (_Raised("SD409"), Conflict, False),
        (_Raised("SD404"), NotFound, False),
    ],
)
def test_commit_errors_say_when_the_outcome_is_unknown(
    error: Exception, mapped: type[SnapshotdError], unknown: bool
) -> None:
    with pytest.raises(mapped) as caught, commit_errors("postgresql test: append"):
        raise error
    assert (caught.value.details.get("outcome") == "unknown") is unknown


def test_conflict_last_seq_comes_from_the_detail() -> None:
    error = _Raised("SD409")
    error.detail = "last_seq=41"
    with pytest.raises(Conflict) as caught, _wrap_errors("postgresql test"):
        raise error
    assert caught.value.details == {"last_seq": 41}
