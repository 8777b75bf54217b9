//! Static reachability over the model: "can port A open protocol/port on port B, and which
//! rules or policies decide it" (AWS Reachability Analyzer for our own rules). It mirrors the
//! forward path compiled in [`crate::compile`] step by step: segmentation policies (deny first,
//! then allow), the sender's egress groups, the receiver's ingress groups. The privileged test
//! `spec_10_9_1_reachability_analysis_agrees_with_real_packets` checks the two never disagree.
//!
//! Not modelled: the per-port connection limit (dynamic state) and established flows.

use std::net::Ipv4Addr;

use uuid::Uuid;

use crate::desired::VpcNetwork;
use crate::model::{Action, Direction, Port, Protocol, SecurityGroupRule};

pub use rampart_api::network::Reachability;

fn members(net: &VpcNetwork, group: &Uuid) -> impl Iterator<Item = Ipv4Addr> {
    net.ports
        .iter()
        .filter(move |p| p.security_groups.contains(group))
        .flat_map(|p| p.bindings().into_iter().map(|(_, ip)| ip))
}

fn rule_matches(
    net: &VpcNetwork,
    rule: &SecurityGroupRule,
    peer: Ipv4Addr,
    protocol: Protocol,
    port: Option<u16>,
) -> bool {
    if let Some(g) = rule.remote_group
        && !members(net, &g).any(|ip| ip == peer)
    {
        return false;
    }
    if let Some(c) = rule.remote_cidr
        && !c.contains(&peer)
    {
        return false;
    }
    if !rule.protocol.covers(protocol) {
        return false;
    }
    match (rule.port_range(), port) {
        (None, _) => true,
        (Some(r), Some(p)) => r.contains(p),
        (Some(_), None) => false,
    }
}

/// The first rule of the port's groups (groups by id, rules in order) that matches.
fn first_rule<'a>(
    net: &'a VpcNetwork,
    port: &Port,
    dir: Direction,
    peer: Ipv4Addr,
    protocol: Protocol,
    dport: Option<u16>,
) -> Option<&'a SecurityGroupRule> {
    let mut groups = port.security_groups.clone();
    groups.sort();
    groups
        .iter()
        .filter_map(|g| net.security_groups.iter().find(|x| x.id == *g))
        .flat_map(|g| g.rules.iter().filter(|r| r.direction == dir))
        .find(|r| rule_matches(net, r, peer, protocol, dport))
}

/// Whether `from` can open a `protocol` flow to `to` (destination `port` for tcp/udp).
pub fn reachable(
    net: &VpcNetwork,
    from: &Uuid,
    to: &Uuid,
    protocol: Protocol,
    port: Option<u16>,
) -> Option<Reachability> {
    let src = net.ports.iter().find(|p| p.id == *from)?;
    let dst = net.ports.iter().find(|p| p.id == *to)?;
    if src.id == dst.id {
        return Some(Reachability {
            allowed: true,
            because: vec!["same_port".into()],
        });
    }
    let mut policies: Vec<_> = net.policies.iter().collect();
    policies.sort_by_key(|p| (p.action == Action::Allow, p.id));
    if let Some(p) = policies
        .iter()
        .find(|p| p.from.matches(&src.tags) && p.to.matches(&dst.tags) && p.covers(protocol, port))
    {
        return Some(Reachability {
            allowed: p.action == Action::Allow,
            because: vec![format!("policy:{}", p.id)],
        });
    }
    let mut because = Vec::new();
    if src.port_security {
        match first_rule(net, src, Direction::Egress, dst.ip, protocol, port) {
            Some(r) => because.push(format!("security_group_rule:{}", r.id)),
            None => {
                return Some(Reachability {
                    allowed: false,
                    because: vec![format!("egress_default_deny:{}", src.id)],
                });
            }
        }
    } else {
        because.push(format!("port_security_disabled:{}", src.id));
    }
    if dst.port_security {
        match first_rule(net, dst, Direction::Ingress, src.ip, protocol, port) {
            Some(r) => because.push(format!("security_group_rule:{}", r.id)),
            None => {
                return Some(Reachability {
                    allowed: false,
                    because: vec![format!("ingress_default_deny:{}", dst.id)],
                });
            }
        }
    } else {
        because.push(format!("port_security_disabled:{}", dst.id));
    }
    Some(Reachability { allowed: true, because })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::VpcBuilder;

    #[test]
    fn spec_10_3_4_reachability_names_the_deciding_rules() {
        let mut b = VpcBuilder::new(7, "10.0.0.0/16");
        let s = b.subnet("10.0.1.0/24", false);
        let web = b.group("web");
        let db = b.group("db");
        let pg = b.rule(
            db,
            json!({"direction":"ingress","protocol":"tcp","port_min":5432,"port_max":5432,"remote_group":web}),
        );
        let w1 = b.port(s, &[web], &[("role", "web")]);
        let w2 = b.port(s, &[web], &[("role", "web")]);
        let d1 = b.port(s, &[db], &[("role", "db")]);
        let net = &b.net;
        let r = reachable(net, &w1, &w2, Protocol::Icmp, None).unwrap();
        assert!(r.allowed, "{r:?}");
        let r = reachable(net, &w1, &d1, Protocol::Tcp, Some(5432)).unwrap();
        assert!(r.allowed);
        assert_eq!(r.because[1], format!("security_group_rule:{pg}"));
        let r = reachable(net, &w1, &d1, Protocol::Tcp, Some(22)).unwrap();
        assert_eq!(r.because, [format!("ingress_default_deny:{d1}")]);
        assert!(!r.allowed);
        let r = reachable(net, &d1, &w1, Protocol::Tcp, Some(80)).unwrap();
        assert!(!r.allowed, "web admits only its own group");
        assert!(reachable(net, &w1, &uuid::Uuid::new_v4(), Protocol::Tcp, Some(1)).is_none());
    }

    #[test]
    fn spec_10_9_1_policies_deny_first_then_allow_override_groups() {
        let mut b = VpcBuilder::new(8, "10.0.0.0/16");
        let s = b.subnet("10.0.1.0/24", false);
        let g = b.group("g");
        let other = b.empty_group("other");
        let a = b.port(s, &[g], &[("role", "web")]);
        let c = b.port(s, &[other], &[("role", "db")]);
        let allow = b.policy(json!({"name":"web-db","from":{"role":"web"},"to":{"role":"db"},"protocol":"tcp","ports":[5432],"action":"allow"}));
        let r = reachable(&b.net, &a, &c, Protocol::Tcp, Some(5432)).unwrap();
        assert_eq!((r.allowed, r.because.clone()), (true, vec![format!("policy:{allow}")]));
        let deny = b.policy(json!({"name":"no-db","from":{},"to":{"role":"db"},"protocol":"any","action":"deny"}));
        let r = reachable(&b.net, &a, &c, Protocol::Tcp, Some(5432)).unwrap();
        assert_eq!((r.allowed, r.because), (false, vec![format!("policy:{deny}")]));
        let r = reachable(&b.net, &c, &a, Protocol::Tcp, Some(80)).unwrap();
        assert_eq!(r.because, [format!("egress_default_deny:{c}")]);
    }
}
