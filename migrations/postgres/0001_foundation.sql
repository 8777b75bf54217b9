-- Foundation schema (PostgreSQL). Keep in step with migrations/sqlite/0001_foundation.sql:
-- rampart-db's parity test compares tables, columns, types and nullability of both.
-- Times are BIGINT milliseconds since the Unix epoch (UTC); ids are UUID text; flags are BIGINT
-- 0/1 (sqlx's Any driver cannot read SQLite BOOLEAN columns, and one form keeps both backends alike).

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE domains (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    enabled BIGINT NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    domain_id TEXT NOT NULL REFERENCES domains (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    enabled BIGINT NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at BIGINT NOT NULL,
    UNIQUE (domain_id, name)
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    domain_id TEXT NOT NULL REFERENCES domains (id),
    name TEXT NOT NULL,
    email TEXT,
    enabled BIGINT NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    password_hash TEXT,
    password_changed_at BIGINT,
    password_change_required BIGINT NOT NULL DEFAULT 0 CHECK (password_change_required IN (0, 1)),
    created_at BIGINT NOT NULL,
    UNIQUE (domain_id, name)
);

CREATE TABLE role_assignments (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    scope_kind TEXT NOT NULL CHECK (scope_kind IN ('system', 'domain', 'project')),
    scope_id TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    UNIQUE (user_id, role, scope_kind, scope_id)
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    project_id TEXT REFERENCES projects (id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    revoked_at BIGINT,
    source_ip TEXT
);
CREATE INDEX tokens_user_id ON tokens (user_id);

CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('joining', 'ready', 'unreachable', 'quarantined')),
    cert_sha256 TEXT NOT NULL UNIQUE,
    cert_not_after BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    config TEXT NOT NULL,
    applied_generation BIGINT NOT NULL DEFAULT 0,
    last_heartbeat BIGINT,
    agent_version TEXT,
    host TEXT,
    errors TEXT NOT NULL DEFAULT '[]',
    joined_at BIGINT NOT NULL,
    state_changed_at BIGINT NOT NULL
);

CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    node_name TEXT,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    used_by_node TEXT
);

CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
