//! Identity primitives: passwords (argon2id, strength policy, deny-lists, history), TOTP,
//! random secrets and API tokens, source-address ranges, the credential key that encrypts
//! secrets at rest, and authorization with Cedar policies.

pub mod authz;
pub mod credkey;
pub mod denylist;
pub mod lockout;
pub mod net;
pub mod password;
pub mod policy;
pub mod rules;
pub mod secrets;
pub mod throttle;
pub mod totp;
