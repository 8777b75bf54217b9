//! Skipped tests, one way for the whole workspace. A test that needs what this machine lacks
//! (root, SoftHSM2, PostgreSQL, a command) skips through [`require`]: under the matching
//! `RAMPART_TEST_REQUIRE_*=1` (CI) that is a failure instead, and otherwise the skip is printed
//! and, when `RAMPART_TEST_SKIP_LOG` names a file, appended to it as `reason<TAB>test`, so that
//! `scripts/test.sh` can end with one line counting the skips by reason: a skip must never
//! read as a pass.

use std::io::Write;
use std::path::Path;

pub const SKIP_LOG_ENV: &str = "RAMPART_TEST_SKIP_LOG";

/// What a skipped test lacked, and the variable that turns its absence into a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root and the host commands of privileged tests (nft, qemu, rsyslogd…).
    Root,
    /// The SoftHSM2 PKCS#11 module.
    Hsm,
    /// A PostgreSQL server (`scripts/ci/start-postgres.sh`).
    Postgres,
}

impl Need {
    pub fn require_env(self) -> &'static str {
        match self {
            Need::Root => "RAMPART_TEST_REQUIRE_ROOT",
            Need::Hsm => "RAMPART_TEST_REQUIRE_HSM",
            Need::Postgres => "RAMPART_TEST_REQUIRE_POSTGRES",
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
}
