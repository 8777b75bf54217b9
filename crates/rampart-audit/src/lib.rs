//! Rampart's audit trail (spec 13.4, 13.3-4, 9.2-5): operation records chained by SHA-256 over
//! canonical JSON, RFC 6962 Merkle checkpoints signed with Ed25519, a verifier that names each
//! problem by seq and kind, exports to OCSF, CADF, CEF and RFC 5424, redaction and canary
//! scanning for secrets, retention with a purge that keeps the chain verifiable, and RFC 5425
//! syslog-over-TLS forwarding from a persistent on-disk queue.
//!
//! Storage-independent: [`store::AuditStore`] is implemented in memory here and on SQL by the
//! controller; see `HANDOFF.md` for the tables and the wiring.

pub mod canary;
pub mod canonical;
pub mod checkpoint;
pub mod flood;
pub mod formats;
pub mod forward;
pub mod hash;
pub mod merkle;
pub mod queue;
pub mod record;
pub mod redact;
pub mod retention;
pub mod store;
pub mod verify;

pub use checkpoint::{Checkpoint, CheckpointSigner, Ed25519Signer, KeyRing, TrustedKey};
pub use hash::Hash;
pub use record::{Actor, AuditRecord, AuditResult, AuthMethod, ChainHead, NewRecord, Outcome, Target, seal};
pub use store::{AuditError, AuditLog, AuditStore, CheckpointPolicy, MemoryStore};
pub use verify::{Problem, ProblemKind, VerifyOptions, VerifyReport, verify};
