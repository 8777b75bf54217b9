//! What the agent needs from its host, behind a trait so the real agent code runs in fast
//! tests on a fake host. Later capabilities add their drivers (QEMU, volumes) here.

use std::sync::{Arc, LazyLock};

use rampart_api::HostFacts;
use rampart_net::exec::{FakeNet, IpNftDriver, NetDriver};

pub trait HostDriver: Send + Sync + 'static {
    fn facts(&self) -> HostFacts;

    /// The tenant-network driver: namespaces, bridges, nft, dnsmasq.
    fn net(&self) -> &dyn NetDriver;
}

/// The real network driver (`ip`, `nft`, `conntrack`, `dnsmasq`), stateless.
static REAL_NET: LazyLock<IpNftDriver> = LazyLock::new(IpNftDriver::default);

/// The machine the agent runs on.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
}

impl HostDriver for RealHost {
    fn facts(&self) -> HostFacts {
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
            })
            .unwrap_or_else(|| "unknown".into());
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("MemTotal:")
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
            })
            .map(|kib| kib * 1024)
            .unwrap_or(0);
        HostFacts {
            hostname: hostname(),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            os,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes,
        }
    }

    fn net(&self) -> &dyn NetDriver {
        &*REAL_NET
    }
}

/// A host that exists only in tests.
#[derive(Debug, Clone)]
pub struct FakeHost {
    pub facts: HostFacts,
    /// Its data plane, in memory: tests read what the agent built there.
    pub net: Arc<FakeNet>,
}

impl FakeHost {
    pub fn named(name: &str) -> FakeHost {
        FakeHost {
            facts: HostFacts {
                hostname: name.into(),
                kernel: "6.1.0-fake".into(),
                os: "Fake Linux".into(),
                cpus: 8,
                memory_bytes: 32 << 30,
            },
            net: Arc::new(FakeNet::default()),
        }
    }
}

impl HostDriver for FakeHost {
    fn facts(&self) -> HostFacts {
        self.facts.clone()
    }

    fn net(&self) -> &dyn NetDriver {
        &*self.net
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_host_reports_plausible_facts() {
        let f = RealHost.facts();
        assert!(!f.hostname.is_empty());
        assert!(!f.kernel.is_empty());
        assert!(f.cpus >= 1);
        assert!(f.memory_bytes > 64 << 20);
    }
}
