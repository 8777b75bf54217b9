//! Remediation of the file-based checks: a plan (file edits, mode changes, running kernel
//! values) computed from the failed checks, shown as a unified diff, then executed with a
//! backup of every file it changes. Plans are idempotent: applied once, the next plan is empty.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::catalogue::{Catalogue, Rule, Syntax};
use crate::eval::{Report, Status};
use crate::facts::HostFacts;
use crate::paths::{is_live_root, under};
use crate::{Error, settings, sshd, sysctl};

const HEADER_SSHD: &str = "# Written by `rampart harden apply` (spec 9.1-1b/f). Values here win over\n# sshd_config: sshd keeps the first value it reads.\n";
const HEADER_SYSCTL: &str =
    "# Written by `rampart harden apply` (spec 9.1-1c): kernel parameters of the root namespace.\n";
const HEADER_SETTING: &str = "# Written by `rampart harden apply` (spec 9.1-1d).\n";
const DISABLED: &str = "#rampart-disabled: ";

/// New content of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEdit {
    /// Host path.
    pub path: String,
    /// `None`: the file is created.
    pub before: Option<String>,
    pub after: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeChange {
    pub path: String,
    pub from: u32,
    pub to: u32,
}

/// A kernel parameter of the running kernel (written through `/proc/sys` under the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSet {
    pub key: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub edits: Vec<FileEdit>,
    pub modes: Vec<ModeChange>,
    pub runtime: Vec<RuntimeSet>,
    /// Failed checks that need a person (accounts, SUID programs, listening services…).
    pub manual: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty() && self.modes.is_empty() && self.runtime.is_empty()
    }

    fn touches_sshd(&self) -> bool {
        self.edits.iter().any(|e| e.path.starts_with("/etc/ssh/"))
    }
}

/// Files being edited, in memory: host path → (original text, current lines).
#[derive(Default)]
struct Overlay {
    files: BTreeMap<String, (Option<String>, Vec<String>)>,
}

impl Overlay {
    fn lines(&mut self, root: &Path, path: &str) -> &mut Vec<String> {
        &mut self
            .files
            .entry(path.to_string())
            .or_insert_with(|| {
                let before = std::fs::read_to_string(under(root, path)).ok();
                let lines = before.as_deref().unwrap_or("").lines().map(str::to_string).collect();
                (before, lines)
            })
            .1
    }

    fn disable_line(&mut self, root: &Path, path: &str, line: usize) {
        let lines = self.lines(root, path);
        if let Some(l) = lines.get_mut(line)
            && !l.starts_with(DISABLED)
        {
            *l = format!("{DISABLED}{l}");
        }
    }

    fn into_edits(self) -> Vec<FileEdit> {
        self.files
            .into_iter()
            .filter_map(|(path, (before, lines))| {
                let mut after = lines.join("\n");
                if !after.is_empty() {
                    after.push('\n');
                }
                (before.as_deref() != Some(after.as_str())).then_some(FileEdit { path, before, after })
            })
            .collect()
    }
}

fn sshd_keyword(key: &str) -> &str {
    match key {
        "permitrootlogin" => "PermitRootLogin",
        "passwordauthentication" => "PasswordAuthentication",
        "permitemptypasswords" => "PermitEmptyPasswords",
        "maxauthtries" => "MaxAuthTries",
        "x11forwarding" => "X11Forwarding",
        "ciphers" => "Ciphers",
        "macs" => "MACs",
        "kexalgorithms" => "KexAlgorithms",
        "loglevel" => "LogLevel",
        other => other,
    }
}

/// Sets `key` in a `key value` drop-in (replacing its line, or appending one).
fn set_in_drop_in(lines: &mut Vec<String>, header: &str, key_line: &str, matches: impl Fn(&str) -> bool) {
    if lines.is_empty() {
        lines.extend(header.lines().map(str::to_string));
    }
    match lines.iter().position(|l| matches(l)) {
        Some(i) => {
            if lines[i] != key_line {
                lines[i] = key_line.to_string();
            }
        }
        None => lines.push(key_line.to_string()),
    }
}

