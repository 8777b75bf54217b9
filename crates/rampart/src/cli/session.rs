//! The CLI session: `rampart login` stores the controller URL, its CA and a token in
//! `~/.config/rampart/session.json` (0600); every other verb reads it. `RAMPART_URL`,
//! `RAMPART_CA` and `RAMPART_TOKEN` override the file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use rampart_api::{Client, LoginRequest, TokenResponse, TokenScope};
use rampart_common::Sensitive;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Saved {
    url: String,
    ca: PathBuf,
    token: Sensitive,
}

fn session_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| ".".into())
                .join(".config")
        });
    base.join("rampart").join("session.json")
}

fn saved() -> Option<Saved> {
    serde_json::from_str(&std::fs::read_to_string(session_path()).ok()?).ok()
}

/// URL and CA file: flags, then environment, then the saved session, then `rampart up`'s defaults.
fn target(url: Option<String>, ca: Option<PathBuf>) -> (String, PathBuf) {
    let s = saved();
    let url = url
        .or_else(|| std::env::var("RAMPART_URL").ok())
        .or_else(|| s.as_ref().map(|s| s.url.clone()))
        .unwrap_or_else(|| "https://127.0.0.1:8443".into());
    let ca = ca
        .or_else(|| std::env::var_os("RAMPART_CA").map(PathBuf::from))
        .or_else(|| s.as_ref().map(|s| s.ca.clone()))
        .unwrap_or_else(|| PathBuf::from("/var/lib/rampart/ca.pem"));
    (url, ca)
}

fn anonymous(url: &str, ca: &std::path::Path) -> anyhow::Result<Client> {
    let pem =
        std::fs::read(ca).with_context(|| format!("cannot read the CA certificate {} (give --ca)", ca.display()))?;
    Ok(Client::with_ca(url, &pem)?)
}

/// The token of `RAMPART_TOKEN`, else of the saved session.
fn token() -> anyhow::Result<Sensitive> {
    match std::env::var("RAMPART_TOKEN") {
        Ok(t) => Ok(Sensitive::new(t)),
        Err(_) => saved()
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("not logged in: run `rampart login` (or set RAMPART_TOKEN)")),
    }
}

/// A client carrying the session's token.
pub fn client() -> anyhow::Result<Client> {
    let (url, ca) = target(None, None);
    // Creating calls carry an Idempotency-Key: a retry after a lost answer or a 503 makes
    // nothing twice.
    Ok(anonymous(&url, &ca)?.with_token(token()?).with_retries(3))
}

fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[derive(Default)]
pub struct LoginArgs {
    pub url: Option<String>,
    pub ca: Option<PathBuf>,
    pub user: Option<String>,
    pub domain: Option<String>,
    pub project: Option<String>,
}

/// Asks for the password (not echoed) and, when the account has one, the TOTP code; stores
/// the session 0600.
pub async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let (url, ca) = target(a.url, a.ca);
    let anon = anonymous(&url, &ca)?;
    let user = match a.user {
        Some(u) => u,
        None => prompt("user")?,
    };
    let password = match std::env::var("RAMPART_PASSWORD") {
        Ok(p) => Sensitive::new(p),
        Err(_) => Sensitive::new(rpassword::prompt_password("password: ")?),
    };
    let mut req = LoginRequest {
        username: user,
        password: Some(password),
        domain: a.domain,
        project: a.project,
        totp: None,
        application_credential: None,
    };
    let response = match anon.login(&req).await {
        Err(e) if e.code() == Some("mfa_required") => {
            req.totp = Some(Sensitive::new(prompt("TOTP code")?));
            anon.login(&req).await?
        }
        other => other?,
    };
    let path = session_path();
    if let Some(dir) = path.parent() {
        rampart_common::fsutil::ensure_private_dir(dir)?;
    }
    let saved = Saved {
        url,
        ca: std::fs::canonicalize(&ca).unwrap_or(ca),
        token: response.token.clone(),
    };
    rampart_common::fsutil::write_secret(&path, serde_json::to_string_pretty(&saved)?.as_bytes())?;
    for line in login_report(&response) {
        eprintln!("{line}");
    }
    Ok(())
}

/// What a session may do, in words.
pub fn scope_text(scope: TokenScope) -> &'static str {
    match scope {
        TokenScope::Full => "everything your roles allow",
        TokenScope::MfaEnrollment => "enrolling a second factor only",
    }
}

