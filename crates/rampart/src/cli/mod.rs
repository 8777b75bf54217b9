//! Client verbs of the `rampart` binary: they talk to a controller's API like any client.

pub mod identity;
pub mod keys;
pub mod session;
