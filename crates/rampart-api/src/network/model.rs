//! The tenant network model (VPCs, subnets, ports, security groups, segmentation policies,
//! floating IPs), the request bodies of API.md "Network", their validation and IP/MAC allocation.
//!
//! Validation failures are `rampart_common::Error::Validation` whose `details` carry the request
//! `field` and a stable `reason` code (`subnet_overlap`, `gateway_outside_subnet`, ...), so a
//! client can react to the reason without parsing the message.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use rampart_common::Error;
use rampart_common::names::validate_name;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A validation error naming the request field and a stable reason code.
pub fn invalid(field: &str, reason: &str, message: impl Into<String>) -> Error {
    Error::Validation {
        message: message.into(),
        details: Some(serde_json::json!({ "field": field, "reason": reason })),
    }
}

/// The `reason` of a validation error built by [`invalid`], for callers and tests.
pub fn reason(err: &Error) -> Option<&str> {
    err.details()?.get("reason")?.as_str()
}

// ---------------------------------------------------------------------------------------------
// Small value types
// ---------------------------------------------------------------------------------------------

/// An Ethernet address, written `02:00:00:00:01:11` (lowercase, the form nft prints).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Unicast and locally administered: the only kind Rampart hands out or accepts for ports,
    /// so a port can never claim a vendor address of the physical network.
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0[0] & 0x02 == 0x02
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address"));
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!("{s:?} is not a MAC address"));
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        Ok(MacAddr(b))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for MacAddr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"))
            .examples(["02:00:00:00:01:11"])
            .into()
    }
}

impl utoipa::ToSchema for MacAddr {}

impl utoipa::PartialSchema for PortRange {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(65535)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]{1,5}-[0-9]{1,5}$")),
            )
            .description(Some("a port (`80`) or an inclusive range (`\"8000-8080\"`)"))
            .into()
    }
}

impl utoipa::ToSchema for PortRange {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

impl Protocol {
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }

    /// Whether a rule of protocol `self` covers a packet of protocol `packet`.
    pub fn covers(self, packet: Protocol) -> bool {
        self == Protocol::Any || self == packet
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            "any" => Ok(Protocol::Any),
            _ => Err(format!("unknown protocol {s:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
}

/// An inclusive destination port range. On the wire `80` or `"8000-8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.min <= port && port <= self.max
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.min == self.max {
            s.serialize_u16(self.min)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u16),
            S(String),
        }
        let parse = |s: &str| s.trim().parse::<u16>().map_err(|_| format!("{s:?} is not a port"));
        let r = match Raw::deserialize(d)? {
            Raw::N(n) => PortRange { min: n, max: n },
            Raw::S(s) => match s.split_once('-') {
                Some((a, b)) => PortRange {
                    min: parse(a).map_err(serde::de::Error::custom)?,
                    max: parse(b).map_err(serde::de::Error::custom)?,
                },
                None => {
                    let n = parse(&s).map_err(serde::de::Error::custom)?;
                    PortRange { min: n, max: n }
                }
            },
        };
        Ok(r)
    }
}

/// `{key: value}` pairs a port's tags must all carry (Kubernetes `matchLabels`). The empty
/// selector selects every port of the VPC.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct TagSelector(pub BTreeMap<String, String>);

