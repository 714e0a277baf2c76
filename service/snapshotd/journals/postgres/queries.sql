-- Named statements of the PostgreSQL adapter, loaded once by queries.py.
-- Each starts with a "-- name: NAME" header; {schema} is the quoted schema.

-- name: create_run
INSERT INTO {schema}.runs (run_id, workflow, version, lease, created_at)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id) DO NOTHING RETURNING true

-- name: run_workflow
SELECT workflow FROM {schema}.runs WHERE run_id = $1

-- name: get_run
SELECT run_id, workflow, version, lease, last_seq, created_at, snap_seq, due_seq, due_at
FROM {schema}.runs WHERE run_id = $1

-- name: run_exists
SELECT EXISTS (SELECT 1 FROM {schema}.runs WHERE run_id = $1)

-- name: set_version
-- A version change forgets the due point and the back-off: the run is checked anew.
UPDATE {schema}.runs SET version = $2,
    snap_seq = CASE WHEN version = $2 THEN snap_seq END,
    due_seq = CASE WHEN version = $2 THEN due_seq END,
    due_at = CASE WHEN version = $2 THEN due_at END,
    failures = CASE WHEN version = $2 THEN failures ELSE 0 END,
    retry_at = CASE WHEN version = $2 THEN retry_at END,
    ready_at = CASE WHEN version = $2 THEN ready_at WHEN last_seq > 0 THEN now() END
WHERE run_id = $1 RETURNING true

-- name: set_lease
-- A new lease means the run was restarted by a new owner: its back-off ends.
UPDATE {schema}.runs SET lease = $2,
    failures = CASE WHEN lease IS NOT DISTINCT FROM $2 THEN failures ELSE 0 END,
    retry_at = CASE WHEN lease IS NOT DISTINCT FROM $2 THEN retry_at END
WHERE run_id = $1 AND ($3 OR lease IS NOT DISTINCT FROM $4) RETURNING true

-- name: list_runs
SELECT run_id FROM {schema}.runs WHERE run_id > coalesce($1, '') ORDER BY run_id LIMIT $2

-- name: run_summaries
-- One list_runs page: run_id is COLLATE "C" (byte order), served by the primary key.
SELECT r.run_id, r.workflow, r.version, r.last_seq, newest.snapshot_id, newest.through_seq
FROM {schema}.runs r
LEFT JOIN LATERAL (
    SELECT sn.snapshot_id, sn.through_seq FROM {schema}.snapshots sn
    WHERE sn.run_id = r.run_id AND sn.version = r.version AND sn.through_seq <= r.last_seq
      AND NOT sn.retired
    ORDER BY sn.through_seq DESC, sn.created_at DESC, sn.snapshot_id DESC LIMIT 1
) newest ON true
WHERE r.run_id > $1
ORDER BY r.run_id LIMIT $2

-- name: workflow_run_summaries
-- The same page of one workflow, served by runs_workflow_run_id.
SELECT r.run_id, r.workflow, r.version, r.last_seq, newest.snapshot_id, newest.through_seq
FROM {schema}.runs r
LEFT JOIN LATERAL (
    SELECT sn.snapshot_id, sn.through_seq FROM {schema}.snapshots sn
    WHERE sn.run_id = r.run_id AND sn.version = r.version AND sn.through_seq <= r.last_seq
      AND NOT sn.retired
    ORDER BY sn.through_seq DESC, sn.created_at DESC, sn.snapshot_id DESC LIMIT 1
) newest ON true
WHERE r.workflow = $3 AND r.run_id > $1
ORDER BY r.run_id LIMIT $2

-- name: append
SELECT {schema}.append_encoded_events($1, $2, $3, $4, $5, $6)

-- name: event_bodies
-- body_md5 is checked by the adapter (migration 0003).
SELECT body, body_md5 FROM {schema}.events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3::bigint

-- name: list_snapshots
SELECT snapshot_id, run_id, through_seq, version, reducer, format_version, size_bytes,
       checksum, kind, pinned, created_at, expires_at, label, base_id, stored_bytes, retired
FROM {schema}.snapshots WHERE run_id = $1 AND NOT retired
ORDER BY through_seq DESC, created_at DESC, snapshot_id DESC

-- name: list_links
SELECT snapshot_id, run_id, through_seq, version, reducer, format_version, size_bytes,
       checksum, kind, pinned, created_at, expires_at, label, base_id, stored_bytes, retired
FROM {schema}.snapshots WHERE run_id = $1
ORDER BY through_seq DESC, created_at DESC, snapshot_id DESC

-- name: read_snapshot
SELECT snapshot_id, run_id, through_seq, version, reducer, format_version, size_bytes,
       checksum, kind, pinned, created_at, expires_at, label, base_id, stored_bytes, retired,
       payload
FROM {schema}.snapshots WHERE run_id = $1 AND snapshot_id = $2

-- name: read_links
SELECT snapshot_id, run_id, through_seq, version, reducer, format_version, size_bytes,
       checksum, kind, pinned, created_at, expires_at, label, base_id, stored_bytes, retired, payload
