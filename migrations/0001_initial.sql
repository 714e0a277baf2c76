-- 0001_initial: the snapshotd PostgreSQL journal (SPEC section 5).
--
-- Schema-agnostic on purpose: `snapshotd migrate` runs this file in one
-- transaction after `SET LOCAL search_path TO <schema>` (default snapshotd).
-- By hand: `SET search_path TO snapshotd;` then `\i 0001_initial.sql`.
-- Every function pins that search_path (SET search_path FROM CURRENT), so
-- `select snapshotd.append_events(...)` works from any session and cannot be
-- redirected by a caller's search_path.
--
-- Column types, measured on the development machine (raw asyncpg + orjson):
-- * events.body is bytea holding the event exactly as `load` serves it
--   ({"seq","type","data","recorded_at"} as UTF-8 JSON). 100,000 rows fetch in
--   ~45 ms as bytea against ~100 ms as jsonb rendered to text, and the daemon
--   passes the bytes through without decoding and re-encoding them; decoding
--   them all at once with orjson (for compaction) takes ~45 ms more for small
--   events. jsonb
--   would also reorder keys and drop the distinction between 1.0 and 1.
-- * snapshots.payload is bytea with lz4 column compression when the server
--   supports it: a 1 MB state writes in ~2.6 ms with lz4 against ~7 ms with
--   the default pglz. Servers built without lz4 keep pglz (see the DO block).
-- * Identifiers are text COLLATE "C": byte order equals the code point order
--   the daemon sorts by (list_runs pages) and compares faster than a locale.
-- * events has no foreign key to runs: append_events locks the run row before
--   inserting, and a per-row foreign-key check would double the insert cost.

