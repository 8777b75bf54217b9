//! `rampart user|project|role|mfa ...`: thin wrappers over the identity API, printing JSON.

use clap::Subcommand;
use rampart_api::*;
use rampart_common::Sensitive;

use super::print;
use super::session::client;

fn scope(system: bool, domain: Option<uuid::Uuid>, project: Option<uuid::Uuid>) -> ScopeRef {
    ScopeRef {
        system: system.then_some(true),
        domain,
        project,
    }
}

#[derive(Subcommand)]
pub enum UserCmd {
    List,
    Show {
        id: uuid::Uuid,
    },
    /// Create a user; the password is read from RAMPART_NEW_PASSWORD or asked for.
    Create {
        name: String,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        email: Option<String>,
    },
    Delete {
        id: uuid::Uuid,
    },
    Unlock {
        id: uuid::Uuid,
    },
    ResetPassword {
        id: uuid::Uuid,
    },
    /// Remove the user's second factor (lost device).
    ResetMfa {
        id: uuid::Uuid,
    },
}

#[derive(Subcommand)]
pub enum ProjectCmd {
    List,
    Create {
        name: String,
        #[arg(long)]
        domain: Option<String>,
    },
    Delete {
        id: uuid::Uuid,
    },
}

#[derive(Subcommand)]
pub enum RoleCmd {
    List,
    /// Grant a role to a user at system scope or on a domain or project.
    Grant {
        role: String,
        #[arg(long)]
        user: uuid::Uuid,
        #[arg(long)]
        system: bool,
        #[arg(long)]
        domain: Option<uuid::Uuid>,
        #[arg(long)]
        project: Option<uuid::Uuid>,
    },
    /// Role assignments you may see.
    Assignments,
    Revoke {
        assignment: uuid::Uuid,
    },
}

fn new_password() -> anyhow::Result<Sensitive> {
    Ok(match std::env::var("RAMPART_NEW_PASSWORD") {
        Ok(p) => Sensitive::new(p),
        Err(_) => Sensitive::new(rpassword::prompt_password("new password: ")?),
    })
}

pub async fn user(cmd: UserCmd) -> anyhow::Result<()> {
    let c = client()?;
    match cmd {
        UserCmd::List => print(&c.get::<List<User>>("/v1/users").await?),
        UserCmd::Show { id } => print(&c.get::<User>(&format!("/v1/users/{id}")).await?),
        UserCmd::Create { name, domain, email } => {
            let body = UserCreate {
                name,
                domain,
                email,
                password: Some(new_password()?),
                ..Default::default()
            };
            print(&c.post::<_, User>("/v1/users", &body).await?)
        }
        UserCmd::Delete { id } => Ok(c
            .send::<()>(http::Method::DELETE, &format!("/v1/users/{id}"), None)
            .await
            .map(|_| ())?),
        UserCmd::Unlock { id } => Ok(c
            .send::<()>(http::Method::POST, &format!("/v1/users/{id}/unlock"), None)
            .await
            .map(|_| ())?),
        UserCmd::ResetPassword { id } => {
            let body = PasswordReset {
                password: new_password()?,
                password_change_required: None,
            };
            Ok(c.send(
                http::Method::POST,
                &format!("/v1/users/{id}/reset-password"),
                Some(&body),
            )
            .await
            .map(|_| ())?)
        }
        UserCmd::ResetMfa { id } => Ok(c
            .send::<()>(http::Method::DELETE, &format!("/v1/users/{id}/mfa"), None)
            .await
            .map(|_| ())?),
    }
}

pub async fn project(cmd: ProjectCmd) -> anyhow::Result<()> {
    let c = client()?;
    match cmd {
        ProjectCmd::List => print(&c.get::<List<Project>>("/v1/projects").await?),
        ProjectCmd::Create { name, domain } => print(
            &c.post::<_, Project>(
                "/v1/projects",
                &ProjectCreate {
                    name,
                    domain,
                    ..Default::default()
                },
            )
            .await?,
        ),
        ProjectCmd::Delete { id } => Ok(c
            .send::<()>(http::Method::DELETE, &format!("/v1/projects/{id}"), None)
            .await
            .map(|_| ())?),
    }
}

