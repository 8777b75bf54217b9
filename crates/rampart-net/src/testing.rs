//! Builders for network states in tests (this crate's, the agent's, the controller's). They go
//! through the same constructors and validation as the API, so a fixture cannot hold a state
//! the API would refuse.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use uuid::Uuid;

use crate::desired::{LocalPort, PortDevice, VpcNetwork};
use crate::model::{
    FloatingIp, PortCreate, SecurityGroupCreate, SecurityGroupRuleCreate, SegmentationPolicyCreate, SubnetCreate,
    VpcCreate,
};

/// Builds one VPC with deterministic ids: `seed` in the high 64 bits, a counter in the low
/// ones (so the 12-hex short ids used in device names differ).
pub struct VpcBuilder {
    pub net: VpcNetwork,
    seed: u64,
    next: u64,
}

impl VpcBuilder {
    pub fn new(seed: u64, cidr: &str) -> VpcBuilder {
        let vpc = VpcCreate {
            name: "vpc".into(),
            cidr: cidr.parse().expect("cidr"),
            external: false,
        }
        .into_vpc(
            Uuid::from_u128((u128::from(seed) << 64) | 1),
            Uuid::from_u128(u128::from(seed) << 64),
        )
        .expect("valid vpc");
        VpcBuilder {
            net: VpcNetwork {
                vpc,
                subnets: vec![],
                security_groups: vec![],
                policies: vec![],
                ports: vec![],
                local_ports: vec![],
                floating_ips: vec![],
                router_external_ip: None,
                remote_ports: Default::default(),
            },
            seed,
            next: 2,
        }
    }

    pub fn id(&mut self) -> Uuid {
        let id = Uuid::from_u128((u128::from(self.seed) << 64) | u128::from(self.next));
        self.next += 1;
        id
    }

    pub fn subnet(&mut self, cidr: &str, dhcp: bool) -> Uuid {
        let id = self.id();
        let n = self.net.subnets.len() as u32;
        let s = SubnetCreate {
            vpc: self.net.vpc.id,
            name: format!("s{n}"),
            cidr: cidr.parse().expect("cidr"),
            gateway: None,
            dhcp,
        }
        .into_subnet(id, &self.net.vpc, &self.net.subnets, 100 + n)
        .expect("valid subnet");
        self.net.subnets.push(s);
        id
    }

    /// A group with the default rules (10.3-4).
    pub fn group(&mut self, name: &str) -> Uuid {
        let (id, r1, r2) = (self.id(), self.id(), self.id());
        let g = SecurityGroupCreate {
            name: name.into(),
            description: None,
        }
        .into_group(id, [r1, r2])
        .expect("valid group");
        self.net.security_groups.push(g);
        id
    }

    /// A group without any rule: everything denied both ways.
    pub fn empty_group(&mut self, name: &str) -> Uuid {
        let id = self.group(name);
        self.net.security_groups.last_mut().expect("just pushed").rules.clear();
        id
    }

    pub fn rule(&mut self, group: Uuid, body: serde_json::Value) -> Uuid {
        let id = self.id();
        let known: Vec<Uuid> = self.net.security_groups.iter().map(|g| g.id).collect();
        let r = serde_json::from_value::<SecurityGroupRuleCreate>(body)
            .expect("rule body")
            .into_rule(id, |g| known.contains(g))
            .expect("valid rule");
        self.net
            .security_groups
            .iter_mut()
            .find(|g| g.id == group)
            .expect("group")
            .rules
            .push(r);
        id
    }

    pub fn port(&mut self, subnet: Uuid, groups: &[Uuid], tags: &[(&str, &str)]) -> Uuid {
        self.port_with(subnet, groups, tags, |_| {})
    }

    pub fn port_with(
        &mut self,
        subnet: Uuid,
        groups: &[Uuid],
        tags: &[(&str, &str)],
        tweak: impl FnOnce(&mut PortCreate),
    ) -> Uuid {
        let id = self.id();
        let mut req = PortCreate {
            subnet,
            security_groups: groups.to_vec(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            allowed_address_pairs: vec![],
            port_security: None,
            max_connections: None,
            ip: None,
            mac: None,
        };
        tweak(&mut req);
        let s = self
            .net
            .subnets
            .iter()
            .find(|s| s.id == subnet)
            .expect("subnet")
            .clone();
        let known: Vec<Uuid> = self.net.security_groups.iter().map(|g| g.id).collect();
        let p = req
            .into_port(id, &s, &self.net.ports, |g| known.contains(g))
            .expect("valid port");
        self.net.ports.push(p);
        id
    }

    pub fn bind_veth(&mut self, port: Uuid, peer_netns: &str) {
        self.net.local_ports.push(LocalPort {
            port,
            device: PortDevice::Veth {
                peer_netns: peer_netns.into(),
                peer_name: "eth0".into(),
            },
        });
    }

    pub fn bind_tap(&mut self, port: Uuid) {
        self.net.local_ports.push(LocalPort {
            port,
            device: PortDevice::Tap,
        });
    }

    pub fn policy(&mut self, body: serde_json::Value) -> Uuid {
        let id = self.id();
        let p = serde_json::from_value::<SegmentationPolicyCreate>(body)
            .expect("policy body")
            .into_policy(id)
            .expect("valid policy");
        self.net.policies.push(p);
        id
    }

    pub fn floating_ip(&mut self, address: &str, port: Uuid) -> Uuid {
        let id = self.id();
        self.net.floating_ips.push(FloatingIp {
            id,
            address: address.parse().expect("ip"),
            port: Some(port),
        });
        id
    }

    pub fn ip_of(&self, port: Uuid) -> Ipv4Addr {
        self.net.ports.iter().find(|p| p.id == port).expect("port").ip
    }
}
