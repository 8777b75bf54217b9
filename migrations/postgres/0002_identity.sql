-- Identity: account state (validity window, lockout, MFA, source ranges), password history,
-- groups, custom roles, application credentials, MFA recovery codes.
-- Keep in step with migrations/sqlite/0002_identity.sql (parity test).

ALTER TABLE users ADD COLUMN valid_from BIGINT;
ALTER TABLE users ADD COLUMN valid_until BIGINT;
ALTER TABLE users ADD COLUMN allowed_source_cidrs TEXT NOT NULL DEFAULT '[]';
ALTER TABLE users ADD COLUMN failed_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until BIGINT;
ALTER TABLE users ADD COLUMN last_login_at BIGINT;
-- TOTP secrets are stored encrypted (AES-256-GCM with the controller's credential key).
ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_pending_secret TEXT;
ALTER TABLE users ADD COLUMN totp_last_counter BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN description TEXT NOT NULL DEFAULT '';

ALTER TABLE domains ADD COLUMN allowed_source_cidrs TEXT NOT NULL DEFAULT '[]';

ALTER TABLE tokens ADD COLUMN methods TEXT NOT NULL DEFAULT '["password"]';
ALTER TABLE tokens ADD COLUMN application_credential_id TEXT;

CREATE TABLE password_history (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX password_history_user_id ON password_history (user_id, created_at);

CREATE TABLE user_groups (
    id TEXT PRIMARY KEY,
    domain_id TEXT NOT NULL REFERENCES domains (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    UNIQUE (domain_id, name)
);

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE group_role_assignments (
    id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    scope_kind TEXT NOT NULL CHECK (scope_kind IN ('system', 'domain', 'project')),
    scope_id TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    UNIQUE (group_id, role, scope_kind, scope_id)
);

-- Custom roles: named bundles of built-in roles (implied roles).
CREATE TABLE roles (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    implies TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL
);

CREATE TABLE application_credentials (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    roles TEXT NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    UNIQUE (user_id, name)
);

CREATE TABLE recovery_codes (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX recovery_codes_user_id ON recovery_codes (user_id);

CREATE INDEX role_assignments_scope ON role_assignments (scope_kind, scope_id);
