//! Backups. `system`: the control plane's own state (database, configuration, CA and TLS
//! material, HSM token, audit keys and queue) in one passphrase-encrypted archive, and its
//! restore into a fresh data directory (spec 14.2-1, 14.2-2).

pub mod system;
