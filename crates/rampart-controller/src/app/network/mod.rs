//! The Network API (API.md "Network"): VPCs, subnets, security groups and rules, ports with
//! IPAM, segmentation policies, floating IPs, reachability analysis and the flow graph.
//!
//! Every handler authorizes on the project first (`project.read` for reads, `project.write`
//! for changes; 404 when the caller may not see the project), validates with the constructors
//! of `rampart_net::model` (400 `validation_failed` with `details.reason`), and makes each
//! change in one transaction that also republishes the documents of every node holding a VPC
//! of the project, so agents see the change at the next generation.

pub mod analysis;
pub mod desired;
pub mod floating_ips;
pub mod policies;
pub mod ports;
pub mod security_groups;
pub mod subnets;
pub mod vpcs;

use self::desired as network;
use crate::auth::Principal;
use crate::state::AppState;
use rampart_api::network::*;
use rampart_common::Error;
use rampart_common::page::{PageParams, PageRequest};
use rampart_db::network::{PortRow, VpcRow};
use rampart_db::{Db, Tx};
use rampart_net::model::{self};
use std::collections::BTreeSet;
use uuid::Uuid;

pub(crate) fn page(q: &NetworkListParams) -> Result<PageRequest, Error> {
    PageParams {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .validate()
}

pub(crate) fn vpc_view(r: VpcRow) -> Vpc {
    Vpc {
        id: r.vpc.id,
        project_id: r.vpc.project,
        name: r.vpc.name,
        cidr: r.vpc.cidr,
        external: r.router_external_ip.is_some(),
        router_external_ip: r.router_external_ip,
        created_at: r.created_at,
    }
}

pub(crate) fn port_view(r: PortRow) -> Port {
    Port {
        id: r.port.id,
        project_id: r.project,
        vpc: r.port.vpc,
        subnet: r.port.subnet,
        mac: r.port.mac,
        ip: r.port.ip,
        security_groups: r.port.security_groups,
        tags: r.port.tags,
        allowed_address_pairs: r.port.allowed_address_pairs,
        port_security: r.port.port_security,
        max_connections: r.port.max_connections,
        binding: match (r.node, r.device) {
            (Some(node), Some(device)) => Some(PortBinding { node, device }),
            _ => None,
        },
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

pub(crate) fn fip_view(f: model::FloatingIp) -> FloatingIp {
    FloatingIp {
        id: f.id,
        address: f.address,
        port: f.port,
    }
}

/// A write: the project is checked for `project.write`, the nodes holding its VPCs are noted
/// (before the change, so a node that loses its last port still gets its new document), and
/// [`Write::finish`] republishes and commits.
pub(crate) struct Write {
    tx: Tx,
    project: Uuid,
    before: BTreeSet<(Uuid, String)>,
}

impl Write {
    async fn begin(state: &AppState, principal: &Principal, project: Uuid) -> Result<Write, Error> {
        principal.project(state, project, "project.write").await?;
        Write::open(state, project).await
    }

    /// For callers that authorized already.
    async fn open(state: &AppState, project: Uuid) -> Result<Write, Error> {
        let mut tx = state.db.begin().await?;
        let before = network::nodes_of_project(&mut tx, project).await?;
        Ok(Write { tx, project, before })
    }

    async fn finish(mut self, state: &AppState) -> Result<(), Error> {
        let mut all = network::nodes_of_project(&mut self.tx, self.project).await?;
        all.extend(self.before);
        let changed = crate::publish::nodes(&mut self.tx, &state.config, &all).await?;
        Db::commit(self.tx).await?;
        if changed {
            state.notify_node_changes();
        }
        Ok(())
    }
}

pub(crate) async fn read(state: &AppState, principal: &Principal, project: Uuid) -> Result<(), Error> {
    principal.project(state, project, "project.read").await.map(|_| ())
}
