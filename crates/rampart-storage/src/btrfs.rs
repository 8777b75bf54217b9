//! Redundancy of a local pool on btrfs RAID1 (14.1-2): what `btrfs filesystem df`, `device
//! stats` and `filesystem show` say about it, and `btrfs scrub` run and parsed into counts an
//! alarm can use. btrfs itself does the work (checksums on every block, the good mirror copied
//! over a bad one); this module only asks and reads.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::Redundancy;
use crate::proc::{self, ProcError};

/// One line of `btrfs filesystem df`: `Data, RAID1: total=64.00MiB, used=0.00B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub kind: String,
    pub profile: String,
}

pub fn parse_filesystem_df(text: &str) -> Vec<Profile> {
    text.lines()
        .filter_map(|l| {
            let (head, _) = l.split_once(':')?;
            let (kind, profile) = head.split_once(',')?;
            Some(Profile {
                kind: kind.trim().to_string(),
                profile: profile.trim().to_string(),
            })
        })
        .collect()
}

/// `btrfs device stats` counters per device (`[/dev/loop0].corruption_errs 0`).
pub fn parse_device_stats(text: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let (Some(key), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        let Some((dev, counter)) = key.strip_prefix('[').and_then(|k| k.split_once("].")) else {
            continue;
        };
        if let Ok(v) = value.parse() {
            out.entry(dev.to_string()).or_default().insert(counter.to_string(), v);
        }
    }
    out
}

/// Devices named by `btrfs filesystem show`, and whether it says some are missing.
pub fn parse_filesystem_show(text: &str) -> (u32, bool) {
    let total = text
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("Total devices ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0);
    let missing = text.contains("devices missing") || text.contains("<missing disk>") || text.contains("MISSING");
    (total, missing)
}

/// What a pool's redundancy is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtrfsHealth {
    pub redundancy: Redundancy,
    pub problems: Vec<String>,
    pub device_errors: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Pure: redundancy and problems from the three outputs.
pub fn assess(df: &str, stats: &str, show: &str) -> BtrfsHealth {
    let profiles = parse_filesystem_df(df);
    let find = |k: &str| {
        profiles
            .iter()
            .find(|p| p.kind == k)
            .map(|p| p.profile.clone())
            .unwrap_or_else(|| "unknown".into())
    };
    let (data, metadata) = (find("Data"), find("Metadata"));
    let (devices, missing) = parse_filesystem_show(show);
    let redundancy = if data == "RAID1" && metadata == "RAID1" {
        Redundancy::BtrfsRaid1 { devices }
    } else if data == "single" && metadata == "single" || data == "unknown" {
        Redundancy::None
    } else {
        Redundancy::BtrfsMixed {
            data: data.clone(),
            metadata: metadata.clone(),
        }
    };
    let mut problems = Vec::new();
    if missing {
        problems.push("a device of the pool is missing: it runs degraded, without redundancy".to_string());
    }
    if let Redundancy::BtrfsMixed { .. } = redundancy {
        problems.push(format!(
            "data is {data} and metadata {metadata}: not all of the pool is mirrored"
        ));
    }
    let device_errors = parse_device_stats(stats);
    for (dev, counters) in &device_errors {
        let errs: u64 = counters.values().sum();
        if errs > 0 {
            let list: Vec<String> = counters
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            problems.push(format!("device {dev} counted errors: {}", list.join(" ")));
        }
    }
    BtrfsHealth {
        redundancy,
        problems,
        device_errors,
    }
}

fn btrfs(bin: &Path, args: &[&str], path: &Path, timeout: Duration) -> Result<String, ProcError> {
    let mut cmd = Command::new(bin);
    cmd.args(args).arg(path);
    proc::run(cmd, None, timeout).map(|o| o.stdout)
}

/// Asks btrfs about the pool holding `path`.
pub fn pool_health(bin: &Path, path: &Path) -> Result<BtrfsHealth, ProcError> {
    let t = Duration::from_secs(30);
    let df = btrfs(bin, &["filesystem", "df"], path, t)?;
    let stats = btrfs(bin, &["device", "stats"], path, t)?;
    // `filesystem show` takes a mount point (or device), not any path inside the filesystem.
    let show = btrfs(bin, &["filesystem", "show"], &mount_point(path)?, t)?;
    Ok(assess(&df, &stats, &show))
}

/// The mount point of the filesystem holding `path`: its highest ancestor on the same device.
pub fn mount_point(path: &Path) -> Result<std::path::PathBuf, ProcError> {
    use std::os::unix::fs::MetadataExt;
    let io = |source| ProcError::Spawn {
        program: "btrfs (finding the mount point)".into(),
        source,
    };
    let mut at = path.canonicalize().map_err(io)?;
    let dev = std::fs::metadata(&at).map_err(io)?.dev();
    while let Some(parent) = at.parent() {
        if std::fs::metadata(parent).map_err(io)?.dev() != dev {
            break;
        }
        at = parent.to_path_buf();
    }
    Ok(at)
}

/// What one scrub found and did: the figures of `btrfs scrub start -B -R`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    pub finished: bool,
    pub data_bytes_scrubbed: u64,
    pub read_errors: u64,
    pub csum_errors: u64,
    pub verify_errors: u64,
    pub super_errors: u64,
    pub corrected_errors: u64,
    pub uncorrectable_errors: u64,
    pub unverified_errors: u64,
}