impl TagSelector {
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

fn validate_tags(field: &str, tags: &BTreeMap<String, String>) -> Result<(), Error> {
    if tags.len() > 50 {
        return Err(invalid(
            field,
            "too_many_tags",
            format!("{field} holds at most 50 tags"),
        ));
    }
    for (k, v) in tags {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.as_bytes()[0].is_ascii_alphanumeric()
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./".contains(&b));
        if !key_ok {
            return Err(invalid(
                field,
                "invalid_tag_key",
                format!("tag key {k:?} must be 1-63 lowercase letters, digits, '-', '_', '.', '/'"),
            ));
        }
        if v.len() > 255 || v.chars().any(|c| c.is_control()) {
            return Err(invalid(
                field,
                "invalid_tag_value",
                format!("the value of tag {k:?} must be at most 255 characters without control characters"),
            ));
        }
    }
    Ok(())
}

/// The last 12 hex digits of an id: the random part of a v4 UUID, short enough to fit device
/// names (15 bytes) and readable in nft listings. `rampart_net::compile` rejects a state where two
/// objects of a VPC share one.
pub fn short_id(id: &Uuid) -> String {
    let s = id.simple().to_string();
    s[s.len() - 12..].to_string()
}

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Vpc {
    pub id: Uuid,
    pub project: Uuid,
    pub name: String,
    #[schema(value_type = String)]
    pub cidr: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Subnet {
    pub id: Uuid,
    pub vpc: Uuid,
    pub name: String,
    #[schema(value_type = String)]
    pub cidr: Ipv4Net,
    #[schema(value_type = String)]
    pub gateway: Ipv4Addr,
    pub dhcp: bool,
    /// VXLAN network identifier between nodes (1..2^24), unique per deployment.
    pub segment_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressPair {
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    /// Defaults to the port's own MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Port {
    pub id: Uuid,
    pub vpc: Uuid,
    pub subnet: Uuid,
    pub mac: MacAddr,
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub security_groups: Vec<Uuid>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub allowed_address_pairs: Vec<AddressPair>,
    pub port_security: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl Port {
    /// Every (MAC, IP) the port may send from: its own plus the allowed address pairs.
    pub fn bindings(&self) -> Vec<(MacAddr, Ipv4Addr)> {
        let mut v = vec![(self.mac, self.ip)];
        v.extend(
            self.allowed_address_pairs
                .iter()
                .map(|p| (p.mac.unwrap_or(self.mac), p.ip)),
        );
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecurityGroupRule {
    pub id: Uuid,
    pub direction: Direction,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_min: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_max: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub remote_cidr: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_group: Option<Uuid>,
}

impl SecurityGroupRule {
    pub fn port_range(&self) -> Option<PortRange> {
        match (self.port_min, self.port_max) {
            (None, None) => None,
            (Some(a), None) => Some(PortRange { min: a, max: a }),
            (None, Some(b)) => Some(PortRange { min: 1, max: b }),
            (Some(a), Some(b)) => Some(PortRange { min: a, max: b }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecurityGroup {
    pub id: Uuid,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rules: Vec<SecurityGroupRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SegmentationPolicy {
    pub id: Uuid,
    pub name: String,
    pub from: TagSelector,
    pub to: TagSelector,
    pub protocol: Protocol,
    #[serde(default)]
    pub ports: Vec<PortRange>,
    pub action: Action,
}

impl SegmentationPolicy {
    pub fn covers(&self, protocol: Protocol, port: Option<u16>) -> bool {
        self.protocol.covers(protocol)
            && (self.ports.is_empty() || port.is_some_and(|p| self.ports.iter().any(|r| r.contains(p))))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FloatingIp {
    pub id: Uuid,
    #[schema(value_type = String)]
    pub address: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Uuid>,
}

// ---------------------------------------------------------------------------------------------
// Request bodies (API.md "Network") and their validation
// ---------------------------------------------------------------------------------------------

fn check_network_address(field: &str, cidr: &Ipv4Net) -> Result<(), Error> {
    if cidr.trunc() != *cidr {
        return Err(invalid(
            field,
            "cidr_not_network_address",
            format!("{cidr} has host bits set; did you mean {}?", cidr.trunc()),
        ));
    }
    Ok(())
}

/// A VPC range must not reach into addresses that mean something to every host: loopback,
/// link-local (the metadata service), "this network", IETF protocol assignments, multicast
/// and the reserved block. Private (RFC 1918), shared (RFC 6598) and public ranges are fine.
fn check_vpc_range(cidr: &Ipv4Net) -> Result<(), Error> {
    use rampart_common::special::{Special, overlapping_v4};
    let bad: Vec<&str> = overlapping_v4(cidr.network(), cidr.prefix_len())
        .into_iter()
        .filter(|k| {
            matches!(
                k,
                Special::ThisNetwork
                    | Special::Loopback
                    | Special::LinkLocal
                    | Special::Protocol
                    | Special::Multicast
                    | Special::Reserved
            )
        })
        .map(Special::as_str)
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(invalid(
        "cidr",
        "cidr_reserved",
        format!(
            "{cidr} overlaps {} addresses; use a private range such as 10.0.0.0/16",
            bad.join(" and ")
        ),
    ))
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VpcCreate {
    pub name: String,
    #[schema(value_type = String)]
    pub cidr: Ipv4Net,
    /// Give the VPC a router address on the external network: SNAT egress and floating IPs
    /// (10.4). Off by default: a VPC reaches nothing outside itself.
    #[serde(default)]
    pub external: bool,
}

impl VpcCreate {
    pub fn into_vpc(self, id: Uuid, project: Uuid) -> Result<Vpc, Error> {
        validate_name("name", &self.name)?;
        check_network_address("cidr", &self.cidr)?;
        if !(8..=28).contains(&self.cidr.prefix_len()) {
            return Err(invalid("cidr", "cidr_size", "a VPC CIDR must be between /8 and /28"));
        }
        check_vpc_range(&self.cidr)?;
        Ok(Vpc {
            id,
            project,
            name: self.name,
            cidr: self.cidr,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubnetCreate {
    pub vpc: Uuid,
    pub name: String,
    #[schema(value_type = String)]
    pub cidr: Ipv4Net,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default = "yes")]
    pub dhcp: bool,
}

fn yes() -> bool {
    true
}

/// First and last usable host addresses of a subnet (network and broadcast excluded).
fn host_bounds(cidr: &Ipv4Net) -> (u32, u32) {
    (u32::from(cidr.network()) + 1, u32::from(cidr.broadcast()) - 1)
}

impl SubnetCreate {
    /// Validates against the VPC and the subnets it already has. `segment_id` comes from
    /// [`allocate_segment_id`].
    pub fn into_subnet(self, id: Uuid, vpc: &Vpc, existing: &[Subnet], segment_id: u32) -> Result<Subnet, Error> {
        validate_name("name", &self.name)?;
        check_network_address("cidr", &self.cidr)?;
        if self.cidr.prefix_len() > 29 {
            return Err(invalid("cidr", "cidr_size", "a subnet needs at least a /29"));
        }
        if !vpc.cidr.contains(&self.cidr) {
            return Err(invalid(
                "cidr",
                "subnet_outside_vpc",
                format!("{} is not inside the VPC range {}", self.cidr, vpc.cidr),
            ));
        }
        if let Some(other) = existing
            .iter()
            .find(|s| s.vpc == vpc.id && (s.cidr.contains(&self.cidr) || self.cidr.contains(&s.cidr)))
        {
            return Err(invalid(
                "cidr",
                "subnet_overlap",
                format!("{} overlaps subnet {} ({})", self.cidr, other.name, other.cidr),
            ));
        }
        if existing.iter().any(|s| s.vpc == vpc.id && s.name == self.name) {
            return Err(Error::conflict(format!(
                "a subnet named {} already exists in this VPC",
                self.name
            )));
        }
        let (lo, hi) = host_bounds(&self.cidr);
        let gateway = self.gateway.unwrap_or(Ipv4Addr::from(lo));
        let g = u32::from(gateway);
        if !(lo..=hi).contains(&g) {
            return Err(invalid(
                "gateway",
                "gateway_outside_subnet",
                format!("gateway {gateway} is not a host address of {}", self.cidr),
            ));
        }
        Ok(Subnet {
            id,
            vpc: vpc.id,
            name: self.name,
            cidr: self.cidr,
            gateway,
            dhcp: self.dhcp,
            segment_id,
        })
    }
}

/// The lowest VXLAN network identifier not in use (1..2^24-1).
pub fn allocate_segment_id(used: &BTreeSet<u32>) -> Result<u32, Error> {
    (1..(1u32 << 24))
        .find(|v| !used.contains(v))
        .ok_or_else(|| Error::conflict("no VXLAN segment id left"))
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupCreate {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

impl SecurityGroupCreate {
    /// A new group with the default rules of 10.3-4: ingress of anything from members of the
    /// same group, and all egress. `rule_ids` names the two default rules.
    pub fn into_group(self, id: Uuid, rule_ids: [Uuid; 2]) -> Result<SecurityGroup, Error> {
        validate_name("name", &self.name)?;
        let description = self.description.unwrap_or_default();
        if description.len() > 1024 || description.chars().any(|c| c.is_control() && c != '\n') {
            return Err(invalid(
                "description",
                "invalid_description",
                "description must be at most 1024 characters without control characters",
            ));
        }
        Ok(SecurityGroup {
            id,
            name: self.name,
            description,
            rules: vec![
                SecurityGroupRule {
                    id: rule_ids[0],
                    direction: Direction::Ingress,
                    protocol: Protocol::Any,
                    port_min: None,
                    port_max: None,
                    remote_cidr: None,
                    remote_group: Some(id),
                },
                SecurityGroupRule {
                    id: rule_ids[1],
                    direction: Direction::Egress,
                    protocol: Protocol::Any,
                    port_min: None,
                    port_max: None,
                    remote_cidr: None,
                    remote_group: None,
                },
            ],
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupRuleCreate {
    pub direction: Direction,
    pub protocol: Protocol,
    #[serde(default)]
    pub port_min: Option<u16>,
    #[serde(default)]
    pub port_max: Option<u16>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub remote_cidr: Option<Ipv4Net>,
    #[serde(default)]
    pub remote_group: Option<Uuid>,
}

impl SecurityGroupRuleCreate {
    /// `group_exists` answers whether a group id is visible in the project (a remote group).
    pub fn into_rule(self, id: Uuid, group_exists: impl Fn(&Uuid) -> bool) -> Result<SecurityGroupRule, Error> {
        if (self.port_min.is_some() || self.port_max.is_some()) && !self.protocol.has_ports() {
            return Err(invalid(
                "port_min",
                "ports_require_tcp_or_udp",
                "port_min and port_max are only allowed with protocol tcp or udp",
            ));
        }
        if self.port_min == Some(0) || self.port_max == Some(0) {
            return Err(invalid("port_min", "port_out_of_range", "ports are 1-65535"));
        }
        if let (Some(a), Some(b)) = (self.port_min, self.port_max)
            && a > b
        {
            return Err(invalid(
                "port_max",
                "port_range_inverted",
                format!("port_min {a} is greater than port_max {b}"),
            ));
        }
        if self.remote_cidr.is_some() && self.remote_group.is_some() {
            return Err(invalid(
                "remote_group",
                "remote_conflict",
                "give remote_cidr or remote_group, not both",
            ));
        }
        if let Some(c) = &self.remote_cidr {
            check_network_address("remote_cidr", c)?;
        }
        if let Some(g) = &self.remote_group
            && !group_exists(g)
        {
            return Err(invalid(
                "remote_group",
                "unknown_security_group",
                "remote_group does not exist",
            ));
        }
        Ok(SecurityGroupRule {
            id,
            direction: self.direction,
            protocol: self.protocol,
            port_min: self.port_min,
            port_max: self.port_max,
            remote_cidr: self.remote_cidr,
            remote_group: self.remote_group,
        })
    }
}

const MAX_CONNECTIONS_LIMIT: u32 = 1_000_000;
const MAX_ADDRESS_PAIRS: usize = 10;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortCreate {
    pub subnet: Uuid,
    #[serde(default)]
    pub security_groups: Vec<Uuid>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub allowed_address_pairs: Vec<AddressPair>,
    #[serde(default)]
    pub port_security: Option<bool>,
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// A fixed address instead of the next free one.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

/// The security attributes of a port a `PATCH` may change (retag, regroup, limits).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortUpdate {
    #[serde(default)]
    pub security_groups: Option<Vec<Uuid>>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub allowed_address_pairs: Option<Vec<AddressPair>>,
    #[serde(default)]
    pub port_security: Option<bool>,
    /// `Some(None)` (JSON `null`) removes the limit.
    #[serde(default, deserialize_with = "double_option")]
    pub max_connections: Option<Option<u32>>,
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

fn validate_port_security(port: &Port, group_exists: &dyn Fn(&Uuid) -> bool) -> Result<(), Error> {
    let mut seen = BTreeSet::new();
    for g in &port.security_groups {
        if !group_exists(g) {
            return Err(invalid(
                "security_groups",
                "unknown_security_group",
                format!("security group {g} does not exist"),
            ));
        }
        if !seen.insert(g) {
            return Err(invalid(
                "security_groups",
                "duplicate_security_group",
                format!("{g} is listed twice"),
            ));
        }
    }
    if !port.port_security && !port.security_groups.is_empty() {
        // Neutron's rule too: without port security the source address cannot be trusted, so
        // group rules keyed on it would be a false promise.
        return Err(invalid(
            "port_security",
            "security_groups_need_port_security",
            "a port without port security cannot be in security groups",
        ));
    }
    if !port.port_security && port.max_connections.is_some() {
        return Err(invalid(
            "max_connections",
            "max_connections_need_port_security",
            "the connection limit is keyed on the port identity, which needs port security",
        ));
    }
    if let Some(n) = port.max_connections
        && !(1..=MAX_CONNECTIONS_LIMIT).contains(&n)
    {
        return Err(invalid(
            "max_connections",
            "max_connections_out_of_range",
            format!("max_connections must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
        ));
    }
    validate_tags("tags", &port.tags)?;
    if port.allowed_address_pairs.len() > MAX_ADDRESS_PAIRS {
        return Err(invalid(
            "allowed_address_pairs",
            "too_many_address_pairs",
            format!("at most {MAX_ADDRESS_PAIRS} allowed address pairs"),
        ));
    }
    for p in &port.allowed_address_pairs {
        if p.ip.is_unspecified() || p.ip.is_multicast() || p.ip.is_broadcast() || p.ip.is_loopback() {
            return Err(invalid(
                "allowed_address_pairs",
                "invalid_address_pair",
                format!("{} cannot be an allowed address", p.ip),
            ));
        }
        if let Some(m) = p.mac
            && !m.is_local_unicast()
        {
            return Err(invalid(
                "allowed_address_pairs",
                "invalid_mac",
                format!("{m} must be a locally administered unicast MAC"),
            ));
        }
    }
    Ok(())
}

impl PortCreate {
    /// Validates the request and allocates the port's address and MAC. `existing` are the ports
    /// of the subnet's VPC.
    pub fn into_port(
        self,
        id: Uuid,
        subnet: &Subnet,
        existing: &[Port],
        group_exists: impl Fn(&Uuid) -> bool,
    ) -> Result<Port, Error> {
        let in_subnet: Vec<&Port> = existing.iter().filter(|p| p.subnet == subnet.id).collect();
        let ip = match self.ip {
            Some(ip) => {
                let (lo, hi) = host_bounds(&subnet.cidr);
                if !(lo..=hi).contains(&u32::from(ip)) {
                    return Err(invalid(
                        "ip",
                        "ip_outside_subnet",
                        format!("{ip} is not a host address of {}", subnet.cidr),
                    ));
                }
                if ip == subnet.gateway {
                    return Err(invalid("ip", "ip_reserved", format!("{ip} is the subnet gateway")));
                }
                if in_subnet.iter().any(|p| p.ip == ip) {
                    return Err(Error::conflict(format!("{ip} is already in use")));
                }
                ip
            }
            None => allocate_ip(subnet, in_subnet.iter().map(|p| p.ip))?,
        };
        let used_macs = existing.iter().map(|p| p.mac).collect::<BTreeSet<_>>();
        let mac = match self.mac {
            Some(m) => {
                if !m.is_local_unicast() {
                    return Err(invalid(
                        "mac",
                        "invalid_mac",
                        format!("{m} must be a locally administered unicast MAC"),
                    ));
                }
                if used_macs.contains(&m) {
                    return Err(Error::conflict(format!("{m} is already in use in this VPC")));
                }
                m
            }
            None => allocate_mac(&id, &used_macs),
        };
        let port = Port {
            id,
            vpc: subnet.vpc,
            subnet: subnet.id,
            mac,
            ip,
            security_groups: self.security_groups,
            tags: self.tags,
            allowed_address_pairs: self.allowed_address_pairs,
            port_security: self.port_security.unwrap_or(true),
            max_connections: self.max_connections,
        };
        validate_port_security(&port, &group_exists)?;
        Ok(port)
    }
}

impl PortUpdate {
    pub fn apply(self, port: &Port, group_exists: impl Fn(&Uuid) -> bool) -> Result<Port, Error> {
        let mut p = port.clone();
        if let Some(v) = self.security_groups {
            p.security_groups = v;
        }
        if let Some(v) = self.tags {
            p.tags = v;
        }
        if let Some(v) = self.allowed_address_pairs {
            p.allowed_address_pairs = v;
        }
        if let Some(v) = self.port_security {
            p.port_security = v;
        }
        if let Some(v) = self.max_connections {
            p.max_connections = v;
        }
        validate_port_security(&p, &group_exists)?;
        Ok(p)
    }
}

/// The lowest free host address of the subnet, skipping the gateway.
pub fn allocate_ip(subnet: &Subnet, used: impl IntoIterator<Item = Ipv4Addr>) -> Result<Ipv4Addr, Error> {
    let used: BTreeSet<u32> = used.into_iter().map(u32::from).collect();
    let (lo, hi) = host_bounds(&subnet.cidr);
    (lo..=hi)
        .find(|a| *a != u32::from(subnet.gateway) && !used.contains(a))
        .map(Ipv4Addr::from)
        .ok_or_else(|| Error::conflict(format!("subnet {} has no free address", subnet.name)))
}

/// A locally administered unicast MAC derived from the port id (stable, so a re-created
/// desired state yields the same address), moved on past collisions.
pub fn allocate_mac(port: &Uuid, used: &BTreeSet<MacAddr>) -> MacAddr {
    let b = port.as_bytes();
    let mut tail = u64::from_be_bytes([0, 0, 0, b[11], b[12], b[13], b[14], b[15]]);
    loop {
        let t = tail.to_be_bytes();
        let mac = MacAddr([0x02, t[3], t[4], t[5], t[6], t[7]]);
        if !used.contains(&mac) {
            return mac;
        }
        tail = (tail + 1) & 0xff_ffff_ffff;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentationPolicyCreate {
    pub name: String,
    pub from: TagSelector,
    pub to: TagSelector,
    pub protocol: Protocol,
    #[serde(default)]
    pub ports: Vec<PortRange>,
    pub action: Action,
}

impl SegmentationPolicyCreate {
    pub fn into_policy(self, id: Uuid) -> Result<SegmentationPolicy, Error> {
        validate_name("name", &self.name)?;
        validate_tags("from", &self.from.0)?;
        validate_tags("to", &self.to.0)?;
        if !self.ports.is_empty() && !self.protocol.has_ports() {
            return Err(invalid(
                "ports",
                "ports_require_tcp_or_udp",
                "ports are only allowed with protocol tcp or udp",
            ));
        }
        if self.ports.len() > 64 {
            return Err(invalid("ports", "too_many_ports", "at most 64 port ranges"));
        }
        for r in &self.ports {
            if r.min == 0 {
                return Err(invalid("ports", "port_out_of_range", "ports are 1-65535"));
            }
            if r.min > r.max {
                return Err(invalid(
                    "ports",
                    "port_range_inverted",
                    format!("{}-{} is upside down", r.min, r.max),
                ));
            }
        }
        Ok(SegmentationPolicy {
            id,
            name: self.name,
            from: self.from,
            to: self.to,
            protocol: self.protocol,
            ports: self.ports,
            action: self.action,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpCreate {
    #[serde(default)]
    pub port: Option<Uuid>,
}

/// The lowest free address of the external pool, skipping `reserved` (the external gateway
/// and the VPC routers' SNAT addresses).
pub fn allocate_floating_ip(
    pool: &Ipv4Net,
    reserved: &BTreeSet<Ipv4Addr>,
    used: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr, Error> {
    let (lo, hi) = host_bounds(pool);
    (lo..=hi)
        .map(Ipv4Addr::from)
        .find(|a| !reserved.contains(a) && !used.contains(a))
        .ok_or_else(|| Error::conflict("the floating IP pool is exhausted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vpc() -> Vpc {
        VpcCreate {
            name: "prod".into(),
            cidr: "10.10.0.0/16".parse().unwrap(),
            external: false,
        }
        .into_vpc(Uuid::new_v4(), Uuid::new_v4())
        .unwrap()
    }

    #[test]
    fn spec_10_4_vpc_ranges_in_special_purpose_blocks_are_refused() {
        let create = |cidr: &str| {
            VpcCreate {
                name: "v".into(),
                cidr: cidr.parse().unwrap(),
                external: false,
            }
            .into_vpc(Uuid::new_v4(), Uuid::new_v4())
        };
        for bad in [
            "127.0.0.0/8",
            "127.10.0.0/16",
            "169.254.0.0/16",
            "169.254.169.0/24",
            "0.0.0.0/8",
            "192.0.0.0/24",
            "224.0.0.0/8",
            "240.0.0.0/8",
            "255.255.255.0/24",
            // A supernet of a special block contains it.
            "169.0.0.0/8",
        ] {
            let e = create(bad).map(|_| ()).unwrap_err();
            assert_eq!(reason(&e), Some("cidr_reserved"), "{bad}: {e}");
        }
        for good in [
            "10.0.0.0/16",
            "172.16.0.0/12",
            "192.168.0.0/24",
            "100.64.0.0/16",
            "8.8.0.0/16",
        ] {
            assert!(create(good).is_ok(), "{good}");
        }
    }

    fn subnet_req(cidr: &str, gw: Option<&str>) -> SubnetCreate {
        SubnetCreate {
            vpc: Uuid::nil(),
            name: "web".into(),
            cidr: cidr.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            dhcp: true,
        }
    }

    #[test]
    fn spec_10_4_subnets_must_not_overlap_within_a_vpc() {
        let v = vpc();
        let a = subnet_req("10.10.1.0/24", None)
            .into_subnet(Uuid::new_v4(), &v, &[], 1)
            .unwrap();
        assert_eq!(a.gateway, "10.10.1.1".parse::<Ipv4Addr>().unwrap());
        let mut b = subnet_req("10.10.0.0/20", None);
        b.name = "db".into();
        let err = b
            .into_subnet(Uuid::new_v4(), &v, std::slice::from_ref(&a), 2)
            .unwrap_err();
        assert_eq!(reason(&err), Some("subnet_overlap"));
        assert_eq!(err.status(), 400);
        let mut c = subnet_req("10.10.2.0/24", None);
        c.name = "db".into();
        c.into_subnet(Uuid::new_v4(), &v, &[a], 2).unwrap();
    }

    #[test]
    fn spec_10_4_subnet_outside_vpc_and_gateway_outside_subnet_are_refused() {
        let v = vpc();
        let e = subnet_req("10.11.0.0/24", None)
            .into_subnet(Uuid::new_v4(), &v, &[], 1)
            .unwrap_err();
        assert_eq!(reason(&e), Some("subnet_outside_vpc"));
        for gw in ["10.10.2.1", "10.10.1.0", "10.10.1.255"] {
            let e = subnet_req("10.10.1.0/24", Some(gw))
                .into_subnet(Uuid::new_v4(), &v, &[], 1)
                .unwrap_err();
            assert_eq!(reason(&e), Some("gateway_outside_subnet"), "{gw}");
        }
        let e = subnet_req("10.10.1.1/24", None)
            .into_subnet(Uuid::new_v4(), &v, &[], 1)
            .unwrap_err();
        assert_eq!(reason(&e), Some("cidr_not_network_address"));
        let body = e.body();
        assert_eq!(body.error.code, "validation_failed");
        assert_eq!(body.error.details.unwrap()["field"], "cidr");
    }

    #[test]
    fn spec_10_3_4_new_group_gets_intra_group_ingress_and_all_egress() {
        let id = Uuid::new_v4();
        let g = SecurityGroupCreate {
            name: "web".into(),
            description: None,
        }
        .into_group(id, [Uuid::new_v4(), Uuid::new_v4()])
        .unwrap();
        assert_eq!(g.rules.len(), 2);
        assert_eq!(g.rules[0].direction, Direction::Ingress);
        assert_eq!(g.rules[0].remote_group, Some(id));
        assert_eq!(g.rules[1].direction, Direction::Egress);
        assert_eq!((g.rules[1].remote_cidr, g.rules[1].remote_group), (None, None));
    }

    #[test]
    fn spec_10_3_rule_validation_codes() {
        let rule = |j: serde_json::Value| serde_json::from_value::<SecurityGroupRuleCreate>(j).unwrap();
        let known = Uuid::new_v4();
        let ok = |g: &Uuid| *g == known;
        let cases = [
            (
                serde_json::json!({"direction":"ingress","protocol":"tcp","port_min":90,"port_max":80}),
                "port_range_inverted",
            ),
            (
                serde_json::json!({"direction":"ingress","protocol":"icmp","port_min":8}),
                "ports_require_tcp_or_udp",
            ),
            (
                serde_json::json!({"direction":"ingress","protocol":"tcp","remote_cidr":"10.0.0.0/8","remote_group":known}),
                "remote_conflict",
            ),
            (
                serde_json::json!({"direction":"egress","protocol":"any","remote_group":Uuid::new_v4()}),
                "unknown_security_group",
            ),
            (
                serde_json::json!({"direction":"egress","protocol":"any","remote_cidr":"10.0.0.1/8"}),
                "cidr_not_network_address",
            ),
        ];
        for (j, want) in cases {
            let e = rule(j.clone()).into_rule(Uuid::new_v4(), ok).unwrap_err();
            assert_eq!(reason(&e), Some(want), "{j}");
        }
        rule(serde_json::json!({"direction":"ingress","protocol":"tcp","port_min":80,"port_max":80,"remote_group":known}))
            .into_rule(Uuid::new_v4(), ok)
            .unwrap();
        assert!(
            serde_json::from_value::<SecurityGroupRuleCreate>(serde_json::json!({"direction":"in","protocol":"tcp"}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<SecurityGroupRuleCreate>(
                serde_json::json!({"direction":"ingress","protocol":"tcp","extra":1})
            )
            .is_err()
        );
    }

    #[test]
    fn spec_10_5_ipam_allocates_unique_addresses_and_checks_fixed_ones() {
        let v = vpc();
        let s = subnet_req("10.10.1.0/29", None)
            .into_subnet(Uuid::new_v4(), &v, &[], 1)
            .unwrap();
        let mut ports: Vec<Port> = Vec::new();
        for _ in 0..5 {
            let p = PortCreate {
                subnet: s.id,
                security_groups: vec![],
                tags: BTreeMap::new(),
                allowed_address_pairs: vec![],
                port_security: None,
                max_connections: None,
                ip: None,
                mac: None,
            }
            .into_port(Uuid::new_v4(), &s, &ports, |_| true)
            .unwrap();
            assert!(p.mac.is_local_unicast());
            ports.push(p);
        }
        let ips: Vec<String> = ports.iter().map(|p| p.ip.to_string()).collect();
        assert_eq!(ips, ["10.10.1.2", "10.10.1.3", "10.10.1.4", "10.10.1.5", "10.10.1.6"]);
        let full = PortCreate {
            subnet: s.id,
            security_groups: vec![],
            tags: BTreeMap::new(),
            allowed_address_pairs: vec![],
            port_security: None,
            max_connections: None,
            ip: None,
            mac: None,
        };
        assert_eq!(
            full.clone()
                .into_port(Uuid::new_v4(), &s, &ports, |_| true)
                .unwrap_err()
                .status(),
            409
        );
        let fixed = |ip: &str| {
            let mut r = full.clone();
            r.ip = Some(ip.parse().unwrap());
            r.into_port(Uuid::new_v4(), &s, &ports[..2], |_| true)
        };
        assert_eq!(reason(&fixed("10.10.2.5").unwrap_err()), Some("ip_outside_subnet"));
        assert_eq!(reason(&fixed("10.10.1.7").unwrap_err()), Some("ip_outside_subnet"));
        assert_eq!(reason(&fixed("10.10.1.1").unwrap_err()), Some("ip_reserved"));
        assert_eq!(fixed("10.10.1.2").unwrap_err().status(), 409);
        assert_eq!(fixed("10.10.1.6").unwrap().ip.to_string(), "10.10.1.6");
    }

    #[test]
    fn spec_10_5_port_security_rules() {
        let v = vpc();
        let s = subnet_req("10.10.1.0/24", None)
            .into_subnet(Uuid::new_v4(), &v, &[], 1)
            .unwrap();
        let req = |j: serde_json::Value| {
            let mut j = j;
            j["subnet"] = serde_json::json!(s.id);
            serde_json::from_value::<PortCreate>(j)
                .unwrap()
                .into_port(Uuid::new_v4(), &s, &[], |_| true)
        };
        let g = Uuid::new_v4();
        let e = req(serde_json::json!({"security_groups":[g],"port_security":false})).unwrap_err();
        assert_eq!(reason(&e), Some("security_groups_need_port_security"));
        let e = req(serde_json::json!({"max_connections":0})).unwrap_err();
        assert_eq!(reason(&e), Some("max_connections_out_of_range"));
        let e = req(serde_json::json!({"tags":{"Role":"x"}})).unwrap_err();
        assert_eq!(reason(&e), Some("invalid_tag_key"));
        let e = req(serde_json::json!({"allowed_address_pairs":[{"ip":"255.255.255.255"}]})).unwrap_err();
        assert_eq!(reason(&e), Some("invalid_address_pair"));
        let e = req(serde_json::json!({"mac":"01:00:5e:00:00:01"})).unwrap_err();
        assert_eq!(reason(&e), Some("invalid_mac"));
        let p = req(
            serde_json::json!({"security_groups":[g],"tags":{"role":"db"},"max_connections":3,
            "allowed_address_pairs":[{"ip":"10.10.1.200"}]}),
        )
        .unwrap();
        assert!(p.port_security);
        assert_eq!(p.bindings().len(), 2);
        let retag =
            serde_json::from_value::<PortUpdate>(serde_json::json!({"tags":{"role":"web"},"max_connections":null}))
                .unwrap()
                .apply(&p, |_| true)
                .unwrap();
        assert_eq!(retag.tags["role"], "web");
        assert_eq!(retag.max_connections, None);
        assert_eq!(retag.ip, p.ip);
    }

    #[test]
    fn spec_10_9_1_policy_validation_and_port_syntax() {
        let p: SegmentationPolicyCreate = serde_json::from_value(serde_json::json!({
            "name":"web-to-db","from":{"role":"web"},"to":{"role":"db"},"protocol":"tcp",
            "ports":[5432,"8000-8080"],"action":"allow"}))
        .unwrap();
        let p = p.into_policy(Uuid::new_v4()).unwrap();
        assert!(p.covers(Protocol::Tcp, Some(8080)));
        assert!(!p.covers(Protocol::Tcp, Some(22)));
        assert!(!p.covers(Protocol::Udp, Some(5432)));
        assert_eq!(
            serde_json::to_value(&p.ports).unwrap(),
            serde_json::json!([5432, "8000-8080"])
        );
        let bad: SegmentationPolicyCreate = serde_json::from_value(serde_json::json!({
            "name":"x","from":{},"to":{},"protocol":"tcp","ports":["90-80"],"action":"deny"}))
        .unwrap();
        assert_eq!(
            reason(&bad.into_policy(Uuid::new_v4()).unwrap_err()),
            Some("port_range_inverted")
        );
        let bad: SegmentationPolicyCreate = serde_json::from_value(serde_json::json!({
            "name":"x","from":{},"to":{},"protocol":"any","ports":[80],"action":"deny"}))
        .unwrap();
        assert_eq!(
            reason(&bad.into_policy(Uuid::new_v4()).unwrap_err()),
            Some("ports_require_tcp_or_udp")
        );
    }

    #[test]
    fn mac_and_floating_ip_allocation() {
        let id = Uuid::new_v4();
        let mut used = BTreeSet::new();
        let a = allocate_mac(&id, &used);
        used.insert(a);
        let b = allocate_mac(&id, &used);
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
        let pool: Ipv4Net = "203.0.113.0/29".parse().unwrap();
        let reserved = BTreeSet::from(["203.0.113.1".parse().unwrap()]);
        let fip = allocate_floating_ip(&pool, &reserved, &BTreeSet::new()).unwrap();
        assert_eq!(fip.to_string(), "203.0.113.2");
        assert_eq!(allocate_segment_id(&BTreeSet::from([1, 2])).unwrap(), 3);
    }
}
