"""One snapshot attempt: pure orchestration over a Journal, ending in an Outcome.

Order (SPEC section 1 skip precedence): run -> lease -> policy -> base -> decide ->
tail -> compact -> size cap -> write -> retention -> done. Every failure becomes a
skip reason here, in one place, so the actor calling this never dies from an attempt.

The policy is first decided on metadata alone (newest compatible snapshot not known
to be damaged): most requests end as ``below_threshold`` and must stay cheap, so
the base snapshot is read and verified only once a snapshot is actually due.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import structlog

from snapshotd.domain import chains, compaction
from snapshotd.domain.errors import (
    Busy,
    Corrupt,
    NotFound,
    ReducerError,
    SnapshotdError,
    StaleLease,
    Superseded,
    Unavailable,
)
from snapshotd.domain.model import Run, SnapshotKind, SnapshotMeta, utcnow
from snapshotd.domain.policies import Policy, SkipReason, decide, fits, prune
from snapshotd.domain.reducers import Reducer
from snapshotd.journals.base import Journal
from snapshotd.runtime.chains import Chains
from snapshotd.runtime.recovery import (
    CorruptionReporter,
    compatible,
    drop_known_corrupt,
    report_damaged,
)
from snapshotd.telemetry.instruments import InstanceTelemetry

_log = structlog.get_logger("snapshotd.attempt")


class AttemptContext(Protocol):
    """What an attempt needs from its instance."""

    @property
    def journal(self) -> Journal: ...

    @property
    def telemetry(self) -> InstanceTelemetry: ...

    @property
    def reporter(self) -> CorruptionReporter: ...

    @property
    def chains(self) -> Chains: ...

    def policy_for(self, workflow: str) -> Policy: ...

    def reducer_for(self, workflow: str) -> Reducer: ...

    async def record_audit(self, kind: str, **fields: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Seen:
    """The run as the attempt found it and the base its decision counted from."""

    run: Run
    policy: Policy
    base_seq: int
    base_at: datetime
    snapshotted: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended: ``reason`` None means a snapshot was taken (``meta``)."""

    reason: SkipReason | None
    meta: SnapshotMeta | None = None
    events_folded: int = 0
    lag: int | None = None
    through_seq: int | None = None
    error: BaseException | None = None
    seen: Seen | None = None
    details: dict[str, int] | None = None
    """What the skip reason needs to be acted on (``too_large``: ``size_bytes`` and
    ``max_snapshot_bytes``), for the audit entry, the log line and the span."""

    @property
    def taken(self) -> bool:
        return self.reason is None

    def result(self) -> dict[str, Any]:
        """The ``snapshot_now`` result of SPEC section 2."""
        if self.meta is None:
            return {"status": "skipped", "reason": self.reason}
        return {
            "status": "taken",
            "snapshot_id": self.meta.snapshot_id,
            "through_seq": self.meta.through_seq,
            "size_bytes": self.meta.size_bytes,
        }


@dataclass(slots=True)
class _Progress:
    """What is known so far, kept when a later step fails."""

    lag: int | None = None
    through_seq: int | None = None
    seen: Seen | None = None

    def outcome(
        self,
        reason: SkipReason,
        error: BaseException | None = None,
        details: dict[str, int] | None = None,
    ) -> Outcome:
        return Outcome(
            reason,
            lag=self.lag,
            through_seq=self.through_seq,
            error=error,
            seen=self.seen,
            details=details,
        )


