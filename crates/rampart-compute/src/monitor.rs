//! Per-VM monitoring (spec 12.1-5): CPU and memory from the VM's cgroup, disk I/O from QMP
//! `query-blockstats` (what the guest did, whatever the host cache did), network from the
//! tap's counters. Counters are sampled; [`rates`] turns two samples into the metrics the API
//! serves and the alarm evaluator reads. Parsing and arithmetic are pure.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::confine::{CgroupVersion, VmCgroup};
use crate::qmp::BlockStats;

/// Monotonic counters at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: i64,
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub disk_read_ops: u64,
    pub disk_write_ops: u64,
    /// From the VM's point of view: received = the tap transmitted.
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub net_rx_packets: u64,
    pub net_tx_packets: u64,
}

/// Metric names, as used by `/metrics`, Prometheus and alarm rules.
pub const METRICS: [&str; 7] = [
    "cpu_percent",
    "memory_bytes",
    "disk_read_bps",
    "disk_write_bps",
    "net_rx_bps",
    "net_tx_bps",
    "disk_write_iops",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub at_ms: i64,
    /// 100 = one host CPU fully used by this VM's QEMU.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub disk_read_bps: f64,
    pub disk_write_bps: f64,
    pub disk_write_iops: f64,
    pub net_rx_bps: f64,
    pub net_tx_bps: f64,
}

impl Metrics {
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "cpu_percent" => self.cpu_percent,
            "memory_bytes" => self.memory_bytes as f64,
            "disk_read_bps" => self.disk_read_bps,
            "disk_write_bps" => self.disk_write_bps,
            "disk_write_iops" => self.disk_write_iops,
            "net_rx_bps" => self.net_rx_bps,
            "net_tx_bps" => self.net_tx_bps,
            _ => return None,
        })
    }
}

/// Rates between two samples. A counter that went backwards (the VM restarted) counts as 0.
pub fn rates(prev: &Sample, cur: &Sample) -> Option<Metrics> {
    let dt_ms = cur.at_ms - prev.at_ms;
    if dt_ms <= 0 {
        return None;
    }
    let secs = dt_ms as f64 / 1000.0;
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    Some(Metrics {
        at_ms: cur.at_ms,
        cpu_percent: cur.cpu_usage_ns.saturating_sub(prev.cpu_usage_ns) as f64 / (dt_ms as f64 * 1e6) * 100.0,
        memory_bytes: cur.memory_bytes,
        disk_read_bps: per_s(prev.disk_read_bytes, cur.disk_read_bytes),
        disk_write_bps: per_s(prev.disk_write_bytes, cur.disk_write_bytes),
        disk_write_iops: per_s(prev.disk_write_ops, cur.disk_write_ops),
        net_rx_bps: per_s(prev.net_rx_bytes, cur.net_rx_bytes),
        net_tx_bps: per_s(prev.net_tx_bytes, cur.net_tx_bytes),
    })
}

/// `(cpu_usage_ns, memory_bytes)` from the files of a cgroup.
pub fn parse_cgroup(version: CgroupVersion, cpu: &str, memory: &str) -> (u64, u64) {
    let mem = memory.trim().parse().unwrap_or(0);
    let cpu_ns = match version {
        // cpu.stat: "usage_usec N"
        CgroupVersion::V2 => cpu
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(0, |us| us * 1000),
        // cpuacct.usage: nanoseconds
        CgroupVersion::V1 => cpu.trim().parse().unwrap_or(0),
    };
    (cpu_ns, mem)
}

pub fn read_cgroup(cg: &VmCgroup) -> (u64, u64) {
    match cg.version {
        CgroupVersion::V2 => parse_cgroup(
            CgroupVersion::V2,
            &cg.read("cpu", "cpu.stat").unwrap_or_default(),
            &cg.read("memory", "memory.current").unwrap_or_default(),
        ),
        CgroupVersion::V1 => parse_cgroup(
            CgroupVersion::V1,
            &cg.read("cpuacct", "cpuacct.usage").unwrap_or_default(),
            &cg.read("memory", "memory.usage_in_bytes").unwrap_or_default(),
        ),
    }
}

/// Tap counters `(rx_bytes, tx_bytes, rx_packets, tx_packets)` as the host sees them.
pub fn read_tap(statistics_dir: &Path) -> (u64, u64, u64, u64) {
    let r = |f: &str| {
        std::fs::read_to_string(statistics_dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    (r("rx_bytes"), r("tx_bytes"), r("rx_packets"), r("tx_packets"))
}

/// A tap's counters from a `/proc/<pid>/net/dev` table (that process's network namespace, where
/// the VM's taps live), in [`read_tap`]'s order and direction: `(rx_bytes, tx_bytes,
/// rx_packets, tx_packets)` as the host sees them.
pub fn parse_net_dev(text: &str, iface: &str) -> Option<(u64, u64, u64, u64)> {
    text.lines().skip(2).find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != iface {
            return None;
        }
        let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        (v.len() >= 10).then(|| (v[0], v[8], v[1], v[9]))
    })
}

