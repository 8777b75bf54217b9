//! Keys and certificates. For now: the internal certificate authority that issues the API
//! server certificate and the agents' client certificates (spec 12.3.1, 13.3-2).

pub mod ca;

pub use ca::{CaError, CertificateAuthority, IssuedCertificate};
