//! Source-address ranges (spec 13.2-5) and the client address behind trusted proxies.

use std::net::IpAddr;

use ipnet::IpNet;
use rampart_common::Error;

/// Parses CIDRs (a bare address counts as /32 or /128); the error names `field`.
pub fn parse_cidrs(field: &str, cidrs: &[String]) -> Result<Vec<IpNet>, Error> {
    cidrs
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| Error::field(field, format!("{field}: {c:?} is not an address range like 10.0.0.0/8")))
        })
        .collect()
}

/// True when `ip` is allowed by `ranges` (an empty list allows every address).
pub fn allowed(ranges: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    ranges.is_empty() || ranges.iter().any(|r| r.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client address: the TCP peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted_proxies.is_empty() || !trusted_proxies.iter().any(|p| p.contains(&peer)) {
        return peer;
    }
    let Some(header) = forwarded_for else { return peer };
    let mut chain: Vec<IpAddr> = Vec::new();
    for part in header.split(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) => chain.push(canonical(ip)),
            // A malformed chain is not trusted at all.
            Err(_) => return peer,
        }
    }
    chain
        .into_iter()
        .rev()
        .find(|ip| !trusted_proxies.iter().any(|p| p.contains(ip)))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn spec_13_2_5_ranges_allow_and_deny() {
        let r = parse_cidrs("x", &["10.0.0.0/8".into(), "192.0.2.7".into()]).unwrap();
        assert!(allowed(&r, ip("10.1.2.3")));
        assert!(allowed(&r, ip("::ffff:10.1.2.3")));
        assert!(allowed(&r, ip("192.0.2.7")));
        assert!(!allowed(&r, ip("192.0.2.8")));
        assert!(allowed(&[], ip("203.0.113.1")));
        assert!(parse_cidrs("allowed_source_cidrs", &["nope".into()]).is_err());
    }

    #[test]
    fn spec_13_2_5_forwarded_for_counts_only_from_trusted_proxies() {
        let proxies = parse_cidrs("x", &["127.0.0.1/32".into(), "10.9.0.0/16".into()]).unwrap();
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.5"), Some("10.1.1.1"), &proxies),
            ip("203.0.113.5")
        );
        // Through two trusted proxies: the first untrusted hop from the right.
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("198.51.100.7, 10.9.1.1"), &proxies),
            ip("198.51.100.7")
        );
        // A client cannot spoof by prepending: the right-most untrusted entry wins.
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("10.1.1.1, 198.51.100.7"), &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), Some("garbage"), &proxies), ip("127.0.0.1"));
        assert_eq!(client_ip(ip("127.0.0.1"), None, &[]), ip("127.0.0.1"));
    }
}
