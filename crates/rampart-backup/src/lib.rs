//! Backups (issue 16).
//!
//! Tenant volume backups go to restic repositories, one per project and target: the pure half
//! ([`plan`]: command lines, retention flags, the parsing of restic's JSON) is golden-tested,
//! the thin half ([`restic`]: runs the tool with the repository password on a pipe; [`export`]:
//! a volume's plaintext through QEMU's LUKS layer as a FUSE file) is tested for real. See
//! `docs/backup.md`.
//!
//! [`system`]: the control plane's own state (database, configuration, CA and TLS material, HSM
//! token, audit keys and queue) in one passphrase-encrypted archive, and its restore into a
//! fresh data directory (spec 14.2-1, 14.2-2).

pub mod export;
pub mod job;
pub mod plan;
pub mod restic;
pub mod system;
