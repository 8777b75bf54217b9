-- Write-ahead audit records (spec 13.4-1, "no unaudited changes"): a state-changing call is
-- sealed as `pending` before its handler runs and refused if that record cannot be written.
-- Keep in step with migrations/sqlite/0007_audit_pending.sql.
ALTER TABLE audit_records DROP CONSTRAINT audit_records_outcome_check;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_outcome_check
    CHECK (outcome IN ('success', 'failure', 'pending'));
