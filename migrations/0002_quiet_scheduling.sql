-- 0002_quiet_scheduling: fair, cheap sweeps and quiet notifications (SPEC sections 1, 5).
--
-- Each run carries the due point the daemon recorded (snap_seq, due_seq, due_at),
-- the time it became due (ready_at) and its back-off (failures, retry_at).
-- sweep_at, when it became due pushed past any back-off, is indexed, so a sweep
-- reads only the runs that are due, oldest first. append_encoded_events keeps
-- ready_at current and notifies only when an append makes its run due by count
-- (once per due point), or when it is the first append to a run no daemon has
-- seen (due_seq NULL and not yet due).

ALTER TABLE runs
    ADD COLUMN snap_seq bigint,
    ADD COLUMN due_seq bigint,
    ADD COLUMN due_at timestamptz,
    ADD COLUMN ready_at timestamptz,
    ADD COLUMN failures integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_at timestamptz,
    ADD COLUMN sweep_at timestamptz GENERATED ALWAYS AS (
        CASE WHEN ready_at IS NULL THEN NULL ELSE greatest(ready_at, retry_at) END
    ) STORED;

-- Runs that already have events are checked once, which records their due point.
UPDATE runs SET ready_at = created_at WHERE last_seq > 0;

CREATE INDEX runs_sweep ON runs (sweep_at, run_id) WHERE sweep_at IS NOT NULL;

DROP TRIGGER events_notify ON events;
DROP FUNCTION notify_appends();

-- SQLSTATEs as before; SD409 carries the run's last seq as DETAIL 'last_seq=N'.
CREATE OR REPLACE FUNCTION append_encoded_events(
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
    r runs%ROWTYPE;
    v_last bigint;
    v_ready timestamptz;
    v_at text;
    v_count integer := coalesce(cardinality(p_types), 0);
BEGIN
    SELECT * INTO r FROM runs WHERE run_id = p_run_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % not found', quote_literal(p_run_id) USING ERRCODE = 'SD404';
    END IF;
    IF r.lease IS NOT NULL AND p_lease IS DISTINCT FROM r.lease THEN
        RAISE EXCEPTION 'run % is leased to another owner', quote_literal(p_run_id)
            USING ERRCODE = 'SD423';
    END IF;
    IF p_expected_seq IS NOT NULL AND p_expected_seq <> r.last_seq THEN
        RAISE EXCEPTION 'run % is at seq %, not %', quote_literal(p_run_id), r.last_seq,
            p_expected_seq
            USING ERRCODE = 'SD409', DETAIL = 'last_seq=' || r.last_seq;
    END IF;
    IF v_count <> coalesce(cardinality(p_data), 0) THEN
        RAISE EXCEPTION 'p_types and p_data differ in length' USING ERRCODE = '22023';
    END IF;
    IF v_count = 0 THEN
        RETURN r.last_seq;
    END IF;
    v_at := rfc3339_utc(p_at);
    INSERT INTO events (run_id, seq, recorded_at, type, body)
    SELECT p_run_id, r.last_seq + e.ord, p_at, e.type,
           convert_to(
               '{"seq":' || (r.last_seq + e.ord) || ',"type":' || to_json(e.type)::text
               || ',"data":' || e.data::text || ',"recorded_at":"' || v_at || '"}',
               'UTF8')
    FROM unnest(p_types, p_data) WITH ORDINALITY AS e(type, data, ord);
    v_last := r.last_seq + v_count;
    v_ready := r.ready_at;
    IF r.due_seq IS NULL OR v_last >= r.due_seq THEN
        v_ready := least(v_ready, p_at);
    ELSIF r.due_at IS NOT NULL AND v_last > r.snap_seq THEN
        v_ready := least(v_ready, r.due_at);
    END IF;
    UPDATE runs SET last_seq = v_last, ready_at = v_ready WHERE run_id = p_run_id;
    IF (CASE WHEN r.due_seq IS NULL THEN r.ready_at IS NULL
             ELSE r.last_seq < r.due_seq AND v_last >= r.due_seq END)
       AND coalesce(current_setting('snapshotd.notify', true), '') NOT IN ('off', 'false')
    THEN
        PERFORM pg_notify(current_schema() || '_events', p_run_id);
    END IF;
    RETURN v_last;
END
$$;

-- As in 0001, plus: an event's data nested deeper than 64 levels (objects and
-- arrays; the data value itself is level 1) is refused with 22023.
CREATE OR REPLACE FUNCTION append_events(
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
    IF jsonb_path_exists(p_events,
        'strict $[*].data.**{64} ? (@.type() == "object" || @.type() == "array")')
    THEN
        RAISE EXCEPTION 'event data nests deeper than 64 levels' USING ERRCODE = '22023';
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

-- Create a run from plain SQL, as the socket's create_run does: true when created,
-- false when it exists with the same workflow; SD409 when with another workflow.
CREATE FUNCTION create_run(
    p_run_id text,
    p_workflow text,
    p_version text,
    p_lease text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_workflow text;
BEGIN
    IF p_run_id IS NULL OR octet_length(p_run_id) NOT BETWEEN 1 AND 200
       OR p_run_id ~ '[\x01-\x1f\x7f]'
       OR p_workflow IS NULL OR char_length(p_workflow) NOT BETWEEN 1 AND 128
       OR p_version IS NULL OR char_length(p_version) NOT BETWEEN 1 AND 128
       OR octet_length(p_lease) NOT BETWEEN 1 AND 200
    THEN
        RAISE EXCEPTION 'run_id (1-200 bytes, no control characters), workflow and version '
            '(1-128 characters) are required; lease is NULL or 1-200 bytes'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO runs (run_id, workflow, version, lease)
    VALUES (p_run_id, p_workflow, p_version, p_lease)
    ON CONFLICT (run_id) DO NOTHING;
    IF FOUND THEN
        RETURN true;
    END IF;
    SELECT workflow INTO v_workflow FROM runs WHERE run_id = p_run_id;
    IF v_workflow IS DISTINCT FROM p_workflow THEN
        RAISE EXCEPTION 'run % exists with workflow %', quote_literal(p_run_id),
            quote_literal(v_workflow) USING ERRCODE = 'SD409';
    END IF;
    RETURN false;
END
$$;
