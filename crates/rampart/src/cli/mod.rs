//! Client verbs of the `rampart` binary: they talk to a controller's API like any client.

pub mod conformance;
pub mod identity;
pub mod images;
pub mod keys;
pub mod posture;
pub mod session;
pub mod system_backup;
pub mod volumes;

/// Prints an API answer as pretty JSON on standard output.
pub(crate) fn print<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
