//! Plane isolation of the controller's listeners (spec 10.1, 10.6): binding a service to the
//! management address is not enough on Linux (weak host model: a packet for that address is
//! accepted on any interface), so every non-loopback API listener is also pinned to the
//! management interface (`SO_BINDTODEVICE`), and an nftables input filter (`rampart_net::host`) admits
//! only the configured source ranges to the API ports.

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

/// The input filter for the API ports (it filters nothing without `network.management_sources`).
pub fn input_filter(cfg: &NetworkConfig, addrs: &[SocketAddr]) -> rampart_net::host::ApiInputFilter {
    rampart_net::host::ApiInputFilter {
        table: host_table(addrs),
        ports: addrs.iter().map(|a| a.port()).collect(),
        sources: cfg.management_sources.clone(),
        interface: cfg.management_interface.clone(),
    }
}

/// Loads the input filter atomically (replacing the one of an earlier start); see
/// [`rampart_net::host::ApiInputFilter::apply`].
pub fn apply_input_filter(cfg: &NetworkConfig, addrs: &[SocketAddr]) -> Result<(), String> {
    let loaded = input_filter(cfg, addrs)
        .apply(Duration::from_secs(10))
        .map_err(|e| format!("nft refused the input filter of network.management_sources: {e}"))?;
    if loaded {
        tracing::info!(sources = ?cfg.management_sources, interface = ?cfg.management_interface, "API input filter loaded");
    }
    Ok(())
}
