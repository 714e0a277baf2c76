"""The read ops on one instance: ``load``, ``verify`` and ``list_runs``.

They share the instance's corruption reporter with the attempts, so a damaged
snapshot met here is reported once and skipped by later attempts and listings.
"""

from __future__ import annotations

from typing import Any

import orjson

from snapshotd.domain import compaction
from snapshotd.domain.errors import Corrupt, NotFound, ReducerError, SnapshotCorrupt
from snapshotd.domain.model import Run, RunSummary, Snapshot
from snapshotd.domain.reducers import fold
from snapshotd.runtime.attempt import AttemptContext
from snapshotd.runtime.recovery import (
    compatible,
    drop_known_corrupt,
    report_damaged,
    state_fragment,
)


async def _run(ctx: AttemptContext, run_id: str) -> Run:
    run = await ctx.journal.get_run(run_id)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


async def _chosen(ctx: AttemptContext, run_id: str, snapshot_id: str) -> Snapshot:
    """The snapshot asked for by id, verified; no fallback to another one.

    Raises NotFound when the run has no such snapshot and SnapshotCorrupt (reported
    like any damaged snapshot) when it fails its checksum or does not decode.
    """
    meta = next(
        (m for m in await ctx.journal.list_snapshots(run_id) if m.snapshot_id == snapshot_id), None
    )
    if meta is None:
        raise NotFound(f"snapshot {snapshot_id!r} of run {run_id!r} not found")
    try:
        snapshot = await ctx.chains.read_whole(run_id, meta)
        compaction.decode_state(snapshot)
    except Corrupt as exc:
        await ctx.reporter.report(run_id, snapshot_id, exc)
        raise SnapshotCorrupt(exc.message) from None
    return snapshot


async def load(
    ctx: AttemptContext,
    run_id: str,
    *,
    after_seq: int | None,
    limit: int,
    snapshot_id: str | None = None,
) -> dict[str, Any]:
    """The ``load`` op: a snapshot + a page of the events after it.

    Without ``snapshot_id``: the newest valid compatible snapshot (damaged ones are
    skipped and reported); with it, that snapshot whatever its version. With
    ``after_seq``: no snapshot, the events after it. Raises NotFound.
    """
    journal = ctx.journal
    run = await _run(ctx, run_id)
    snapshot = None
    start = after_seq or 0
    if snapshot_id is not None:
        snapshot = await _chosen(ctx, run_id, snapshot_id)
        start = snapshot.meta.through_seq
    elif after_seq is None:
        metas = compatible(run, await journal.list_snapshots(run_id))
        await report_damaged(journal, run_id, ctx.reporter)
        candidates = drop_known_corrupt(run_id, metas, ctx.reporter)
        base = await ctx.chains.newest_valid(run, candidates, whole=True)
        snapshot = None if base is None else base.snapshot()
        start = 0 if snapshot is None else snapshot.meta.through_seq
    page = await journal.read_event_page(run_id, start, limit)
    return {
        "run": {
            "run_id": run.run_id,
            "workflow": run.workflow,
            "version": run.version,
            "lease": run.lease,
            "last_seq": run.last_seq,
            "created_at": run.created_at,
        },
        "snapshot": None
        if snapshot is None
        else {
            "snapshot_id": snapshot.meta.snapshot_id,
            "through_seq": snapshot.meta.through_seq,
            "version": snapshot.meta.version,
            "state": state_fragment(snapshot),
            "created_at": snapshot.meta.created_at,
        },
        "events": [orjson.Fragment(raw) for raw in page.events],
        "next_after": page.last_seq,
        "has_more": page.has_more,
    }


async def verify(ctx: AttemptContext, run_id: str) -> dict[str, Any]:
    """The ``verify`` op: checksum every snapshot, refold current-version ones.

    ``drift`` lists current-version snapshots whose state differs from folding
    the run's events up to ``through_seq`` with the workflow's current reducer.
    """
    journal = ctx.journal
    run = await _run(ctx, run_id)
    corrupt = await report_damaged(journal, run_id, ctx.reporter)
    checked = len(corrupt)
    current: list[tuple[int, str, Any]] = []
    for meta in await journal.list_snapshots(run_id):
        try:
            snapshot = await ctx.chains.read_whole(run_id, meta)
            state = compaction.decode_state(snapshot)
        except NotFound:
            continue
        except Corrupt as exc:
            checked += 1
            corrupt.append(meta.snapshot_id)
            await ctx.reporter.report(run_id, meta.snapshot_id, exc)
            continue
        checked += 1
        if meta.version == run.version and meta.through_seq <= run.last_seq:
            current.append((meta.through_seq, meta.snapshot_id, state))
    drift = await _drift(ctx, run.run_id, run.workflow, current)
    return {"checked": checked, "corrupt": corrupt, "drift": drift}


async def _drift(
    ctx: AttemptContext, run_id: str, workflow: str, stored: list[tuple[int, str, Any]]
) -> list[str]:
    if not stored:
        return []
    stored.sort(key=lambda item: item[0])
    events = await ctx.journal.read_events(run_id, 0, stored[-1][0])
    reducer = ctx.reducer_for(workflow)
    drift: list[str] = []
    state: Any = None
    folded = 0
    for index, (through_seq, snapshot_id, expected) in enumerate(stored):
        try:
            state = fold(reducer, state, events[folded:through_seq])
            normalised = orjson.loads(compaction.encode_state(state))
        except (ReducerError, TypeError):
            drift.extend(sid for _, sid, _ in stored[index:])
            break
        folded = through_seq
        if normalised != expected:
            drift.append(snapshot_id)
    return drift


async def list_runs(
    ctx: AttemptContext, *, after: str | None, limit: int, workflow: str | None
) -> dict[str, Any]:
    """The ``list_runs`` op: one page of runs in byte order of their ids.

    The journal names each run's newest compatible snapshot from metadata; one
    this process knows to be damaged is replaced by the next older one (a rare,
    per-run ``list_snapshots``), so the page costs what the journal's page costs.
    """
    page = await ctx.journal.run_summaries(after, limit + 1, workflow)
    rows = page[:limit]
    return {
        "runs": [await _row(ctx, summary) for summary in rows],
        "next_after": rows[-1].run_id if rows else None,
        "has_more": len(page) > limit,
    }


async def _row(ctx: AttemptContext, summary: RunSummary) -> dict[str, Any]:
    through = summary.snapshot_through_seq
    if summary.snapshot_id is not None and ctx.reporter.known(summary.run_id, summary.snapshot_id):
        through = None
        try:
            metas = await ctx.journal.list_snapshots(summary.run_id)
        except NotFound:  # deleted since the page was read
            metas = []
        for meta in metas:
            if (
                meta.version == summary.version
                and meta.through_seq <= summary.last_seq
                and not ctx.reporter.known(summary.run_id, meta.snapshot_id)
            ):
                through = meta.through_seq
                break
    return {
        "run_id": summary.run_id,
        "workflow": summary.workflow,
        "version": summary.version,
        "last_seq": summary.last_seq,
        "snapshot_through_seq": through,
    }
