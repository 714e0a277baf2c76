"""The journal's health as metrics (SPEC section 6): up, reconnects, corruption, slices.

Each instance reports through a ``JournalHealth``. The gauges read plain-value
sources at export time, on the exporter's thread: a source must only read a
value (a bool, a length), never await or touch the event loop. A source that
returns None (slices on a journal without slices) exports no point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from snapshotd.telemetry.instruments import INSTANCE

CORRUPT_OBJECTS: Final = ("event", "snapshot", "run", "document")
"""The ``object`` attribute of ``snapshotd.corruption.found``."""

_meter = metrics.get_meter("snapshotd")

Source = Callable[[], "int | bool | None"]
_up_sources: dict[str, Source] = {}
_slice_sources: dict[str, Source] = {}


def _observe(sources: dict[str, Source]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for name, read in list(sources.items()):
            try:
                value = read()
            except Exception:  # noqa: BLE001 - one broken source must not hide the others
                continue
            if value is not None:
                observations.append(Observation(int(value), {INSTANCE: name}))
        return observations

    return observe


_meter.create_observable_gauge(
    "snapshotd.journal.up",
    callbacks=[_observe(_up_sources)],
    unit="1",
    description="1 while the instance's journal answers, else 0.",
)
_meter.create_observable_gauge(
    "snapshotd.slices.owned",
    callbacks=[_observe(_slice_sources)],
    unit="{slice}",
    description="Slices of the run space this daemon owns (PostgreSQL).",
)
RECONNECTS = _meter.create_counter(
    "snapshotd.journal.reconnects",
    unit="{reconnect}",
    description="Connections to the journal re-established after a loss.",
)
CORRUPTION = _meter.create_counter(
    "snapshotd.corruption.found",
    unit="{object}",
    description="Damaged stored objects found, each counted once per process.",
)


class JournalHealth:
    """The journal-health metrics of one instance (every point carries ``snapshotd.instance``)."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._attrs = {INSTANCE: instance}
        self._corrupt_attrs = {o: {INSTANCE: instance, "object": o} for o in CORRUPT_OBJECTS}
        # Zero series from the start: alerts on increase() need a series before the first event.
        RECONNECTS.add(0, self._attrs)
        for attrs in self._corrupt_attrs.values():
            CORRUPTION.add(0, attrs)

    def watch_up(self, read: Callable[[], bool]) -> None:
        """Report ``read()`` as ``snapshotd.journal.up``; runs on the exporter thread."""
        _up_sources[self.instance] = read

    def watch_slices(self, read: Callable[[], int | None]) -> None:
        """Report ``read()`` as ``snapshotd.slices.owned``; None (no slices) exports nothing."""
        _slice_sources[self.instance] = read

    def reconnected(self) -> None:
        RECONNECTS.add(1, self._attrs)

    def corruption_found(self, obj: str) -> None:
        """Count one damaged ``obj`` (one of ``CORRUPT_OBJECTS``); raises ValueError otherwise."""
        attrs = self._corrupt_attrs.get(obj)
        if attrs is None:
            raise ValueError(f"corruption object must be one of {CORRUPT_OBJECTS}, got {obj!r}")
        CORRUPTION.add(1, attrs)

    def forget(self) -> None:
        """Stop reporting this instance's gauges (the instance is closing)."""
        for sources in (_up_sources, _slice_sources):
            sources.pop(self.instance, None)
