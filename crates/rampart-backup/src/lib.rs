//! Backups (issue 16). Tenant volume backups go to restic repositories, one per project and
//! target: the pure half ([`plan`]: command lines, retention flags, the parsing of restic's JSON)
//! is golden-tested, the thin half ([`restic`]: runs the tool with the repository password on a
//! pipe; [`export`]: a volume's plaintext through QEMU's LUKS layer as a FUSE file) is tested
//! for real. See `docs/backup.md`.

pub mod export;
pub mod job;
pub mod plan;
pub mod restic;
