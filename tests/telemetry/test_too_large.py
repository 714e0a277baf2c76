"""A ``too_large`` skip says how large: audit entry, log line and span carry the sizes."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from tests.runtime.support import make_instance, new_run
from tests.telemetry.conftest import Captured

pytestmark = pytest.mark.anyio


async def test_too_large_skip_carries_size_and_cap(otel: Captured) -> None:
    inst = make_instance(snapshot_threshold=1, max_snapshot_bytes=10)
    journal = inst.journal
    await new_run(journal, "big", 3)  # type: ignore[arg-type]
    with capture_logs() as logs:
        result = await inst.snapshot_now("big", lease=None, force=False, kind="manual")
    assert result == {"status": "skipped", "reason": "too_large"}

    (entry,) = [e for e in await journal.read_audit(0, 100) if e.kind == "snapshot_skipped"]
    size = entry.fields["size_bytes"]
    assert size > 10
    assert entry.fields == {
        "run_id": "big",
        "reason": "too_large",
        "size_bytes": size,
        "max_snapshot_bytes": 10,
    }
    (line,) = [log for log in logs if log["event"] == "snapshot_skipped"]
    assert (line["size_bytes"], line["max_snapshot_bytes"], line["through_seq"]) == (size, 10, 3)
    (span,) = otel.finished_spans()
    assert span.attributes is not None
    assert span.attributes["snapshotd.reason"] == "too_large"
    assert span.attributes["snapshotd.size_bytes"] == size
    assert span.attributes["snapshotd.max_snapshot_bytes"] == 10


async def test_other_skips_carry_no_sizes(otel: Captured) -> None:
    inst = make_instance(snapshot_threshold=100)
    await new_run(inst.journal, "small", 3)  # type: ignore[arg-type]
    with capture_logs() as logs:
        await inst.snapshot_now("small", lease=None, force=False, kind="manual")
    (line,) = [log for log in logs if log["event"] == "snapshot_skipped"]
    assert line["reason"] == "below_threshold"
    assert "size_bytes" not in line
    (span,) = otel.finished_spans()
    assert span.attributes is not None
    assert "snapshotd.size_bytes" not in span.attributes