CREATE TABLE schema_migrations (
    name text COLLATE "C" PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runs (
    run_id text COLLATE "C" PRIMARY KEY,
    workflow text NOT NULL,
    version text NOT NULL,
    lease text,
    last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    run_id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL CHECK (seq > 0),
    recorded_at timestamptz NOT NULL,
    type text NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE snapshots (
    snapshot_id text COLLATE "C" PRIMARY KEY,
    run_id text COLLATE "C" NOT NULL,
    through_seq bigint NOT NULL CHECK (through_seq >= 0),
    version text NOT NULL,
    reducer text NOT NULL,
    format_version integer NOT NULL,
    kind text NOT NULL CHECK (kind IN ('auto', 'manual', 'safety')),
    pinned boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    size_bytes bigint NOT NULL,
    checksum text NOT NULL,
    payload bytea NOT NULL
);

-- SPEC: no two auto/manual snapshots of one run and version share a through_seq.
-- Also serves the "through_seq never goes backwards" check of a snapshot write.
CREATE UNIQUE INDEX snapshots_progress_key
    ON snapshots (run_id, version, through_seq)
    WHERE kind IN ('auto', 'manual');

-- list_snapshots (by run) and the latest compatible snapshot per run (due_runs).
CREATE INDEX snapshots_run_latest
    ON snapshots (run_id, version, through_seq DESC, created_at DESC);

CREATE TABLE audit (
    cursor bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    fields jsonb NOT NULL DEFAULT '{}'
);

-- Savepoint storage: small documents updated by compare-and-swap on version.
CREATE TABLE documents (
    namespace text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    body bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, key)
);

DO $$
BEGIN
    EXECUTE 'ALTER TABLE snapshots ALTER COLUMN payload SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE events ALTER COLUMN body SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE documents ALTER COLUMN body SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'lz4 column compression is not available; payloads keep pglz';
END
$$;

-- recorded_at as orjson writes it with OPT_UTC_Z: microseconds only when non-zero.
CREATE FUNCTION rfc3339_utc(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $$
    SELECT CASE
        WHEN date_part('microseconds', t)::bigint % 1000000 = 0
            THEN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        ELSE to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    END
$$;

-- The single write path for events. SQLSTATEs: SD404 no such run, SD423 stale
-- lease (checked first), SD409 expected_seq is not the run's last seq.
-- p_data holds each event's data as JSON text, stored verbatim; applications
-- call append_events below, the daemon calls this with orjson-encoded data.
CREATE FUNCTION append_encoded_events(
    p_run_id text,
    p_expected_seq bigint,
    p_lease text,
    p_types text[],
    p_data json[],
    p_at timestamptz
) RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_last bigint;
    v_lease text;
    v_at text;
    v_count integer := coalesce(cardinality(p_types), 0);
BEGIN
    SELECT r.last_seq, r.lease INTO v_last, v_lease
    FROM runs r WHERE r.run_id = p_run_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % not found', quote_literal(p_run_id) USING ERRCODE = 'SD404';
    END IF;
    IF v_lease IS NOT NULL AND p_lease IS DISTINCT FROM v_lease THEN
        RAISE EXCEPTION 'run % is leased to another owner', quote_literal(p_run_id)
            USING ERRCODE = 'SD423';
    END IF;
    IF p_expected_seq IS NOT NULL AND p_expected_seq <> v_last THEN
        RAISE EXCEPTION 'run % is at seq %, not %', quote_literal(p_run_id), v_last, p_expected_seq
            USING ERRCODE = 'SD409';
    END IF;
    IF v_count <> coalesce(cardinality(p_data), 0) THEN
        RAISE EXCEPTION 'p_types and p_data differ in length' USING ERRCODE = '22023';
    END IF;
    IF v_count = 0 THEN
        RETURN v_last;
    END IF;
    v_at := rfc3339_utc(p_at);
    INSERT INTO events (run_id, seq, recorded_at, type, body)
    SELECT p_run_id, v_last + e.ord, p_at, e.type,
           convert_to(
               '{"seq":' || (v_last + e.ord) || ',"type":' || to_json(e.type)::text
               || ',"data":' || e.data::text || ',"recorded_at":"' || v_at || '"}',
               'UTF8')
    FROM unnest(p_types, p_data) WITH ORDINALITY AS e(type, data, ord);
    v_last := v_last + v_count;
    UPDATE runs SET last_seq = v_last WHERE run_id = p_run_id;
    RETURN v_last;
END
$$;

-- Append from plain SQL, in any language:
--   select snapshotd.append_events('order-42', 3, '[{"type":"paid","data":{"amount":12}}]');
-- p_expected_seq NULL skips the optimistic check; p_lease must be the run's lease
-- while it has one. Returns the new last seq. Invalid events raise 22023.
CREATE FUNCTION append_events(
    p_run_id text,
    p_expected_seq bigint,
    p_events jsonb,
    p_lease text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_types text[];
    v_data json[];
BEGIN
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'events must be a JSON array' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (
        SELECT 1 FROM jsonb_array_elements(p_events) AS e(item)
        WHERE jsonb_typeof(e.item) <> 'object'
           OR jsonb_typeof(e.item -> 'type') IS DISTINCT FROM 'string'
           OR char_length(e.item ->> 'type') NOT BETWEEN 1 AND 128
           OR NOT e.item ? 'data'
    ) THEN
        RAISE EXCEPTION 'each event must be {"type": string of 1-128 characters, "data": JSON}'
            USING ERRCODE = '22023';
    END IF;
    -- jsonb keeps numbers as decimals; the daemon reads integers as signed 64 bits.
    IF jsonb_path_exists(p_events,
        '$[*].data.** ? (@.type() == "number" && (@ > 9223372036854775807 || @ < -9223372036854775808))')
    THEN
        RAISE EXCEPTION 'event data holds a number outside signed 64 bits' USING ERRCODE = '22023';
    END IF;
    SELECT array_agg(e.item ->> 'type' ORDER BY e.ord),
           array_agg((e.item -> 'data')::text::json ORDER BY e.ord)
    INTO v_types, v_data
    FROM jsonb_array_elements(p_events) WITH ORDINALITY AS e(item, ord);
    RETURN append_encoded_events(p_run_id, p_expected_seq, p_lease, v_types, v_data, now());
END
$$;

-- One NOTIFY per statement and run on channel <schema>_events, payload the run id.
CREATE FUNCTION notify_appends() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_events', appended.run_id)
    FROM (SELECT DISTINCT n.run_id FROM new_events n) AS appended;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION notify_appends();
