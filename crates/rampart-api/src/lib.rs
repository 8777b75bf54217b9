//! The external API of Rampart: request and response types (with their OpenAPI schemas), the
//! controller ↔ agent protocol, TLS settings shared by every client, and a typed HTTPS client.

pub mod agent;
pub mod client;
pub mod compute;
pub mod conformance;
pub mod identity;
pub mod keys;
pub mod network;
pub mod quotas;
pub mod storage;
pub mod tls;
pub mod types;

pub use client::{Client, ClientError};
pub use identity::*;
pub use keys::*;
pub use quotas::*;
pub use types::*;
