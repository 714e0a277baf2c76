"""UUIDv7 snapshot ids (RFC 9562): layout and monotonicity."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from snapshotd.domain import ids as ids_module
from snapshotd.domain.ids import uuid7

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fresh_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget ids made earlier in the session (they may be later than T0)."""
    monkeypatch.setattr(ids_module, "_last", (0, 0))


def test_version_variant_and_timestamp() -> None:
    value = uuid.UUID(uuid7(T0))
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert value.int >> 80 == int(T0.timestamp() * 1000)


def test_monotonic_within_a_millisecond_and_when_time_goes_back() -> None:
    times = [T0] * 5000 + [T0 + timedelta(milliseconds=1)] + [T0 - timedelta(seconds=5)] * 10
    ids = [uuid7(t) for t in times]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)


def test_later_times_sort_later() -> None:
    later = T0 + timedelta(days=365)
    assert uuid7(T0) < uuid7(later) < uuid7(later + timedelta(milliseconds=5))
