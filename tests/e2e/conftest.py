"""One real daemon process shared by the e2e tests that do not need their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.daemon import DaemonProcess


@pytest.fixture(scope="session")
def daemon() -> Iterator[DaemonProcess]:
    process = DaemonProcess().start()
    try:
        yield process
        assert process.alive(), f"the shared daemon died:\n{process.log()}"
    finally:
        process.stop()
        process.cleanup()
