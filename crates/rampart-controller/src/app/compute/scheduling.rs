//! Placement of a new instance on a node (spec 10.3-3: members of a security group spread
//! over nodes).

use std::collections::BTreeSet;

use rampart_common::Error;
use rampart_db::compute as db;
use rampart_db::nodes;
use uuid::Uuid;

use super::records;

/// Picks a ready node that can run VMs for a new instance of `flavor_memory_mib`, spreading the
/// members of its security groups over nodes (spec 10.3-3): fewest members of its groups first,
/// then fewest instances, then the name. With `anti_affinity`, only nodes with no member of its
/// groups qualify. `exclude`: a node not to use (the lost node an HA restart leaves).
pub async fn schedule(
    conn: &mut rampart_db::Conn,
    groups: &[Uuid],
    anti_affinity: bool,
    memory_mib: u64,
    exclude: Option<Uuid>,
) -> Result<Uuid, Error> {
    let mut candidates = db::schedulable_nodes(conn).await?;
    candidates.retain(|(id, _)| Some(*id) != exclude);
    if candidates.is_empty() {
        return Err(Error::Unavailable(
            "no ready node can run VMs now (see GET /v1/nodes: a node needs QEMU, root and cgroups)".into(),
        ));
    }
    let placements = db::placements(conn).await?;
    let wanted: BTreeSet<Uuid> = groups.iter().copied().collect();
    let mut best: Option<((usize, usize, String), Uuid)> = None;
    for (id, name) in candidates {
        let here: Vec<&(Uuid, String)> = placements.iter().filter(|(n, _)| *n == id).collect();
        let members = here
            .iter()
            .filter(|(_, g)| records::placement_groups(g).iter().any(|g| wanted.contains(g)))
            .count();
        if anti_affinity && members > 0 {
            continue;
        }
        if let Some(n) = nodes::get(conn, id).await?
            && let Some(host) = n.host
        {
            // Guests plus QEMU's overhead must fit in the host's memory.
            let used: u64 = here.len() as u64 * 512;
            if host.memory_bytes > 0 && (used + memory_mib) << 20 > host.memory_bytes {
                continue;
            }
        }
        let key = (members, here.len(), name);
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, id));
        }
    }
    best.map(|(_, id)| id).ok_or_else(|| {
        if anti_affinity {
            Error::Unavailable(
                "anti-affinity: every node that can run VMs already runs a member of these security groups".into(),
            )
        } else {
            Error::Unavailable("no node has room for this flavor".into())
        }
    })
}
