-- Per-project quotas (issue 12): limits a system admin set for one project; a NULL column
-- takes the `[quotas]` default of the configuration. No foreign key to projects: project ids
-- are never reused, and a row left by a deleted project limits nothing. Keep in step with the
-- other backend's 0009_project_quotas.sql (parity test).
CREATE TABLE project_quotas (
    project_id TEXT PRIMARY KEY,
    images BIGINT,
    instances BIGINT,
    vpcs BIGINT,
    ports BIGINT,
    keys BIGINT,
    certificates BIGINT,
    updated_at BIGINT NOT NULL
);
