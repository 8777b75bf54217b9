-- Volume snapshots and per-project volume quotas (issue 15). A snapshot lives on its volume's
-- node (a full copy under the volume's passphrase); its row is kept after `deleted` with the
-- wipe report (12.3.4-1). Names are unique in a project among snapshots that are not deleted.
-- `project_quotas` gains the volume count and GiB limits (NULL: the `[quotas]` default).
-- Keep in step with the other backend's 0013_volume_snapshots.sql (parity test).
CREATE TABLE volume_snapshots (
    id TEXT PRIMARY KEY,
    volume_id TEXT NOT NULL REFERENCES volumes (id),
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size_gib BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('creating', 'available', 'deleting', 'wiping', 'deleted', 'error')),
    error_code TEXT,
    error_message TEXT,
    node_id TEXT,
    requested_by TEXT,
    wipe_report TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX volume_snapshots_live_name ON volume_snapshots (project_id, name) WHERE status <> 'deleted';
CREATE INDEX volume_snapshots_volume ON volume_snapshots (volume_id);
CREATE INDEX volume_snapshots_node ON volume_snapshots (node_id);

ALTER TABLE project_quotas ADD COLUMN volumes BIGINT;
ALTER TABLE project_quotas ADD COLUMN volume_gib BIGINT;