FROM {schema}.snapshots WHERE run_id = $1 AND snapshot_id = ANY($2::text[])

-- name: try_run_lock
SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))

-- name: run_lease
SELECT lease FROM {schema}.runs WHERE run_id = $1

-- name: latest_progress
SELECT through_seq, created_at FROM {schema}.snapshots
WHERE run_id = $1 AND version = $2 AND kind IN ('auto', 'manual')
ORDER BY through_seq DESC LIMIT 1

-- name: insert_snapshot
INSERT INTO {schema}.snapshots (snapshot_id, run_id, through_seq, version, reducer,
    format_version, size_bytes, checksum, kind, pinned, created_at, expires_at, label, payload,
    base_id, stored_bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)

-- name: lock_base
SELECT 1 FROM {schema}.snapshots WHERE run_id = $1 AND snapshot_id = $2 FOR SHARE

-- name: delete_snapshots
-- A link another surviving link is stored on stays (a writer may have just used it).
DELETE FROM {schema}.snapshots s WHERE s.run_id = $1 AND s.snapshot_id = ANY($2::text[])
  AND NOT EXISTS (
    SELECT 1 FROM {schema}.snapshots c
    WHERE c.base_id = s.snapshot_id AND c.snapshot_id <> ALL($2::text[])
  )

-- name: retire_snapshots
UPDATE {schema}.snapshots SET retired = true, pinned = false
WHERE run_id = $1 AND snapshot_id = ANY($2::text[]) AND NOT retired

-- name: set_pinned
UPDATE {schema}.snapshots SET pinned = $3
WHERE run_id = $1 AND snapshot_id = $2 AND NOT retired RETURNING true

-- name: due_runs
-- Latest snapshot of the run's current version (any kind), as the memory journal.
SELECT r.run_id FROM {schema}.runs r
LEFT JOIN LATERAL (
    SELECT sn.through_seq, sn.created_at FROM {schema}.snapshots sn
    WHERE sn.run_id = r.run_id AND sn.version = r.version AND NOT sn.retired
    ORDER BY sn.through_seq DESC, sn.created_at DESC LIMIT 1
) latest ON true
WHERE r.last_seq > coalesce(latest.through_seq, 0)
  AND coalesce(latest.created_at, r.created_at) < $1
ORDER BY r.run_id LIMIT $2

-- name: sweep_due
SELECT sweep_at, run_id FROM {schema}.runs
WHERE sweep_at <= $1 AND (sweep_at, run_id) > ($2, $3)
ORDER BY sweep_at, run_id LIMIT $4

-- name: sweep_due_slices
-- The same, for a daemon sharing the database: only the slices it holds.
SELECT sweep_at, run_id FROM {schema}.runs
WHERE sweep_at <= $1 AND (sweep_at, run_id) > ($2, $3)
  AND {schema}.run_slice(run_id) = ANY($5::int[])
ORDER BY sweep_at, run_id LIMIT $4

-- name: set_due
-- ready_at follows from the new point and the current last_seq (see migration 0002).
UPDATE {schema}.runs SET snap_seq = $2, due_seq = $3, due_at = $4,
    failures = CASE WHEN $5 THEN 0 ELSE failures END,
    retry_at = CASE WHEN $5 THEN NULL ELSE retry_at END,
    ready_at = CASE
        WHEN last_seq >= $3 THEN least(ready_at, now())
        WHEN $4::timestamptz IS NOT NULL AND last_seq > $2 THEN $4
    END
WHERE run_id = $1
  AND (due_seq IS NULL OR snap_seq < $2 OR (snap_seq = $2 AND $5))
RETURNING true

-- name: record_failure
UPDATE {schema}.runs SET failures = failures + 1,
    retry_at = $2::timestamptz
        + make_interval(secs => least($3::float8, $4::float8 * 2 ^ least(failures, 30)))
WHERE run_id = $1 RETURNING true

-- name: lock
SELECT pg_advisory_xact_lock(hashtextextended($1, 0))

-- name: append_audit
INSERT INTO {schema}.audit (at, kind, fields) VALUES ($1, $2, $3::jsonb) RETURNING cursor

-- name: queue_audit_batch
INSERT INTO {schema}.audit_pending (at, kind, fields)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[]::jsonb[])

-- name: sequence_audit
SELECT {schema}.sequence_audit($1)

-- name: prune_audit
SELECT {schema}.prune_audit($1, $2)

-- name: read_audit
SELECT cursor, at, kind, fields::text FROM {schema}.audit WHERE cursor > $1
ORDER BY cursor LIMIT $2

-- name: get_document
SELECT body, version FROM {schema}.documents WHERE namespace = $1 AND key = $2

-- name: insert_document
INSERT INTO {schema}.documents (namespace, key, version, body) VALUES ($1, $2, 1, $3)
ON CONFLICT (namespace, key) DO NOTHING RETURNING version

-- name: update_document
UPDATE {schema}.documents SET body = $3, version = version + 1, updated_at = now()
WHERE namespace = $1 AND key = $2 AND version = $4 RETURNING version
