-- Audit trail (spec 13.4, 9.2-5): hash-chained operation records, signed checkpoints, the public
-- checkpoint keys, retention per log type. Keep in step with migrations/postgres/0003_audit.sql.
-- Records are append-only: the triggers refuse UPDATE, and DELETE of anything a boundary
-- checkpoint (written by the retention purge in the same transaction) does not cover. They
-- guard against application bugs; an attacker with DDL rights drops them, which is what the
-- hash chain and the signed checkpoints are for.

CREATE TABLE audit_records (
    seq BIGINT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    time_ms BIGINT NOT NULL,
    actor_id TEXT,
    actor_name TEXT,
    actor_domain TEXT,
    auth_method TEXT NOT NULL,
    source_ip TEXT,
    user_agent TEXT,
    request_id TEXT,
    operation TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT,
    target_project TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
    status BIGINT NOT NULL,
    code TEXT,
    duration_ms BIGINT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_records_time ON audit_records (time_ms);
CREATE INDEX audit_records_actor ON audit_records (actor_id, time_ms);
CREATE INDEX audit_records_operation ON audit_records (operation, time_ms);
CREATE INDEX audit_records_project ON audit_records (target_project, time_ms);

CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('periodic', 'boundary')),
    tree_size BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    checkpoint TEXT NOT NULL
);

-- Public keys only; each controller's private key is <data_dir>/audit/checkpoint.key (0600).
CREATE TABLE audit_signing_keys (
    key_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);

CREATE TABLE audit_retention (
    log_type TEXT PRIMARY KEY CHECK (log_type IN ('operation', 'run', 'blackbox', 'security')),
    days BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
INSERT INTO audit_retention (log_type, days, updated_at, updated_by) VALUES
    ('operation', 180, 0, 'default'),
    ('run', 30, 0, 'default'),
    ('blackbox', 90, 0, 'default'),
    ('security', 365, 0, 'default');

CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
WHEN OLD.seq > COALESCE((SELECT MAX(tree_size) FROM audit_checkpoints WHERE kind = 'boundary'), 0)
BEGIN
    SELECT RAISE(ABORT, 'audit records are deleted only by the retention purge');
END;

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;
