-- Compute (issue 7): trusted image signing keys, the per-project signature policy, images,
-- flavors, instances with their events, metrics and serial console, and threshold alarms.
-- Keep in step with migrations/sqlite/0006_compute.sql (parity test). Times are BIGINT ms,
-- flags BIGINT 0/1, lists and maps JSON text.

-- Ed25519 public keys trusted to sign images: global (project_id NULL) or per project.
CREATE TABLE signing_keys (
    id TEXT PRIMARY KEY,
    project_id TEXT REFERENCES projects (id),
    name TEXT NOT NULL,
    -- First 16 hex digits of SHA-256 over the raw public key (what signatures name).
    key_id TEXT NOT NULL,
    -- `ed25519:<base64>`.
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    UNIQUE (project_id, name)
);
CREATE INDEX signing_keys_key_id ON signing_keys (key_id);

CREATE TABLE project_compute_settings (
    project_id TEXT PRIMARY KEY REFERENCES projects (id),
    image_signature_policy TEXT NOT NULL DEFAULT 'require'
        CHECK (image_signature_policy IN ('require', 'warn', 'off')),
    updated_at BIGINT NOT NULL
);

-- One blob per image (Glance style); a kernel image names its initrd.
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    disk_format TEXT NOT NULL CHECK (disk_format IN ('kernel', 'initrd', 'raw', 'qcow2')),
    ramdisk_image_id TEXT REFERENCES images (id),
    kernel_cmdline TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'saving', 'active', 'rejected')),
    size_bytes BIGINT,
    sha256 TEXT,
    -- Base64 Ed25519 signature over the digest and the key id it names.
    signature TEXT,
    signing_key_id TEXT,
    signature_verified BIGINT NOT NULL DEFAULT 0,
    -- Blob file name under the controller's image directory.
    storage_key TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE flavors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    root_disk_gib BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
INSERT INTO flavors (id, name, vcpus, memory_mib, root_disk_gib, created_at) VALUES
    ('6a0f7c1e-0000-4000-8000-000000000001', 'tiny', 1, 256, 1, 0),
    ('6a0f7c1e-0000-4000-8000-000000000002', 'small', 1, 1024, 10, 0),
    ('6a0f7c1e-0000-4000-8000-000000000003', 'medium', 2, 2048, 20, 0);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    image_id TEXT NOT NULL REFERENCES images (id),
    flavor_id TEXT NOT NULL REFERENCES flavors (id),
    node_id TEXT REFERENCES nodes (id) ON DELETE SET NULL,
    -- creating | running | stopped | failed | crashed | deleting
    status TEXT NOT NULL,
    -- running | stopped
    desired_power TEXT NOT NULL CHECK (desired_power IN ('running', 'stopped')),
    -- Bumped by reboot and by start after a crash or failure: the node boots again (and
    -- verifies the image again) when it sees a higher value.
    boot_seq BIGINT NOT NULL DEFAULT 1,
    failure_code TEXT,
    failure_message TEXT,
    -- crypt(3) $6$ hash, never the password.
    password_hash TEXT,
    login_user TEXT NOT NULL,
    ssh_keys TEXT NOT NULL DEFAULT '[]',
    tags TEXT NOT NULL DEFAULT '{}',
    security_groups TEXT NOT NULL DEFAULT '[]',
    ports TEXT NOT NULL DEFAULT '[]',
    networks TEXT NOT NULL DEFAULT '[]',
    anti_affinity BIGINT NOT NULL DEFAULT 0,
    vm_uid BIGINT,
    launched_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE INDEX instances_node ON instances (node_id);

CREATE TABLE instance_events (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX instance_events_instance ON instance_events (instance_id, at);

CREATE TABLE instance_metrics (
    instance_id TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    cpu_percent DOUBLE PRECISION NOT NULL,
    memory_bytes BIGINT NOT NULL,
    disk_read_bps DOUBLE PRECISION NOT NULL,
    disk_write_bps DOUBLE PRECISION NOT NULL,
    disk_write_iops DOUBLE PRECISION NOT NULL,
    net_rx_bps DOUBLE PRECISION NOT NULL,
    net_tx_bps DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (instance_id, at)
);

-- The tail of each instance's serial console, as its node last reported it.
CREATE TABLE instance_consoles (
    instance_id TEXT PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    output TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE alarms (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    instance_id TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    comparison TEXT NOT NULL,
    threshold DOUBLE PRECISION NOT NULL,
    period_s BIGINT NOT NULL,
    periods BIGINT NOT NULL,
    datapoints BIGINT NOT NULL,
    windows TEXT NOT NULL DEFAULT '[]',
    webhooks TEXT NOT NULL DEFAULT '[]',
    enabled BIGINT NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'INSUFFICIENT_DATA',
    state_since BIGINT NOT NULL,
    last_evaluated_at BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE alarm_transitions (
    id TEXT PRIMARY KEY,
    alarm_id TEXT NOT NULL REFERENCES alarms (id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX alarm_transitions_alarm ON alarm_transitions (alarm_id, at);

-- What each node's agent last said about its ability to run VMs (the scheduler reads it).
CREATE TABLE node_compute (
    node_id TEXT PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    available BIGINT NOT NULL,
    accel TEXT,
    reason TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
