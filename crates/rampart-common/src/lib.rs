//! Shared vocabulary of Rampart: the public [`Error`] and its HTTP mapping, names, time,
//! file helpers for secrets, pagination cursors and the configuration file.

pub mod config;
pub mod error;
pub mod fsutil;
pub mod names;
pub mod origin;
pub mod page;
pub mod quota;
pub mod secret;
pub mod special;
pub mod testing;
pub mod time;

pub use error::{Error, Result};
pub use secret::Sensitive;

/// Version of this build, reported by `/v1/health` and the agents.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Masks the password of a URL (`postgres://user:secret@host/db` → `postgres://user:***@host/db`)
/// so database URLs can appear in logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let masked = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => userinfo.to_string(),
    };
    format!("{}://{}@{}", &url[..scheme_end], masked, &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn spec_13_4_7_database_url_password_is_masked() {
        assert_eq!(
            redact_url("postgres://rampart:s3cret@db:5432/rampart?sslmode=verify-full"),
            "postgres://rampart:***@db:5432/rampart?sslmode=verify-full"
        );
        assert_eq!(redact_url("postgres://db/rampart"), "postgres://db/rampart");
        assert_eq!(
            redact_url("sqlite:///var/lib/rampart/rampart.db"),
            "sqlite:///var/lib/rampart/rampart.db"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
    }
}
