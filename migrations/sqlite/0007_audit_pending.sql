-- Write-ahead audit records (spec 13.4-1, "no unaudited changes"): a state-changing call is
-- sealed as `pending` before its handler runs and refused if that record cannot be written.
-- Keep in step with migrations/postgres/0007_audit_pending.sql. SQLite cannot change a CHECK
-- constraint in place: the table is rebuilt with the same rows (hashes cover the values, not
-- the storage, so the chain still verifies), then its indexes and append-only triggers return.
-- DROP TABLE's implicit delete fires no trigger.

CREATE TABLE audit_records_v2 (
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
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'pending')),
    status BIGINT NOT NULL,
    code TEXT,
    duration_ms BIGINT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_records_v2 SELECT * FROM audit_records;
DROP TABLE audit_records;
ALTER TABLE audit_records_v2 RENAME TO audit_records;
CREATE INDEX audit_records_time ON audit_records (time_ms);
CREATE INDEX audit_records_actor ON audit_records (actor_id, time_ms);
CREATE INDEX audit_records_operation ON audit_records (operation, time_ms);
CREATE INDEX audit_records_project ON audit_records (target_project, time_ms);

CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
WHEN OLD.seq > COALESCE((SELECT MAX(tree_size) FROM audit_checkpoints WHERE kind = 'boundary'), 0)
BEGIN
    SELECT RAISE(ABORT, 'audit records are deleted only by the retention purge');
END;
