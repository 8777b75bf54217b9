//! Security posture (issue 18): host hardening checks as data with a pure evaluation
//! (spec 9.1-1a … 9.1-1f, 9.1-2), their file-based remediation (`apply`: diff first, backups,
//! `sshd -t` before a reload), and weakness management (spec 15-4): installed Debian
//! packages matched against imported OSV / Debian Security Tracker data with dpkg's version
//! ordering.
//!
//! Facts are read from a root directory, `/` or a fixture tree, so tests need no change to
//! the machine they run on. See docs/posture.md.

pub mod apply;
pub mod catalogue;
pub mod conformance;
pub mod debver;
pub mod dpkg;
pub mod eval;
pub mod facts;
pub mod paths;
pub mod settings;
pub mod sshd;
pub mod sysctl;
pub mod vulndb;

use std::path::Path;

pub use catalogue::{Catalogue, Check, Severity};
pub use eval::{CheckResult, Report, Status};

/// The spec clauses the host checks prove.
pub const CLAUSES: &[&str] = &["9.1-1a", "9.1-1b", "9.1-1c", "9.1-1d", "9.1-1e", "9.1-1f", "9.1-2"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid check catalogue: {0}")]
    Catalogue(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sshd -t refused the new configuration, the SSH files were restored and sshd was not reloaded: {0}")]
    SshdRejected(String),
    #[error("vulnerability data: {0}")]
    VulnData(String),
}

/// Reads the facts under `root` and evaluates the built-in catalogue.
pub fn check(root: &Path) -> (facts::HostFacts, Report) {
    let catalogue = Catalogue::builtin();
    let facts = facts::gather(root, &catalogue);
    let report = eval::evaluate(&catalogue, &facts);
    (facts, report)
}

/// The remediation of what `check` finds under `root`.
pub fn plan(root: &Path) -> (Report, apply::Plan) {
    let catalogue = Catalogue::builtin();
    let (facts, report) = check(root);
    let plan = apply::plan(root, &catalogue, &facts, &report);
    (report, plan)
}
