-- Idempotent retries (issue 13): the answer to a creating call sent with an Idempotency-Key,
-- kept 24 h per principal so that a retry gets the same answer instead of a second object.
-- `status` is NULL while the first call runs. The response body is sealed with the
-- controller's credential key (it may hold a secret, such as a join token). Keep in step with
-- migrations/sqlite/0010_idempotency_keys.sql.
CREATE TABLE idempotency_keys (
    principal TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status BIGINT,
    content_type TEXT,
    sealed_body TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (principal, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
