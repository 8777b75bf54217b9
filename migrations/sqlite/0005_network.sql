-- Tenant networking (issue 6): VPCs, subnets, security groups and rules, ports with their
-- groups and node binding, segmentation policies, floating IPs, and what agents report about
-- their data plane. Keep in step with migrations/postgres/0005_network.sql (parity test).
-- Addresses and CIDRs are text in their canonical form; tags, address pairs, selectors and
-- port lists are JSON text.

CREATE TABLE vpcs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    cidr TEXT NOT NULL,
    -- The router's SNAT address on the external network; NULL: no outside access (10.4).
    router_external_ip TEXT UNIQUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE subnets (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    vpc_id TEXT NOT NULL REFERENCES vpcs (id),
    name TEXT NOT NULL,
    cidr TEXT NOT NULL,
    gateway TEXT NOT NULL,
    dhcp BIGINT NOT NULL CHECK (dhcp IN (0, 1)),
    -- VXLAN network identifier between nodes, unique in the deployment.
    segment_id BIGINT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    UNIQUE (vpc_id, name)
);
CREATE INDEX subnets_vpc_id ON subnets (vpc_id);

CREATE TABLE security_groups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE security_group_rules (
    id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL REFERENCES security_groups (id) ON DELETE CASCADE,
    -- Evaluation order within the group (the first matching rule decides).
    position BIGINT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('ingress', 'egress')),
    protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp', 'icmp', 'any')),
    port_min BIGINT,
    port_max BIGINT,
    remote_cidr TEXT,
    remote_group_id TEXT REFERENCES security_groups (id),
    created_at BIGINT NOT NULL,
    UNIQUE (group_id, position)
);

CREATE TABLE ports (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    vpc_id TEXT NOT NULL REFERENCES vpcs (id),
    subnet_id TEXT NOT NULL REFERENCES subnets (id),
    mac TEXT NOT NULL,
    ip TEXT NOT NULL,
    port_security BIGINT NOT NULL CHECK (port_security IN (0, 1)),
    max_connections BIGINT,
    tags TEXT NOT NULL,
    allowed_address_pairs TEXT NOT NULL,
    -- Where the port is plugged in (set by the compute service, or by an operator for a veth).
    node_id TEXT REFERENCES nodes (id) ON DELETE SET NULL,
    device TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (subnet_id, ip),
    UNIQUE (vpc_id, mac)
);
CREATE INDEX ports_node_id ON ports (node_id);
CREATE INDEX ports_vpc_id ON ports (vpc_id);

CREATE TABLE port_security_groups (
    port_id TEXT NOT NULL REFERENCES ports (id) ON DELETE CASCADE,
    group_id TEXT NOT NULL REFERENCES security_groups (id),
    PRIMARY KEY (port_id, group_id)
);
CREATE INDEX port_security_groups_group_id ON port_security_groups (group_id);

CREATE TABLE segmentation_policies (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    from_selector TEXT NOT NULL,
    to_selector TEXT NOT NULL,
    protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp', 'icmp', 'any')),
    ports TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('allow', 'deny')),
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE floating_ips (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    address TEXT NOT NULL UNIQUE,
    port_id TEXT UNIQUE REFERENCES ports (id),
    created_at BIGINT NOT NULL
);

-- The latest data-plane report of each node: counters and flow logs per VPC (JSON).
CREATE TABLE node_network_status (
    node_id TEXT PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    -- The node's tenant-plane address (VXLAN source), as its agent reports it.
    tunnel_ip TEXT,
    updated_at BIGINT NOT NULL
);
