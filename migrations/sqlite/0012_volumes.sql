-- Volumes (issue 15): volume types, volumes with their wrapped data key, attachments, per-volume
-- grants (12.3.3), the pools nodes report, and each project's leave for unencrypted types.
-- A volume row is kept after `deleted` (its wipe report is served after deletion, 12.3.4-1);
-- names are unique among the volumes that are not deleted. Keep in step with the other
-- backend's 0012_volumes.sql (parity test).
CREATE TABLE volume_types (
    name TEXT PRIMARY KEY,
    encrypted BIGINT NOT NULL DEFAULT 1,
    multi_attach BIGINT NOT NULL DEFAULT 0,
    qos TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL
);

INSERT INTO volume_types (name, encrypted, multi_attach, qos, created_at) VALUES ('default', 1, 0, '{}', 0);

CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size_gib BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('creating', 'available', 'in-use', 'deleting', 'wiping', 'deleted', 'error')),
    error_code TEXT,
    error_message TEXT,
    volume_type TEXT NOT NULL,
    encrypted BIGINT NOT NULL,
    multi_attach BIGINT NOT NULL,
    qos TEXT NOT NULL,
    backend TEXT NOT NULL,
    node_id TEXT,
    source_image TEXT,
    source_snapshot TEXT,
    kms_key_id TEXT,
    wrapped_key TEXT,
    requested_by TEXT,
    wipe_report TEXT,
    progress BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX volumes_live_name ON volumes (project_id, name) WHERE status <> 'deleted';
CREATE INDEX volumes_node ON volumes (node_id);

CREATE TABLE volume_attachments (
    volume_id TEXT NOT NULL REFERENCES volumes (id) ON DELETE CASCADE,
    instance_id TEXT NOT NULL,
    read_only BIGINT NOT NULL,
    serial TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (volume_id, instance_id)
);

CREATE INDEX volume_attachments_instance ON volume_attachments (instance_id);

CREATE TABLE volume_grants (
    volume_id TEXT NOT NULL REFERENCES volumes (id) ON DELETE CASCADE,
    principal_kind TEXT NOT NULL CHECK (principal_kind IN ('user', 'group')),
    principal_id TEXT NOT NULL,
    actions TEXT NOT NULL,
    PRIMARY KEY (volume_id, principal_kind, principal_id)
);

CREATE TABLE storage_pools (
    node_id TEXT NOT NULL,
    name TEXT NOT NULL,
    report TEXT NOT NULL,
    free_bytes BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (node_id, name)
);

CREATE TABLE project_volume_settings (
    project_id TEXT PRIMARY KEY,
    allow_unencrypted BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
