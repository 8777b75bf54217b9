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
pub async fn mfa_enrol() -> anyhow::Result<()> {
    let c = client()?;
    let e: TotpEnrollment = c.post("/v1/auth/mfa/totp", &serde_json::json!({})).await?;
    eprintln!(
        "Add this to your authenticator app:\n  {}\n(secret {})",
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
    eprintln!("second factor enrolled; log in again with `rampart login`");
    Ok(())
}
