-- High availability (issue 17, spec 14.1-3). Keep in step with the other backend's
-- 0015_ha.sql (parity test). Times are BIGINT ms.

-- The HA policy of a protected instance (no row: not protected).
CREATE TABLE instance_ha (
    instance_id TEXT PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    priority BIGINT NOT NULL CHECK (priority BETWEEN 0 AND 100),
    -- Set when the instance cannot move (a volume on a node-local backend): the reason, so
    -- the event is written once.
    not_recoverable TEXT,
    updated_at BIGINT NOT NULL
);

-- A node's losses: one row per lost heartbeat the recovery handled (the last one per node
-- is the current loss while `recovered_at`/`returned_at` are unset), and per return, for the
-- flapping count.
CREATE TABLE node_losses (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    -- The last heartbeat before the loss: the node fenced itself by this plus its fence_after_s.
    last_heartbeat BIGINT NOT NULL,
    detected_at BIGINT NOT NULL,
    -- When the storage fence was applied (NULL: not yet).
    fenced_at BIGINT,
    -- When the node reported again.
    returned_at BIGINT
);
CREATE INDEX node_losses_node ON node_losses (node_id, detected_at);
