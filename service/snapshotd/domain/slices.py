"""Slices: which of the 1024 fixed slices a run belongs to, and how daemons divide them.

Pure decisions, no I/O: the PostgreSQL journal stores the leases
(journals/postgres/slices.py) and the runtime loop (runtime/slices.py) applies
what ``plan`` decides after each heartbeat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SLICES = 1024


def run_slice(run_id: str) -> int:
    """``((b0 << 8) | b1) & 1023`` of SHA-256 of the run id's UTF-8 bytes (SPEC section 5)."""
    digest = hashlib.sha256(run_id.encode("utf-8")).digest()
    return ((digest[0] << 8) | digest[1]) & (SLICES - 1)


def share(members: int) -> int:
    """The most slices one of ``members`` live daemons should hold."""
    return -(-SLICES // max(members, 1))


@dataclass(frozen=True, slots=True)
class Plan:
    """What one daemon does after a heartbeat: leases to try to take, leases to give up."""

    claim: tuple[int, ...]
    release: tuple[int, ...]


def _preference(member: str, slice_: int) -> bytes:
    return hashlib.blake2b(f"{member}:{slice_}".encode(), digest_size=8).digest()


def plan(member: str, members: Sequence[str], leases: Mapping[int, str]) -> Plan:
    """Move ``member`` towards its share of the slices.

    ``members``: the live daemons (``member`` among them); ``leases``: the unexpired
    leases, slice -> holder. A daemon above its share releases the excess (the
    slices it prefers least), one below claims free slices up to it, in an order of
    its own (a hash of its name and the slice), so daemons that claim at the same
    moment mostly want different slices and no herd fights over the same ones. A
    newcomer thus gets its share as the others shed theirs, within a heartbeat or two.
    """
    target = share(len(set(members) | {member}))
    mine = sorted(
        (s for s, holder in leases.items() if holder == member),
        key=lambda s: _preference(member, s),
    )
    if len(mine) > target:
        return Plan((), tuple(sorted(mine[target:])))
    free = sorted(
        (s for s in range(SLICES) if s not in leases), key=lambda s: _preference(member, s)
    )
    return Plan(tuple(sorted(free[: target - len(mine)])), ())
