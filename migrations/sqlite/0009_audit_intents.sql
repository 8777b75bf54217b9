-- Open write-ahead intents (issue 13): what became of a call whose process died between its
-- pending record and its completion. `audit_intents` is written in the same transaction as the
-- call's change, so a row means the change committed (and names what it created, when known).
-- The indexes let the reconciler find pending records and their completions (same request id)
-- without scanning the trail. Keep in step with migrations/postgres/0009_audit_intents.sql.
CREATE TABLE audit_intents (
    intent_seq BIGINT PRIMARY KEY,
    target_id TEXT,
    committed_at BIGINT NOT NULL
);
CREATE INDEX audit_intents_committed ON audit_intents (committed_at);
CREATE INDEX audit_records_request ON audit_records (request_id);
CREATE INDEX audit_records_pending ON audit_records (seq) WHERE outcome = 'pending';