/// What `rampart login` tells a person: who, which roles, what the session may do, and the
/// next step in CLI terms. The server's warning about an enrolment-only token names the API
/// call; a CLI user gets the command instead.
fn login_report(r: &TokenResponse) -> Vec<String> {
    let roles = if r.roles.is_empty() {
        "none".to_string()
    } else {
        r.roles.join(", ")
    };
    let mut lines = vec![format!(
        "logged in as {}@{} (roles: {roles}; this session may do {}; until {})",
        r.user.name,
        r.user.domain,
        scope_text(r.scope),
        rampart_common::time::rfc3339(r.expires_at)
    )];
    let enrolment_only = r.scope == TokenScope::MfaEnrollment;
    for w in &r.warnings {
        if !(enrolment_only && w.contains("/v1/auth/mfa/totp")) {
            lines.push(format!("warning: {w}"));
        }
    }
    if enrolment_only {
        lines.push(
            "your roles require a second factor: run `rampart mfa-enrol` next (it logs you in again when done)".into(),
        );
    }
    lines
}

/// `rampart token`: the token of the saved session (or of `RAMPART_TOKEN`) on standard output.
pub fn print_token() -> anyhow::Result<()> {
    println!("{}", token()?.expose());
    Ok(())
}

pub async fn logout() -> anyhow::Result<()> {
    if let Ok(c) = client() {
        let _ = c.logout().await;
    }
    match std::fs::remove_file(session_path()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// `rampart passwd`: changes a password (no token needed: first use, expired password).
pub async fn passwd(
    url: Option<String>,
    ca: Option<PathBuf>,
    user: Option<String>,
    domain: Option<String>,
) -> anyhow::Result<()> {
    let (url, ca) = target(url, ca);
    let anon = anonymous(&url, &ca)?;
    let username = match user {
        Some(u) => u,
        None => prompt("user")?,
    };
    let current = match std::env::var("RAMPART_PASSWORD") {
        Ok(p) => Sensitive::new(p),
        Err(_) => Sensitive::new(rpassword::prompt_password("current password: ")?),
    };
    let new = match std::env::var("RAMPART_NEW_PASSWORD") {
        Ok(p) => Sensitive::new(p),
        Err(_) => {
            let a = rpassword::prompt_password("new password: ")?;
            let b = rpassword::prompt_password("again: ")?;
            anyhow::ensure!(a == b, "the two entries differ");
            Sensitive::new(a)
        }
    };
    let mut req = rampart_api::PasswordChange {
        username,
        domain,
        current_password: current,
        new_password: new,
        totp: None,
    };
    let mut result = anon.change_password(&req).await;
    // An account with a second factor confirms the change with a code (or a recovery code).
    if let Err(e) = &result
        && e.code() == Some("mfa_required")
    {
        req.totp = Some(Sensitive::new(prompt("TOTP code (or a recovery code)")?));
        result = anon.change_password(&req).await;
    }
    result.map_err(|e| match &e {
        rampart_api::ClientError::Api { body, .. } if body.error.details.is_some() => {
            anyhow!(
                "{e}: {}",
                body.error.details.as_ref().map(|d| d.to_string()).unwrap_or_default()
            )
        }
        _ => e.into(),
    })?;
    eprintln!("password changed; every session of this user has ended");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(scope: TokenScope, warnings: &[&str]) -> TokenResponse {
        TokenResponse {
            token: Sensitive::new("t"),
            expires_at: time::macros::datetime!(2026-12-07 15:00 UTC),
            user: rampart_api::UserRef {
                id: uuid::Uuid::nil(),
                name: "admin".into(),
                domain: "default".into(),
            },
            project: None,
            roles: vec!["admin".into()],
            scope,
            password_expires_at: None,
            warnings: warnings.iter().map(|w| w.to_string()).collect(),
        }
    }

    #[test]
    fn spec_13_2_2_login_says_what_the_session_may_do_and_the_next_command() {
        let text = login_report(&response(
            TokenScope::MfaEnrollment,
            &["your roles require a second factor: enrol one with POST /v1/auth/mfa/totp, then log in again"],
        ))
        .join("\n");
        assert!(text.contains("enrolling a second factor only"), "{text}");
        assert!(text.contains("`rampart mfa-enrol`"), "{text}");
        assert!(!text.contains("MfaEnrollment") && !text.contains("/v1/auth"), "{text}");
        let text = login_report(&response(TokenScope::Full, &["your password expires in 3 days"])).join("\n");
        assert!(text.contains("everything your roles allow"), "{text}");
        assert!(text.contains("warning: your password expires in 3 days"), "{text}");
        assert!(!text.contains("Full") && !text.contains("mfa-enrol"), "{text}");
    }
}