/// Severity for an alarm: repaired errors still mean a failing device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrubVerdict {
    Clean,
    /// Errors found and all repaired from the good mirror: warn (the device is failing).
    Repaired,
    /// Data lost: critical.
    Uncorrectable,
}

impl ScrubReport {
    pub fn errors(&self) -> u64 {
        self.read_errors + self.csum_errors + self.verify_errors + self.super_errors
    }

    pub fn verdict(&self) -> ScrubVerdict {
        if self.uncorrectable_errors > 0 || !self.finished {
            ScrubVerdict::Uncorrectable
        } else if self.errors() > 0 || self.corrected_errors > 0 {
            ScrubVerdict::Repaired
        } else {
            ScrubVerdict::Clean
        }
    }
}

pub fn parse_scrub_raw(text: &str) -> ScrubReport {
    let mut r = ScrubReport::default();
    let mut statuses = Vec::new();
    for l in text.lines() {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k == "Status" {
            statuses.push(v.to_string());
            continue;
        }
        let Ok(n) = v.parse::<u64>() else { continue };
        // Summed: with several devices the raw output repeats the block per device.
        let slot = match k {
            "data_bytes_scrubbed" => &mut r.data_bytes_scrubbed,
            "read_errors" => &mut r.read_errors,
            "csum_errors" => &mut r.csum_errors,
            "verify_errors" => &mut r.verify_errors,
            "super_errors" => &mut r.super_errors,
            "corrected_errors" => &mut r.corrected_errors,
            "uncorrectable_errors" => &mut r.uncorrectable_errors,
            "unverified_errors" => &mut r.unverified_errors,
            _ => continue,
        };
        *slot += n;
    }
    r.finished = !statuses.is_empty() && statuses.iter().all(|s| s == "finished");
    r
}