async def attempt(
    ctx: AttemptContext,
    run_id: str,
    *,
    lease: str | None,
    force: bool,
    kind: SnapshotKind,
    label: str | None = None,
) -> Outcome:
    """Try to snapshot ``run_id``; never raises except on cancellation.

    ``lease``: the requester's lease (None: not checked). ``kind="safety"`` implies
    ``force`` and records a snapshot even when no event follows the base. ``label``
    is kept with the snapshot taken.
    """
    progress = _Progress()
    try:
        return await _attempt(ctx, run_id, lease, force or kind == "safety", kind, label, progress)
    except Corrupt as exc:
        await ctx.reporter.report_run(run_id, exc)
        return _failed("journal_error", exc, progress)
    except (Unavailable, OSError) as exc:
        return _failed("journal_error", exc, progress)
    except ReducerError as exc:
        return _failed("reducer_error", exc, progress)
    except Busy as exc:
        return _failed("busy", exc, progress)
    except StaleLease as exc:
        return _failed("stale_lease", exc, progress)
    except Superseded:
        return _failed("no_events", None, progress)
    except NotFound:
        return _failed("no_run", None, progress)
    except Exception as exc:  # noqa: BLE001 -- the one catch-all: any bug in an attempt becomes skip reason `internal`, so the actor keeps serving
        return _failed("internal", exc, progress)


def _failed(reason: SkipReason, error: BaseException | None, progress: _Progress) -> Outcome:
    return progress.outcome(reason, error)


async def _attempt(
    ctx: AttemptContext,
    run_id: str,
    lease: str | None,
    force: bool,
    kind: SnapshotKind,
    label: str | None,
    progress: _Progress,
) -> Outcome:
    journal = ctx.journal
    now = utcnow()
    run = await journal.get_run(run_id)
    if run is None:
        return Outcome("no_run")
    if lease is not None and run.lease is not None and lease != run.lease:
        return Outcome("stale_lease")
    policy = ctx.policy_for(run.workflow)

    listed = compatible(run, await journal.list_snapshots(run_id))
    candidates = drop_known_corrupt(run_id, listed, ctx.reporter)
    newest = candidates[0] if candidates else None
    progress.lag = run.last_seq - (newest.through_seq if newest else 0)
    progress.seen = _seen(run, policy, newest)
    if not force:
        reason = _decide(policy, run, newest, now, force=False)
        if reason is not None:
            return progress.outcome(reason)

    await report_damaged(journal, run_id, ctx.reporter)
    known = ctx.chains.known_size(run_id, policy.reducer)
    if known is not None and not fits(policy, known):
        # A `steps` state only grows: once too large, it stays so (no refolding).
        sizes = {"size_bytes": known, "max_snapshot_bytes": policy.max_snapshot_bytes}
        return progress.outcome("too_large", details=sizes)
    codec = chains.codec_for(policy.reducer) if ctx.chains.stores_links else None
    base = await ctx.chains.newest_valid(run, candidates, whole=codec is None)
    base_meta = None if base is None else base.meta
    if (base_meta and base_meta.snapshot_id) != (newest and newest.snapshot_id):
        progress.lag = run.last_seq - (base_meta.through_seq if base_meta else 0)
        progress.seen = _seen(run, policy, base_meta)
    reason = _decide(policy, run, base_meta, now, force=force)
    if reason is not None and not (reason == "no_events" and kind == "safety"):
        return progress.outcome(reason)

    base_seq = 0 if base_meta is None else base_meta.through_seq
    tail = await journal.read_events(run_id, base_seq)
    if not tail and kind != "safety":
        return progress.outcome("no_events")
    if base is not None and codec is not None and base.meta.reducer == policy.reducer:
        # `steps` on a journal storing links: the new state's size follows from the
        # base's and the delta's, so nothing older than the tail is read or encoded.
        delta = codec.delta(tail)
        size = codec.size(base.meta.size_bytes, len(delta))
        progress.through_seq = tail[-1].seq if tail else base.meta.through_seq
        ctx.chains.grew(run_id, policy.reducer, progress.through_seq, size)
        if not fits(policy, size):
            sizes = {"size_bytes": size, "max_snapshot_bytes": policy.max_snapshot_bytes}
            return progress.outcome("too_large", details=sizes)
        stored = await ctx.chains.extend(
            base, tail, delta, size, kind=kind, now=now, safety_ttl_s=policy.safety_ttl_s
        )
        snapshot = replace(stored, meta=replace(stored.meta, label=label))
    else:
        if base is not None and base.payload is None:
            base = await ctx.chains.newest_valid(run, [base.meta], whole=True)
            if base is None:
                return progress.outcome("no_events")
        snapshot = compaction.compact(
            run_id=run_id,
            version=run.version,
            reducer_name=policy.reducer,
            reducer=ctx.reducer_for(run.workflow),
            base=None if base is None else base.snapshot(),
            tail=tail,
            kind=kind,
            now=now,
            safety_ttl_s=policy.safety_ttl_s,
            label=label,
        ).snapshot
        progress.through_seq = snapshot.meta.through_seq
        ctx.chains.grew(run_id, policy.reducer, progress.through_seq, snapshot.meta.size_bytes)
        if not fits(policy, snapshot.meta.size_bytes):
            sizes = {
                "size_bytes": snapshot.meta.size_bytes,
                "max_snapshot_bytes": policy.max_snapshot_bytes,
            }
            return progress.outcome("too_large", details=sizes)
    meta = snapshot.meta
    if kind != "safety":
        await _clear_corrupt_blockers(ctx, listed, meta)
    await journal.write_snapshot(snapshot, lease=lease)
    ctx.chains.written(snapshot, base)
    await _retain(ctx, run, policy, now)
    if kind != "safety":
        progress.seen = Seen(run, policy, meta.through_seq, meta.created_at, snapshotted=True)
    return Outcome(None, meta, len(tail), progress.lag, meta.through_seq, seen=progress.seen)


