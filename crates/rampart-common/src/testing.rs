//! Skipped tests, one way for the whole workspace. A test that needs what this machine lacks
//! (root, SoftHSM2, PostgreSQL, a command) skips through [`require`]: under the matching
//! `RAMPART_TEST_REQUIRE_*=1` (CI) that is a failure instead, and otherwise the skip is printed
//! and, when `RAMPART_TEST_SKIP_LOG` names a file, appended to it as `reason<TAB>test`, so that
//! `scripts/test.sh` can end with one line counting the skips by reason: a skip must never
//! read as a pass.
//!
//! Also the workspace's one privileged-test gate ([`is_root`], [`require_root`]) and its one
//! golden-file helper ([`golden`]): `REGENERATE=1 cargo test …` rewrites every golden file.

use std::io::Write;
use std::path::Path;

pub const SKIP_LOG_ENV: &str = "RAMPART_TEST_SKIP_LOG";

/// `REGENERATE=1 cargo test …` makes every golden-file test write what it produced to its file
/// (then review the diff: the files are contracts).
pub const REGENERATE_ENV: &str = "REGENERATE";

/// The variables the golden tests each read before [`REGENERATE_ENV`]. Still honoured, since it
/// costs one line: old habits and scripts keep working, and the header of the checked-in
/// `tests/golden/authz-matrix.txt`, which names `UPDATE_GOLDEN=1`, stays true byte for byte.
const LEGACY_REGENERATE_ENV: [&str; 4] = [
    "UPDATE_GOLDEN",
    "UPDATE_OPENAPI",
    "RAMPART_UPDATE_GOLDEN",
    "RAMPART_BLESS",
];

/// What a skipped test lacked, and the variable that turns its absence into a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root and the host commands of privileged tests (nft, qemu, rsyslogd…).
    Root,
    /// The SoftHSM2 PKCS#11 module.
    Hsm,
    /// A PostgreSQL server (`scripts/ci/start-postgres.sh`).
    Postgres,
    /// A Ceph cluster (`scripts/ci/start-ceph.sh`).
    Ceph,
}

impl Need {
    pub fn require_env(self) -> &'static str {
        match self {
            Need::Root => "RAMPART_TEST_REQUIRE_ROOT",
            Need::Hsm => "RAMPART_TEST_REQUIRE_HSM",
            Need::Postgres => "RAMPART_TEST_REQUIRE_POSTGRES",
            Need::Ceph => "RAMPART_TEST_REQUIRE_CEPH",
        }
    }

    pub fn required(self) -> bool {
        std::env::var(self.require_env()).as_deref() == Ok("1")
    }
}

/// `available`, or else the running test skips (`false`) for `reason`, or fails when `need` is
/// required. `reason` names the cause in the same words wherever it is the same cause ("not
/// root", "softhsm2 missing", "qemu-system-x86_64 missing"): the summary counts by it.
pub fn require(need: Need, available: bool, reason: &str) -> bool {
    if available {
        return true;
    }
    if need.required() {
        panic!("{reason}, and {}=1", need.require_env());
    }
    skip(reason);
    false
}

/// Records that the running test skips for `reason` (the caller then returns).
pub fn skip(reason: &str) {
    // libtest names each test's thread after the test (async tests run on it too).
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("unnamed test");
    // Straight to the process's stderr: libtest captures eprintln! of passing tests.
    let _ = writeln!(std::io::stderr().lock(), "SKIP {test}: {reason}");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        let _ = append_skip(Path::new(&log), test, reason);
    }
}

/// One line `reason<TAB>test`, appended in a single write so that test processes running at
/// once do not interleave.
pub fn append_skip(log: &Path, test: &str, reason: &str) -> std::io::Result<()> {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let line = format!("{}\t{}\n", clean(reason), clean(test));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?
        .write_all(line.as_bytes())
}

/// Every text form a secret could take where it would leak (a database dump, a log): hex in
/// both cases, standard and URL-safe base64.
pub fn secret_forms(secret: &[u8]) -> Vec<String> {
    use base64::Engine;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        hex.to_uppercase(),
        hex,
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ]
}

/// Fails when `haystack` holds one of `secrets`, raw or in one of its [`secret_forms`] (the
/// first 24 characters of a form are enough to count: a prefix of an encoding already leaks).
pub fn assert_no_secret(haystack: &[u8], secrets: &[Vec<u8>]) {
    let text = String::from_utf8_lossy(haystack);
    for s in secrets {
        assert!(!haystack.windows(s.len()).any(|w| w == &s[..]), "raw secret found");
        for f in secret_forms(s) {
            assert!(!text.contains(&f[..f.len().min(24)]), "encoded secret found");
        }
    }
}

