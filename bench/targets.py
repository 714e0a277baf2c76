"""The SPEC section 8 targets and their evaluation against measured figures."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.stats import Figure

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True, slots=True)
class Target:
    """``figure`` (a key of the figures) must satisfy ``op threshold`` at its median.

    ``full_size``: the SPEC defines it on a 100,000-event run, so a ``--quick`` run
    (smaller runs) cannot judge it. ``informational``: shown beside a SPEC target for
    comparison, never judged.
    """

    title: str
    figure: str
    op: str
    threshold: float
    unit: str
    full_size: bool = False
    informational: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    target: Target
    measured: Figure | None
    quick: bool = False

    @property
    def outcome(self) -> str:
        if self.measured is None:
            return "NOT RUN"
        if self.target.informational:
            return "info"
        if self.quick and self.target.full_size:
            return "n/a (quick)"
        passed = _OPS[self.target.op](self.measured.median, self.target.threshold)
        return "PASS" if passed else "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.target.title,
            "figure": self.target.figure,
            "target": f"{self.target.op} {self.target.threshold:g} {self.target.unit}".strip(),
            "measured": None if self.measured is None else self.measured.to_json(),
            "outcome": self.outcome,
        }


def spec_targets(
    largest: int, low: int, journals: tuple[str, ...], scale_runs: int = 200_000
) -> list[Target]:
    """The targets for a run whose largest run has ``largest`` events (100,000 in a
    full run) and whose small snapshot-cost run has ``low`` (1,000)."""
    names = {"fs": "fs", "pg": "PostgreSQL"}
    targets: list[Target] = []
    for journal in journals:
        name = names[journal]
        targets += [
            Target(
                f"load {largest:,} events: snapshot vs full replay ({name})",
                f"load.{journal}.{largest}.ratio",
                ">=",
                50,
                "x",
                full_size=True,
            ),
            Target(
                f"full replay rate through load, {largest:,} events ({name})",
                f"load.{journal}.{largest}.replay_rate",
                ">=",
                300_000,
                "events/s",
            ),
            Target(
                f"snapshot cost 100 events past ~{largest:,} / past ~{low:,} ({name})",
                f"snapshot.{journal}.ratio",
                "<=",
                1.5,
                "x",
                full_size=True,
            ),
        ]
        for reducer in ("steps", "last_by_key", "merge_patch"):
            targets.append(
                Target(
                    f"mean of 100 consecutive snapshots from seq 100,000 / from 1,000,"
                    f" {reducer} ({name})",
                    f"inc.{journal}.{reducer}.ratio",
                    "<=",
                    1.5,
                    "x",
                    full_size=True,
                )
            )
    minimum = {"fs": 2000, "pg": 1000}
    targets += [
        Target(f"snapshots/s, one daemon ({names[j]})", f"throughput.{j}", ">=", minimum[j], "/s")
        for j in journals
    ]
    targets += [
        Target(
            f"snapshot at {largest:,}: eventsourcing take_snapshot time / ours (PostgreSQL)",
            "compare.snapshot",
            ">=",
            100,
            "x",
            full_size=True,
        ),
        Target(
            f"load {largest:,} with snapshot: eventsourcing time / ours (PostgreSQL)",
            "compare.load_snapshot",
            ">=",
            1,
            "x",
            full_size=True,
        ),
        Target(
            f"load {largest:,} without snapshot: eventsourcing time / ours (PostgreSQL)",
            "compare.load_full",
            ">=",
            1,
            "x",
            full_size=True,
        ),
        Target("fire-and-forget snapshot requests, one connection", "ff.one", ">=", 300_000, "/s"),
        Target("request->reply p99 at 10,000 requests/s (ping)", "latency.ping.p99", "<", 1, "ms"),
        Target(
            "request->reply p99 at 10,000 requests/s (snapshot with id: each queues an attempt)",
            "latency.snapshot.p99",
            "<",
            1,
            "ms",
            informational=True,
        ),
        Target("peak RSS through the flood", "flood.rss_peak", "<", 100, "MB"),
        Target(
            "queued attempts completing during the flood (existing runs)",
            "flood.attempts",
            ">=",
            1000,
            "/s",
        ),
        Target(
            "queued attempts completing during the flood (runs that do not exist)",
            "flood.attempts_missing",
            ">=",
            1000,
            "/s",
        ),
    ]
    runs = f"{scale_runs:,} fs runs"
    targets += [
        Target(f"start-up with {runs}", "scale.startup", "<", 5, "s", full_size=True),
        Target(f"peak RSS with {runs}", "scale.rss_peak", "<", 100, "MB", full_size=True),
        Target(
            f"ping p99 while sweeps run, {runs}", "scale.ping_p99", "<", 1, "ms", full_size=True
        ),
    ]
    return targets


def evaluate(
    targets: list[Target], figures: dict[str, Figure], *, quick: bool = False
) -> list[Verdict]:
    """A verdict per target; ``quick``: the run used smaller sizes than the SPEC's."""
    return [Verdict(t, figures.get(t.figure), quick) for t in targets]
