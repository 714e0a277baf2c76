-- 0004_audit_batches: audit entries written in batches without a lock shared by
-- daemons, cursors that readers never skip, and retention (SPEC section 2, `audit`).
--
-- Daemons insert their batches into audit_pending, concurrently. sequence_audit()
-- moves committed pending rows into audit in id order; only one daemon at a time
-- runs it (a transaction-scoped try-lock: a daemon that finds it taken does not
-- wait, it tries again on its next flush). audit.cursor is drawn there and only
-- there, after the previous mover committed, so a cursor becomes visible only after
-- every lower one: a reader paging with "cursor > N" never skips an entry. (A
-- sequence value drawn by concurrent writers could be drawn before its transaction
-- even had an xid and commit after a higher one had been read; drawing cursors in
-- one serial, already-committed order avoids reasoning about that.) The lock key
-- is the one older versions took around each audit insert, so mixed versions stay
-- correct during a rolling upgrade.

CREATE TABLE audit_pending (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    fields jsonb NOT NULL DEFAULT '{}'
);

-- Moves up to p_limit pending entries; -1 when another daemon is moving them.
CREATE FUNCTION sequence_audit(p_limit integer) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_moved integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(
        hashtextextended('snapshotd:' || current_schema() || ':audit', 0))
    THEN
        RETURN -1;
    END IF;
    WITH moved AS (
        DELETE FROM audit_pending
        WHERE id IN (SELECT id FROM audit_pending ORDER BY id LIMIT p_limit)
        RETURNING id, at, kind, fields
    )
    INSERT INTO audit (at, kind, fields)
    SELECT at, kind, fields FROM moved ORDER BY id;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    RETURN v_moved;
END
$$;

-- Deletes up to p_limit of the oldest entries older than p_cutoff; -1 when another
-- daemon is deleting (one at a time, small batches: no long lock on audit).
CREATE FUNCTION prune_audit(p_cutoff timestamptz, p_limit integer) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_deleted integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(
        hashtextextended('snapshotd:' || current_schema() || ':audit-retention', 0))
    THEN
        RETURN -1;
    END IF;
    DELETE FROM audit
    WHERE cursor IN (SELECT cursor FROM audit ORDER BY cursor LIMIT p_limit)
      AND at < p_cutoff;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;