/// Whether this process runs with effective uid 0. Read from `/proc/self/status` (the `Uid:`
/// line is real, effective, saved, fs), so that no crate needs an `unsafe` `geteuid`.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| effective_uid_is_root(&s))
}

fn effective_uid_is_root(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// The privileged-test gate: `true` as root, otherwise the test skips (or fails under
/// `RAMPART_TEST_REQUIRE_ROOT=1`) for "not root". A test that also needs host commands passes
/// `is_root() && …` to [`require`] with its own reason.
pub fn require_root() -> bool {
    require(Need::Root, is_root(), "not root")
}

/// Whether golden-file tests rewrite their files: [`REGENERATE_ENV`] (or a legacy name) set to
/// anything but empty or `0`.
pub fn regenerating() -> bool {
    std::iter::once(REGENERATE_ENV)
        .chain(LEGACY_REGENERATE_ENV)
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty() && x != "0"))
}

/// Asserts that the file at `path` holds exactly `actual`, byte for byte. Under
/// `REGENERATE=1` it first writes `actual` there (creating the directory). On a difference it
/// panics with a unified diff from the file to `actual`.
///
/// A helper of our own rather than `expectorate` or `insta`: `expectorate` rewrites only under
/// its own `EXPECTORATE=overwrite`, and `insta` keeps snapshots in `.snap` files with a YAML
/// header, so neither can keep the checked-in files byte-identical under one `REGENERATE`.
#[track_caller]
pub fn golden(path: impl AsRef<Path>, actual: &str) {
    let path = path.as_ref();
    if regenerating() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        std::fs::write(path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("golden file {}: {e} ({REGENERATE_ENV}=1 writes it)", path.display()));
    if let Some(diff) = golden_diff(&path.display().to_string(), &want, actual) {
        panic!(
            "golden file {} differs from what the test produced; if the change is intended, rerun \
             with {REGENERATE_ENV}=1 and review the diff:\n{diff}",
            path.display()
        );
    }
}

/// `None` when equal, otherwise a unified diff from the checked-in `want` to `actual`.
fn golden_diff(name: &str, want: &str, actual: &str) -> Option<String> {
    (want != actual).then(|| {
        similar::TextDiff::from_lines(want, actual)
            .unified_diff()
            .context_radius(3)
            .header(name, "actual")
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_logged_one_line_each_and_counted_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        append_skip(&log, "a::one", "not root").unwrap();
        append_skip(&log, "a::two", "softhsm2 missing").unwrap();
        append_skip(&log, "b::three", "not root").unwrap();
        append_skip(&log, "b::tab\tin name", "odd\treason").unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.contains("odd reason\tb::tab in name\n"), "{text}");
        // The line scripts/test.sh ends with.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ci/skip-summary.sh");
        let run = |log: &Path| {
            let out = std::process::Command::new("bash")
                .arg(&script)
                .arg(log)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(
            run(&log),
            "skipped tests: 4 (not root: 2; odd reason: 1; softhsm2 missing: 1)\n"
        );
        assert_eq!(run(&dir.path().join("none")), "skipped tests: 0\n");
    }

    #[test]
    fn the_effective_uid_decides_root() {
        assert!(effective_uid_is_root("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\n"));
        assert!(!effective_uid_is_root("Uid:\t0\t1000\t0\t0\n"));
        assert!(!effective_uid_is_root("Name:\tx\n"));
    }

    #[test]
    fn golden_diff_names_the_changed_lines() {
        assert_eq!(golden_diff("f", "a\nb\n", "a\nb\n"), None);
        let d = golden_diff("f", "a\nb\nc\n", "a\nB\nc\n").unwrap();
        assert!(d.contains("-b\n") && d.contains("+B\n") && d.contains("--- f"), "{d}");
        // A lost final newline is a difference too.
        let d = golden_diff("f", "a\n", "a").unwrap();
        assert!(d.contains("No newline"), "{d}");
    }

    #[test]
    fn golden_passes_on_the_same_bytes_and_fails_on_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.txt");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        golden(&path, "one\ntwo\n");
        if !regenerating() {
            let other = std::panic::catch_unwind(|| golden(&path, "one\n2\n"));
            assert!(other.is_err());
            let missing = std::panic::catch_unwind(|| golden(dir.path().join("none"), ""));
            assert!(missing.is_err());
        }
    }
}
