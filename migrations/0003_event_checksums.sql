-- 0003_event_checksums: stored events are checked on read (SPEC section 2, `load`).
--
-- body_md5 is the 16-byte md5 of body, written with the row; the daemon checks
-- every row it reads against it (in Python: ~0.6 µs a row, where md5() in the
-- server's query cost three times the whole read), so a damaged row (truncated,
-- not JSON, a forged line after a newline) is reported as corrupt, never served. Raw
-- line breaks in the data's JSON text are insignificant whitespace (inside JSON
-- strings they must be escaped), so the append function turns them into spaces:
-- no stored body can carry a newline to the socket.
--
-- Backfilling rewrites every event row once; on a large table run it in a quiet hour.

ALTER TABLE events ADD COLUMN body_md5 bytea;
UPDATE events SET body_md5 = decode(md5(body), 'hex');
ALTER TABLE events ALTER COLUMN body_md5 SET NOT NULL;

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
    INSERT INTO events (run_id, seq, recorded_at, type, body, body_md5)
    SELECT p_run_id, b.seq, p_at, b.type, b.body, decode(md5(b.body), 'hex')
    FROM (
        SELECT r.last_seq + e.ord AS seq, e.type,
               convert_to(
                   '{"seq":' || (r.last_seq + e.ord) || ',"type":' || to_json(e.type)::text
                   || ',"data":' || translate(e.data::text, E'\n\r', '  ')
                   || ',"recorded_at":"' || v_at || '"}',
                   'UTF8') AS body
        FROM unnest(p_types, p_data) WITH ORDINALITY AS e(type, data, ord)
    ) AS b;
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