/// Builds a sample from the pieces. The tap's transmit is the VM's receive.
pub fn assemble(at_ms: i64, cpu_mem: (u64, u64), blocks: &[BlockStats], taps: &[(u64, u64, u64, u64)]) -> Sample {
    let mut s = Sample {
        at_ms,
        cpu_usage_ns: cpu_mem.0,
        memory_bytes: cpu_mem.1,
        ..Sample::default()
    };
    for b in blocks {
        s.disk_read_bytes += b.rd_bytes;
        s.disk_write_bytes += b.wr_bytes;
        s.disk_read_ops += b.rd_operations;
        s.disk_write_ops += b.wr_operations;
    }
    for (rx, tx, rxp, txp) in taps {
        s.net_rx_bytes += tx;
        s.net_tx_bytes += rx;
        s.net_rx_packets += txp;
        s.net_tx_packets += rxp;
    }
    s
}

/// Prometheus text exposition of the latest metrics per instance (operators' endpoint).
pub fn prometheus_text(items: &[(uuid::Uuid, String, Metrics)]) -> String {
    let mut out = String::new();
    for name in METRICS {
        out.push_str(&format!("# TYPE rampart_instance_{name} gauge\n"));
        for (id, project, m) in items {
            let v = m.get(name).unwrap_or(0.0);
            out.push_str(&format!(
                "rampart_instance_{name}{{instance=\"{id}\",project=\"{project}\"}} {v}\n"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_12_1_5_rates_from_two_samples() {
        let a = Sample {
            at_ms: 10_000,
            cpu_usage_ns: 1_000_000_000,
            disk_write_bytes: 1 << 20,
            net_rx_bytes: 1000,
            ..Default::default()
        };
        let b = Sample {
            at_ms: 12_000,
            cpu_usage_ns: 2_000_000_000,
            memory_bytes: 300 << 20,
            disk_write_bytes: 9 << 20,
            disk_write_ops: 64,
            net_rx_bytes: 5000,
            ..Default::default()
        };
        let m = rates(&a, &b).unwrap();
        assert!((m.cpu_percent - 50.0).abs() < 1e-9, "{}", m.cpu_percent);
        assert_eq!(m.disk_write_bps, 4.0 * 1048576.0);
        assert_eq!(m.disk_write_iops, 32.0);
        assert_eq!(m.net_rx_bps, 2000.0);
        assert_eq!(m.memory_bytes, 300 << 20);
        assert!(rates(&b, &a).is_none());
        // A restarted VM resets its counters: no negative rate.
        let restarted = Sample {
            at_ms: 14_000,
            ..Default::default()
        };
        assert_eq!(rates(&b, &restarted).unwrap().disk_write_bps, 0.0);
    }

    #[test]
    fn spec_12_1_5_cgroup_files_parse_on_v1_and_v2() {
        assert_eq!(
            parse_cgroup(CgroupVersion::V2, "usage_usec 1500\nuser_usec 1000\n", "4096\n"),
            (1_500_000, 4096)
        );
        assert_eq!(
            parse_cgroup(CgroupVersion::V1, "123456789\n", "8192"),
            (123_456_789, 8192)
        );
    }

    #[test]
    fn spec_12_1_5_tap_direction_is_inverted_for_the_vm() {
        let s = assemble(1, (0, 0), &[], &[(100, 7, 1, 2)]);
        assert_eq!((s.net_rx_bytes, s.net_tx_bytes), (7, 100));
        let dir = tempfile::tempdir().unwrap();
        for (f, v) in [
            ("rx_bytes", "11"),
            ("tx_bytes", "22"),
            ("rx_packets", "3"),
            ("tx_packets", "4"),
        ] {
            std::fs::write(dir.path().join(f), format!("{v}\n")).unwrap();
        }
        assert_eq!(read_tap(dir.path()), (11, 22, 3, 4));
    }

    #[test]
    fn spec_12_1_5_tap_counters_are_read_from_the_namespace_net_dev() {
        let t = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n\
rt-ab12:  5000      40    0    0    0     0          0         0     7000      50    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(t, "rt-ab12"), Some((5000, 7000, 40, 50)));
        assert_eq!(parse_net_dev(t, "rt-ab1"), None, "whole names only");
        // The tap transmitted what the VM received.
        let s = assemble(1, (0, 0), &[], &[parse_net_dev(t, "rt-ab12").unwrap()]);
        assert_eq!((s.net_rx_bytes, s.net_tx_bytes, s.net_rx_packets), (7000, 5000, 50));
    }

    #[test]
    fn spec_12_1_5_prometheus_text_names_every_metric() {
        let id = uuid::Uuid::nil();
        let t = prometheus_text(&[(
            id,
            "p1".into(),
            Metrics {
                cpu_percent: 12.5,
                ..Default::default()
            },
        )]);
        assert!(t.contains(
            "rampart_instance_cpu_percent{instance=\"00000000-0000-0000-0000-000000000000\",project=\"p1\"} 12.5"
        ));
        for m in METRICS {
            assert!(t.contains(&format!("# TYPE rampart_instance_{m} gauge")));
        }
    }
}
