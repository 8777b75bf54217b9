-- Keys and certificates (issue 5). Keep in step with migrations/sqlite/0004_keys.sql (parity test).
-- Customer keys: the key row and one row per version. Key material is stored only wrapped
-- (sealed by the project's root keys in the HSM, bound to project, key id and version) and
-- becomes NULL when the key is destroyed. No column ever holds a plaintext key (spec 13.3-5).

CREATE TABLE kms_keys (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    algorithm TEXT NOT NULL CHECK (algorithm IN ('aes-256-gcm')),
    state TEXT NOT NULL CHECK (state IN ('enabled', 'disabled', 'pending_deletion', 'destroyed')),
    primary_version BIGINT NOT NULL CHECK (primary_version >= 1),
    min_decryption_version BIGINT NOT NULL CHECK (min_decryption_version >= 1),
    rotation_period_days BIGINT,
    last_rotated_at BIGINT NOT NULL,
    deletion_at BIGINT,
    destroyed_at BIGINT,
    -- When the reconciler must look at the key (rotation or destruction).
    next_action_at BIGINT,
    -- Optimistic concurrency: every update checks and bumps it.
    revision BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE INDEX kms_keys_next_action ON kms_keys (next_action_at);

CREATE TABLE kms_key_versions (
    key_id TEXT NOT NULL REFERENCES kms_keys (id) ON DELETE CASCADE,
    version BIGINT NOT NULL CHECK (version >= 1),
    wrapped_material TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, version)
);

-- Every certificate Rampart issued or was given: the CAs, API server and agent certificates,
-- certificates issued from tenants' CSRs, imported third-party certificates.
CREATE TABLE certificates (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('ca', 'server', 'agent', 'tenant', 'imported')),
    issuer_ca TEXT CHECK (issuer_ca IN ('infrastructure', 'tenant')),
    project_id TEXT REFERENCES projects (id),
    node_id TEXT,
    serial TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    names TEXT NOT NULL DEFAULT '[]',
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    pem TEXT NOT NULL,
    chain_pem TEXT NOT NULL DEFAULT '',
    chain_trust TEXT,
    revoked_at BIGINT,
    revocation_reason TEXT,
    expiry_alarm_at BIGINT,
    created_by TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE INDEX certificates_project_id ON certificates (project_id);

-- Agent certificate renewal: the new certificate is accepted next to the current one until the
-- agent first uses it, so a crash between renewal and saving never locks a node out.
ALTER TABLE nodes ADD COLUMN next_cert_sha256 TEXT;
ALTER TABLE nodes ADD COLUMN next_cert_not_after BIGINT;