/// The remediation of the failed checks of `report`.
pub fn plan(root: &Path, catalogue: &Catalogue, facts: &HostFacts, report: &Report) -> Plan {
    let mut overlay = Overlay::default();
    let mut plan = Plan::default();
    let failed = |id: &str| report.checks.iter().any(|r| r.id == id && r.status == Status::Fail);

    let mut sshd_fixes: Vec<(String, String)> = Vec::new();
    let mut sysctl_fixes: Vec<(String, String)> = Vec::new();
    for check in catalogue.checks.iter().filter(|c| failed(&c.id)) {
        if !check.rule.remediable() {
            plan.manual.push(check.id.clone());
            continue;
        }
        match &check.rule {
            Rule::Sshd {
                key, fix: Some(fix), ..
            } => sshd_fixes.push((key.clone(), fix.clone())),
            Rule::Sysctl {
                key, fix: Some(fix), ..
            } => sysctl_fixes.push((key.clone(), fix.clone())),
            Rule::Setting {
                file,
                syntax,
                key,
                fix: Some(fix),
                ..
            } => set_setting(root, &mut overlay, file, *syntax, key, fix),
            Rule::WorldWritable => {
                if let Some(scan) = &facts.files {
                    for p in &scan.world_writable {
                        if let Some(m) = mode_of(root, p) {
                            plan.modes.push(ModeChange {
                                path: p.clone(),
                                from: m,
                                to: m & !0o002,
                            });
                        }
                    }
                }
            }
            Rule::RampartPrivate { .. } => {
                for d in &facts.private_dirs {
                    if let Some(m) = d.mode
                        && m & 0o077 != 0
                    {
                        plan.modes.push(ModeChange {
                            path: d.dir.clone(),
                            from: m,
                            to: m & !0o077,
                        });
                    }
                    for (p, m) in &d.loose_files {
                        plan.modes.push(ModeChange {
                            path: p.clone(),
                            from: *m,
                            to: m & !0o077,
                        });
                    }
                }
            }
            _ => plan.manual.push(check.id.clone()),
        }
    }
    if !sshd_fixes.is_empty() {
        plan_sshd(root, &mut overlay, &sshd_fixes);
    }
    if !sysctl_fixes.is_empty() {
        plan_sysctl(root, &mut overlay, &sysctl_fixes, &mut plan.runtime);
    }
    plan.modes.sort_by(|a, b| a.path.cmp(&b.path));
    plan.modes.dedup_by(|a, b| a.path == b.path);
    plan.edits = overlay.into_edits();
    plan
}

