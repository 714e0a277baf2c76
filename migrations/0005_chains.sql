-- Incremental snapshots: a snapshot may be stored as a delta on an earlier one
-- (its base link, base_id); stored_bytes is the delta's size (NULL: stored whole,
-- size_bytes). A retired snapshot was removed by retention while a kept one still
-- needs its link: it is never listed or served, and deleted once nothing needs it.
ALTER TABLE snapshots
    ADD COLUMN base_id text COLLATE "C",
    ADD COLUMN stored_bytes bigint CHECK (stored_bytes >= 0),
    ADD COLUMN retired boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT snapshots_delta_has_size CHECK ((base_id IS NULL) = (stored_bytes IS NULL));

-- delete_snapshots keeps every link another (surviving) link is stored on.
CREATE INDEX snapshots_base ON snapshots (base_id) WHERE base_id IS NOT NULL;
