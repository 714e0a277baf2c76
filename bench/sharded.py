"""Sharded journal figures (SPEC section 8): router overhead and balance per shard.

``python -m bench.sharded [--quick]`` prints JSON: the single-client p50 latency of
``append_events`` called directly on a shard and through the PL/Proxy router
(and their ratio, target at most 1.5), and runs per shard after creating them
through the router (target within ±20 % of the mean). The three shard
databases and the router database live on the local server (BENCH_PG_DSN); the
router needs PL/Proxy (postgresql-15-plproxy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from contextlib import ExitStack

import asyncpg

from bench.pg import fresh_database
from snapshotd.domain.slices import run_slice, slice_shard
from snapshotd.journals.migrate import parse_dsn
from snapshotd.journals.postgres.layout import migrate_shards
from snapshotd.journals.postgres.router import install_router

SHARDS = 3
EVENT = '[{"type": "step", "data": {"n": 1}}]'


async def _p50_ms(conn: asyncpg.Connection, schema: str, runs: list[str]) -> float:
    """Median latency of one single-event ``append_events`` per run, one client."""
    times: list[float] = []
    for run in runs:
        start = time.perf_counter()
        await conn.fetchval(f"SELECT {schema}.append_events($1, NULL, $2::jsonb)", run, EVENT)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def measure(shards: list[str], router: str, runs: int, calls: int) -> dict[str, object]:
    await migrate_shards(shards)
    await install_router(parse_dsn(router), [parse_dsn(dsn) for dsn in shards])
    via = await asyncpg.connect(parse_dsn(router).dsn)
    direct = await asyncpg.connect(parse_dsn(shards[0]).dsn)
    try:
        ids = [f"run-{i}" for i in range(runs)]
        for run in ids:
            await via.fetchval("SELECT bench.create_run($1, 'wf', 'v1')", run)
        on_zero = [r for r in ids if slice_shard(run_slice(r), SHARDS) == 0]
        sample = (on_zero * (calls // max(len(on_zero), 1) + 1))[:calls]
        # Alternate so drift on a shared machine hits both sides alike.
        direct_ms: list[float] = []
        router_ms: list[float] = []
        for _ in range(3):
            direct_ms.append(await _p50_ms(direct, "bench", sample))
            router_ms.append(await _p50_ms(via, "bench", sample))
    finally:
        await via.close()
        await direct.close()
    per_shard = []
    for dsn in shards:
        conn = await asyncpg.connect(parse_dsn(dsn).dsn)
        try:
            per_shard.append({"runs": await conn.fetchval("SELECT count(*) FROM bench.runs")})
        finally:
            await conn.close()
    mean = runs / SHARDS
    direct_p50, router_p50 = statistics.median(direct_ms), statistics.median(router_ms)
    return {
        "append_p50_ms": {"direct": round(direct_p50, 3), "router": round(router_p50, 3)},
        "router_over_direct": round(router_p50 / direct_p50, 2),
        "per_shard": per_shard,
        "max_runs_off_mean_pct": round(
            max(abs(s["runs"] - mean) for s in per_shard) / mean * 100, 1
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sharded")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    runs, calls = (600, 200) if args.quick else (3000, 1000)
    with ExitStack() as stack:
        shards = [
            stack.enter_context(fresh_database("snapshotd_shard")) + "?schema=bench"
            for _ in range(SHARDS)
        ]
        router = stack.enter_context(fresh_database("snapshotd_router")) + "?schema=bench"
        result = asyncio.run(measure(shards, router, runs, calls))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
