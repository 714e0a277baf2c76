"""Slice leases in PostgreSQL (tables of migrations/0007_slices.sql): the one place
that reads and writes who holds which slice.

Every expiry is computed with the database's ``clock_timestamp()``, so the hosts'
clocks never matter; each statement has a timeout shorter than a lease, so a
cut-off daemon learns it may have lost its slices before they can pass to another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import asyncpg

from snapshotd.journals.base import SliceView
from snapshotd.journals.migrate import PgTarget
from snapshotd.journals.postgres.errors import wrap_errors

_FORGET_MEMBERS_AFTER_S = 60.0

_BEAT = """
INSERT INTO {s}.slice_members (member, expires_at)
VALUES ($1, clock_timestamp() + make_interval(secs => $2))
ON CONFLICT (member) DO UPDATE SET expires_at = EXCLUDED.expires_at
"""
_RENEW = """
UPDATE {s}.slice_leases SET expires_at = clock_timestamp() + make_interval(secs => $2)
WHERE member = $1
"""
_FORGET = """
DELETE FROM {s}.slice_members WHERE expires_at < clock_timestamp() - make_interval(secs => $1)
"""
_MEMBERS = "SELECT member FROM {s}.slice_members WHERE expires_at > clock_timestamp()"
_LEASES = "SELECT slice, member FROM {s}.slice_leases WHERE expires_at > clock_timestamp()"
_CLAIM = """
INSERT INTO {s}.slice_leases AS l (slice, member, expires_at)
SELECT x, $1, clock_timestamp() + make_interval(secs => $3) FROM unnest($2::int[]) AS x
ON CONFLICT (slice) DO UPDATE SET member = EXCLUDED.member, expires_at = EXCLUDED.expires_at
WHERE l.expires_at <= clock_timestamp() OR l.member = EXCLUDED.member
RETURNING slice
"""
_RELEASE = "DELETE FROM {s}.slice_leases WHERE member = $1 AND slice = ANY($2::int[])"
_LEAVE_LEASES = "DELETE FROM {s}.slice_leases WHERE member = $1"
_LEAVE = "DELETE FROM {s}.slice_members WHERE member = $1"
_FORWARD = "SELECT count(pg_notify($1, x)) FROM unnest($2::text[]) AS x"


class PgSliceStore:
    """``SliceStore`` over the journal's pool (``pool()`` raises Unavailable when closed)."""

    def __init__(self, target: PgTarget, pool: Callable[[], asyncpg.Pool]) -> None:
        self._target = target
        self._pool = pool
        s = target.quoted_schema
        self._q = {
            name: sql.format(s=s).strip()
            for name, sql in {
                "beat": _BEAT,
                "renew": _RENEW,
                "forget": _FORGET,
                "members": _MEMBERS,
                "leases": _LEASES,
                "claim": _CLAIM,
                "release": _RELEASE,
                "leave_leases": _LEAVE_LEASES,
                "leave": _LEAVE,
                "forward": _FORWARD,
            }.items()
        }

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return wrap_errors(f"postgresql journal {self._target.description}: slices: {what}")

    async def beat(self, member: str, lease_s: float) -> SliceView:
        timeout = lease_s / 3
        with self._errors("heartbeat"):
            async with self._pool().acquire() as conn, conn.transaction():
                await conn.execute(self._q["beat"], member, lease_s, timeout=timeout)
                await conn.execute(self._q["renew"], member, lease_s, timeout=timeout)
                await conn.execute(self._q["forget"], _FORGET_MEMBERS_AFTER_S, timeout=timeout)
                members = await conn.fetch(self._q["members"], timeout=timeout)
                leases = await conn.fetch(self._q["leases"], timeout=timeout)
        return SliceView([r[0] for r in members], {r[0]: r[1] for r in leases})

    async def claim(self, member: str, slices: Sequence[int], lease_s: float) -> list[int]:
        with self._errors("claim"):
            rows = await self._pool().fetch(
                self._q["claim"], member, list(slices), lease_s, timeout=lease_s / 3
            )
        return [r[0] for r in rows]

    async def release(self, member: str, slices: Sequence[int]) -> None:
        with self._errors("release"):
            await self._pool().execute(self._q["release"], member, list(slices))

    async def leave(self, member: str) -> None:
        with self._errors("leave"):
            async with self._pool().acquire() as conn, conn.transaction():
                await conn.execute(self._q["leave_leases"], member)
                await conn.execute(self._q["leave"], member)

    async def forward(self, run_ids: Sequence[str]) -> None:
        with self._errors("forward hints"):
            await self._pool().fetchval(self._q["forward"], self._target.channel, list(run_ids))
