//! Identity primitives: password hashing (argon2id) and the password policy, random secrets
//! and API tokens (stored only as hashes).

pub mod password;
pub mod policy;
pub mod secrets;
