//! Special-purpose IP address ranges (IANA IPv4/IPv6 Special-Purpose Address Registries, RFC
//! 6890 and successors), for the two places where an address a tenant names must not reach the
//! host or the operator's own networks: VPC ranges (10.1, no loopback or link-local VPC) and
//! alarm webhook destinations (12.1-6, no server-side request forgery).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not an ordinary global unicast one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// 0.0.0.0/8, `::/128`.
    ThisNetwork,
    /// 10/8, 172.16/12, 192.168/16 (RFC 1918), fc00::/7 (unique local).
    Private,
    /// 100.64/10, carrier-grade NAT (RFC 6598).
    Shared,
    /// 127/8, `::1`.
    Loopback,
    /// 169.254/16 (the cloud metadata service lives at 169.254.169.254), fe80::/10.
    LinkLocal,
    /// 192.0.0.0/24, IETF protocol assignments.
    Protocol,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32.
    Documentation,
    /// 198.18/15.
    Benchmarking,
    /// 224/4, ff00::/8.
    Multicast,
    /// 240/4 and 255.255.255.255.
    Reserved,
}

impl Special {
    pub fn as_str(self) -> &'static str {
        match self {
            Special::ThisNetwork => "this-network",
            Special::Private => "private",
            Special::Shared => "shared address space",
            Special::Loopback => "loopback",
            Special::LinkLocal => "link-local",
            Special::Protocol => "IETF protocol assignments",
            Special::Documentation => "documentation",
            Special::Benchmarking => "benchmarking",
            Special::Multicast => "multicast",
            Special::Reserved => "reserved",
        }
    }
}

impl std::fmt::Display for Special {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The IPv4 special-purpose ranges as (network, prefix length, kind).
pub const V4_RANGES: &[([u8; 4], u8, Special)] = &[
    ([0, 0, 0, 0], 8, Special::ThisNetwork),
    ([10, 0, 0, 0], 8, Special::Private),
    ([100, 64, 0, 0], 10, Special::Shared),
    ([127, 0, 0, 0], 8, Special::Loopback),
    ([169, 254, 0, 0], 16, Special::LinkLocal),
    ([172, 16, 0, 0], 12, Special::Private),
    ([192, 0, 0, 0], 24, Special::Protocol),
    ([192, 0, 2, 0], 24, Special::Documentation),
    ([192, 168, 0, 0], 16, Special::Private),
    ([198, 18, 0, 0], 15, Special::Benchmarking),
    ([198, 51, 100, 0], 24, Special::Documentation),
    ([203, 0, 113, 0], 24, Special::Documentation),
    ([224, 0, 0, 0], 4, Special::Multicast),
    ([240, 0, 0, 0], 4, Special::Reserved),
];

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// The special range `ip` is in, if any.
pub fn classify_v4(ip: Ipv4Addr) -> Option<Special> {
    let a = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(net, len, _)| a & mask(*len) == u32::from_be_bytes(*net))
        .map(|(_, _, kind)| *kind)
}

/// The special range `ip` is in, if any. IPv4-mapped and NAT64 (64:ff9b::/96) addresses are
/// judged by the IPv4 address they carry.
pub fn classify(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<Special> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(Ipv4Addr::from(u128::from(ip) as u32));
    }
    if ip.is_unspecified() {
        Some(Special::ThisNetwork)
    } else if ip.is_loopback() {
        Some(Special::Loopback)
    } else if s[0] & 0xfe00 == 0xfc00 {
        Some(Special::Private)
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some(Special::LinkLocal)
    } else if s[0] & 0xff00 == 0xff00 {
        Some(Special::Multicast)
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some(Special::Documentation)
    } else if s[..5] == [0; 5] {
        // Deprecated IPv4-compatible and other reserved low addresses.
        Some(Special::Reserved)
    } else {
        None
    }
}

/// The special ranges an IPv4 network `net/len` overlaps (contains or lies within).
pub fn overlapping_v4(net: Ipv4Addr, len: u8) -> Vec<Special> {
    let a = u32::from(net);
    V4_RANGES
        .iter()
        .filter(|(r, rlen, _)| {
            let m = mask(len.min(*rlen));
            a & m == u32::from_be_bytes(*r) & m
        })
        .map(|(_, _, kind)| *kind)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_12_1_6_special_ranges_are_classified() {
        let v4 = |s: &str| classify(s.parse().unwrap());
        assert_eq!(v4("127.0.0.1"), Some(Special::Loopback));
        assert_eq!(v4("169.254.169.254"), Some(Special::LinkLocal));
        assert_eq!(v4("10.1.2.3"), Some(Special::Private));
        assert_eq!(v4("172.31.255.255"), Some(Special::Private));
        assert_eq!(v4("172.32.0.1"), None);
        assert_eq!(v4("100.100.100.200"), Some(Special::Shared));
        assert_eq!(v4("0.0.0.0"), Some(Special::ThisNetwork));
        assert_eq!(v4("255.255.255.255"), Some(Special::Reserved));
        assert_eq!(v4("224.0.0.251"), Some(Special::Multicast));
        assert_eq!(v4("8.8.8.8"), None);
        assert_eq!(v4("::1"), Some(Special::Loopback));
        assert_eq!(v4("::ffff:127.0.0.1"), Some(Special::Loopback));
        assert_eq!(v4("::ffff:169.254.169.254"), Some(Special::LinkLocal));
        assert_eq!(v4("64:ff9b::a9fe:a9fe"), Some(Special::LinkLocal));
        assert_eq!(v4("fd00:ec2::254"), Some(Special::Private));
        assert_eq!(v4("fe80::1"), Some(Special::LinkLocal));
        assert_eq!(v4("2606:4700::1111"), None);
    }

    #[test]
    fn spec_10_1_special_range_overlaps_go_both_ways() {
        let o = |s: &str, l| overlapping_v4(s.parse().unwrap(), l);
        assert_eq!(o("127.0.0.0", 8), vec![Special::Loopback]);
        assert_eq!(o("127.1.0.0", 16), vec![Special::Loopback]);
        assert_eq!(o("169.254.0.0", 24), vec![Special::LinkLocal]);
        assert_eq!(o("10.0.0.0", 16), vec![Special::Private]);
        // A supernet covers what it contains.
        assert!(o("96.0.0.0", 3).contains(&Special::Loopback));
        assert!(o("8.8.0.0", 16).is_empty());
    }
}