pub async fn role(cmd: RoleCmd) -> anyhow::Result<()> {
    let c = client()?;
    match cmd {
        RoleCmd::List => print(&c.get::<List<Role>>("/v1/roles").await?),
        RoleCmd::Grant {
            role,
            user,
            system,
            domain,
            project,
        } => {
            let body = RoleAssignmentCreate {
                user: Some(user),
                group: None,
                role,
                scope: scope(system, domain, project),
            };
            print(&c.post::<_, RoleAssignment>("/v1/role-assignments", &body).await?)
        }
        RoleCmd::Assignments => print(&c.get::<List<RoleAssignment>>("/v1/role-assignments").await?),
        RoleCmd::Revoke { assignment } => Ok(c
            .send::<()>(
                http::Method::DELETE,
                &format!("/v1/role-assignments/{assignment}"),
                None,
            )
            .await
            .map(|_| ())?),
    }
}

/// `rampart mfa enrol`: starts TOTP enrolment, prints the otpauth URI, asks for a code.
/// Enrols TOTP: a QR code (and the URI and secret) for the app, a code to confirm it; then,
/// since enrolment ends the sessions opened before it, a new login with the app's next code
/// and the one-time recovery codes, shown this once (on standard output).
pub async fn mfa_enrol() -> anyhow::Result<()> {
    let c = client()?;
    let me: TokenInfo = c.get("/v1/auth/tokens/current").await?;
    let e: TotpEnrollment = c.post("/v1/auth/mfa/totp", &serde_json::json!({})).await?;
    eprintln!(
        "Scan this with your authenticator app:\n\n{}\nor add it by hand:\n  {}\n(secret {})",
        qr_text(e.otpauth_uri.expose())?,
        e.otpauth_uri.expose(),
        e.secret.expose()
    );
    eprint!("code shown by the app: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    c.send(
        http::Method::POST,
        "/v1/auth/mfa/totp/confirm",
        Some(&TotpConfirm {
            code: Sensitive::new(line.trim()),
        }),
    )
    .await?;
    eprintln!("Second factor enrolled. Log in again (password, then the app's next code):");
    super::session::login(super::session::LoginArgs {
        user: Some(me.user.name),
        domain: Some(me.user.domain),
        ..Default::default()
    })
    .await?;
    let codes: RecoveryCodes = client()?
        .post("/v1/auth/mfa/recovery-codes", &serde_json::json!({}))
        .await?;
    eprintln!("Recovery codes: each works once instead of an app code. They are shown only now; keep them offline:");
    for code in &codes.codes {
        println!("{}", code.expose());
    }
    Ok(())
}

/// `uri` as a QR code of Unicode half blocks, light on dark with its quiet zone, for a terminal.
fn qr_text(uri: &str) -> anyhow::Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(uri.as_bytes())?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn spec_13_2_2_mfa_enrol_renders_the_otpauth_uri_as_a_qr_code() {
        let uri = "otpauth://totp/Rampart:admin?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=Rampart&algorithm=SHA1&digits=6&period=30";
        let text = super::qr_text(uri).unwrap();
        let code = qrcode::QrCode::new(uri.as_bytes()).unwrap();
        // Two modules per character row, a quiet zone of 4 on every side.
        let side = code.width() + 8;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), side.div_ceil(2), "{text}");
        assert!(lines.iter().all(|l| l.chars().count() == side), "{text}");
        assert!(
            text.chars().all(|c| " \u{2580}\u{2584}\u{2588}\n".contains(c)),
            "{text}"
        );
        assert_ne!(text, super::qr_text("otpauth://totp/other").unwrap());
    }
}