/// Runs a scrub to its end (`-B`) and reads its figures. btrfs exits 3 when it found
/// uncorrectable errors; that is a result here, not a failure to scrub.
pub fn scrub(bin: &Path, path: &Path, timeout: Duration) -> Result<ScrubReport, ProcError> {
    let mut cmd = Command::new(bin);
    cmd.args(["scrub", "start", "-B", "-R"]).arg(path);
    match proc::run(cmd, None, timeout) {
        Ok(o) => Ok(parse_scrub_raw(&o.stdout)),
        Err(ProcError::Failed { stderr, .. }) if stderr.contains("uncorrectable") => {
            let mut r = parse_scrub_raw(&stderr);
            r.uncorrectable_errors = r.uncorrectable_errors.max(1);
            Ok(r)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DF: &str = "Data, RAID1: total=64.00MiB, used=0.00B\nSystem, RAID1: total=8.00MiB, used=16.00KiB\nMetadata, RAID1: total=32.00MiB, used=128.00KiB\nGlobalReserve, single: total=5.50MiB, used=0.00B\n";
    const SHOW: &str = "Label: none  uuid: 51e8a850\n\tTotal devices 2 FS bytes used 144.00KiB\n\tdevid    1 size 300.00MiB used 104.00MiB path /dev/loop0\n\tdevid    2 size 300.00MiB used 104.00MiB path /dev/loop1\n";

    fn stats(corrupt: u64) -> String {
        format!(
            "[/dev/loop0].write_io_errs    0\n[/dev/loop0].read_io_errs     0\n[/dev/loop0].corruption_errs  {corrupt}\n[/dev/loop1].write_io_errs    0\n[/dev/loop1].corruption_errs  0\n"
        )
    }

    #[test]
    fn spec_14_1_2_raid1_is_reported_and_errors_and_missing_devices_are_problems() {
        let h = assess(DF, &stats(0), SHOW);
        assert_eq!(h.redundancy, Redundancy::BtrfsRaid1 { devices: 2 });
        assert!(h.problems.is_empty(), "{:?}", h.problems);
        let h = assess(DF, &stats(16), SHOW);
        assert_eq!(
            h.problems,
            vec!["device /dev/loop0 counted errors: corruption_errs=16".to_string()]
        );
        assert_eq!(h.device_errors["/dev/loop0"]["corruption_errs"], 16);
        let degraded = SHOW.replace(
            "\tdevid    2 size 300.00MiB used 104.00MiB path /dev/loop1\n",
            "\t*** Some devices missing\n",
        );
        let h = assess(DF, &stats(0), &degraded);
        assert!(h.problems[0].contains("missing"), "{:?}", h.problems);
        // What btrfs-progs 6.2 prints for a degraded mount.
        let degraded = SHOW.replace("path /dev/loop1", "path  MISSING").replace(
            "size 300.00MiB used 104.00MiB path  MISSING",
            "size 0 used 0 path  MISSING",
        );
        let h = assess(DF, &stats(0), &degraded);
        assert!(h.problems[0].contains("missing"), "{:?}", h.problems);
        assert!(mount_point(Path::new("/proc/self")).unwrap() == Path::new("/proc"));
        let single = "Data, single: total=8.00MiB, used=0.00B\nMetadata, DUP: total=51.19MiB, used=112.00KiB\n";
        assert_eq!(
            assess(single, "", SHOW).redundancy,
            Redundancy::BtrfsMixed {
                data: "single".into(),
                metadata: "DUP".into()
            }
        );
    }

    #[test]
    fn scrub_figures_are_parsed_and_judged() {
        let raw = "scrub done for 51e8\nScrub started:    Mon Dec  7 17:17:09 2026\nStatus:           finished\nDuration:         0:00:00\n\tdata_extents_scrubbed: 256\n\tdata_bytes_scrubbed: 16777216\n\tread_errors: 0\n\tcsum_errors: 16\n\tverify_errors: 0\n\tsuper_errors: 0\n\tuncorrectable_errors: 0\n\tunverified_errors: 0\n\tcorrected_errors: 16\n\tlast_physical: 110100480\n";
        let r = parse_scrub_raw(raw);
        assert!(r.finished);
        assert_eq!(
            (r.csum_errors, r.corrected_errors, r.data_bytes_scrubbed),
            (16, 16, 16_777_216)
        );
        assert_eq!(r.verdict(), ScrubVerdict::Repaired);
        let clean = raw
            .replace("csum_errors: 16", "csum_errors: 0")
            .replace("corrected_errors: 16", "corrected_errors: 0");
        assert_eq!(parse_scrub_raw(&clean).verdict(), ScrubVerdict::Clean);
        let lost = raw.replace("uncorrectable_errors: 0", "uncorrectable_errors: 2");
        assert_eq!(parse_scrub_raw(&lost).verdict(), ScrubVerdict::Uncorrectable);
        let aborted = raw.replace("Status:           finished", "Status:           aborted");
        assert_eq!(parse_scrub_raw(&aborted).verdict(), ScrubVerdict::Uncorrectable);
    }
}
