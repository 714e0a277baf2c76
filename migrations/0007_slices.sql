-- 0007_slices: the 1024 slices runs belong to, and the leases dividing them.
--
-- * run_slice(run_id): ((b0 << 8) | b1) & 1023 of SHA-256 of the run id's UTF-8
--   bytes (SPEC section 5); domain/slices.py computes the same in Python.
--   Declared IMMUTABLE although convert_to is only STABLE: its result depends on
--   the database encoding, which never changes for a database.
-- * slice_members: one row per daemon sharing the schema, kept alive by its
--   heartbeat; the live rows tell each daemon its share (1024 / live members).
-- * slice_leases: which daemon holds which slice, until expires_at. Every time
--   is the database's clock, so hosts' clocks never matter. A lease row, not a
--   session advisory lock: a hung (SIGSTOP) or cut-off daemon's session can stay
--   open until TCP keepalive notices, while a row simply expires (docs/postgres.md).

CREATE FUNCTION run_slice(p_run_id text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN ((get_byte(sha256(convert_to(p_run_id, 'UTF8')), 0) << 8)
        | get_byte(sha256(convert_to(p_run_id, 'UTF8')), 1)) & 1023;

CREATE TABLE slice_members (
    member     text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

CREATE TABLE slice_leases (
    slice      integer PRIMARY KEY CHECK (slice BETWEEN 0 AND 1023),
    member     text NOT NULL,
    expires_at timestamptz NOT NULL
);
