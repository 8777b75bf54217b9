//! High availability of protected instances (spec 14.1-3), the pure half: admission control
//! (does the cluster keep room to restart the protected instances of its largest nodes?), the
//! order of recovery, which volumes can follow an instance to another node, and when a lost
//! node's instances may be restarted elsewhere.

use uuid::Uuid;

/// A node as admission control sees it: its memory and the instances placed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLoad {
    pub node: Uuid,
    pub capacity_mib: u64,
    /// `(guest memory MiB, protected)` of each instance placed there.
    pub instances: Vec<(u64, bool)>,
}

impl NodeLoad {
    fn used(&self) -> u64 {
        self.instances.iter().map(|(m, _)| m).sum()
    }

    fn protected(&self) -> Vec<u64> {
        self.instances.iter().filter(|(_, p)| *p).map(|(m, _)| *m).collect()
    }
}

/// Why admission refused: the protected memory of the failed nodes that found no room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The nodes assumed lost (those with the most protected memory).
    pub failed: Vec<Uuid>,
    /// Protected memory (MiB) that would not find a node.
    pub unplaced_mib: u64,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "after losing {} node(s), {} MiB of protected instances would find no node to restart on",
            self.failed.len(),
            self.unplaced_mib
        )
    }
}

/// Whether the cluster `nodes` (every instance already placed, the new one included) can lose
/// its `failures` nodes with the most protected memory and still restart all their protected
/// instances on the others, each instance on one node (largest first, on the node with most
/// room: first-fit decreasing, a safe approximation of bin packing). With no protected
/// instance or `failures == 0` there is nothing to keep room for.
pub fn admit(nodes: &[NodeLoad], failures: u32) -> Result<(), Shortfall> {
    if failures == 0 || nodes.iter().all(|n| n.protected().is_empty()) {
        return Ok(());
    }
    let mut order: Vec<&NodeLoad> = nodes.iter().collect();
    // Most protected memory first; ties by id so the verdict does not depend on input order.
    order.sort_by_key(|n| (std::cmp::Reverse(n.protected().iter().sum::<u64>()), n.node));
    let k = (failures as usize).min(order.len());
    let (failed, survivors) = order.split_at(k);
    let mut items: Vec<u64> = failed.iter().flat_map(|n| n.protected()).collect();
    items.sort_unstable_by(|a, b| b.cmp(a));
    let mut free: Vec<u64> = survivors
        .iter()
        .map(|n| n.capacity_mib.saturating_sub(n.used()))
        .collect();
    let mut unplaced = 0;
    for m in items {
        match free.iter_mut().filter(|f| **f >= m).max_by_key(|f| **f) {
            Some(f) => *f -= m,
            None => unplaced += m,
        }
    }
    if unplaced == 0 {
        Ok(())
    } else {
        Err(Shortfall {
            failed: failed.iter().map(|n| n.node).collect(),
            unplaced_mib: unplaced,
        })
    }
}

/// Volumes on these backends are reachable from every node, so their instance can restart
/// elsewhere; a volume on any other backend (the node-local pool) stays with its node.
pub fn backend_is_shared(backend: &str) -> bool {
    matches!(backend, "ceph" | "rbd")
}

/// When a node's protected instances may be restarted elsewhere: its last heartbeat, plus the
/// time after which its agent has fenced itself (it counts from when it sent that report, which
/// is no later than when the controller recorded it), plus a margin for clock rates and the
/// kill itself.
/// Times are Unix milliseconds.
pub fn restart_after(last_heartbeat_ms: i64, fence_after_s: u64, margin_s: u64) -> i64 {
    last_heartbeat_ms.saturating_add(fence_after_s.saturating_add(margin_s).saturating_mul(1000) as i64)
}

/// The order in which a lost node's protected instances are restarted: highest priority
/// first, then oldest (creation time in ms; ties by id, so the order is stable).
pub fn recovery_order<T>(mut items: Vec<(u8, i64, Uuid, T)>) -> Vec<T> {
    items.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    items.into_iter().map(|(_, _, _, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u128, capacity: u64, instances: &[(u64, bool)]) -> NodeLoad {
        NodeLoad {
            node: Uuid::from_u128(n),
            capacity_mib: capacity,
            instances: instances.to_vec(),
        }
    }

    #[test]
    fn spec_14_1_3_admission_keeps_room_for_the_protected_instances_of_the_largest_node() {
        // Two nodes of 1 GiB: 512 MiB protected on each fits (each restarts on the other).
        let ok = [node(1, 1024, &[(512, true)]), node(2, 1024, &[(512, true)])];
        assert_eq!(admit(&ok, 1), Ok(()));
        // A third 512 MiB protected instance: losing either node leaves no room for all.
        let full = [
            node(1, 1024, &[(512, true), (512, true)]),
            node(2, 1024, &[(512, true)]),
        ];
        let err = admit(&full, 1).unwrap_err();
        assert_eq!(err.failed, vec![Uuid::from_u128(1)]);
        assert_eq!(err.unplaced_mib, 512);
        // Unprotected instances take room too.
        let crowded = [node(1, 1024, &[(512, true)]), node(2, 1024, &[(768, false)])];
        assert!(admit(&crowded, 1).is_err());
        // No protected instance, or no failure to tolerate: nothing reserved.
        let plain = [node(1, 1024, &[(1024, false)]), node(2, 1024, &[(1024, false)])];
        assert_eq!(admit(&plain, 1), Ok(()));
        assert_eq!(admit(&full, 0), Ok(()));
    }

    #[test]
    fn spec_14_1_3_a_single_node_cannot_protect_anything() {
        assert!(admit(&[node(1, 1 << 20, &[(256, true)])], 1).is_err());
    }

    #[test]
    fn spec_14_1_3_an_instance_does_not_split_over_nodes() {
        // 600 MiB free in total on the survivors, but no node has 600 MiB.
        let nodes = [
            node(1, 2048, &[(600, true)]),
            node(2, 1024, &[(724, false)]),
            node(3, 1024, &[(724, false)]),
        ];
        assert_eq!(admit(&nodes, 1).unwrap_err().unplaced_mib, 600);
    }

    #[test]
    fn spec_14_1_3_two_failures_to_tolerate_lose_the_two_largest() {
        let nodes = [
            node(1, 4096, &[(1024, true)]),
            node(2, 4096, &[(1024, true)]),
            node(3, 4096, &[(256, true)]),
        ];
        assert_eq!(admit(&nodes, 1), Ok(()));
        // Losing nodes 1 and 2 puts 2 GiB on node 3, which has 3840 MiB free.
        assert_eq!(admit(&nodes, 2), Ok(()));
        let err = admit(&nodes, 3).unwrap_err();
        assert_eq!(err.failed.len(), 3);
    }

    #[test]
    fn spec_14_1_3_only_shared_backends_follow_an_instance() {
        assert!(backend_is_shared("ceph"));
        assert!(!backend_is_shared("local"));
        assert!(!backend_is_shared("fake"));
    }

    #[test]
    fn spec_14_1_3_restart_waits_for_the_fence_and_the_margin() {
        assert_eq!(restart_after(1_000, 20, 10), 31_000);
    }

    #[test]
    fn spec_14_1_3_recovery_order_is_priority_then_age() {
        let t = |s: i64| s * 1000;
        let order = recovery_order(vec![
            (10, t(5), Uuid::from_u128(1), "low-new"),
            (90, t(9), Uuid::from_u128(2), "high"),
            (10, t(1), Uuid::from_u128(3), "low-old"),
        ]);
        assert_eq!(order, vec!["high", "low-old", "low-new"]);
    }
}
