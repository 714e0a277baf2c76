"""Figures: repeated measurements reduced to median, min and max."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured quantity over several runs (``samples`` in ``unit``)."""

    label: str
    unit: str
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "samples": list(self.samples),
        }


def figure(label: str, unit: str, samples: Sequence[float]) -> Figure:
    if not samples:
        raise ValueError(f"{label}: no samples")
    return Figure(label, unit, tuple(samples))


def ratio(label: str, numerators: Figure, denominators: Figure) -> Figure:
    """Per-run ratios of two figures measured in the same runs (pairwise)."""
    pairs = zip(numerators.samples, denominators.samples, strict=True)
    return figure(label, "x", [n / d for n, d in pairs])


def cross_ratio(label: str, numerators: Figure, denominators: Figure) -> Figure:
    """Ratio of two independently measured figures: median over median, with the
    range spanned by the extremes (lowest over highest, highest over lowest)."""
    samples = (
        numerators.low / denominators.high,
        numerators.median / denominators.median,
        numerators.high / denominators.low,
    )
    return figure(label, "x", samples)


def rate(label: str, count: int, durations: Figure) -> Figure:
    """``count`` items per second for each measured duration."""
    return figure(label, "/s", [count / s for s in durations.samples])


def timed(action: Callable[[], object]) -> float:
    """Seconds one call of ``action`` takes."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank, so p99 is a real observation."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]
