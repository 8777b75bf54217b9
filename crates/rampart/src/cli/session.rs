//! The CLI session: `rampart login` stores the controller URL, its CA and a token in
//! `~/.config/rampart/session.json` (0600); every other verb reads it. `RAMPART_URL`,
//! `RAMPART_CA` and `RAMPART_TOKEN` override the file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use rampart_api::{Client, LoginRequest};
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

/// A client carrying the session's token.
pub fn client() -> anyhow::Result<Client> {
    let (url, ca) = target(None, None);
    let token = match std::env::var("RAMPART_TOKEN") {
        Ok(t) => Sensitive::new(t),
        Err(_) => saved()
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("not logged in: run `rampart login` (or set RAMPART_TOKEN)"))?,
    };
    // Creating calls carry an Idempotency-Key: a retry after a lost answer or a 503 makes
    // nothing twice.
    Ok(anonymous(&url, &ca)?.with_token(token).with_retries(3))
}

fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

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
    for w in &response.warnings {
        eprintln!("warning: {w}");
    }
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
    eprintln!(
        "logged in as {}@{} (roles: {}; scope: {:?}; until {})",
        response.user.name,
        response.user.domain,
        if response.roles.is_empty() {
            "none".into()
        } else {
            response.roles.join(", ")
        },
        response.scope,
        rampart_common::time::rfc3339(response.expires_at)
    );
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
    anon.change_password(&rampart_api::PasswordChange {
        username,
        domain,
        current_password: current,
        new_password: new,
    })
    .await
    .map_err(|e| match &e {
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
