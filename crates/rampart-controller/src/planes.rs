//! Plane isolation of the controller's listeners (spec 10.1, 10.6): binding a service to the
//! management address is not enough on Linux (weak host model: a packet for that address is
//! accepted on any interface), so every non-loopback API listener is also pinned to the
//! management interface (`SO_BINDTODEVICE`), and an nftables input filter admits only the
//! configured source ranges to the API ports.

use std::net::SocketAddr;
use std::time::Duration;

use rampart_common::config::NetworkConfig;
use tokio::net::TcpListener;

/// The table of the host input filter in the controller's network namespace, named after the
/// first API port so that two controllers on one host keep their own.
pub fn host_table(addrs: &[SocketAddr]) -> String {
    format!("rampart_api_{}", addrs.first().map(|a| a.port()).unwrap_or(0))
}

/// Binds one API listener, pinned to `device` unless the address is a loopback one.
pub fn bind_listener(addr: SocketAddr, device: Option<&str>) -> std::io::Result<TcpListener> {
    let socket = listening_socket(addr, device)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Whether every address can be listened on (it is on this host, the port is free), before
/// anything is written: the sockets are closed again at once.
pub fn check_listen(addrs: &[SocketAddr], device: Option<&str>) -> Result<(), (SocketAddr, std::io::Error)> {
    for addr in addrs {
        listening_socket(*addr, device).map_err(|e| (*addr, e))?;
    }
    Ok(())
}

fn listening_socket(addr: SocketAddr, device: Option<&str>) -> std::io::Result<socket2::Socket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Some(dev) = device
        && !addr.ip().is_loopback()
    {
        socket.bind_device(Some(dev.as_bytes()))?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// The input filter for the API ports: loopback and the configured sources pass, the rest
/// is dropped (and counted).
pub fn input_filter(cfg: &NetworkConfig, addrs: &[SocketAddr]) -> Option<String> {
    if cfg.management_sources.is_empty() {
        return None;
    }
    let mut ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
    ports.sort();
    ports.dedup();
    let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let (v4, v6): (Vec<&String>, Vec<&String>) = cfg.management_sources.iter().partition(|s| !s.contains(':'));
    let join = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    let table = host_table(addrs);
    let mut out = format!(
        "table inet {table} {{\n\tcounter refused {{\n\t}}\n\tchain input {{\n\t\t\
         type filter hook input priority -10; policy accept;\n\t\ttcp dport {{ {ports} }} iif \"lo\" accept\n"
    );
    let pin = cfg
        .management_interface
        .as_deref()
        .map(|d| format!("iifname \"{d}\" "))
        .unwrap_or_default();
    if !v4.is_empty() {
        out.push_str(&format!(
            "\t\ttcp dport {{ {ports} }} {pin}ip saddr {{ {} }} accept\n",
            join(&v4)
        ));
    }
    if !v6.is_empty() {
        out.push_str(&format!(
            "\t\ttcp dport {{ {ports} }} {pin}ip6 saddr {{ {} }} accept\n",
            join(&v6)
        ));
    }
    out.push_str(&format!(
        "\t\ttcp dport {{ {ports} }} counter name \"refused\" drop\n\t}}\n}}\n"
    ));
    Some(out)
}

/// Loads the input filter atomically (replacing the one of an earlier start). Without source
/// ranges nothing is touched on the host (a filter left by an earlier configuration stays
/// until `nft delete table inet rampart_api_<port>`: failing closed).
pub fn apply_input_filter(cfg: &NetworkConfig, addrs: &[SocketAddr]) -> Result<(), String> {
    let timeout = Duration::from_secs(10);
    let Some(body) = input_filter(cfg, addrs) else {
        return Ok(());
    };
    let table = host_table(addrs);
    let script = format!("add table inet {table}\ndelete table inet {table}\n{body}");
    let out = rampart_net::exec::run("nft", &["-f", "-"], Some(&script), "", timeout).map_err(|e| e.to_string())?;
    if !out.ok {
        return Err(format!(
            "nft refused the input filter of network.management_sources: {}",
            out.stderr.trim()
        ));
    }
    tracing::info!(sources = ?cfg.management_sources, interface = ?cfg.management_interface, "API input filter loaded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_10_6_2_input_filter_admits_only_the_configured_sources() {
        let mut cfg = NetworkConfig::default();
        let addrs = ["10.20.0.1:8443".parse().unwrap(), "127.0.0.1:8443".parse().unwrap()];
        assert_eq!(input_filter(&cfg, &addrs), None, "no sources, no filter");
        cfg.management_sources = vec!["10.20.0.0/24".into(), "fd00::/64".into()];
        cfg.management_interface = Some("mgmt0".into());
        let f = input_filter(&cfg, &addrs).unwrap();
        assert!(f.contains("tcp dport { 8443 } iif \"lo\" accept"), "{f}");
        assert!(
            f.contains("tcp dport { 8443 } iifname \"mgmt0\" ip saddr { 10.20.0.0/24 } accept"),
            "{f}"
        );
        assert!(f.contains("ip6 saddr { fd00::/64 } accept"), "{f}");
        assert!(
            f.trim_end().ends_with("drop\n\t}\n}") || f.contains("counter name \"refused\" drop"),
            "{f}"
        );
    }
}