fn mode_of(root: &Path, host: &str) -> Option<u32> {
    std::fs::symlink_metadata(under(root, host))
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

fn set_setting(root: &Path, overlay: &mut Overlay, file: &str, syntax: Syntax, key: &str, fix: &str) {
    let path = crate::facts::file_key(file);
    let line = settings::render(syntax, key, fix);
    let lines = overlay.lines(root, &path);
    let mut found = false;
    for l in lines.iter_mut() {
        if settings::split(syntax, l).is_some_and(|(k, _)| k == key) {
            *l = line.clone();
            found = true;
        }
    }
    if !found {
        if lines.is_empty() {
            lines.extend(HEADER_SETTING.lines().map(str::to_string));
        }
        lines.push(line);
    }
}

fn plan_sshd(root: &Path, overlay: &mut Overlay, fixes: &[(String, String)]) {
    let drop_in_dir = sshd::DROP_IN.rsplit_once('/').map(|(d, _)| d).unwrap_or("/etc/ssh");
    let drop_in_name = sshd::DROP_IN.rsplit('/').next().unwrap_or_default();
    // The drop-in is read only through an Include in the main file; Debian's has one on its
    // first line, an older or edited file may not.
    let include_line = if sshd::includes_drop_in(root) {
        std::fs::read_to_string(under(root, sshd::MAIN))
            .unwrap_or_default()
            .lines()
            .position(|l| sshd::split_line(l).is_some_and(|(k, _)| k == "include"))
    } else {
        let lines = overlay.lines(root, sshd::MAIN);
        lines.insert(0, format!("Include {drop_in_dir}/*.conf"));
        // Lines moved down by one: nothing in the main file is read before the drop-in now.
        None
    };
    let drop_in = overlay.lines(root, sshd::DROP_IN);
    for (key, value) in fixes {
        let line = format!("{} {value}", sshd_keyword(key));
        set_in_drop_in(drop_in, HEADER_SSHD, &line, |l| {
            sshd::split_line(l).is_some_and(|(k, _)| &k == key)
        });
    }
    // sshd keeps the first value: what it reads before the drop-in must go.
    let mut earlier: Vec<(String, usize, String)> = Vec::new();
    if let Some(inc) = include_line {
        let text = std::fs::read_to_string(under(root, sshd::MAIN)).unwrap_or_default();
        for (i, l) in text.lines().enumerate().take(inc) {
            if let Some((k, _)) = sshd::split_line(l) {
                earlier.push((sshd::MAIN.to_string(), i, k));
            }
        }
    }
    for file in crate::paths::expand(root, &format!("{drop_in_dir}/*.conf")) {
        if file.rsplit('/').next().is_some_and(|n| n < drop_in_name) {
            let text = std::fs::read_to_string(under(root, &file)).unwrap_or_default();
            for (i, l) in text.lines().enumerate() {
                match sshd::split_line(l) {
                    Some((k, _)) if k == "match" => break,
                    Some((k, _)) => earlier.push((file.clone(), i, k)),
                    None => {}
                }
            }
        }
    }
    for (file, line, key) in earlier {
        if fixes.iter().any(|(k, _)| *k == key) {
            overlay.disable_line(root, &file, line);
        }
    }
}

fn plan_sysctl(root: &Path, overlay: &mut Overlay, fixes: &[(String, String)], runtime: &mut Vec<RuntimeSet>) {
    let drop_in = overlay.lines(root, sysctl::DROP_IN);
    for (key, value) in fixes {
        set_in_drop_in(drop_in, HEADER_SYSCTL, &format!("{key} = {value}"), |l| {
            sysctl::parse("", l).first().is_some_and(|e| &e.key == key)
        });
    }
    // The last assignment wins: files applied after the drop-in must not undo it.
    let mut order = sysctl::files(root);
    if !order.iter().any(|f| f == sysctl::DROP_IN) {
        order.push(sysctl::DROP_IN.to_string());
        let name = |f: &String| {
            if f == "/etc/sysctl.conf" {
                "\u{10FFFF}".to_string()
            } else {
                f.rsplit('/').next().unwrap_or_default().to_string()
            }
        };
        order.sort_by_key(name);
    }
    let pos = order.iter().position(|f| f == sysctl::DROP_IN).unwrap_or(0);
    for file in &order[pos + 1..] {
        let text = std::fs::read_to_string(under(root, file)).unwrap_or_default();
        for e in sysctl::parse(file, &text) {
            if fixes.iter().any(|(k, v)| *k == e.key && v != &e.value) {
                overlay.disable_line(root, file, e.line);
            }
        }
    }
    for (key, value) in fixes {
        if let Some(now) = sysctl::runtime(root, key)
            && &now != value
        {
            runtime.push(RuntimeSet {
                key: key.clone(),
                from: now,
                to: value.clone(),
            });
        }
    }
}

/// The plan as a unified diff (files), then mode and running-kernel changes.
pub fn render_diff(plan: &Plan) -> String {
    let mut out = String::new();
    for e in &plan.edits {
        let before = e.before.as_deref().unwrap_or("");
        let old_name = if e.before.is_some() {
            format!("a{}", e.path)
        } else {
            "/dev/null".to_string()
        };
        let diff = similar::TextDiff::from_lines(before, &e.after);
        out.push_str(
            &diff
                .unified_diff()
                .context_radius(3)
                .header(&old_name, &format!("b{}", e.path))
                .to_string(),
        );
    }
    for m in &plan.modes {
        out.push_str(&format!("chmod {:04o} -> {:04o} {}\n", m.from, m.to, m.path));
    }
    for r in &plan.runtime {
        out.push_str(&format!(
            "sysctl -w {}={} (running kernel; was {})\n",
            r.key, r.to, r.from
        ));
    }
    out
}

/// What `execute` did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Host paths of the backups written.
    pub backups: Vec<String>,
    /// Steps that could not be done and were skipped (e.g. a read-only /proc/sys).
    pub warnings: Vec<String>,
    /// Whether sshd was reloaded.
    pub sshd_reloaded: bool,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes the plan. `stamp` names the backups (`<file>.rampart-bak.<stamp>`). On the live
/// host, sshd's new configuration is checked with `sshd -t` before it is reloaded; if it is
/// refused, the SSH files are restored and nothing is reloaded.
pub fn execute(root: &Path, plan: &Plan, stamp: &str) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    // (path, backup or None when created) of the SSH files, to undo.
    let mut ssh_undo: Vec<(std::path::PathBuf, Option<std::path::PathBuf>)> = Vec::new();
    for e in &plan.edits {
        let path = under(root, &e.path);
        let backup = if e.before.is_some() {
            let b = path.with_file_name(format!(
                "{}.rampart-bak.{stamp}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
            std::fs::copy(&path, &b).map_err(|s| io(&b, s))?;
            applied.backups.push(crate::paths::host_path(root, &b));
            Some(b)
        } else {
            None
        };
        write_atomic(&path, e.after.as_bytes())?;
        if e.path.starts_with("/etc/ssh/") {
            ssh_undo.push((path, backup));
        }
    }
    for m in &plan.modes {
        let path = under(root, &m.path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m.to)).map_err(|s| io(&path, s))?;
    }
    for r in &plan.runtime {
        let path = sysctl::runtime_path(root, &r.key);
        if let Err(e) = std::fs::write(&path, format!("{}\n", r.to)) {
            applied
                .warnings
                .push(format!("{} not set in the running kernel: {e}", r.key));
        }
    }
    if plan.touches_sshd() && is_live_root(root) {
        match std::process::Command::new("sshd").arg("-t").output() {
            Ok(out) if !out.status.success() => {
                for (path, backup) in &ssh_undo {
                    match backup {
                        Some(b) => std::fs::copy(b, path).map(|_| ()),
                        None => std::fs::remove_file(path),
                    }
                    .map_err(|s| io(path, s))?;
                }
                return Err(Error::SshdRejected(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ));
            }
            Ok(_) => applied.sshd_reloaded = reload_sshd(&mut applied.warnings),
            Err(e) => applied
                .warnings
                .push(format!("sshd -t could not run ({e}): sshd not reloaded")),
        }
    }
    Ok(applied)
}

fn reload_sshd(warnings: &mut Vec<String>) -> bool {
    let active = std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", "ssh.service"])
        .status()
        .is_ok_and(|s| s.success());
    if !active {
        warnings.push("ssh.service is not active: the new configuration applies at its next start".into());
        return false;
    }
    match std::process::Command::new("systemctl")
        .args(["reload", "ssh.service"])
        .status()
    {
        Ok(s) if s.success() => true,
        other => {
            warnings.push(format!("systemctl reload ssh.service failed: {other:?}"));
            false
        }
    }
}

/// Same directory, then rename: a reader sees the old or the new file, never half of one.
/// Mode and owner of an existing file are kept; a new file is 0644 (configuration, no secret).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path
        .parent()
        .ok_or_else(|| io(path, std::io::Error::other("no parent directory")))?;
    std::fs::create_dir_all(dir).map_err(|s| io(dir, s))?;
    let old = std::fs::metadata(path).ok();
    let tmp = dir.join(format!(
        ".{}.rampart-tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).map_err(|s| io(&tmp, s))?;
    let mode = old.as_ref().map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(|s| io(&tmp, s))?;
    if let Some(m) = &old {
        // Only root may give a file away; as another user the file is already ours.
        let _ = std::os::unix::fs::chown(&tmp, Some(m.uid()), Some(m.gid()));
    }
    std::fs::rename(&tmp, path).map_err(|s| io(path, s))
}
