-- 0008_shard_layout: where this database sits in a sharded journal (SPEC section 5).
--
-- One row at most, written by `snapshotd migrate` given several DSNs (or by the
-- daemon on a shard that holds no runs yet): shard shard_index of shard_count,
-- holding slices floor(i*1024/n) up to floor((i+1)*1024/n). A daemon whose DSN
-- list disagrees with it refuses the shard, so runs never land in the wrong one.
-- A single-database journal has no row.

CREATE TABLE shard_layout (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    shard_index integer NOT NULL CHECK (shard_index >= 0),
    shard_count integer NOT NULL CHECK (shard_count > shard_index AND shard_count <= 1024),
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
