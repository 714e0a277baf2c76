"""Identifier and payload checks (SPEC section 1): what is rejected, and with which message."""

from __future__ import annotations

from typing import Any

import pytest

from snapshotd.domain import validation
from snapshotd.domain.errors import BadRequest
from snapshotd.domain.validation import INT64_MAX, INT64_MIN


@pytest.mark.parametrize("value", ["a", "x" * 200, "é" * 100, "order/42 ✓", "../../etc"])
def test_run_id_accepted(value: str) -> None:
    assert validation.run_id(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "1-200 bytes"),
        ("x" * 201, "1-200 bytes"),
        ("é" * 100 + "x", "1-200 bytes"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("a\x1bb", "control"),
        ("a\x7fb", "control"),
        ("a\x85b", "control"),
        ("a\ud800b", "not valid Unicode"),
        (42, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_run_id_rejected(value: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        validation.run_id(value)


def test_names() -> None:
    assert validation.name("w" * 128, "workflow") == "w" * 128
    for bad, message in [("", "1-128"), ("w" * 129, "1-128"), ("a\x00", "NUL")]:
        with pytest.raises(BadRequest, match=message):
            validation.name(bad, "workflow")
    with pytest.raises(BadRequest, match="version is not valid Unicode"):
        validation.name("\udc80", "version")


def test_leases() -> None:
    assert validation.lease("é" * 100) == "é" * 100
    assert validation.optional_lease(None) is None
    for bad in ["", "x" * 201, "a\x00", 5]:
        with pytest.raises(BadRequest, match="lease"):
            validation.lease(bad)
    with pytest.raises(BadRequest, match="not valid Unicode"):
        validation.lease("\ud800")


def test_integer() -> None:
    assert validation.integer(5, "limit", minimum=1, maximum=5) == 5
    for bad in [True, 1.0, "1", None]:
        with pytest.raises(BadRequest, match="must be an integer"):
            validation.integer(bad, "limit")
    with pytest.raises(BadRequest, match=">= 1"):
        validation.integer(0, "limit", minimum=1)
    with pytest.raises(BadRequest, match="<= 10"):
        validation.integer(11, "limit", maximum=10)


@pytest.mark.parametrize(
    "value",
    [
        INT64_MIN,
        INT64_MAX,
        {"nested": [INT64_MAX, {"deep": INT64_MIN}]},
        "ünïcødé 🎉",
        {"ключ": [None, True, 1.5]},
    ],
)
def test_json_value_accepted(value: Any) -> None:
    assert validation.json_value(value) is False


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (INT64_MAX + 1, "signed 64 bits"),
        (INT64_MIN - 1, "signed 64 bits"),
        ({"a": [1, {"b": 2**64}]}, "signed 64 bits"),
        ("a\x00b", "string with NUL"),
        ({"k\x00": 1}, "key with NUL"),
        (["\ud800"], "not valid Unicode"),
        ({"\udfff": 1}, "not valid Unicode"),
        ({1, 2}, "not JSON"),
        (b"bytes", "not JSON"),
    ],
)
def test_json_value_rejected(value: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        validation.json_value(value)


def test_json_value_flags_floats_that_may_be_overflowed_integers() -> None:
    assert validation.json_value([1.5, 1e18]) is False
    assert validation.json_value({"x": 9.3e18}) is True
    assert validation.json_value(-1e300) is True


def test_exact_integers_reads_the_raw_text() -> None:
    validation.exact_integers(b'{"a": 9223372036854775807, "b": -9223372036854775808}')
    validation.exact_integers(b'{"a": 1e300}')
    with pytest.raises(BadRequest, match="signed 64 bits"):
        validation.exact_integers(b'{"a": 9223372036854775808}')
    with pytest.raises(BadRequest, match="not valid JSON"):
        validation.exact_integers(b'{"a": ')