def _seen(run: Run, policy: Policy, base: SnapshotMeta | None) -> Seen:
    if base is None:
        return Seen(run, policy, 0, run.created_at)
    return Seen(run, policy, base.through_seq, base.created_at)


def _decide(
    policy: Policy, run: Run, base: SnapshotMeta | None, now: datetime, *, force: bool
) -> SkipReason | None:
    return decide(
        policy,
        tail_count=run.last_seq - (base.through_seq if base else 0),
        last_snapshot_at=base.created_at if base else run.created_at,
        now=now,
        force=force,
    )


async def _clear_corrupt_blockers(
    ctx: AttemptContext, listed: list[SnapshotMeta], meta: SnapshotMeta
) -> None:
    """Delete the known-corrupt snapshots that would make writing ``meta`` Superseded.

    A corrupt snapshot is never a base, but the journal still counts it when it
    refuses an auto/manual snapshot at or below its ``through_seq``: left in place,
    it would keep the run replaying its tail until the events pass it. Pinned ones
    are the operator's to delete, so one of them blocking leaves everything as is
    (the write then ends as ``no_events``).
    """
    blockers = [
        m
        for m in listed
        if m.kind != "safety"
        and m.version == meta.version
        and m.through_seq >= meta.through_seq
        and ctx.reporter.known(meta.run_id, m.snapshot_id)
    ]
    if not blockers or any(m.pinned for m in blockers):
        return
    ids = [m.snapshot_id for m in blockers]
    ctx.telemetry.pruned(await ctx.journal.delete_snapshots(meta.run_id, ids))
    await ctx.record_audit(
        "snapshot_pruned", run_id=meta.run_id, snapshot_ids=ids, reason="corrupt"
    )


async def _retain(ctx: AttemptContext, run: Run, policy: Policy, now: datetime) -> None:
    """Apply retention after a write; a failure here does not undo the snapshot taken.

    Snapshots known to be damaged neither count towards ``keep_snapshots`` (they must
    not push out an intact one) nor get deleted (kept for inspection).
    """
    try:
        visible = await ctx.journal.list_snapshots(run.run_id)
        metas = drop_known_corrupt(run.run_id, visible, ctx.reporter)
        doomed = prune(metas, current_version=run.version, keep=policy.keep_snapshots, now=now)
        if not doomed:
            return
        await ctx.chains.retain(run.run_id, visible, doomed)
    except (SnapshotdError, OSError) as exc:
        _log.warning("prune_failed", run_id=run.run_id, error=f"{type(exc).__name__}: {exc}")
        return
    ctx.telemetry.pruned(len(doomed))
    await ctx.record_audit(
        "snapshot_pruned", run_id=run.run_id, snapshot_ids=[m.snapshot_id for m in doomed]
    )
