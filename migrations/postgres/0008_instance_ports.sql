-- VM ports (issue 7 with issue 6): the ports an instance is plugged into, in NIC order, and
-- whether the instance made the port itself from a subnet (`networks`), so that deleting the
-- instance deletes it too. A port is in at most one instance. Keep in step with the other
-- backend's 0008_instance_ports.sql (parity test).
CREATE TABLE instance_ports (
    port_id TEXT PRIMARY KEY REFERENCES ports (id),
    instance_id TEXT NOT NULL REFERENCES instances (id),
    position BIGINT NOT NULL,
    auto_delete BIGINT NOT NULL CHECK (auto_delete IN (0, 1))
);
CREATE INDEX instance_ports_instance ON instance_ports (instance_id);
