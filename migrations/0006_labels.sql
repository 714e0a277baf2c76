-- 0006_labels: snapshot labels and the run listing (list_runs).
--
-- * snapshots.label: the name a person gave a snapshot with `snapshot_now`
--   (1-128 characters, e.g. "before-migration-42"); null for the others.
-- * runs_workflow_run_id: pages of `list_runs` with a workflow filter are one
--   range scan of it (equality on workflow, then run_id, which is COLLATE "C",
--   so the order is the byte order of UTF-8 whatever the database's collation).
--   Without a filter the primary key (also COLLATE "C") serves the page.

ALTER TABLE snapshots
    ADD COLUMN label text CHECK (label IS NULL OR char_length(label) BETWEEN 1 AND 128);

CREATE INDEX runs_workflow_run_id ON runs (workflow, run_id);
